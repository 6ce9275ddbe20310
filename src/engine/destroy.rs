//! `destroy`: stop a running `run`, take the lock, leave a tombstone, then destroy every step
//! that ever started applying, each only after every step that waits for it (several at once,
//! as [`crate::engine::schedule`] allows), each followed by a `destroyed` marker.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::base::clock;
use crate::base::error::{Error, Result};
use crate::engine::core::{Engine, Prepared};
use crate::engine::decide::{self, Decision};
use crate::engine::schedule::{self, Direction};
use crate::root::journal::Action;
use crate::root::journal::{Destroyed, Tombstone};
use crate::root::lock::{Holder, Lock};
use crate::workflow::render::Outputs;

/// The signal that asks a running `run` to let go of the lock (see [`crate::base::signals`]).
const YIELD: Signal = Signal::SIGUSR1;

/// Whether a step was destroyed by this destroy, by an earlier one, or never needed to be.
enum Gone {
    Now,
    Before,
    NeverStarted,
}

/// What a finished `destroy` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DestroySummary {
    pub destroyed: Vec<String>,
    pub already: Vec<String>,
    pub never_started: Vec<String>,
}

impl Engine {
    /// Destroys the workflow, waiting up to `wait` for a running command to let go of the lock.
    /// With `every_step`, every step is destroyed whatever the journal says (see
    /// [`Engine::every_step_outputs`]).
    pub fn destroy(&mut self, wait: Duration, every_step: bool) -> Result<DestroySummary> {
        let root = self.root.display().to_string();
        let _command = tracing::info_span!("command", command = "destroy", root).entered();
        let logger = self.logger().clone();
        let shutdown = self.supervisor.shutdown.clone();
        let prepared = self.prepare(
            |dir| {
                Lock::acquire_within(dir, "destroy", wait, |holder, first| {
                    if first {
                        ask_to_yield(holder, &logger);
                    }
                    shutdown.terminated().is_none()
                })
                .map_err(|e| match shutdown.terminated() {
                    Some(signal) => crate::base::signals::interrupted(signal),
                    None => e,
                })
            },
            false,
        )?;
        let journal = &prepared.journal;

        let tombstone = match journal.tombstone()? {
            Some(t) => t,
            None => {
                let t = Tombstone {
                    started_at: clock::now(),
                    finished_at: None,
                };
                journal.write_tombstone(&t)?;
                t
            }
        };
        self.logger().info(
            None,
            &format!(
                "destroying in reverse order (began {}); `run` will not apply again until `reset --all`",
                clock::format(tombstone.started_at)
            ),
        );

        // Outputs of every step that has a marker: a later step's backend address may come
        // from an earlier one, which is still there since destroy goes backwards.
        let (outputs, unreachable) = if every_step {
            self.every_step_outputs(&prepared)?
        } else {
            (prepared.recorded.outputs.clone(), Vec::new())
        };
        let outputs = &outputs;
        let graph = self.loaded.graph().map_err(Error::Input)?;
        let this = &*self;
        let outcomes = schedule::schedule(
            &graph,
            Direction::Reverse,
            this.loaded.workflow.settings.parallelism,
            &|| this.supervisor.shutdown.requested().is_some(),
            &|index| {
                if every_step {
                    this.destroy_every_step(&prepared, index, outputs, &unreachable)
                } else {
                    this.destroy_step(&prepared, index, outputs)
                }
            },
        );
        let mut summary = DestroySummary::default();
        let steps = self.loaded.workflow.steps.iter().map(|s| s.name.as_str());
        self.settle(steps.zip(outcomes).rev(), |step, gone| match gone {
            Gone::Now => summary.destroyed.push(step),
            Gone::Before => summary.already.push(step),
            Gone::NeverStarted => summary.never_started.push(step),
        })?;
        journal.write_tombstone(&Tombstone {
            finished_at: Some(clock::now()),
            ..tombstone
        })?;
        self.logger().info(
            None,
            &format!(
                "workflow destroyed: {} destroyed now, {} earlier, {} never started",
                summary.destroyed.len(),
                summary.already.len(),
                summary.never_started.len()
            ),
        );
        Ok(summary)
    }

