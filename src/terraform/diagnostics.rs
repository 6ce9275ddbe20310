//! Terraform's diagnostics as it prints them without `-json`: which of its lines opens an
//! error, and the first error with its detail, the reason a failure gives.

use crate::process::{ErrorLines, Options};

/// How terraform is run: so named in the log, its `Error:` lines logged as errors and the
/// first of them, with its detail, kept as the reason a failure gives.
pub fn options<'a>() -> Options<'a> {
    Options {
        name: "terraform",
        errors: Some(Box::new(FirstError::default())),
        ..Options::default()
    }
}

/// A line of terraform's diagnostics with its box drawing (printed in colour mode) taken off.
fn unboxed(line: &str) -> &str {
    let line = line.trim_end();
    match line.strip_prefix(['│', '╷', '╵']) {
        Some(rest) => rest.strip_prefix(' ').unwrap_or(rest),
        None => line,
    }
}

/// Whether terraform opens an error diagnostic with this line.
pub fn is_error_line(line: &str) -> bool {
    // Most lines tell at their first byte after spaces: neither `E` nor a box or other
    // character outside ASCII.
    match line.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'E' | 0x80..) => unboxed(line).trim_start().starts_with("Error:"),
        _ => false,
    }
}

/// Collects terraform's first error diagnostic: the `Error:` summary, then its detail (the
/// unindented paragraphs after the indented source context), up to the next diagnostic.
#[derive(Default)]
pub struct FirstError {
    lines: Vec<String>,
    open: bool,
    done: bool,
}

impl FirstError {
    /// More than this is not a reason any more, it is a log.
    const MAX_CHARS: usize = 600;

    /// Whether it takes a line that opens an error diagnostic or not.
    fn wants(&self, error: bool) -> bool {
        !self.done && (self.open || error)
    }

    /// Takes a line, and whether it opens an error diagnostic.
    fn feed(&mut self, line: &str, error: bool) {
        if !self.wants(error) {
            return;
        }
        let text = unboxed(line);
        if !self.open {
            self.open = true;
            self.lines.push(text.trim().to_string());
            return;
        }
        let diagnostic_ends = text.starts_with("Error:")
            || text.starts_with("Warning:")
            || line.trim_start().starts_with('╵');
        if diagnostic_ends {
            self.done = true;
        } else if !text.is_empty() && !text.starts_with(char::is_whitespace) {
            self.lines.push(text.trim().to_string());
        }
        if self.lines.iter().map(String::len).sum::<usize>() > Self::MAX_CHARS {
            self.done = true;
        }
    }

    fn finish(self) -> Option<String> {
        let (summary, detail) = self.lines.split_first()?;
        let mut text = summary.clone();
        if !detail.is_empty() {
            text.push_str(": ");
            text.push_str(&detail.join(" "));
        }
        if text.len() > Self::MAX_CHARS {
            let mut end = Self::MAX_CHARS;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        Some(text)
    }
}

impl ErrorLines for FirstError {
    fn opens(&self, line: &str) -> bool {
        is_error_line(line)
    }

    fn wants(&self, opens: bool) -> bool {
        FirstError::wants(self, opens)
    }

    fn feed(&mut self, line: &str, opens: bool) {
        FirstError::feed(self, line, opens)
    }

    fn first(&mut self) -> Option<String> {
        std::mem::take(self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Finished;

    fn first_error(lines: &[&str]) -> Option<String> {
        let mut first = FirstError::default();
        for line in lines {
            first.feed(line, is_error_line(line));
        }
        first.finish()
    }

    #[test]
    fn the_reason_is_terraforms_first_error_with_its_detail() {
        let boxed = [
            "Initializing the backend...",
            "╷",
            "│ Error: Backend initialization required",
            "│ ",
            "│   on main.tf line 3:",
            "│    3:   backend \"pg\" {}",
            "│ ",
            "│ Reason: the backend changed.",
            "│ Run terraform init.",
            "╵",
            "╷",
            "│ Error: a second one",
            "╵",
        ];
        let finished = Finished {
            status: std::process::Command::new("false").status().unwrap(),
            stdout: vec![],
            tail: vec!["╵".into()],
            first_error: first_error(&boxed),
        };
        assert_eq!(
            finished.reason(),
            "exit code 1: Error: Backend initialization required: Reason: the backend changed. Run terraform init."
        );
        let plain = [
            "terraform_data.a (local-exec): boom",
            "",
            "Error: local-exec provisioner error",
            "",
            "  with terraform_data.a,",
            "  on main.tf line 2, in resource \"terraform_data\" \"a\":",
            "   2:   provisioner \"local-exec\" {",
            "",
            "Error running command 'exit 3': exit status 3. Output: boom",
            "",
        ];
        assert_eq!(
            first_error(&plain).unwrap(),
            "Error: local-exec provisioner error: Error running command 'exit 3': exit status 3. Output: boom"
        );
        assert_eq!(first_error(&["usage: terraform ...", "  -flag"]), None);
    }
}
