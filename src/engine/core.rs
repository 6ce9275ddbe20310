//! What `run` and `destroy` share: checking everything and taking the lock before anything
//! runs, putting the code in place, retrying a step with backoff, and carrying out the
//! terraform commands that [`crate::engine::decide`] lists for a step.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use crate::base::clock::{self, Timestamp};
use crate::base::durable;
use crate::base::error::{Error, FailureKind, Problem, Problems, Result};
use crate::base::log::Logger;
use crate::engine::decide::{self, Role};
use crate::process::{Command, Options, Supervisor};
use crate::root::journal::{Action, Attempt, AttemptState, Journal};
use crate::root::lock::Lock;
use crate::root::source;
use crate::terraform::command::{self as terraform, Terraform};
use crate::terraform::diagnostics;
use crate::terraform::local_state::LocalState;
use crate::terraform::stream::Stream;
use crate::workflow::file::Retry;
use crate::workflow::load::{self, Loaded};
use crate::workflow::render::{Outputs, RenderedStep};

/// What the pg backend answers when the terraforms of steps running at once set it up in
/// the same database at the same moment: another holds its workspace-creation lock (one per
/// database, not waited for), or created the same table or sequence (`IF NOT EXISTS` does not
/// guard against a creator at the same moment, and the catalog refuses the second).
const BACKEND_RACES: [&str; 2] = [
    "Already locked for workspace creation",
    "duplicate key value violates unique constraint \"pg_",
];
/// How often a command that met such a race is run, in all.
const BACKEND_RACE_TRIES: u32 = 10;

/// Whether `error` is one of the [`BACKEND_RACES`], met while terraform set up its backend:
/// a failure about a resource may well name the same catalog (a provider creating a role
/// that exists), and is not run again here.
fn is_backend_race(error: &Error) -> bool {
    if let Error::TerraformFailed {
        kind: FailureKind::Resource,
        ..
    } = error
    {
        return false;
    }
    let message = error.to_string();
    BACKEND_RACES.iter().any(|race| message.contains(race))
}

/// What becomes of a command's stdout.
pub(super) enum Output<'a> {
    /// Logged line by line.
    Log,
    /// Kept whole, and returned.
    Capture,
    /// Terraform's `-json` events, read as they come.
    Stream(&'a mut Stream),
}

/// Everything a state-changing command needs.
pub struct Engine {
    pub loaded: Loaded,
    pub root: PathBuf,
    pub terraform: Terraform,
    pub supervisor: Supervisor,
    /// Held by the step whose `init` runs: steps running at once take turns. Terraform's
    /// plugin cache is not safe for `init`s at the same moment, and a backend set up by two
    /// at once can refuse one (see [`BACKEND_RACES`]).
    pub init_turn: std::sync::Mutex<()>,
}

/// The state a command works with once every check has passed and the lock is held.
pub struct Prepared {
    pub journal: Journal,
    pub code: source::Code,
    pub recorded: crate::root::recorded::Recorded,
    /// Every step, rendered once with the outputs the journal holds (placeholders for the
    /// others), for the command to use as long as those are the outputs it runs with.
    pub rendered: Vec<RenderedStep>,
    _lock: Lock,
}

impl Prepared {
    /// Step `index` rendered with `outputs`: the rendering made while preparing when nothing
    /// it could use has changed since, a new one otherwise.
    pub fn rendered<'a>(
        &'a self,
        loaded: &Loaded,
        index: usize,
        outputs: &Outputs,
    ) -> std::result::Result<Cow<'a, RenderedStep>, Problems> {
        load::render_again(
            loaded,
            &self.rendered,
            &self.recorded.outputs,
            index,
            outputs,
            false,
        )
    }
}

