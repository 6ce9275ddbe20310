//! The engine's log: every line is a `tracing` event, written to stderr by
//! `tracing-subscriber`, as text for people or as its JSON lines (`--log-format json`). Each
//! line is masked whole on its way out, fields included, so no event can carry a secret past
//! the writer. `run` and `destroy` work inside a `command` span naming the root, and each step
//! inside a `step` span, which a subscriber of a caller's own gets too.
//!
//! A child can print gigabytes: its lines go through [`ChildLines`], which formats and masks
//! them a batch at a time and writes each exactly as its own event would be written.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::base::secrets::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The target of a child's ordinary lines, which the writer may hold back until [`flush`].
const CHILD_TARGET: &str = "bootstrapper::base::log::child";
/// The target of the event that gives a batch of a child's lines their form: captured by the
/// writer, never written.
const TEMPLATE_TARGET: &str = "bootstrapper::base::log::template";
/// Where a line's text goes in that event: nothing that a formatter escapes or a mask finds.
const PLACEHOLDER: &str = "@@bootstrapper-child-line@@";

/// Who an event speaks for: the engine, a line a child process printed, or a report
/// printed as it is (the error a command ends with, in text).
const ENGINE: &str = "bootstrapper";
const CHILD: &str = "terraform";
const AS_IS: &str = "report";

/// What a child process is, for the `source` its lines are logged with: terraform under the
/// engine, an engine under the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Child {
    #[default]
    Terraform,
    Engine,
}

impl Child {
    fn source(self) -> &'static str {
        match self {
            Child::Terraform => CHILD,
            Child::Engine => "engine",
        }
    }
}

/// A handle for the engine's events, about a step or about the whole workflow.
#[derive(Debug, Clone)]
pub struct Logger {
    format: Format,
    redactor: Redactor,
}

impl Logger {
    pub fn new(format: Format, redactor: Redactor) -> Self {
        Logger { format, redactor }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn info(&self, step: Option<&str>, message: &str) {
        emit(Level::INFO, ENGINE, step, message);
    }

    pub fn warn(&self, step: Option<&str>, message: &str) {
        emit(Level::WARN, ENGINE, step, message);
    }

    /// The error a command ends with.
    pub fn error(&self, step: Option<&str>, message: &str) {
        emit(Level::ERROR, ENGINE, step, message);
    }

    /// A line with which a child process reports an error.
    pub fn child_error(&self, child: Child, step: &str, line: &str) {
        emit(Level::ERROR, child.source(), Some(step), line);
    }

    /// Text that people read as it is written (a list of problems with their hints); in
    /// JSON it is one event like any other.
    pub fn as_is(&self, level: Level, step: Option<&str>, text: &str) {
        emit(level, AS_IS, step, text);
    }
}

fn emit(level: Level, source: &str, step: Option<&str>, message: &str) {
    // `tracing`'s macros want the level and the set of fields as constants.
    macro_rules! event {
        ($level:expr) => {
            match step {
                Some(step) => tracing::event!($level, source, step, "{message}"),
                None => tracing::event!($level, source, "{message}"),
            }
        };
    }
    match level {
        Level::ERROR => event!(Level::ERROR),
        Level::WARN => event!(Level::WARN),
        Level::DEBUG => event!(Level::DEBUG),
        Level::TRACE => event!(Level::TRACE),
        _ => event!(Level::INFO),
    }
}

/// A provisioner that terraform's stream says printed a line.
type About = (String, String);

/// One line a child printed, or a provisioner's, as its own event; `message` is the line's
/// text, or the placeholder of a template.
fn child_event(
    child: Child,
    step: &str,
    about: Option<&About>,
    target_template: bool,
    message: &str,
) {
    let source = child.source();
    macro_rules! event {
        ($target:expr) => {
            match about {
                None => tracing::event!(target: $target, Level::INFO, source, step, "{message}"),
                Some((address, provisioner)) => tracing::event!(
                    target: $target,
                    Level::INFO,
                    source,
                    step,
                    event = "provision_progress",
                    address = address.as_str(),
                    provisioner = provisioner.as_str(),
                    "{address} ({provisioner}): {message}"
                ),
            }
        };
    }
    if target_template {
        event!(TEMPLATE_TARGET)
    } else {
        event!(CHILD_TARGET)
    }
}

/// A step's child output on its way to the log. Each line comes out exactly as its own event
/// would, but the formatter runs once per batch, on a template event whose message holds a
/// placeholder, and the mask runs once per batch over all of it: per line, either would cost
/// more than reading the line. Lines wait here until [`ChildLines::flush`], which the caller
/// calls at the end of each batch and before it logs anything else, so that the log keeps
/// the order in which things were printed.
pub struct ChildLines {
    child: Child,
    step: String,
    /// The provisioner the lines gathered speak for, if any.
    about: Option<About>,
    /// How the gathered lines are written: made at the first line (after a flush, for JSON,
    /// so that each batch has its own time); `Some(None)` when another subscriber than this
    /// module's writes the log, which gets one event per line.
    template: Option<Option<Template>>,
    /// Formatted lines, not masked yet.
    chunk: String,
}

/// A formatted event, cut where its message's text goes.
struct Template {
    prefix: String,
    suffix: String,
    json: bool,
}

impl ChildLines {
    /// The lines of a child that is `child`, about `step`.
    pub fn of(child: Child, step: &str) -> Self {
        ChildLines {
            child,
            step: step.to_string(),
            about: None,
            template: None,
            chunk: String::new(),
        }
    }

