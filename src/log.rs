//! The engine's log: its own events and terraform's streamed lines, on stderr, as text or
//! JSON lines, with every secret masked.

use std::io::Write;

use serde_json::json;

use crate::secrets::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

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

    /// An engine event, about a step or about the whole workflow.
    pub fn info(&self, step: Option<&str>, message: &str) {
        self.write("info", "bootstrapper", step, message);
    }

    pub fn warn(&self, step: Option<&str>, message: &str) {
        self.write("warn", "bootstrapper", step, message);
    }

    /// The error a command ends with.
    pub fn error(&self, step: Option<&str>, message: &str) {
        self.write("error", "bootstrapper", step, message);
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// One line that a child process printed.
    pub fn child_line(&self, step: &str, line: &str) {
        self.write("info", "terraform", Some(step), line);
    }

    /// A line with which a child process reports an error.
    pub fn child_error(&self, step: &str, line: &str) {
        self.write("error", "terraform", Some(step), line);
    }

    fn write(&self, level: &str, source: &str, step: Option<&str>, message: &str) {
        let message = self.redactor.mask(message);
        let line = match self.format {
            Format::Text => match (source, step) {
                ("terraform", Some(step)) => format!("[{step}] {message}\n"),
                (_, Some(step)) => format!("bootstrapper: {level}: {step}: {message}\n"),
                (_, None) => format!("bootstrapper: {level}: {message}\n"),
            },
            Format::Json => {
                let mut line = json!({
                    "time": crate::clock::now_rfc3339(),
                    "level": level,
                    "source": source,
                    "step": step,
                    "message": message,
                })
                .to_string();
                line.push('\n');
                line
            }
        };
        // One write per line, under stderr's lock, so lines from the two output readers
        // never interleave mid-line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