impl Engine {
    /// Hands each step's success to `done`, and returns the steps' failures as one error. A
    /// step left out while nothing failed was held back by a stop request: that is the error.
    pub fn settle<'a, T>(
        &self,
        outcomes: impl IntoIterator<Item = (&'a str, Option<Result<T>>)>,
        mut done: impl FnMut(String, T),
    ) -> Result<()> {
        let mut errors = Vec::new();
        let mut left_out = false;
        for (step, outcome) in outcomes {
            match outcome {
                Some(Ok(value)) => done(step.to_string(), value),
                Some(Err(e)) => errors.push(e),
                None => left_out = true,
            }
        }
        if let Some(e) = Error::of_steps(errors) {
            return Err(e);
        }
        if left_out {
            self.supervisor.shutdown.check()?;
        }
        Ok(())
    }

    pub fn logger(&self) -> &Logger {
        &self.supervisor.logger
    }

    /// Checks everything, takes the lock (with `take_lock`) and puts the code in place;
    /// nothing has run yet when this fails with an input error.
    /// With `forget_destroy`, a past destroy is forgotten under the lock (as `reset --all`
    /// does), so that the workflow is bootstrapped again in the same command.
    pub fn prepare(
        &mut self,
        take_lock: impl FnOnce(&Path) -> Result<Lock>,
        forget_destroy: bool,
    ) -> Result<Prepared> {
        let journal = Journal::at(&self.root);
        let mut problems = Problems::default();
        // A binary found good before, unchanged since, is not asked for its version again:
        // a restart with nothing to do starts no process.
        let record = journal.terraform_record();
        let known_good = self.terraform.resolve().ok().and_then(|program| {
            self.terraform.program = program;
            self.terraform.identity()
        });
        let known_good =
            known_good.filter(|id| fs::read_to_string(&record).ok().as_ref() == Some(id));
        let mut found_good = None;
        if known_good.is_none() {
            match self.terraform.verify(&self.supervisor) {
                Ok(_) => found_good = self.terraform.identity(),
                Err(Error::Input(p)) => problems.extend(p),
                Err(e) => return Err(e),
            }
        }
        let outputs_so_far = crate::root::recorded::read_journal(&self.loaded, &journal)
            .map(|r| r.outputs)
            .unwrap_or_default();
        let checked = load::check(&self.loaded, &outputs_so_far, load::Modules::Later)
            .map_err(|p| problems.extend(p))
            .ok();
        if let Err(e) = journal.create() {
            match e {
                Error::Input(p) => problems.extend(p),
                e => return Err(e),
            }
        }
        problems.into_result()?;
        let checked = checked.expect("no problems");

        let lock = take_lock(journal.dir())?;
        if let Some(id) = found_good {
            // Only a saving: without the record the next command asks terraform again.
            if let Err(e) = durable::write(&record, id.as_bytes(), 0o644) {
                self.logger()
                    .warn(None, &format!("cannot write {}: {e}", record.display()));
            }
        }
        for torn in journal.remove_torn()? {
            self.logger().warn(
                None,
                &format!("removed {}, a journal file torn by a crash", torn.display()),
            );
        }
        if forget_destroy && journal.tombstone()?.is_some() {
            let forgotten = journal.forget_all()?;
            self.logger().info(
                None,
                &format!(
                    "created again after a destroy: forgot {} step(s); bootstrapping from scratch",
                    forgotten.len()
                ),
            );
        }
        // Read again under the lock: the journal is only stable now.
        let recorded =
            crate::root::recorded::read_journal(&self.loaded, &journal).map_err(Error::Input)?;
        let rendered = if recorded.outputs == outputs_so_far {
            checked.steps
        } else {
            load::check(&self.loaded, &recorded.outputs, load::Modules::Later)
                .map_err(Error::Input)?
                .steps
        };
        let code = source::ensure(&self.root, &checked.source, &journal, self.logger())?;
        self.check_step_dirs(&code.dir, &rendered)?;
        Ok(Prepared {
            journal,
            code,
            recorded,
            rendered,
            _lock: lock,
        })
    }

