//! The plan printed: as text for a person, or as one JSON document for a program.

use std::fmt::Write as _;
use std::io::Write;

use serde_json::Value;

use super::model::{CommandKind, Decision, Plan, StepPlan};
use crate::workflow::load::Loaded;

/// Prints the plan as text or as one JSON document; every secret is masked either way.
pub fn print(
    plan: &Plan,
    json: bool,
    loaded: &Loaded,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let text = if json {
        let mut text = serde_json::to_string_pretty(plan).expect("plans serialize");
        text.push('\n');
        text
    } else {
        render_text(plan)
    };
    out.write_all(loaded.redactor.mask(&text).as_bytes())
}

fn render_text(plan: &Plan) -> String {
    let mut s = String::new();
    let command = match plan.command {
        CommandKind::Run => "run",
        CommandKind::Destroy => "destroy",
    };
    header(&mut s, plan, command);
    code(&mut s, plan, command);
    for note in &plan.notes {
        let _ = writeln!(s, "note: {note}");
    }
    if let Some(blocked) = &plan.blocked {
        let _ = writeln!(s, "blocked: {blocked}");
    }
    order(&mut s, plan);
    for (i, step) in plan.steps.iter().enumerate() {
        step_text(&mut s, i, step);
    }
    summary(&mut s, plan);
    s
}

/// What is planned, where, and with which terraform.
fn header(s: &mut String, plan: &Plan, command: &str) {
    let _ = writeln!(
        s,
        "plan: what `bootstrapper {command}` would do now; nothing is run or written"
    );
    if plan.root_exists {
        let _ = writeln!(s, "root: {}", plan.root);
    } else {
        let _ = writeln!(
            s,
            "root: {} (does not exist: nothing applied yet)",
            plan.root
        );
    }
    let _ = writeln!(
        s,
        "terraform: {}{}",
        plan.terraform.path,
        if plan.terraform.found {
            ""
        } else {
            " (not found)"
        }
    );
}

/// The code: where it came from, or where the command would take it from.
fn code(s: &mut String, plan: &Plan, command: &str) {
    let code = &plan.code;
    match (&code.record, code.action) {
        (Some(record), _) => {
            let _ = writeln!(
                s,
                "code: {} ({} from {}{}, {})",
                code.dir,
                record.kind,
                record.origin,
                record
                    .git_ref
                    .as_deref()
                    .map(|r| format!(" at {r}"))
                    .unwrap_or_default(),
                record.identity.as_deref().unwrap_or("identity unknown")
            );
        }
        (None, "copy") => {
            let _ = writeln!(
                s,
                "code: {} does not exist: {command} would copy it from {}",
                code.dir,
                code.from.as_deref().unwrap_or("?")
            );
        }
        (None, "clone") => {
            let _ = writeln!(
                s,
                "code: {} does not exist: {command} would clone {}{}",
                code.dir,
                code.from.as_deref().unwrap_or("?"),
                code.git_ref
                    .as_deref()
                    .map(|r| format!(" at {r}"))
                    .unwrap_or_default()
            );
        }
        (None, _) => {
            let _ = writeln!(s, "code: {} does not exist", code.dir);
        }
    }
    if let Some(note) = &code.note {
        let _ = writeln!(s, "  {note}");
    }
}

/// The waves, and what each step waits for.
fn order(s: &mut String, plan: &Plan) {
    let _ = writeln!(
        s,
        "order (at most {} at once; a step starts when what it waits for is done):",
        plan.parallelism
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        let together = if wave.len() > 1 { " run together" } else { "" };
        let _ = writeln!(s, "  {}. {}{together}", i + 1, wave.join(", "));
    }
    for step in &plan.steps {
        let waits = match step.waits_for.as_slice() {
            [] => "nothing".to_string(),
            names => names.join(", "),
        };
        let _ = writeln!(s, "  {}: waits for {waits}", step.step);
    }
}

/// Step number `i + 1`: its decision and, if it runs, everything it would run with.
fn step_text(s: &mut String, i: usize, step: &StepPlan) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{}. {}: {} ({})",
        i + 1,
        step.step,
        step.decision.as_str(),
        step.reason
    );
    if let Some(problem) = &step.problem {
        let _ = writeln!(s, "   problem: {problem}");
    }
    if step.decision == Decision::Blocked || step.decision == Decision::Skip {
        return;
    }
    if !step.unknown_outputs.is_empty() {
        let _ = writeln!(
            s,
            "   not known yet (placeholders below): {}",
            step.unknown_outputs.join(", ")
        );
    }
    let _ = writeln!(s, "   in {}", step.dir);
    if let Some(ws) = &step.workspace {
        let _ = writeln!(s, "   workspace: {ws}");
    }
    if !step.backend_config.is_empty() {
        let _ = writeln!(s, "   backend config:");
        for (k, v) in &step.backend_config {
            let _ = writeln!(s, "     {k} = {}", v.as_str().unwrap_or_default());
        }
    }
    if let Some(vars) = &step.vars_file {
        let _ = writeln!(s, "   writes {} (mode {}):", vars.path, vars.mode);
        for line in vars.content.lines() {
            let _ = writeln!(s, "     | {line}");
        }
    }
    for command in &step.commands {
        // The workspace is the one variable of a step's environment worth reading here.
        let workspace = match command.env.get("TF_WORKSPACE").and_then(Value::as_str) {
            Some(ws) => format!("TF_WORKSPACE={} ", shell_words(&[ws.to_string()])),
            None => String::new(),
        };
        let _ = writeln!(s, "   $ {workspace}{}", shell_words(&command.argv));
    }
}

/// How many steps would get each decision.
fn summary(s: &mut String, plan: &Plan) {
    let count = |d: Decision| plan.steps.iter().filter(|s| s.decision == d).count();
    let _ = writeln!(s);
    match plan.command {
        CommandKind::Run => {
            let _ = writeln!(
                s,
                "{} to run, {} to run again, {} to run again if changed, {} skipped{}",
                count(Decision::Run),
                count(Decision::RunAgain),
                count(Decision::RunAgainIfChanged),
                count(Decision::Skip),
                if plan.blocked.is_some() {
                    ", all blocked"
                } else {
                    ""
                }
            );
        }
        CommandKind::Destroy => {
            let _ = writeln!(
                s,
                "{} to destroy, {} skipped",
                count(Decision::Destroy),
                count(Decision::Skip)
            );
        }
    }
}

/// An argv as a POSIX shell would need it typed, so a printed command can be copied and run:
/// only the display is quoted, the real command never meets a shell.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_what_a_shell_would_split_or_expand() {
        let argv: Vec<String> = [
            "terraform",
            "-backend-config=k=a b",
            "x;touch /tmp/p",
            "it's",
            "$(id)",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            shell_words(&argv),
            r#"terraform '-backend-config=k=a b' 'x;touch /tmp/p' 'it'\''s' '$(id)' ''"#
        );
    }
}
