//! `run`: check everything, take the lock, put the code in place, then apply every step that
//! is not done with its current inputs, in order, leaving a marker after each. The pieces
//! that `destroy` shares (preparing, one terraform step, retries) live here too.

use std::path::{Path, PathBuf};

use crate::clock::{self, Timestamp};
use crate::durable;
use crate::error::{Error, Problem, Problems, Result};
pub use crate::journal::Action;
use crate::journal::{Attempt, AttemptState, Journal, Marker, Tombstone};
use crate::load::{self, Loaded};
use crate::local_state::LocalState;
use crate::lock::Lock;
use crate::log::Logger;
use crate::process::{Command, Supervisor};
use crate::render::{self, Outputs, RenderedStep, VARS_FILE};
use crate::source;
use crate::terraform::{self, Terraform};
use crate::workflow::Retry;

/// Long enough to mean "until the holder lets go", short enough not to overflow an `Instant`.
const LOCK_WAIT_FOREVER: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Terraform leaves this in the step's directory when it could not upload the final state.
pub const ERRORED_STATE: &str = "errored.tfstate";

/// Everything a state-changing command needs.
pub struct Engine {
    pub loaded: Loaded,
    pub root: PathBuf,
    pub terraform: Terraform,
    pub supervisor: Supervisor,
}

/// What a finished `run` did.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub applied: Vec<String>,
    pub unchanged: Vec<String>,
    /// Set when the root was destroyed and `run` refused to apply.
    pub destroyed: Option<Tombstone>,
}

/// The state a command works with once every check has passed and the lock is held.
pub struct Prepared {
    pub journal: Journal,
    pub code: source::Code,
    pub recorded: load::Recorded,
    _lock: Lock,
}

impl Engine {
    pub fn logger(&self) -> &Logger {
        &self.supervisor.logger
    }

    /// Checks everything, takes the lock (with `take_lock`) and puts the code in place;
    /// nothing has run yet when this fails with an input error.
    pub fn prepare(&mut self, take_lock: impl FnOnce(&Path) -> Result<Lock>) -> Result<Prepared> {
        let journal = Journal::at(&self.root);
        let mut problems = Problems::default();
        match self.terraform.verify(&self.supervisor) {
            Ok(_) => {}
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

        let lock = take_lock(journal.dir())?;
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
        let mut dirs = vec![(None, code.to_path_buf())];
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
            dirs.push((Some(step), dir));
        }
        problems.extend(source::confinement_problems(&self.root, &dirs));
        problems.into_result()
    }