    /// A line the child printed: masked already where its ends count or the log does not
    /// mask what it writes (see [`mask_each_line`]); the rest is masked with the batch.
    pub fn line(&mut self, text: &str) {
        self.push(None, text);
    }

    /// A line of a provisioner's output read from terraform's stream, as for [`Self::line`].
    pub fn provisioner_line(&mut self, address: &str, provisioner: &str, output: &str) {
        self.push(Some((address, provisioner)), output);
    }

    fn push(&mut self, about: Option<(&str, &str)>, text: &str) {
        let same = match (&self.about, about) {
            (None, None) => true,
            (Some((a, p)), Some((address, provisioner))) => a == address && p == provisioner,
            _ => false,
        };
        if !same {
            self.flush();
            self.template = None;
            self.about = about.map(|(a, p)| (a.to_string(), p.to_string()));
        }
        let template = self
            .template
            .get_or_insert_with(|| template(self.child, &self.step, self.about.as_ref()));
        let Some(template) = template else {
            child_event(self.child, &self.step, self.about.as_ref(), false, text);
            return;
        };
        self.chunk.push_str(&template.prefix);
        if template.json {
            let quoted = self.chunk.len();
            // SAFETY: serde_json writes valid UTF-8, and the quotes taken off are ASCII.
            let bytes = unsafe { self.chunk.as_mut_vec() };
            let _ = serde_json::to_writer(&mut *bytes, text);
            bytes.remove(quoted);
            bytes.pop();
        } else {
            self.chunk.push_str(text);
        }
        self.chunk.push_str(&template.suffix);
        if self.chunk.len() >= PENDING_BYTES {
            self.flush();
        }
    }

