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
use crate::root::journal::{Attempt, AttemptState, Journal, Marker};
use crate::root::lock::{self, Holder};
use crate::root::source;
use crate::workflow::load::Loaded;
use crate::workflow::render::{Outputs, RenderedStep};

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
        let mut row = Row::new(&step.name, attempt.as_ref());
        // Inputs can be compared only when every output they use is known.
        let current = renderer.render_step(index, &outputs, false).ok();
        if let Some(marker) = marker {
            outputs.insert(step.name.clone(), marker.outputs.clone());
            row.applied(marker, current, identity.as_deref(), &journal)?;
        }
        if let Some(attempt) = &attempt {
            let in_flight = holder.is_some() && attempt.state == AttemptState::Running;
            row.attempted(attempt, in_flight, marker.is_some());
        }
        // A destroy's own progress overrides what the apply left.
        row.destroyed(&journal, holder.is_some())?;
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

impl Row {
    /// A step not applied yet, as far as its last attempt says.
    fn new(step: &str, attempt: Option<&Attempt>) -> Row {
        Row {
            step: step.to_string(),
            state: State::Pending,
            attempts: attempt.map_or(0, |a| a.attempts),
            started_at: None,
            finished_at: None,
            duration_seconds: None,
            changed_inputs: Vec::new(),
            last_error: attempt.and_then(|a| a.last_error.clone()),
            failure: attempt.and_then(|a| a.failure),
        }
    }

    /// The step has a marker: done, or changed if it is rendered now (`current`) with other
    /// inputs than it was applied with.
    fn applied(
        &mut self,
        marker: &Marker,
        current: Option<RenderedStep>,
        identity: Option<&str>,
        journal: &Journal,
    ) -> Result<()> {
        self.state = State::Done;
        self.started_at = Some(clock::format(marker.started_at));
        self.finished_at = Some(clock::format(marker.finished_at));
        self.duration_seconds = Some((marker.finished_at - marker.started_at).as_seconds_f64());
        self.attempts = self.attempts.max(marker.attempts);
        if let Some(rendered) = current {
            let inputs = rendered.inputs(identity);
            let decided = decide::apply(
                &rendered,
                &inputs,
                Some(marker),
                &Default::default(),
                journal,
            )?;
            if decided.decision == Decision::RunAgain {
                self.state = State::Changed;
                self.changed_inputs = decided.changed_inputs;
            }
        }
        Ok(())
    }

    /// What the step's last apply attempt says: running now (`in_flight`: the lock is held),
    /// or failed, unless a marker (`applied`) says it was done after all.
    fn attempted(&mut self, attempt: &Attempt, in_flight: bool, applied: bool) {
        match attempt.state {
            AttemptState::Running if in_flight => {
                self.state = State::Running;
                self.started_at = Some(clock::format(attempt.started_at));
                self.finished_at = None;
                self.duration_seconds = Some((clock::now() - attempt.started_at).as_seconds_f64());
            }
            AttemptState::Running if !applied => {
                self.state = State::Failed;
                self.last_error = Some(format!(
                    "interrupted: the process running attempt {} (pid {}) stopped before it finished",
                    attempt.attempts, attempt.pid
                ));
            }
            AttemptState::Failed if !applied => self.state = State::Failed,
            _ => {}
        }
    }

    /// What a destroy did to the step, if one reached it; `locked`: whether the lock is held.
    fn destroyed(&mut self, journal: &Journal, locked: bool) -> Result<()> {
        let destroy_attempt = journal.destroy_attempt(&self.step)?;
        if let Some(destroyed) = journal.destroyed(&self.step)? {
            self.state = State::Destroyed;
            self.attempts = destroyed.attempts;
            self.started_at = Some(clock::format(destroyed.started_at));
            self.finished_at = Some(clock::format(destroyed.finished_at));
            self.duration_seconds =
                Some((destroyed.finished_at - destroyed.started_at).as_seconds_f64());
            self.last_error = None;
            self.failure = None;
        } else if let Some(attempt) = destroy_attempt {
            self.attempts = attempt.attempts;
            self.failure = attempt.failure;
            self.last_error = attempt.last_error.map(|e| format!("destroy: {e}"));
            self.state = match attempt.state {
                AttemptState::Running if locked => State::Running,
                AttemptState::Running | AttemptState::Failed => State::Failed,
                AttemptState::Succeeded => self.state,
            };
            if attempt.state == AttemptState::Running && !locked {
                self.last_error = Some(format!(
                    "destroy interrupted: attempt {} (pid {}) stopped before it finished",
                    attempt.attempts, attempt.pid
                ));
            }
        }
        Ok(())
    }
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