    /// Each step's outputs as its backend holds them, in order, for the steps after it to
    /// be rendered as they were applied; and the steps that could not be rendered, since a
    /// step they read holds no such output: those never applied, and are left alone.
    pub(super) fn every_step_outputs(&self, prepared: &Prepared) -> Result<(Outputs, Vec<usize>)> {
        let mut outputs = Outputs::new();
        let mut unreachable = Vec::new();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate() {
            self.supervisor.shutdown.check()?;
            let rendered = self
                .loaded
                .renderer()
                .render_step(index, &outputs, true)
                .map_err(Error::Input)?;
            if !rendered.unknown_outputs.is_empty() {
                self.logger().info(
                    Some(&step.name),
                    &format!(
                        "{} not in any backend: it never applied, nothing to destroy",
                        decide::unknown_outputs(&rendered).join(", ")
                    ),
                );
                unreachable.push(index);
                continue;
            }
            let _step = tracing::info_span!("step", step = %step.name).entered();
            let (values, _sensitive) = self.remote_outputs(&prepared.code.dir, &rendered)?;
            // An empty state has no outputs: the steps that read one are unreachable, not
            // wrongly rendered.
            if !values.is_empty() {
                outputs.insert(step.name.clone(), values);
            }
        }
        Ok((outputs, unreachable))
    }

    /// Destroys step `index` whatever the journal says, unless it is `unreachable`.
    fn destroy_every_step(
        &self,
        prepared: &Prepared,
        index: usize,
        outputs: &Outputs,
        unreachable: &[usize],
    ) -> Result<Gone> {
        if unreachable.contains(&index) {
            return Ok(Gone::NeverStarted);
        }
        let step = &self.loaded.workflow.steps[index];
        let _step = tracing::info_span!("step", step = %step.name).entered();
        self.supervisor.shutdown.check()?;
        self.destroy_rendered(prepared, index, outputs)
    }

    /// Destroys step `index` unless it is destroyed already or never started applying.
    fn destroy_step(&self, prepared: &Prepared, index: usize, outputs: &Outputs) -> Result<Gone> {
        let journal = &prepared.journal;
        let step = &self.loaded.workflow.steps[index];
        let _step = tracing::info_span!("step", step = %step.name).entered();
        self.supervisor.shutdown.check()?;
        let decided = decide::destroy(
            &step.name,
            prepared.recorded.markers[index].as_ref(),
            journal,
        )?;
        match decided.decision {
            Decision::Destroy => {}
            _ if journal.destroyed(&step.name)?.is_some() => {
                self.logger()
                    .info(Some(&step.name), "already destroyed: skipped");
                return Ok(Gone::Before);
            }
            _ => {
                self.logger().info(
                    Some(&step.name),
                    "never started applying: nothing to destroy",
                );
                return Ok(Gone::NeverStarted);
            }
        }
        self.destroy_rendered(prepared, index, outputs)
    }

    /// Renders step `index` with `outputs` and destroys it, then writes its marker.
    fn destroy_rendered(
        &self,
        prepared: &Prepared,
        index: usize,
        outputs: &Outputs,
    ) -> Result<Gone> {
        let journal = &prepared.journal;
        let step = &self.loaded.workflow.steps[index];
        let rendered = prepared
            .rendered(&self.loaded, index, outputs)
            .map_err(|p| Error::StepFailed {
                step: step.name.clone(),
                message: format!("cannot render it to destroy it: {p}"),
            })?;
        self.logger().info(Some(&step.name), "destroying");
        let (started_at, attempts, _) =
            self.with_retries(journal, &step.name, step.retry, Action::Destroy, || {
                self.terraform_step(&prepared.code.dir, &rendered, Action::Destroy)
            })?;
        journal.write_destroyed(&Destroyed {
            step: step.name.clone(),
            started_at,
            finished_at: clock::now(),
            attempts,
        })?;
        self.logger().info(
            Some(&step.name),
            &format!("destroyed (attempt {attempts}); marker written"),
        );
        Ok(Gone::Now)
    }
}

/// Asks the holder of the lock to stop its work and let go, if it is a `run` we can reach:
/// in a pod, `kubectl exec` shares the process namespace and the host name with the
/// entrypoint. Anything else (another `destroy`, a `reset`) is waited for: interrupting a
/// destroy would cut a destroy-time provisioner short, and it would run again.
fn ask_to_yield(holder: &Holder, logger: &crate::base::log::Logger) {
    if !holder.is_reachable() || !holder.is_run() {
        logger.info(None, &format!("waiting for the lock, held by {holder}"));
        return;
    }
    match kill(Pid::from_raw(holder.pid as i32), YIELD) {
        Ok(()) => logger.info(
            None,
            &format!(
                "asked pid {} (`bootstrapper {}`) to finish its terraform gracefully and let go of the lock",
                holder.pid, holder.command
            ),
        ),
        Err(e) => logger.warn(
            None,
            &format!("cannot signal pid {} ({e}); waiting for the lock", holder.pid),
        ),
    }
}