    /// Every step's directory must exist in the code, and every step's tfvars must fit its
    /// module's variables, before the first step runs.
    fn check_step_dirs(&self, code: &Path, rendered: &[RenderedStep]) -> Result<()> {
        let mut problems = Problems::default();
        let mut dirs = vec![(None, code.to_path_buf())];
        for (step, rendered) in self.loaded.workflow.steps.iter().zip(rendered) {
            let dir = code.join(&rendered.dir);
            if !rendered.dir_unknown() && !dir.is_dir() {
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
            if !rendered.dir_unknown() {
                dirs.push((Some(step), dir));
            }
        }
        problems.extend(source::confinement_problems(&self.root, &dirs));
        problems.extend(load::check_variables(
            &self.loaded,
            code,
            rendered.iter().map(Some),
        ));
        problems.into_result()
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
        crate::root::disk::ensure_room(&self.root, self.loaded.workflow.settings.min_free_space)?;
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
                failure: None,
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
                    attempt.failure = e.failure_kind();
                    journal.write_attempt_of(action, step, &attempt)?;
                    if !e.retryable() {
                        if e.failure_kind() == Some(FailureKind::Configuration) && retries_left > 0
                        {
                            self.logger().warn(
                                Some(step),
                                "the error is in the configuration, which no retry can fix: not retrying",
                            );
                        }
                        return Err(e);
                    }
                    if retries_left == 0 {
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
                        return Err(crate::base::signals::interrupted(signal));
                    }
                }
            }
        }
    }

    /// One try at applying or destroying a step: writes its vars file, then runs the
    /// commands [`decide::commands`] lists for it as it stands now. Returns the outputs of an
    /// apply.
    pub fn terraform_step(
        &self,
        code: &Path,
        step: &RenderedStep,
        action: Action,
    ) -> Result<Option<terraform::Outputs>> {
        self.terraform_step_with(code, step, action, None)
    }

    /// [`Engine::terraform_step`], applying the saved plan `reviewed` (made by `diff`)
    /// instead of planning anew when one is given.
    pub fn terraform_step_with(
        &self,
        code: &Path,
        step: &RenderedStep,
        action: Action,
        reviewed: Option<&Path>,
    ) -> Result<Option<terraform::Outputs>> {
        let cwd = code.join(&step.dir);
        let mut state = self.step_files(step, &cwd)?;
        self.set_aside_errored_state(step, &cwd)?;
        let mut outputs = None;
        let mut streamed = None;
        let destroy = action == Action::Destroy;
        for mut planned in decide::commands(&self.terraform, step, &cwd, &cwd, destroy) {
            if let (Role::Apply, Some(plan)) = (planned.role, reviewed) {
                planned.command = self.terraform.apply_plan_command(step, &cwd, plan);
            }
            match planned.role {
                Role::PushErrored => {
                    // The resources in it exist, so the backend must get it back first.
                    self.logger().warn(
                        Some(&step.name),
                        &format!(
                            "found {}, a state terraform could not save to its backend: pushing it first",
                            cwd.join(decide::ERRORED_STATE).display()
                        ),
                    );
                    self.execute(step, &planned.command, Output::Log, &mut state)?;
                    self.keep_pushed(step, &cwd)?;
                }
                Role::Output => {
                    outputs = Some(self.output_command(step, &planned.command, &mut state)?);
                }
                Role::Apply | Role::Destroy => {
                    let stream = self.racing(step, || {
                        let mut stream = Stream::new(&step.name, self.logger().redactor().clone());
                        self.execute(
                            step,
                            &planned.command,
                            Output::Stream(&mut stream),
                            &mut state,
                        )
                        .map(|_| stream)
                    })?;
                    streamed = stream.outputs().cloned();
                    if !destroy {
                        self.select_workspace(step, &cwd)?;
                    }
                }
                Role::Init => {
                    let _turn = self.init_turn(step);
                    self.racing(step, || {
                        self.execute(step, &planned.command, Output::Log, &mut state)
                    })?;
                }
            }
        }
        if destroy || outputs.is_some() {
            return Ok(outputs);
        }
        match streamed {
            Some(outputs) => Ok(Some(outputs)),
            None => {
                // A local state holds every value, sensitive ones too.
                if decide::state_at_hand(step, &cwd) {
                    if let Some(outputs) = state.outputs() {
                        return Ok(Some(outputs));
                    }
                }
                // The stream's event was cut into pieces (huge values), or named a sensitive
                // output that the module's files did not show.
                self.logger().info(
                    Some(&step.name),
                    "the apply's stream did not carry every output's value: asking terraform for them",
                );
                let command = self.terraform.output_command(step, &cwd);
                Ok(Some(self.output_command(step, &command, &mut state)?))
            }
        }
    }

    /// Puts a step's directory in order for terraform: its local state repaired if a kill
    /// tore it, its vars file written.
    pub(super) fn step_files(&self, step: &RenderedStep, cwd: &Path) -> Result<LocalState> {
        let state = LocalState::of(cwd, step.workspace.as_deref());
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
            let path = cwd.join(step.vars_file());
            durable::write(&path, vars.as_bytes(), 0o600)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        Ok(state)
    }

    /// A step's outputs as its backend holds them now: `init`, then `output -json` (an empty
    /// state has none). For `destroy --every-step`, which starts with no journal to read them from.
    pub(super) fn remote_outputs(
        &self,
        code: &Path,
        step: &RenderedStep,
    ) -> Result<terraform::Outputs> {
        let cwd = code.join(&step.dir);
        let mut state = self.step_files(step, &cwd)?;
        for command in self.terraform.prepare_commands(step, &cwd) {
            let _turn = self.init_turn(step);
            self.racing(step, || {
                self.execute(step, &command, Output::Log, &mut state)
            })?;
        }
        let command = self.terraform.output_command(step, &cwd);
        self.output_command(step, &command, &mut state)
    }

    /// Waits for the turn of `step`'s `init`, saying so when another step has it.
    pub(super) fn init_turn(&self, step: &RenderedStep) -> std::sync::MutexGuard<'_, ()> {
        match self.init_turn.try_lock() {
            Ok(turn) => return turn,
            // A step that panicked holding it left nothing half done that this one needs.
            Err(std::sync::TryLockError::Poisoned(turn)) => return turn.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        self.logger().info(
            Some(&step.name),
            "waiting for another step's `init` to finish: they take turns",
        );
        self.init_turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a command by `run` until it does not meet one of the [`BACKEND_RACES`]: a
    /// terraform that met one while setting up its backend changed nothing, and is simply
    /// run again shortly after. The
    /// other terraform is done in a moment: the waits start short, and differ a little from
    /// one engine to another, so that two that met do not meet again.
    pub(super) fn racing<T>(
        &self,
        step: &RenderedStep,
        mut run: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut wait = std::time::Duration::from_millis(100);
        let mut tries_left = BACKEND_RACE_TRIES;
        loop {
            let result = run();
            tries_left -= 1;
            match result {
                Err(e) if tries_left > 0 && is_backend_race(&e) => {
                    let jitter = f64::from(clock::now().nanosecond() % 500) / 1000.0;
                    let this_time = wait.mul_f64(1.0 + jitter);
                    self.logger().warn(
                        Some(&step.name),
                        &format!(
                            "another terraform was setting up the same backend at that moment: trying again in {}",
                            clock::human(this_time)
                        ),
                    );
                    if let Some(signal) = self.supervisor.shutdown.wait(Some(this_time), true) {
                        return Err(crate::base::signals::interrupted(signal));
                    }
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Records the step's workspace, which its apply has just made sure exists, as the
    /// selected one, as `workspace select` would: the engine's commands name it in
    /// `TF_WORKSPACE`, and this makes a `terraform` run by hand in the directory see the same
    /// state.
    fn select_workspace(&self, step: &RenderedStep, cwd: &Path) -> Result<()> {
        let Some(workspace) = &step.workspace else {
            return Ok(());
        };
        let path = cwd.join(".terraform/environment");
        if fs::read_to_string(&path).ok().as_deref() == Some(workspace.as_str()) {
            return Ok(());
        }
        fs::create_dir_all(cwd.join(".terraform"))
            .and_then(|_| durable::write(&path, workspace.as_bytes(), 0o644))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// Runs `terraform output -json`, reading the step's outputs from what it prints.
    fn output_command(
        &self,
        step: &RenderedStep,
        command: &Command,
        state: &mut LocalState,
    ) -> Result<terraform::Outputs> {
        let stdout = self.execute(step, command, Output::Capture, state)?;
        terraform::parse_outputs(&stdout).map_err(|message| Error::StepFailed {
            step: step.name.clone(),
            message,
        })
    }

    /// An `errored.tfstate` with no complete state in it (terraform ran out of room while
    /// writing it) cannot be pushed: pushing fails on every run, for ever. Keep it aside.
    fn set_aside_errored_state(&self, step: &RenderedStep, cwd: &Path) -> Result<()> {
        let errored = cwd.join(decide::ERRORED_STATE);
        if !errored.exists() {
            return Ok(());
        }
        let set_aside = crate::terraform::local_state::set_aside_if_incomplete(&errored)
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
        }
        Ok(())
    }

    /// Renames a pushed `errored.tfstate` out of the way, keeping it.
    fn keep_pushed(&self, step: &RenderedStep, cwd: &Path) -> Result<()> {
        let errored = cwd.join(decide::ERRORED_STATE);
        let kept = cwd.join(format!(
            "{}.pushed-{}",
            decide::ERRORED_STATE,
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

    /// Runs one terraform command of `step`, keeping a copy of each complete local state
    /// it writes.
    fn execute(
        &self,
        step: &RenderedStep,
        command: &Command,
        output: Output<'_>,
        state: &mut LocalState,
    ) -> Result<Vec<u8>> {
        self.execute_detailed(step, command, output, state, false)
            .map(|(stdout, _)| stdout)
    }

    /// [`Engine::execute`]; with `detailed`, exit code 2 is no failure but terraform's "there
    /// are changes" (`-detailed-exitcode`), and the second value says whether it came.
    pub(super) fn execute_detailed(
        &self,
        step: &RenderedStep,
        command: &Command,
        output: Output<'_>,
        state: &mut LocalState,
        detailed: bool,
    ) -> Result<(Vec<u8>, bool)> {
        self.supervisor.shutdown.check()?;
        if command.args.first().is_some_and(|a| a != "output") {
            crate::root::disk::ensure_room(
                &command.cwd,
                self.loaded.workflow.settings.min_free_space,
            )?;
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
        let mut stream = None;
        let finished = match output {
            Output::Log => self.supervisor.run(
                command,
                Options {
                    watch: Some(&mut watch),
                    ..diagnostics::options()
                },
            ),
            Output::Capture => self.supervisor.run(
                command,
                Options {
                    capture_stdout: true,
                    watch: Some(&mut watch),
                    ..diagnostics::options()
                },
            ),
            Output::Stream(reader) => {
                let finished = self.supervisor.run(
                    command,
                    Options {
                        watch: Some(&mut watch),
                        stdout_reader: Some(&mut |line, whole, out| reader.line(line, whole, out)),
                        ..diagnostics::options()
                    },
                );
                stream = Some(reader);
                finished
            }
        }
        .map_err(|e| Error::StepFailed {
            step: step.name.clone(),
            message: format!("cannot start {}: {e}", command.program.display()),
        })?;
        let changes = detailed && finished.status.code() == Some(2);
        let success = finished.success() || changes;
        if let (Some(signal), false) = (self.supervisor.shutdown.requested(), success) {
            return Err(crate::base::signals::interrupted(signal));
        }
        if !success {
            let subcommand = command.args.first().map(String::as_str).unwrap_or("");
            let Some(stream) = stream else {
                return Err(Error::StepFailed {
                    step: step.name.clone(),
                    message: format!("`terraform {subcommand}` failed with {}", finished.reason()),
                });
            };
            let kind = stream.failure_kind();
            let reason = match stream.reason() {
                Some(first) => format!("{}: {first}", finished.exit()),
                None => finished.reason(),
            };
            return Err(Error::TerraformFailed {
                step: step.name.clone(),
                message: format!("`terraform {subcommand}` failed with {reason}"),
                kind,
            });
        }
        Ok((finished.stdout, changes))
    }
}
