//! Terraform's machine-readable stream (`apply -json`, `destroy -json`): one log line per
//! resource as it starts and finishes, with its time; the change summary; diagnostics with
//! their file and line; the outputs at the end of an apply, so that no `terraform output`
//! is needed for them; and what kind of failure the diagnostics describe. A line that is not
//! one of terraform's events (a crash, a plugin's stray output) is passed on tagged, as for
//! any command.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::base::error::FailureKind;
use crate::base::log::ChildLines;
use crate::base::secrets::Redactor;
use crate::terraform::command::Outputs;
use crate::terraform::provision_event::{self, ProvisionLine};

/// A long-running resource is said to be still in progress at most this often.
const PROGRESS_EVERY_SECONDS: u64 = 60;
/// The diagnostics kept to explain and classify a failure; the rest are logged only.
const KEPT_DIAGNOSTICS: usize = 16;
/// Resources whose last progress line is remembered; past this, progress is not throttled
/// per resource any more but memory stays bounded.
const TRACKED_RESOURCES: usize = 4096;

/// One event of terraform's stream, as far as the engine reads it, borrowing from the line
/// what it can: a provisioner can print as fast as terraform can pass it on.
#[derive(Debug, Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "@message", default, borrow)]
    message: Cow<'a, str>,
    #[serde(default, borrow)]
    hook: Option<Hook<'a>>,
    #[serde(default)]
    changes: Option<Changes>,
    #[serde(default)]
    diagnostic: Option<Diagnostic>,
    #[serde(default)]
    outputs: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct Hook<'a> {
    #[serde(default, borrow)]
    resource: Option<Resource<'a>>,
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(default)]
    elapsed_seconds: Option<f64>,
    #[serde(default, borrow)]
    provisioner: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    output: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Resource<'a> {
    #[serde(borrow)]
    addr: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
struct Changes {
    #[serde(default)]
    add: u64,
    #[serde(default)]
    change: u64,
    #[serde(default)]
    remove: u64,
    #[serde(default)]
    operation: String,
}

/// A diagnostic terraform reported: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Diagnostic {
    pub severity: String,
    pub summary: String,
    #[serde(default)]
    pub detail: String,
    /// The resource it concerns, if any.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    range: Option<Range>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Range {
    filename: String,
    start: Position,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Position {
    line: u64,
}

impl Diagnostic {
    /// The file and line it points at.
    pub fn place(&self) -> Option<(&str, u64)> {
        self.range
            .as_ref()
            .map(|r| (r.filename.as_str(), r.start.line))
    }

    fn is_error(&self) -> bool {
        self.severity == "error"
    }

    /// `Error: summary: detail`, on one line.
    pub fn one_line(&self) -> String {
        let mut text = format!("{}: {}", capitalized(&self.severity), self.summary);
        let detail = self.detail.split_whitespace().collect::<Vec<_>>().join(" ");
        if !detail.is_empty() {
            text.push_str(": ");
            text.push_str(&detail);
        }
        text
    }

