//! `status`: one row per step (state, attempts, duration, last error), read from the journal
//! without taking the lock, so it works while `run` is busy; whether a finished step would
//! run again is [`crate::engine::decide`]'s answer.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::base::clock;
use crate::base::error::{Error, FailureKind, Result};
use crate::engine::core::Engine;
use crate::engine::decide::{self, Decision};
use crate::root::journal::{AttemptState, Journal};
use crate::root::lock::{self, Holder};
use crate::root::source;
use crate::workflow::load::Loaded;
use crate::workflow::render::Outputs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Done,
    Failed,
    /// Done, but its inputs changed since: the next run applies it again.
    Changed,
    /// Its resources were destroyed by `destroy`.
    Destroyed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Changed => "changed",
            State::Destroyed => "destroyed",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub step: String,
    pub state: State,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_seconds: Option<f64>,
    /// For a changed step, which inputs changed.
    pub changed_inputs: Vec<String>,
    pub last_error: Option<String>,
    /// What kind of failure the last error was, by terraform's diagnostics: `configuration`
    /// (not retried), `resource`, `no_diagnostics` (killed or crashed), `other`.
    pub failure: Option<FailureKind>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub root: String,
    /// When a destroy began and, once done, ended; `run` refuses to apply meanwhile.
    pub destroy: Option<crate::root::journal::Tombstone>,
    pub code: Option<source::Record>,
    /// Who holds the lock now, if anyone.
    pub lock: Option<Holder>,
    pub steps: Vec<Row>,
}

/// `status [--json]`: what the journal says, per step; reads only, takes no lock.
pub fn command(engine: &Engine, json: bool) -> Result<i32> {
    let report = collect(&engine.loaded, &engine.root)?;
    print(&report, json, &engine.loaded, &mut std::io::stdout().lock())
        .map_err(|e| Error::io("cannot write to stdout", e))?;
    Ok(crate::base::error::exit::OK)
}

pub fn collect(loaded: &Loaded, root: &Path) -> Result<Report> {
    let journal = Journal::at(root);
    let recorded = crate::root::recorded::read_journal(loaded, &journal).map_err(Error::Input)?;
    let holder = lock::holder(journal.dir());
    let code = loaded
        .renderer()
        .render_source()
        .ok()
        .and_then(|s| source::inspect(root, &s, &journal));
    let identity = code.as_ref().and_then(|c| c.record.identity.clone());
    let renderer = loaded.renderer();
    let mut outputs = Outputs::new();
    let mut rows = Vec::new();
    for (index, step) in loaded.workflow.steps.iter().enumerate() {
        let marker = &recorded.markers[index];
        let attempt = journal.attempt(&step.name)?;
        let in_flight = holder.is_some()
            && attempt
                .as_ref()
                .is_some_and(|a| a.state == AttemptState::Running);
        let mut row = Row {
            step: step.name.clone(),
            state: State::Pending,
            attempts: attempt.as_ref().map_or(0, |a| a.attempts),
            started_at: None,
            finished_at: None,
            duration_seconds: None,
            changed_inputs: Vec::new(),
            last_error: attempt.as_ref().and_then(|a| a.last_error.clone()),
            failure: attempt.as_ref().and_then(|a| a.failure),
        };
        // Inputs can be compared only when every output they use is known.
        let current = renderer.render_step(index, &outputs, false).ok();
        if let Some(marker) = marker {
            outputs.insert(step.name.clone(), marker.outputs.clone());
            row.state = State::Done;
            row.started_at = Some(clock::format(marker.started_at));
            row.finished_at = Some(clock::format(marker.finished_at));
            row.duration_seconds = Some((marker.finished_at - marker.started_at).as_seconds_f64());
            row.attempts = row.attempts.max(marker.attempts);
            if let Some(rendered) = current {
                let inputs = rendered.inputs(identity.as_deref());
                let decided = decide::apply(
                    &rendered,
                    &inputs,
                    Some(marker),
                    &Default::default(),
                    &journal,
                )?;
                if decided.decision == Decision::RunAgain {
                    row.state = State::Changed;
                    row.changed_inputs = decided.changed_inputs;
                }
            }
        }
        if let Some(attempt) = &attempt {
            match attempt.state {
                AttemptState::Running if in_flight => {
                    row.state = State::Running;
                    row.started_at = Some(clock::format(attempt.started_at));
                    row.finished_at = None;
                    row.duration_seconds =
                        Some((clock::now() - attempt.started_at).as_seconds_f64());
                }
                AttemptState::Running if marker.is_none() => {
                    row.state = State::Failed;
                    row.last_error = Some(format!(
                        "interrupted: the process running attempt {} (pid {}) stopped before it finished",
                        attempt.attempts, attempt.pid
                    ));
                }
                AttemptState::Failed if marker.is_none() => row.state = State::Failed,
                _ => {}
            }
        }
        // A destroy's own progress overrides what the apply left.
        let destroy_attempt = journal.destroy_attempt(&step.name)?;
        if let Some(destroyed) = journal.destroyed(&step.name)? {
            row.state = State::Destroyed;
            row.attempts = destroyed.attempts;
            row.started_at = Some(clock::format(destroyed.started_at));
            row.finished_at = Some(clock::format(destroyed.finished_at));
            row.duration_seconds =
                Some((destroyed.finished_at - destroyed.started_at).as_seconds_f64());
            row.last_error = None;
            row.failure = None;
        } else if let Some(attempt) = destroy_attempt {
            row.attempts = attempt.attempts;
            row.failure = attempt.failure;
            row.last_error = attempt.last_error.map(|e| format!("destroy: {e}"));
            row.state = match attempt.state {
                AttemptState::Running if holder.is_some() => State::Running,
                AttemptState::Running | AttemptState::Failed => State::Failed,
                AttemptState::Succeeded => row.state,
            };
            if attempt.state == AttemptState::Running && holder.is_none() {
                row.last_error = Some(format!(
                    "destroy interrupted: attempt {} (pid {}) stopped before it finished",
                    attempt.attempts, attempt.pid
                ));
            }
        }
        rows.push(row);
    }
    Ok(Report {
        root: root.display().to_string(),
        destroy: journal.tombstone()?,
        code: code.map(|c| c.record),
        lock: holder,
        steps: rows,
    })
}