    /// Hands the lines gathered to the log's writer, masked.
    pub fn flush(&mut self) {
        // Text has no time in it, and keeps its form; JSON gets its time anew.
        if !matches!(self.template, Some(Some(Template { json: false, .. }))) {
            self.template = None;
        }
        if self.chunk.is_empty() {
            return;
        }
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        mask_into(&self.chunk, &mut |masked| {
            if pending.is_empty() {
                // Nothing before it to keep the order of: no copy.
                write_bytes(masked.as_bytes());
            } else {
                pending.extend_from_slice(masked.as_bytes());
                write_out(&mut pending);
            }
        });
        self.chunk.clear();
    }
}

impl Drop for ChildLines {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    /// The template event being formatted on this thread.
    static CAPTURED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Whether a child's line must be masked on its own before it is logged: where the ends of a
/// line count (the parts of a secret holding whitespace), or where the installed subscriber
/// is not this module's, which masks all it writes (a caller's own masks nothing).
pub fn mask_each_line(redactor: &Redactor) -> bool {
    redactor.has_parts()
        || !tracing::dispatcher::get_default(|d| d.downcast_ref::<MaskedStderr>().is_some())
}

/// The form of a child's line, from an event formatted by the installed subscriber; `None`
/// when that is not this module's.
fn template(child: Child, step: &str, about: Option<&About>) -> Option<Template> {
    let json = tracing::dispatcher::get_default(|d| {
        d.downcast_ref::<MaskedStderr>()
            .map(|_| d.downcast_ref::<Text>().is_none())
    })?;
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    child_event(child, step, about, true, PLACEHOLDER);
    let text = String::from_utf8(CAPTURED.with(|c| c.borrow_mut().take())?).ok()?;
    let (prefix, suffix) = text.split_once(PLACEHOLDER)?;
    if suffix.contains(PLACEHOLDER) {
        return None;
    }
    Some(Template {
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
        json,
    })
}

/// The secrets every written line is masked with; URL credentials are masked always.
static MASK: RwLock<Option<Redactor>> = RwLock::new(None);

/// Masks every line written from now on with `redactor` (which may still learn secrets).
pub fn mask_with(redactor: &Redactor) {
    *MASK.write().unwrap_or_else(|e| e.into_inner()) = Some(redactor.clone());
}

#[cfg(test)]
fn mask(text: &str) -> String {
    mask_into(text, &mut |masked| masked.to_string())
}

/// `text` masked, handed to `out` without a copy when nothing in it is secret.
fn mask_into<T>(text: &str, out: &mut dyn FnMut(&str) -> T) -> T {
    match &*MASK.read().unwrap_or_else(|e| e.into_inner()) {
        Some(redactor) => out(&redactor.mask(text)),
        None => out(&crate::base::secrets::mask_url_userinfo(text.into())),
    }
}

/// Installs the subscriber that writes every event to stderr in `format`. A second call
/// (a caller that installed its own) leaves the first in place.
pub fn init(format: Format) {
    let _ = tracing::dispatcher::set_global_default(subscriber(format));
}

fn subscriber(format: Format) -> tracing::Dispatch {
    let builder = tracing_subscriber::fmt()
        .with_writer(MaskedStderr)
        .with_max_level(Level::INFO);
    match format {
        Format::Text => builder.event_format(Text).finish().into(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_target(false)
            .finish()
            .into(),
    }
}

/// Stderr, each formatted event masked and written in one piece, so that lines from the two
/// output readers of a child never interleave mid-line. A child's ordinary lines gather in
/// [`PENDING`] and go out in one write per batch: a write per line would cost more than all the
/// rest of logging it. Any other event writes what is pending before itself, keeping the order.
struct MaskedStderr;

/// Whole masked lines not written yet, at most about [`PENDING_BYTES`].
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const PENDING_BYTES: usize = 64 * 1024;

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedLine;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine::Line { held: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if meta.target() == TEMPLATE_TARGET {
            return MaskedLine::Template;
        }
        MaskedLine::Line {
            held: meta.target() == CHILD_TARGET,
        }
    }
}

enum MaskedLine {
    Line {
        held: bool,
    },
    /// A child line's template, kept for [`ChildLines`].
    Template,
}

impl Write for MaskedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let held = match self {
            MaskedLine::Template => {
                CAPTURED.with(|c| {
                    if let Some(captured) = c.borrow_mut().as_mut() {
                        captured.extend_from_slice(buf);
                    }
                });
                return Ok(buf.len());
            }
            MaskedLine::Line { held } => *held,
        };
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::str::from_utf8(buf) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(buf),
        };
        mask_into(&text, &mut |masked| {
            pending.extend_from_slice(masked.as_bytes())
        });
        if !held || pending.len() >= PENDING_BYTES {
            write_out(&mut pending);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        flush();
        Ok(())
    }
}

fn write_out(pending: &mut Vec<u8>) {
    write_bytes(pending);
    pending.clear();
    if pending.capacity() > 2 * PENDING_BYTES {
        pending.shrink_to(PENDING_BYTES);
    }
}

fn write_bytes(bytes: &[u8]) {
    #[cfg(test)]
    if tests::captured_here(bytes) {
        return;
    }
    // A log line that cannot be written has nowhere else to go.
    let _ = io::stderr().lock().write_all(bytes);
}

/// Writes the child's lines held back so far.
pub fn flush() {
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    if !pending.is_empty() {
        write_out(&mut pending);
    }
}