    /// As a person reads it: severity, summary, detail, then where.
    fn readable(&self) -> String {
        let mut text = self.one_line();
        let mut at = Vec::new();
        if let Some((file, line)) = self.place() {
            at.push(format!("{file} line {line}"));
        }
        if let Some(address) = &self.address {
            at.push(address.clone());
        }
        if !at.is_empty() {
            text.push_str(&format!(" (at {})", at.join(", ")));
        }
        text
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Reads one `-json` command's stream for a step, logging as it goes.
pub struct Stream {
    step: String,
    redactor: Redactor,
    /// Each resource in progress: when its change started here (terraform counts only whole
    /// seconds), and when it was last said to be in progress, in whole seconds.
    progress_said: HashMap<String, (Instant, u64)>,
    /// The apply's change summary has been seen: an `outputs` event after it holds values.
    applied: bool,
    outputs: Option<Outputs>,
    errors: Vec<Diagnostic>,
    /// How many error diagnostics there were, kept or not.
    error_count: usize,
    /// Some error diagnostics concern a resource or the backend (even if not kept).
    errors_not_configuration: bool,
    /// Inside a line longer than the reader's pieces: its pieces are passed on as text.
    in_long_line: bool,
    provisioner_lines: provision_event::Reader,
}

impl Stream {
    pub fn new(step: &str, redactor: Redactor) -> Self {
        Stream {
            step: step.to_string(),
            redactor,
            progress_said: HashMap::new(),
            applied: false,
            outputs: None,
            errors: Vec::new(),
            error_count: 0,
            errors_not_configuration: false,
            in_long_line: false,
            provisioner_lines: provision_event::Reader::default(),
        }
    }

    /// Takes one line (or piece of a long line, `whole` false but for its last) of the
    /// command's stdout, unmasked. Returns false for what is not an event, which the caller
    /// passes on as it is. A provisioner's output goes to `out` with the child's other
    /// lines; anything else is logged after what `out` holds.
    pub fn line(&mut self, raw: &str, whole: bool, out: &mut ChildLines) -> bool {
        let continues = std::mem::replace(&mut self.in_long_line, !whole);
        if continues || !whole || !raw.starts_with('{') {
            return false;
        }
        if let Some(line) = self.provisioner_lines.read(raw) {
            provisioner_line(&self.redactor, &line, out);
            return true;
        }
        match serde_json::from_str::<Event>(raw) {
            Ok(event) => {
                if event.kind != "provision_progress" {
                    out.flush();
                }
                self.event(event, out);
                true
            }
            Err(_) => false,
        }
    }

    /// The outputs an apply announced at its end, unless some of them are sensitive (the
    /// stream leaves their values out) or the event never came whole.
    pub fn outputs(&self) -> Option<&Outputs> {
        self.outputs
            .as_ref()
            .filter(|(_, sensitive)| sensitive.is_empty())
    }

    /// What the failure of the command was, by its diagnostics: about the configuration
    /// when every error points at a file and none at a resource; about a resource when one
    /// names an address; a crash (or kill) when there were none.
    pub fn failure_kind(&self) -> FailureKind {
        if self.error_count == 0 {
            FailureKind::NoDiagnostics
        } else if self.errors.iter().any(|d| d.address.is_some()) {
            FailureKind::Resource
        } else if !self.errors_not_configuration {
            FailureKind::Configuration
        } else {
            FailureKind::Other
        }
    }

    /// Terraform's first error, summary and detail, masked: the reason a failure gives.
    pub fn reason(&self) -> Option<String> {
        self.errors
            .first()
            .map(|d| self.redactor.mask(&d.one_line()).into_owned())
    }

    fn event(&mut self, event: Event<'_>, out: &mut ChildLines) {
        let kind: &str = &event.kind;
        match kind {
            "apply_start" | "apply_progress" | "apply_complete" | "apply_errored" => {
                if let Some(hook) = event.hook {
                    self.resource_event(kind, hook);
                }
            }
            "provision_progress" => {
                let Some(hook) = event.hook else { return };
                let address = hook.resource.map(|r| r.addr).unwrap_or_default();
                let provisioner = hook.provisioner.unwrap_or_default();
                let line = ProvisionLine {
                    address,
                    provisioner,
                    output: hook.output.unwrap_or_default(),
                };
                provisioner_line(&self.redactor, &line, out);
            }
            "change_summary" => {
                let Some(changes) = event.changes else { return };
                if changes.operation == "plan" {
                    return;
                }
                self.applied = true;
                tracing::info!(
                    source = "terraform",
                    step = self.step.as_str(),
                    event = "change_summary",
                    operation = changes.operation.as_str(),
                    added = changes.add,
                    changed = changes.change,
                    destroyed = changes.remove,
                    "{}",
                    event.message
                );
            }
            "outputs" if self.applied => {
                if let Some(all) = event.outputs {
                    self.outputs = Some(outputs_of(all));
                }
            }
            "log" => {
                // Terraform's own words outside any resource ("Interrupt received…").
                for line in event.message.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::info!(
                        source = "terraform",
                        step = self.step.as_str(),
                        event = "log",
                        "{line}"
                    );
                }
            }
            "diagnostic" => {
                let Some(diagnostic) = event.diagnostic else {
                    return;
                };
                self.diagnostic(diagnostic);
            }
            _ => {}
        }
    }

    /// A resource's change started, went on, or ended: one line each, progress at most once
    /// every [`PROGRESS_EVERY_SECONDS`].
    fn resource_event(&mut self, kind: &str, hook: Hook<'_>) {
        let Some(resource) = hook.resource else {
            return;
        };
        let action = hook.action.as_deref().unwrap_or("apply");
        let address: &str = &resource.addr;
        let elapsed = match (self.progress_said.get(address), kind) {
            (Some((started, _)), "apply_complete" | "apply_errored") => {
                started.elapsed().as_secs_f64()
            }
            _ => hook.elapsed_seconds.unwrap_or(0.0),
        };
        let message = match kind {
            "apply_start" => {
                self.remember_progress(address, 0);
                format!("{address}: {}…", ing(action))
            }
            "apply_progress" => {
                let whole = elapsed as u64;
                let said = self.progress_said.get(address).map_or(0, |p| p.1);
                if whole < said + PROGRESS_EVERY_SECONDS {
                    return;
                }
                self.remember_progress(address, whole);
                format!("{address}: still {}… {}", ing(action), minutes(whole))
            }
            "apply_complete" => {
                self.progress_said.remove(address);
                format!("{address}: {} in {}", done(action), seconds(elapsed))
            }
            _ => {
                self.progress_said.remove(address);
                format!(
                    "{address}: {} failed after {}",
                    noun(action),
                    seconds(elapsed)
                )
            }
        };
        tracing::info!(
            source = "terraform",
            step = self.step.as_str(),
            event = kind,
            address,
            action,
            elapsed_seconds = elapsed,
            "{message}"
        );
    }

    fn remember_progress(&mut self, address: &str, at: u64) {
        let room = self.progress_said.len() < TRACKED_RESOURCES;
        match self.progress_said.get_mut(address) {
            Some(progress) => progress.1 = at,
            None if room => {
                self.progress_said
                    .insert(address.to_string(), (Instant::now(), at));
            }
            None => {}
        }
    }

    /// Masks a text taken from an event whole: a secret that terraform word-wrapped over
    /// two of its lines is found in it as the redactor finds it in two log lines.
    fn mask(&self, text: &str) -> String {
        self.redactor.mask(text).into_owned()
    }

    fn diagnostic(&mut self, diagnostic: Diagnostic) {
        let step = self.step.as_str();
        let message = self.mask(&diagnostic.readable());
        let summary = self.mask(&diagnostic.summary);
        let detail = self.mask(&diagnostic.detail);
        let (file, line) = diagnostic
            .place()
            .map_or((None, None), |(f, l)| (Some(f), Some(l)));
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    source = "terraform",
                    step,
                    event = "diagnostic",
                    severity = diagnostic.severity.as_str(),
                    summary = summary.as_str(),
                    detail = detail.as_str(),
                    address = diagnostic.address.as_deref(),
                    file,
                    line,
                    "{message}"
                )
            };
        }
        if !diagnostic.is_error() {
            log!(tracing::Level::WARN);
            return;
        }
        log!(tracing::Level::ERROR);
        self.error_count += 1;
        if diagnostic.address.is_none() && diagnostic.range.is_none() {
            self.errors_not_configuration = true;
        }
        if self.errors.len() < KEPT_DIAGNOSTICS {
            self.errors.push(diagnostic);
        } else if diagnostic.address.is_some() {
            self.errors_not_configuration = true;
            // Kept for its address: the failure concerns a resource.
            self.errors[KEPT_DIAGNOSTICS - 1] = diagnostic;
        }
    }
}

