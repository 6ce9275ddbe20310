//! The reason a child engine gives for its failure: the report it ends with (`error: …` and
//! its `  hint: …` lines in text, one `ERROR` event of its own in JSON), not whatever line
//! happens to come last.

use crate::process::ErrorLines;

/// Gathers an engine's final report from its output, in either log format.
#[derive(Default)]
pub struct EngineReport {
    lines: Vec<String>,
    full: bool,
}

impl EngineReport {
    /// More than this is not a reason any more, it is a log.
    const MAX_CHARS: usize = 600;

    /// The report's text if `line` opens one: the engine's own error event in JSON, or a line
    /// of its own that starts with `error:` in text (a child's lines there start with `[`).
    fn opening(line: &str) -> Option<String> {
        if line.starts_with("error: ") {
            return Some(line.to_string());
        }
        // Most lines are not even JSON errors: no parse for them.
        if !line.starts_with('{') || !line.contains(r#""ERROR""#) {
            return None;
        }
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let own_error = event["level"] == "ERROR" && event["source"] == "bootstrapper";
        own_error
            .then(|| event["message"].as_str().map(str::to_owned))
            .flatten()
    }

    fn push(&mut self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if self.full {
                return;
            }
            let line = line.strip_prefix("error: ").unwrap_or(line);
            self.lines.push(line.to_string());
            self.full = self.lines.iter().map(String::len).sum::<usize>() > Self::MAX_CHARS;
        }
    }
}

impl ErrorLines for EngineReport {
    fn opens(&self, line: &str) -> bool {
        Self::opening(line).is_some()
    }

    /// The report is the last thing an engine prints: from its first line on, every line is
    /// part of it (the hints, the next problems).
    fn wants(&self, opens: bool) -> bool {
        !self.full && (opens || !self.lines.is_empty())
    }

    fn feed(&mut self, line: &str, opens: bool) {
        match Self::opening(line).filter(|_| opens) {
            Some(text) => self.push(&text),
            // In JSON, lines between two reports' events are not part of either.
            None if line.starts_with('{') => {}
            None => self.push(line),
        }
    }

    fn first(&mut self) -> Option<String> {
        let text = std::mem::take(&mut self.lines).join("; ");
        if text.is_empty() {
            return None;
        }
        if text.len() <= Self::MAX_CHARS {
            return Some(text);
        }
        let mut end = Self::MAX_CHARS;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(format!("{}…", &text[..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lines: &[&str]) -> Option<String> {
        let mut report = EngineReport::default();
        for line in lines {
            let opens = report.opens(line);
            if report.wants(opens) {
                report.feed(line, opens);
            }
        }
        report.first()
    }

    #[test]
    fn the_reason_is_the_engines_error_with_its_hint_not_the_last_line() {
        let text = [
            "bootstrapper: info: namesvr: $ terraform apply",
            "[namesvr] Error: Invalid count argument",
            "error: params.json: cannot read the params file: No such file",
            "  hint: pass --params FILE",
        ];
        assert_eq!(
            report(&text).as_deref(),
            Some(
                "params.json: cannot read the params file: No such file; hint: pass --params FILE"
            )
        );
        let json = [
            r#"{"level":"ERROR","source":"terraform","step":"namesvr","message":"Error: Invalid count argument"}"#,
            r#"{"level":"ERROR","source":"bootstrapper","message":"error: the code is missing\n  hint: check `source.image_dir`"}"#,
        ];
        assert_eq!(
            report(&json).as_deref(),
            Some("the code is missing; hint: check `source.image_dir`")
        );
        assert_eq!(report(&["[namesvr] Error: x", "done"]), None);
        let long = format!("error: {}", "x".repeat(2000));
        assert!(report(&[&long]).unwrap().chars().count() <= 601);
    }
}
