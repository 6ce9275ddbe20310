//! What is run, and how it ended.

use std::path::PathBuf;
use std::process::ExitStatus;

#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// The step whose output this is, for tagging its lines.
    pub label: String,
}

impl Command {
    pub fn display(&self) -> String {
        let mut text = self.program.display().to_string();
        for arg in &self.args {
            text.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            {
                text.push_str(&format!("{arg:?}"));
            } else {
                text.push_str(arg);
            }
        }
        text
    }
}

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The child's whole stdout, when it was captured instead of streamed.
    pub stdout: Vec<u8>,
    /// The last lines it printed, masked, to explain a failure.
    pub tail: Vec<String>,
    /// The first error the child reported, as the caller's [`super::ErrorLines`] gathered
    /// it, masked.
    pub first_error: Option<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// How it exited: `exit code 1`, `killed by signal 9`.
    pub fn exit(&self) -> String {
        match (
            self.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&self.status),
        ) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown exit".to_string(),
        }
    }

    /// A one-line reason for a failure: the first error the child reported if one was
    /// gathered, else its last line.
    pub fn reason(&self) -> String {
        let code = self.exit();
        let detail = self.first_error.as_deref().or_else(|| {
            self.tail
                .iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
        });
        match detail {
            Some(detail) => format!("{code}: {detail}"),
            None => code,
        }
    }
}
