//! `run`: check everything, take the lock, put the code in place, then apply every step that
//! is not done with its current inputs, in order, leaving a marker after each.

use std::path::{Path, PathBuf};

use crate::clock;
use crate::durable;
use crate::error::{Error, Problem, Problems, Result};
use crate::journal::{Attempt, AttemptState, Journal, Marker};
use crate::load::{self, Loaded};
use crate::lock::Lock;
use crate::process::Supervisor;
use crate::render::{self, Outputs, RenderedStep, VARS_FILE};
use crate::source;
use crate::terraform::{self, Terraform};

/// Everything a state-changing command needs.
pub struct Engine {
    pub loaded: Loaded,
    pub root: PathBuf,
    pub terraform: Terraform,
    pub supervisor: Supervisor,
}

/// What a finished `run` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub applied: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The state a run works with once every check has passed and the lock is held.
pub struct Prepared {
    pub journal: Journal,
    pub code: source::Code,
    pub recorded: load::Recorded,
    _lock: Lock,
}

impl Engine {
    fn logger(&self) -> &crate::log::Logger {
        &self.supervisor.logger
    }

    /// Checks everything, takes the lock and puts the code in place; nothing has run yet
    /// when this fails with an input error.
    pub fn prepare(&mut self, command: &str) -> Result<Prepared> {
        let journal = Journal::at(&self.root);
        let mut problems = Problems::default();
        match self.terraform.resolve() {
            Ok(program) => self.terraform.program = program,
            Err(Error::Input(p)) => problems.extend(p),
            Err(e) => return Err(e),
        }
        let outputs_so_far = load::read_journal(&self.loaded, &journal)
            .map(|r| r.outputs)
            .unwrap_or_default();
        let source = load::check(&self.loaded, &outputs_so_far)
            .map_err(|p| problems.extend(p))
            .ok();
        if let Err(e) = journal.create() {
            match e {
                Error::Input(p) => problems.extend(p),
                e => return Err(e),
            }
        }
        problems.into_result()?;
        let source = source.expect("no problems");

        let lock = Lock::acquire(journal.dir(), command)?;
        for torn in journal.remove_torn()? {
            self.logger().warn(
                None,
                &format!("removed {}, a journal file torn by a crash", torn.display()),
            );
        }
        // Read again under the lock: the journal is only stable now.
        let recorded = load::read_journal(&self.loaded, &journal).map_err(Error::Input)?;
        let code = source::ensure(&self.root, &source, &journal, self.logger())?;
        self.check_step_dirs(&code.dir, &recorded.outputs)?;
        Ok(Prepared {
            journal,
            code,
            recorded,
            _lock: lock,
        })
    }

    /// Every step's directory must exist in the code before the first step runs.
    fn check_step_dirs(&self, code: &Path, outputs: &Outputs) -> Result<()> {
        let renderer = self.loaded.renderer();
        let mut problems = Problems::default();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate() {
            let Ok(rendered) = renderer.render_step(index, outputs, true) else {
                continue;
            };
            if !rendered.unknown_outputs.is_empty() && step.dir.text.contains("steps") {
                continue;
            }
            let dir = code.join(&rendered.dir);
            if !dir.is_dir() {
                problems.push(
                    Problem::new(format!(
                        "its directory {} does not exist in the code",
                        dir.display()
                    ))
                    .at(step.dir.origin.clone())
                    .in_step(&step.name)
                    .hint("`dir` is relative to the code directory (`source.dir` under --root)"),
                );
            }
        }
        problems.into_result()
    }

    pub fn run(&mut self) -> Result<Summary> {
        let prepared = self.prepare("run")?;
        let Prepared {
            journal,
            code,
            recorded,
            ..
        } = &prepared;
        let renderer = self.loaded.renderer();
        let mut outputs = Outputs::new();
        let mut summary = Summary::default();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate() {
            self.supervisor.shutdown.check()?;
            let rendered = renderer
                .render_step(index, &outputs, false)
                .map_err(|p| self.step_failed(journal, &step.name, &p.to_string()))?;
            let inputs = rendered.inputs(code.record.identity.as_deref());
            let digest = render::digest(&inputs);
            match &recorded.markers[index] {
                Some(marker) if marker.digest == digest => {
                    self.logger()
                        .info(Some(&step.name), "done, inputs unchanged: skipped");
                    outputs.insert(step.name.clone(), marker.outputs.clone());
                    summary.unchanged.push(step.name.clone());
                    continue;
                }
                Some(marker) => self.logger().info(
                    Some(&step.name),
                    &format!(
                        "inputs changed since it was applied at {} ({}): applying again",
                        clock::format(marker.finished_at),
                        render::changed_inputs(&marker.inputs, &inputs).join(", ")
                    ),
                ),
                None => self.logger().info(Some(&step.name), "applying"),
            }
            let marker = self.apply_step(journal, &code.dir, &rendered, inputs, digest)?;
            outputs.insert(step.name.clone(), marker.outputs);
            summary.applied.push(step.name.clone());
        }
        self.logger().info(
            None,
            &format!(
                "workflow done: {} applied, {} unchanged",
                summary.applied.len(),
                summary.unchanged.len()
            ),
        );
        Ok(summary)
    }