/// A provisioner's output comes as fast as a child's lines, and goes out as they do: masked
/// by the log with them, and on its own only where `mask_each_line` says so.
fn provisioner_line(redactor: &Redactor, line: &ProvisionLine<'_>, out: &mut ChildLines) {
    let output = match crate::base::log::mask_each_line(redactor) {
        true => redactor.mask(&line.output),
        false => Cow::Borrowed(&*line.output),
    };
    out.provisioner_line(&line.address, &line.provisioner, &output);
}

/// An `outputs` event's values, and the names of the sensitive ones (whose values it leaves
/// out).
fn outputs_of(all: Map<String, Value>) -> Outputs {
    let mut values = Map::new();
    let mut sensitive = Vec::new();
    for (name, output) in all {
        if output.get("sensitive").and_then(Value::as_bool) == Some(true) {
            sensitive.push(name.clone());
        }
        values.insert(name, output.get("value").cloned().unwrap_or(Value::Null));
    }
    (values, sensitive)
}

fn ing(action: &str) -> &'static str {
    match action {
        "create" => "creating",
        "delete" => "destroying",
        "update" => "updating",
        "replace" => "replacing",
        "read" => "reading",
        _ => "applying",
    }
}

fn done(action: &str) -> &'static str {
    match action {
        "create" => "created",
        "delete" => "destroyed",
        "update" => "updated",
        "replace" => "replaced",
        "read" => "read",
        _ => "applied",
    }
}

fn noun(action: &str) -> &'static str {
    match action {
        "create" => "creation",
        "delete" => "destruction",
        "update" => "update",
        "replace" => "replacement",
        "read" => "read",
        _ => "apply",
    }
}

fn seconds(elapsed: f64) -> String {
    format!("{elapsed:.1}s")
}

