//! The engine's log: every line is a `tracing` event, written to stderr by
//! `tracing-subscriber`, as text for people or as its JSON lines (`--log-format json`). Each
//! line is masked whole on its way out, fields included, so no event can carry a secret past
//! the writer. `run` and `destroy` work inside a `command` span naming the root, and each step
//! inside a `step` span, which a subscriber of a caller's own gets too.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::secrets::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The target of a child's ordinary lines, which the writer may hold back until [`flush`].
pub const CHILD_TARGET: &str = "bootstrapper::log::child";

/// Who an event speaks for: the engine, a line a child process printed, or a report
/// printed as it is (the error a command ends with, in text).
const ENGINE: &str = "bootstrapper";
const CHILD: &str = "terraform";
const AS_IS: &str = "report";

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

    /// One line that a child process printed. It may wait in the log's buffer until
    /// [`flush`].
    pub fn child_line(&self, step: &str, line: &str) {
        tracing::event!(target: CHILD_TARGET, Level::INFO, source = CHILD, step, "{line}");
    }

    /// A line with which a child process reports an error.
    pub fn child_error(&self, step: &str, line: &str) {
        emit(Level::ERROR, CHILD, Some(step), line);
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
        None => out(&crate::secrets::mask_url_userinfo(text.into())),
    }
}

/// Installs the subscriber that writes every event to stderr in `format`. A second call
/// (a caller that installed its own) leaves the first in place.
pub fn init(format: Format) {
    let builder = tracing_subscriber::fmt()
        .with_writer(MaskedStderr)
        .with_max_level(Level::INFO);
    let _ = match format {
        Format::Text => {
            tracing::subscriber::set_global_default(builder.event_format(Text).finish())
        }
        Format::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_target(false)
                .finish(),
        ),
    };
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
        MaskedLine { held: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        MaskedLine {
            held: meta.target() == CHILD_TARGET,
        }
    }
}

struct MaskedLine {
    held: bool,
}

impl Write for MaskedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::str::from_utf8(buf) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(buf),
        };
        mask_into(&text, &mut |masked| {
            pending.extend_from_slice(masked.as_bytes())
        });
        if !self.held || pending.len() >= PENDING_BYTES {
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
    // A log line that cannot be written has nowhere else to go.
    let _ = io::stderr().lock().write_all(pending);
    pending.clear();
    if pending.capacity() > 2 * PENDING_BYTES {
        pending.shrink_to(PENDING_BYTES);
    }
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
            (Some(CHILD), Some(step)) => writeln!(writer, "[{step}] {}", fields.message),
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
            logger.child_line("network", "token hunter2-secret here");
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
