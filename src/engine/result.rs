//! `--result-file`: what a command ended with, small enough for a container's termination
//! message (Kubernetes keeps at most 4 KiB of it): the exit code, the error and its failure
//! kind, each step's state, and the steps' non-sensitive outputs as far as they fit; the
//! outputs that do not are named in `outputs_left_out`; and the identity of the code the root
//! ran, which a controller whose engines run elsewhere cannot read from the journal.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::base::error::{Error, FailureKind};
use crate::base::secrets::Redactor;
use crate::root::journal::Journal;
use crate::workflow::load::Loaded;

/// The most a termination message holds.
pub const MAX_BYTES: usize = 4096;
/// An error longer than this is cut: the log has it whole.
const MAX_ERROR_CHARS: usize = 1000;
/// A step's own error is most often the command's, already there.
const MAX_STEP_ERROR_CHARS: usize = 300;

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub state: crate::engine::status::State,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Cut to [`MAX_STEP_ERROR_CHARS`]: the log has it whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CommandResult {
    pub exit_code: i32,
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
    pub steps: Vec<StepResult>,
    /// By step, then output name; sensitive outputs are never here.
    pub outputs: Map<String, Value>,
    /// `<step>.<output>` of each non-sensitive output that did not fit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs_left_out: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The identity of the code in the root (none before any was put in place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The result of a command that ended with `ended` (its exit code, or its error), over the
/// journal under `root`; `loaded` is None when the workflow or params could not be loaded.
pub fn collect(
    loaded: Option<&Loaded>,
    root: &Path,
    ended: std::result::Result<i32, &Error>,
) -> CommandResult {
    let mask = |text: &str| match loaded {
        Some(l) => l.redactor.mask(text).into_owned(),
        None => crate::base::secrets::mask_url_userinfo(text.into()).into_owned(),
    };
    let (exit_code, error, failure) = match ended {
        Ok(code) => (code, None, None),
        Err(e) => (
            e.exit_code(),
            Some(cut(&mask(&e.to_string()))),
            e.failure_kind(),
        ),
    };
    let mut result = CommandResult {
        exit_code,
        error,
        failure,
        steps: Vec::new(),
        outputs: Map::new(),
        outputs_left_out: Vec::new(),
        note: None,
        code: crate::root::source::applied(&Journal::at(root)).and_then(|r| r.identity),
    };
    let Some(loaded) = loaded else {
        return result;
    };
    if let Ok(report) = crate::engine::status::collect(loaded, root) {
        result.steps = report
            .steps
            .into_iter()
            .map(|row| StepResult {
                name: row.step,
                state: row.state,
                attempts: row.attempts,
                failure: row.failure,
                started_at: row.started_at,
                finished_at: row.finished_at,
                last_error: row
                    .last_error
                    .map(|e| cut_to(&mask(&e), MAX_STEP_ERROR_CHARS)),
            })
            .collect();
        result.fit_steps();
    }
    let journal = Journal::at(root);
    for step in &loaded.workflow.steps {
        let Ok(Some(marker)) = journal.marker(&step.name) else {
            continue;
        };
        for (name, value) in marker.outputs {
            if marker.sensitive.contains(&name) {
                continue;
            }
            let value = masked(&loaded.redactor, value);
            result.fit(&step.name, name, value);
        }
    }
    result
}

impl CommandResult {
    /// Makes the steps fit, with room for a few outputs: first without their errors, then
    /// without their times (a workflow of very many steps).
    fn fit_steps(&mut self) {
        const ROOM: usize = MAX_BYTES * 3 / 4;
        if self.size() > ROOM {
            self.steps.iter_mut().for_each(|s| s.last_error = None);
        }
        if self.size() > ROOM {
            for step in &mut self.steps {
                step.started_at = None;
                step.finished_at = None;
            }
        }
    }

    /// Adds one output if the result still fits in [`MAX_BYTES`] with it, or names it as
    /// left out (the names themselves stop once even they would not fit).
    fn fit(&mut self, step: &str, name: String, value: Value) {
        const NOTE: &str = "outputs left out to keep the result within 4 KiB: `terraform output` in the step's workspace has them";
        let entry = self
            .outputs
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(name.clone(), value);
        }
        if self.size() <= MAX_BYTES {
            return;
        }
        if let Some(Value::Object(map)) = self.outputs.get_mut(step) {
            map.remove(&name);
            if map.is_empty() {
                self.outputs.remove(step);
            }
        }
        self.note = Some(NOTE.to_string());
        self.outputs_left_out.push(format!("{step}.{name}"));
        if self.size() > MAX_BYTES {
            self.outputs_left_out.pop();
        }
    }

    pub fn size(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }

    /// Writes the result to `path` in place: a termination-message path is a file mounted
    /// by the kubelet, which a rename could not replace.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    }
}

/// `value` with every secret the redactor knows masked; a value that had one becomes its
/// masked JSON text.
fn masked(redactor: &Redactor, value: Value) -> Value {
    let text = value.to_string();
    match redactor.mask(&text) {
        std::borrow::Cow::Borrowed(_) => value,
        std::borrow::Cow::Owned(masked) => {
            serde_json::from_str(&masked).unwrap_or(Value::String(masked))
        }
    }
}

fn cut(text: &str) -> String {
    cut_to(text, MAX_ERROR_CHARS)
}

fn cut_to(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> CommandResult {
        CommandResult {
            exit_code: 0,
            error: None,
            failure: None,
            steps: Vec::new(),
            outputs: Map::new(),
            outputs_left_out: Vec::new(),
            note: None,
            code: None,
        }
    }

    #[test]
    fn outputs_that_do_not_fit_are_named_and_the_result_stays_within_4_kib() {
        let mut result = empty();
        result.fit("base", "small".into(), Value::from("x"));
        result.fit("base", "big".into(), Value::from("y".repeat(5000)));
        result.fit("top", "after".into(), Value::from(1));
        assert_eq!(result.outputs["base"]["small"], "x");
        assert_eq!(result.outputs["top"]["after"], 1);
        assert!(result.outputs["base"].get("big").is_none());
        assert_eq!(result.outputs_left_out, ["base.big"]);
        assert!(result.note.is_some());
        for i in 0..2000 {
            result.fit("many", format!("output_{i}"), Value::from("z".repeat(20)));
        }
        assert!(result.size() <= MAX_BYTES, "{}", result.size());
    }

    #[test]
    fn many_steps_fit_without_their_errors_then_their_times() {
        let mut result = empty();
        let steps = |n: usize| {
            (0..n)
                .map(|i| StepResult {
                    name: format!("step-{i}"),
                    state: crate::engine::status::State::Failed,
                    attempts: 1,
                    failure: None,
                    started_at: Some("2026-01-01T00:00:00Z".into()),
                    finished_at: Some("2026-01-01T00:00:01Z".into()),
                    last_error: Some("e".repeat(MAX_STEP_ERROR_CHARS)),
                })
                .collect()
        };
        result.steps = steps(40);
        result.fit_steps();
        assert!(result.steps.iter().all(|s| s.last_error.is_none()));
        assert!(result.size() <= MAX_BYTES * 3 / 4, "{}", result.size());
        assert_eq!(result.steps.len(), 40);
        // A few steps keep theirs.
        result.steps = steps(3);
        result.fit_steps();
        assert!(result.steps[0].last_error.is_some());
        assert!(result.steps[0].started_at.is_some());
    }

    #[test]
    fn a_long_error_is_cut() {
        assert_eq!(cut("short"), "short");
        assert_eq!(cut(&"é".repeat(2000)).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