/// Terraform's own way of saying a duration: `1m0s`, `2m30s`.
fn minutes(whole_seconds: u64) -> String {
    format!("{}m{}s", whole_seconds / 60, whole_seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream::new("hosts", Redactor::default())
    }

    fn line(s: &mut Stream, raw: &str, whole: bool) -> bool {
        s.line(
            raw,
            whole,
            &mut ChildLines::of(crate::base::log::Child::Terraform, "hosts"),
        )
    }

    fn hook_event(kind: &str, addr: &str, action: &str, elapsed: f64) -> String {
        serde_json::json!({
            "@level": "info", "@message": "x", "type": kind,
            "hook": {"resource": {"addr": addr}, "action": action, "elapsed_seconds": elapsed}
        })
        .to_string()
    }

    #[test]
    fn outputs_come_from_the_event_after_the_apply_not_the_plan() {
        let mut s = stream();
        assert!(line(
            &mut s,
            r#"{"type":"outputs","outputs":{"x":{"sensitive":false,"action":"create"}}}"#,
            true
        ));
        assert!(s.outputs().is_none(), "the plan's outputs carry no values");
        assert!(line(
            &mut s,
            r#"{"type":"change_summary","@message":"Apply complete!","changes":{"add":1,"change":0,"remove":0,"operation":"apply"}}"#,
            true
        ));
        assert!(line(
            &mut s,
            r#"{"type":"outputs","outputs":{"x":{"sensitive":false,"type":"string","value":"a"},"m":{"sensitive":false,"type":["map","number"],"value":{"k":1}}}}"#,
            true
        ));
        let (values, sensitive) = s.outputs().expect("outputs");
        assert_eq!(values["x"], "a");
        assert_eq!(values["m"]["k"], 1);
        assert!(sensitive.is_empty());

        let mut s = stream();
        line(
            &mut s,
            r#"{"type":"change_summary","changes":{"operation":"apply"}}"#,
            true,
        );
        line(
            &mut s,
            r#"{"type":"outputs","outputs":{"t":{"sensitive":true,"type":"string"}}}"#,
            true,
        );
        assert!(
            s.outputs().is_none(),
            "a sensitive output's value is not in the stream"
        );
    }

    #[test]
    fn what_is_not_an_event_is_left_to_the_caller() {
        let mut s = stream();
        assert!(!line(&mut s, "panic: runtime error", true));
        assert!(!line(&mut s, "{not json", true));
        // A long line comes in pieces: none of them is read as an event.
        assert!(!line(&mut s, r#"{"type":"change_summary""#, false));
        assert!(!line(
            &mut s,
            r#"{"type":"change_summary","changes":{"operation":"apply"}}"#,
            true
        ));
        assert!(line(&mut s, r#"{"type":"version"}"#, true));
    }

    fn diagnostic(address: Option<&str>, file: Option<&str>) -> String {
        let mut d =
            serde_json::json!({"severity": "error", "summary": "Bad", "detail": "it is\nbad"});
        if let Some(a) = address {
            d["address"] = a.into();
        }
        if let Some(f) = file {
            d["range"] = serde_json::json!({"filename": f, "start": {"line": 3, "column": 1}});
        }
        serde_json::json!({"type": "diagnostic", "@level": "error", "diagnostic": d}).to_string()
    }

    #[test]
    fn failures_are_told_apart_by_their_diagnostics() {
        let kind = |lines: &[String]| {
            let mut s = stream();
            for l in lines {
                assert!(line(&mut s, l, true));
            }
            s.failure_kind()
        };
        assert_eq!(kind(&[]), FailureKind::NoDiagnostics);
        assert_eq!(
            kind(&[
                diagnostic(None, Some("main.tf")),
                diagnostic(None, Some("b.tf"))
            ]),
            FailureKind::Configuration
        );
        assert_eq!(
            kind(&[
                diagnostic(None, Some("main.tf")),
                diagnostic(Some("terraform_data.a"), Some("main.tf"))
            ]),
            FailureKind::Resource
        );
        // No file and no resource: the backend or its lock, which may well pass.
        assert_eq!(kind(&[diagnostic(None, None)]), FailureKind::Other);
        let mut s = stream();
        line(&mut s, &diagnostic(Some("a.b"), Some("main.tf")), true);
        assert_eq!(s.reason().unwrap(), "Error: Bad: it is bad");
        assert_eq!(
            s.errors[0].readable(),
            "Error: Bad: it is bad (at main.tf line 3, a.b)"
        );
    }

    #[test]
    fn progress_is_said_at_most_once_a_minute_per_resource() {
        let mut s = stream();
        line(
            &mut s,
            &hook_event("apply_start", "a.b", "create", 0.0),
            true,
        );
        for t in [10.0, 59.0] {
            line(
                &mut s,
                &hook_event("apply_progress", "a.b", "create", t),
                true,
            );
            assert_eq!(s.progress_said["a.b"].1, 0);
        }
        line(
            &mut s,
            &hook_event("apply_progress", "a.b", "create", 61.0),
            true,
        );
        assert_eq!(s.progress_said["a.b"].1, 61);
        line(
            &mut s,
            &hook_event("apply_progress", "a.b", "create", 100.0),
            true,
        );
        assert_eq!(s.progress_said["a.b"].1, 61);
        line(
            &mut s,
            &hook_event("apply_complete", "a.b", "create", 130.0),
            true,
        );
        assert!(s.progress_said.is_empty());
        assert_eq!(minutes(60), "1m0s");
        assert_eq!(minutes(150), "2m30s");
    }
}