    fn apply_step(
        &self,
        journal: &Journal,
        code: &Path,
        step: &RenderedStep,
        inputs: std::collections::BTreeMap<String, String>,
        digest: String,
    ) -> Result<Marker> {
        let previous = journal.attempt(&step.name)?;
        if let Some(prev) = previous
            .as_ref()
            .filter(|p| p.state == AttemptState::Running)
        {
            self.logger().warn(
                Some(&step.name),
                &format!(
                    "attempt {} (started {}) was cut off before it finished; running it again",
                    prev.attempts,
                    clock::format(prev.started_at)
                ),
            );
        }
        let attempts = match &previous {
            Some(p) if p.state != AttemptState::Succeeded => p.attempts + 1,
            _ => 1,
        };
        let started_at = clock::now();
        let mut attempt = Attempt {
            state: AttemptState::Running,
            attempts,
            started_at,
            finished_at: None,
            last_error: None,
            pid: std::process::id(),
        };
        journal.write_attempt(&step.name, &attempt)?;

        let result = self.apply_commands(code, step);
        attempt.finished_at = Some(clock::now());
        match result {
            Ok((outputs, sensitive)) => {
                let marker = Marker {
                    step: step.name.clone(),
                    digest,
                    inputs,
                    outputs,
                    sensitive,
                    started_at,
                    finished_at: clock::now(),
                    attempts,
                };
                load::mask_sensitive(self.logger().redactor(), &marker);
                journal.write_marker(&marker)?;
                attempt.state = AttemptState::Succeeded;
                journal.write_attempt(&step.name, &attempt)?;
                self.logger().info(
                    Some(&step.name),
                    &format!(
                        "applied in {} (attempt {attempts}); marker written",
                        clock::human((marker.finished_at - started_at).unsigned_abs())
                    ),
                );
                Ok(marker)
            }
            Err(e) => {
                attempt.state = AttemptState::Failed;
                attempt.last_error =
                    Some(self.logger().redactor().mask(&e.to_string()).into_owned());
                journal.write_attempt(&step.name, &attempt)?;
                Err(e)
            }
        }
    }

    /// Writes the vars file and runs init, workspace, apply and output for one step.
    fn apply_commands(
        &self,
        code: &Path,
        step: &RenderedStep,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<String>)> {
        let cwd = code.join(&step.dir);
        if let Some(vars) = &step.vars {
            let path = cwd.join(VARS_FILE);
            durable::write(&path, vars.as_bytes(), 0o600)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        for command in self.terraform.apply_commands(step, &cwd) {
            self.supervisor.shutdown.check()?;
            let finished = self
                .supervisor
                .run(&command, false)
                .map_err(|e| Error::StepFailed {
                    step: step.name.clone(),
                    message: format!("cannot start {}: {e}", command.program.display()),
                })?;
            if let (Some(signal), false) =
                (self.supervisor.shutdown.requested(), finished.success())
            {
                return Err(crate::signals::interrupted(signal));
            }
            if !finished.success() {
                return Err(Error::StepFailed {
                    step: step.name.clone(),
                    message: format!(
                        "`terraform {}` failed with {}",
                        command.args[0],
                        finished.reason()
                    ),
                });
            }
        }
        let command = self.terraform.output_command(step, &cwd);
        let finished = self
            .supervisor
            .run(&command, true)
            .map_err(|e| Error::StepFailed {
                step: step.name.clone(),
                message: format!("cannot start {}: {e}", command.program.display()),
            })?;
        if !finished.success() {
            return Err(Error::StepFailed {
                step: step.name.clone(),
                message: format!("`terraform output -json` failed with {}", finished.reason()),
            });
        }
        terraform::parse_outputs(&finished.stdout).map_err(|message| Error::StepFailed {
            step: step.name.clone(),
            message,
        })
    }

    fn step_failed(&self, journal: &Journal, step: &str, message: &str) -> Error {
        let _ = journal;
        Error::StepFailed {
            step: step.to_string(),
            message: message.to_string(),
        }
    }
}