/// The text format: `bootstrapper: LEVEL: STEP: message` for the engine's own events,
/// `[STEP] line` for a child's output, and reports as they are.
struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            _ => "info",
        };
        match (fields.source.as_deref(), fields.step.as_deref()) {
            (Some(source), Some(step)) if source == CHILD || source == Child::Engine.source() => {
                writeln!(writer, "[{step}] {}", fields.message)
            }
            (Some(AS_IS), _) => writeln!(writer, "{}", fields.message),
            (_, Some(step)) => {
                writeln!(writer, "bootstrapper: {level}: {step}: {}", fields.message)
            }
            (_, None) => writeln!(writer, "bootstrapper: {level}: {}", fields.message),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    source: Option<String>,
    step: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "source" => self.source = Some(value.to_string()),
            "step" => self.step = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    thread_local! {
        /// What this thread's test writes to stderr through the installed writer.
        static STDERR: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }

    /// Keeps `bytes` when this thread's test is capturing what it writes.
    pub(super) fn captured_here(bytes: &[u8]) -> bool {
        STDERR.with(|out| match out.borrow_mut().as_mut() {
            Some(out) => {
                out.extend_from_slice(bytes);
                true
            }
            None => false,
        })
    }

    fn stderr_of(write: impl FnOnce()) -> String {
        STDERR.with(|out| *out.borrow_mut() = Some(Vec::new()));
        write();
        flush();
        let bytes = STDERR.with(|out| out.borrow_mut().take()).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_childs_lines_come_out_exactly_as_their_own_events_would() {
        let redactor = Redactor::default();
        redactor.add("hunter2-secret");
        mask_with(&redactor);
        let lines = [
            "plain",
            "",
            "quote \" backslash \\ tab \t control \u{1} escape \u{1b}[31m",
            "ünïcödé ✓",
            "a hunter2-secret here",
            PLACEHOLDER,
        ];
        let about = (
            "terraform_data.a[\"k\"]".to_string(),
            "local-exec".to_string(),
        );
        for format in [Format::Text, Format::Json] {
            let (one_by_one, batched) =
                tracing::dispatcher::with_default(&subscriber(format), || {
                    let _command = tracing::info_span!("command", root = "/pvc").entered();
                    let _step = tracing::info_span!("step", step = "hosts").entered();
                    let one_by_one = stderr_of(|| {
                        for line in lines {
                            child_event(Child::Terraform, "hosts", None, false, line);
                            child_event(Child::Terraform, "hosts", Some(&about), false, line);
                        }
                    });
                    let batched = stderr_of(|| {
                        let mut out = ChildLines::of(Child::Terraform, "hosts");
                        for line in lines {
                            out.line(line);
                            out.provisioner_line(&about.0, &about.1, line);
                        }
                        out.flush();
                    });
                    (one_by_one, batched)
                });
            assert_eq!(one_by_one.lines().count(), 2 * lines.len(), "{one_by_one}");
            assert!(!batched.contains("hunter2-secret"), "{batched}");
            // Events a moment apart differ in their time, and only there.
            let timeless = |text: &str| -> Vec<String> {
                text.lines()
                    .map(|line| match line.split_once("\"timestamp\":\"") {
                        Some((head, rest)) => format!("{head}{}", &rest[rest.find('"').unwrap()..]),
                        None => line.to_string(),
                    })
                    .collect()
            };
            assert_eq!(timeless(&batched), timeless(&one_by_one), "{format:?}");
            if format == Format::Json {
                let first: serde_json::Value =
                    serde_json::from_str(batched.lines().nth(5).unwrap()).unwrap();
                assert_eq!(first["message"], "terraform_data.a[\"k\"] (local-exec): quote \" backslash \\ tab \t control \u{1} escape \u{1b}[31m");
                assert_eq!(first["spans"][0]["root"], "/pvc");
            }
        }
    }

    /// What a subscriber like the installed one writes, into a buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let masked = mask(&String::from_utf8_lossy(buf));
            self.0.lock().unwrap().extend_from_slice(masked.as_bytes());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn captured(format: Format, log: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let builder = tracing_subscriber::fmt().with_writer(writer);
        match format {
            Format::Text => {
                tracing::subscriber::with_default(builder.event_format(Text).finish(), log)
            }
            Format::Json => tracing::subscriber::with_default(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .finish(),
                log,
            ),
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn text_keeps_the_engine_and_child_formats_and_masks_every_field() {
        let redactor = Redactor::default();
        redactor.add("hunter2-secret");
        mask_with(&redactor);
        let logger = Logger::new(Format::Text, redactor);
        let text = captured(Format::Text, || {
            logger.info(Some("network"), "applying");
            logger.warn(None, "careful");
            let mut lines = ChildLines::of(Child::Terraform, "network");
            lines.line("token hunter2-secret here");
            lines.flush();
            logger.as_is(Level::ERROR, None, "error: x\n  hint: y");
            tracing::info!(
                source = "bootstrapper",
                step = "hunter2-secret",
                "in a field"
            );
        });
        assert_eq!(
            text,
            "bootstrapper: info: network: applying\n\
             bootstrapper: warn: careful\n\
             [network] token ******** here\n\
             error: x\n  hint: y\n\
             bootstrapper: info: ********: in a field\n"
        );

        let json = captured(Format::Json, || {
            let _step = tracing::info_span!("step", step = "hosts").entered();
            logger.info(Some("hosts"), "password hunter2-secret");
            tracing::info!(extra = "hunter2-secret", "a field of another name");
        });
        assert!(!json.contains("hunter2-secret"), "{json}");
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["message"], "password ********");
        assert_eq!(lines[0]["step"], "hosts");
        assert_eq!(lines[0]["source"], "bootstrapper");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["span"]["step"], "hosts");
        assert_eq!(lines[1]["extra"], "********");
    }
}