pub fn print(
    report: &Report,
    json: bool,
    loaded: &Loaded,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mask = |s: &str| loaded.redactor.mask(s).into_owned();
    if json {
        let text = serde_json::to_string_pretty(report).expect("reports serialize");
        return writeln!(out, "{}", mask(&text));
    }
    match &report.lock {
        Some(holder) => writeln!(out, "root {}: locked by {holder}", report.root)?,
        None => writeln!(out, "root {}: idle", report.root)?,
    }
    if let Some(t) = &report.destroy {
        match t.finished_at {
            Some(at) => writeln!(
                out,
                "destroyed at {}: `run` idles until `bootstrapper reset --all`",
                clock::format(at)
            )?,
            None => writeln!(
                out,
                "destroy began at {} and has not finished: `bootstrapper destroy` resumes it",
                clock::format(t.started_at)
            )?,
        }
    }
    if let Some(code) = &report.code {
        writeln!(
            out,
            "code: {} from {} ({})",
            code.kind,
            mask(&code.origin),
            code.identity.as_deref().unwrap_or("identity unknown")
        )?;
    }
    let width = report
        .steps
        .iter()
        .map(|r| r.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:width$}  {:9}  {:8}  {:9}  LAST ERROR",
        "STEP", "STATE", "ATTEMPTS", "DURATION"
    )?;
    for row in &report.steps {
        let duration = row
            .duration_seconds
            .map(|s| clock::human(std::time::Duration::from_secs_f64(s.max(0.0))))
            .unwrap_or_else(|| "-".into());
        let mut note = row.last_error.clone().unwrap_or_else(|| "-".into());
        if let (Some(kind), Some(_)) = (row.failure, &row.last_error) {
            note = format!("[{} error] {note}", kind.as_str());
        }
        if row.state == State::Changed {
            note = format!("inputs changed: {}", row.changed_inputs.join(", "));
        } else if matches!(row.state, State::Done | State::Destroyed) {
            note = "-".into();
        }
        writeln!(
            out,
            "{:width$}  {:9}  {:8}  {:9}  {}",
            row.step,
            row.state.as_str(),
            row.attempts,
            duration,
            mask(&note)
        )?;
    }
    Ok(())
}