    /// Applies the workflow. With `wait_for_lock` (the entrypoint), a lock held by another
    /// process is waited for instead of failing: an entrypoint that exits restarts its
    /// container, and with it whatever was holding the lock there.
    pub fn run(&mut self, wait_for_lock: bool) -> Result<Summary> {
        let logger = self.logger().clone();
        let shutdown = self.supervisor.shutdown.clone();
        let prepared = self.prepare(|dir| {
            if !wait_for_lock {
                return Lock::acquire(dir, "run");
            }
            Lock::acquire_within(dir, "run --hold", LOCK_WAIT_FOREVER, |holder, first| {
                if first {
                    logger.info(None, &format!("waiting for the lock, held by {holder}"));
                }
                shutdown.requested().is_none()
            })
            .map_err(|e| match shutdown.requested() {
                Some(signal) => crate::signals::interrupted(signal),
                None => e,
            })
        })?;
        let Prepared {
            journal,
            code,
            recorded,
            ..
        } = &prepared;
        let mut summary = Summary::default();
        if let Some(tombstone) = journal.tombstone()? {
            self.logger().warn(None, &tombstone_message(&tombstone));
            summary.destroyed = Some(tombstone);
            return Ok(summary);
        }
        let renderer = self.loaded.renderer();
        let mut outputs = Outputs::new();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate() {
            self.supervisor.shutdown.check()?;
            let rendered =
                renderer
                    .render_step(index, &outputs, false)
                    .map_err(|p| Error::StepFailed {
                        step: step.name.clone(),
                        message: p.to_string(),
                    })?;
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
            let (started_at, attempts, (values, sensitive)) =
                self.with_retries(journal, &rendered.name, step.retry, Action::Apply, || {
                    self.terraform_step(&code.dir, &rendered, Action::Apply)
                        .map(|o| o.unwrap_or_default())
                })?;
            let marker = Marker {
                step: step.name.clone(),
                digest,
                inputs,
                outputs: values,
                sensitive,
                started_at,
                finished_at: clock::now(),
                attempts,
            };
            load::mask_sensitive(self.logger().redactor(), &marker);
            journal.write_marker(&marker)?;
            self.logger().info(
                Some(&step.name),
                &format!(
                    "applied in {} (attempt {attempts}); marker written",
                    clock::human((marker.finished_at - started_at).unsigned_abs())
                ),
            );
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

    /// Runs `op` until it succeeds, retrying with backoff, recording each attempt in the
    /// journal. Returns when the last attempt started, how many there were, and the result.
    pub fn with_retries<T>(
        &self,
        journal: &Journal,
        step: &str,
        retry: Retry,
        action: Action,
        mut op: impl FnMut() -> Result<T>,
    ) -> Result<(Timestamp, u32, T)> {
        crate::disk::ensure_room(&self.root, self.loaded.workflow.settings.min_free_space)?;
        let previous = journal.attempt_of(action, step)?;
        if let Some(prev) = previous
            .as_ref()
            .filter(|p| p.state == AttemptState::Running)
        {
            self.logger().warn(
                Some(step),
                &format!(
                    "attempt {} (started {}) was cut off before it finished; running it again",
                    prev.attempts,
                    clock::format(prev.started_at)
                ),
            );
        }
        let mut attempts = match &previous {
            Some(p) if p.state != AttemptState::Succeeded => p.attempts,
            _ => 0,
        };
        let mut retries_left = retry.retries;
        let mut retry_number = 0;
        loop {
            attempts += 1;
            let started_at = clock::now();
            let mut attempt = Attempt {
                state: AttemptState::Running,
                attempts,
                started_at,
                finished_at: None,
                last_error: None,
                pid: std::process::id(),
            };
            journal.write_attempt_of(action, step, &attempt)?;
            let result = op();
            attempt.finished_at = Some(clock::now());
            match result {
                Ok(value) => {
                    attempt.state = AttemptState::Succeeded;
                    journal.write_attempt_of(action, step, &attempt)?;
                    return Ok((started_at, attempts, value));
                }
                Err(e) => {
                    attempt.state = AttemptState::Failed;
                    let message = self.logger().redactor().mask(&e.to_string()).into_owned();
                    attempt.last_error = Some(message.clone());
                    journal.write_attempt_of(action, step, &attempt)?;
                    let retryable = matches!(e, Error::StepFailed { .. });
                    if !retryable || retries_left == 0 {
                        return Err(e);
                    }
                    retries_left -= 1;
                    retry_number += 1;
                    let delay = retry.delay_before(retry_number);
                    self.logger().warn(
                        Some(step),
                        &format!(
                            "attempt {attempts} failed: {message}; retrying in {} ({retries_left} retries left after that)",
                            clock::human(delay)
                        ),
                    );
                    if let Some(signal) = self.supervisor.shutdown.wait(Some(delay), true) {
                        return Err(crate::signals::interrupted(signal));
                    }
                }
            }
        }
    }

    /// One try at applying or destroying a step: writes its vars file, then init, workspace,
    /// a pending `errored.tfstate` push, and apply (with `output -json`) or destroy.
    pub fn terraform_step(
        &self,
        code: &Path,
        step: &RenderedStep,
        action: Action,
    ) -> Result<Option<terraform::Outputs>> {
        let cwd = code.join(&step.dir);
        let mut state = LocalState::of(&cwd, step.workspace.as_deref());
        match state.repair() {
            Ok(None) => {}
            Ok(Some(done)) => self.logger().warn(Some(&step.name), &done),
            Err(message) => {
                return Err(Error::StepFailed {
                    step: step.name.clone(),
                    message,
                })
            }
        }
        if let Some(vars) = &step.vars {
            let path = cwd.join(VARS_FILE);
            durable::write(&path, vars.as_bytes(), 0o600)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        for command in self.terraform.prepare_commands(step, &cwd) {
            self.run_command(step, &command, &mut state)?;
        }
        self.push_errored_state(step, &cwd, &mut state)?;
        if action == Action::Destroy {
            let destroy = self.terraform.destroy_command(step, &cwd);
            self.run_command(step, &destroy, &mut state)?;
            return Ok(None);
        }
        let apply = self
            .terraform
            .apply_commands(step, &cwd)
            .pop()
            .expect("apply is last");
        self.run_command(step, &apply, &mut state)?;
        let command = self.terraform.output_command(step, &cwd);
        let stdout = self.execute(step, &command, true, &mut state)?;
        terraform::parse_outputs(&stdout)
            .map(Some)
            .map_err(|message| Error::StepFailed {
                step: step.name.clone(),
                message,
            })
    }

    /// Terraform leaves `errored.tfstate` when its last state upload failed; the resources
    /// in it exist, so the backend must get it back before anything else runs.
    fn push_errored_state(
        &self,
        step: &RenderedStep,
        cwd: &Path,
        state: &mut LocalState,
    ) -> Result<()> {
        let errored = cwd.join(ERRORED_STATE);
        if !errored.exists() {
            return Ok(());
        }
        let set_aside = crate::local_state::set_aside_if_incomplete(&errored)
            .map_err(|e| Error::io(format!("cannot set {} aside", errored.display()), e))?;
        if let Some((kept, size)) = set_aside {
            self.logger().warn(
                Some(&step.name),
                &format!(
                    "terraform could not save the state of an earlier attempt: it left {} with no complete state in it ({size} bytes), so resources that attempt created may be recorded nowhere (check for them by hand); kept the file as {}, not pushing it",
                    errored.display(),
                    kept.display()
                ),
            );
            return Ok(());
        }
        self.logger().warn(
            Some(&step.name),
            &format!(
                "found {}, a state terraform could not save to its backend: pushing it first",
                errored.display()
            ),
        );
        self.run_command(
            step,
            &self.terraform.state_push_command(step, cwd, ERRORED_STATE),
            state,
        )?;
        let kept = cwd.join(format!(
            "{ERRORED_STATE}.pushed-{}",
            clock::now().unix_timestamp()
        ));
        std::fs::rename(&errored, &kept)
            .and_then(|_| durable::sync_dir(cwd))
            .map_err(|e| Error::io(format!("cannot rename {}", errored.display()), e))?;
        self.logger().info(
            Some(&step.name),
            &format!("pushed; kept the file as {}", kept.display()),
        );
        Ok(())
    }

    fn run_command(
        &self,
        step: &RenderedStep,
        command: &Command,
        state: &mut LocalState,
    ) -> Result<()> {
        self.execute(step, command, false, state).map(|_| ())
    }

    /// Runs one terraform command of `step`, keeping a copy of each complete local state
    /// it writes.
    fn execute(
        &self,
        step: &RenderedStep,
        command: &Command,
        capture: bool,
        state: &mut LocalState,
    ) -> Result<Vec<u8>> {
        self.supervisor.shutdown.check()?;
        if command.args.first().is_some_and(|a| a != "output") {
            crate::disk::ensure_room(&command.cwd, self.loaded.workflow.settings.min_free_space)?;
        }
        let mut warned = false;
        let mut watch = || {
            if let Err(e) = state.watch() {
                if !warned {
                    warned = true;
                    self.logger().warn(
                        Some(&step.name),
                        &format!(
                            "cannot keep a copy of {}: {e}; a kill now could not be repaired",
                            state.file().display()
                        ),
                    );
                }
            }
        };
        let finished = self
            .supervisor
            .run_watching(command, capture, &mut watch)
            .map_err(|e| Error::StepFailed {
                step: step.name.clone(),
                message: format!("cannot start {}: {e}", command.program.display()),
            })?;
        if let (Some(signal), false) = (self.supervisor.shutdown.requested(), finished.success()) {
            return Err(crate::signals::interrupted(signal));
        }
        if !finished.success() {
            let subcommand = command.args.first().map(String::as_str).unwrap_or("");
            return Err(Error::StepFailed {
                step: step.name.clone(),
                message: format!("`terraform {subcommand}` failed with {}", finished.reason()),
            });
        }
        Ok(finished.stdout)
    }
}

/// What `run` says when the root was destroyed.
pub fn tombstone_message(tombstone: &Tombstone) -> String {
    match tombstone.finished_at {
        Some(at) => format!(
            "this workflow was destroyed at {}; not applying it again. To bootstrap again, run `bootstrapper reset --all`, then `bootstrapper run`",
            clock::format(at)
        ),
        None => format!(
            "a destroy of this workflow began at {} and has not finished; not applying. Run `bootstrapper destroy` to finish it, or `bootstrapper reset --all` to bootstrap again",
            clock::format(tombstone.started_at)
        ),
    }
}
