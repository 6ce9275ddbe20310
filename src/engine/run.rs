//! `run`: check everything, take the lock, put the code in place, then apply every step that
//! [`crate::engine::decide`] does not skip, each once the steps it waits for are done (several at
//! once, as [`crate::engine::schedule`] allows), leaving a marker after each.

use std::sync::Mutex;

use crate::base::clock;
use crate::base::error::{exit, Error, Result};
use crate::base::signals::YIELD_SIGNAL;
use crate::engine::core::{Engine, Prepared};
use crate::engine::decide::{self, Decision};
use crate::engine::reviewed::{Reviewed, Verdict};
use crate::engine::schedule::{self, Direction};
use crate::root::journal::{Action, Journal, Marker, Tombstone};
use crate::root::lock::Lock;
use crate::workflow::render::{self, Outputs};

/// Whether a step was applied by this run or found applied with its inputs.
enum Applied {
    Now,
    Before,
    /// `run --reviewed`: not reviewed by the last diff, and not done.
    LeftOut,
}

/// Long enough to mean "until the holder lets go", short enough not to overflow an `Instant`.
const LOCK_WAIT_FOREVER: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// What a finished `run` did.
#[derive(Debug, Default, PartialEq)]
pub struct RunSummary {
    pub applied: Vec<String>,
    pub unchanged: Vec<String>,
    /// Set when the root was destroyed and `run` refused to apply.
    pub destroyed: Option<Tombstone>,
    /// `run --reviewed`: the steps the last diff did not plan, not applied.
    pub left_out: Vec<String>,
}

/// `run [--hold] [--recreate]`: applies the workflow; with `hold` (the entrypoint), keeps
/// running afterwards until SIGTERM, whatever the run's result, and hands the lock over to a
/// `destroy` that asks for it.
/// With `reviewed`, applies the plans the last `diff` saved instead (`Some(id)`: only if that
/// diff is `id`).
pub fn command(
    engine: &mut Engine,
    hold: bool,
    recreate: bool,
    reviewed: Option<Option<&str>>,
) -> Result<i32> {
    let result = engine.run(hold, recreate, reviewed);
    let (shutdown, logger, grace) = (
        engine.supervisor.shutdown.clone(),
        engine.logger().clone(),
        engine.supervisor.grace,
    );
    let state_dir = Journal::at(&engine.root).dir().to_path_buf();
    if !hold {
        return match result {
            Ok(summary) if summary.destroyed.is_some() => Ok(exit::STEP_FAILED),
            Ok(_) => Ok(exit::OK),
            Err(e) => Err(e),
        };
    }
    match result {
        Err(e @ (Error::Input(_) | Error::Locked { .. })) => Err(e),
        Err(Error::Interrupted { signal, .. }) if signal == YIELD_SIGNAL => {
            shutdown.clear_yield();
            logger.info(
                None,
                "stopped and let go of the lock for a destroy; holding until SIGTERM",
            );
            crate::engine::hold::until_stopped(&shutdown, &state_dir, grace, &logger)
        }
        Err(e @ Error::Interrupted { signal, .. }) => {
            // Stopped while waiting for the lock, or while applying (the lock is
            // ours no more): whoever holds it now dies with the pod unless told.
            crate::engine::hold::pass_on(&state_dir, signal, grace, &logger);
            Err(e)
        }
        Err(e) => {
            logger.warn(None, &format!("{e}"));
            logger.warn(
                None,
                "holding: `bootstrapper status` shows why; `bootstrapper run` tries again",
            );
            crate::engine::hold::until_stopped(&shutdown, &state_dir, grace, &logger)
        }
        Ok(_) => {
            logger.info(None, "holding until SIGTERM");
            crate::engine::hold::until_stopped(&shutdown, &state_dir, grace, &logger)
        }
    }
}

impl Engine {
    /// Applies the workflow. With `wait_for_lock` (the entrypoint), a lock held by another
    /// process is waited for instead of failing: an entrypoint that exits restarts its
    /// container, and with it whatever was holding the lock there.
    /// With `recreate`, a workflow destroyed before is bootstrapped again instead of refused.
    /// With `reviewed`, each step is applied from the plan the last `diff` saved for it
    /// (see [`crate::engine::reviewed`]), if that diff is the one named.
    pub fn run(
        &mut self,
        wait_for_lock: bool,
        recreate: bool,
        reviewed: Option<Option<&str>>,
    ) -> Result<RunSummary> {
        let root = self.root.display().to_string();
        let _command = tracing::info_span!("command", command = "run", root).entered();
        let logger = self.logger().clone();
        let shutdown = self.supervisor.shutdown.clone();
        let prepared = self.prepare(
            |dir| {
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
                    Some(signal) => crate::base::signals::interrupted(signal),
                    None => e,
                })
            },
            recreate,
        )?;
        let journal = &prepared.journal;
        let mut summary = RunSummary::default();
        if let Some(tombstone) = journal.tombstone()? {
            self.logger()
                .warn(None, &decide::tombstone_message(&tombstone));
            summary.destroyed = Some(tombstone);
            return Ok(summary);
        }
        let graph = self.loaded.graph().map_err(Error::Input)?;
        let reviewed = match reviewed {
            None => None,
            Some(expected) => {
                let reviewed = Reviewed::load(journal, expected)?;
                reviewed.check(
                    &self.loaded,
                    &prepared.rendered,
                    prepared.code.record.identity.as_deref(),
                    &prepared.recorded.markers,
                )?;
                self.logger().info(
                    None,
                    &format!(
                        "applying the plans reviewed by the diff at {}",
                        reviewed.made_at()
                    ),
                );
                Some(reviewed)
            }
        };
        let outputs = Mutex::new(Outputs::new());
        let this = &*self;
        let reviewed_ref = reviewed.as_ref();
        let outcomes = schedule::schedule(
            &graph,
            Direction::Forward,
            this.loaded.workflow.settings.parallelism,
            &|| this.supervisor.shutdown.requested().is_some(),
            &|index| this.apply_step(&prepared, index, &outputs, reviewed_ref),
        );
        let steps = self.loaded.workflow.steps.iter().map(|s| s.name.as_str());
        self.settle(steps.zip(outcomes), |step, applied| match applied {
            Applied::Now => summary.applied.push(step),
            Applied::Before => summary.unchanged.push(step),
            Applied::LeftOut => summary.left_out.push(step),
        })?;
        if let Some(reviewed) = &reviewed {
            reviewed.finish()?;
            if !summary.left_out.is_empty() {
                self.logger().warn(
                    None,
                    &format!(
                        "the reviewed plans are applied; not reviewed, so left out: {}. `bootstrapper diff` reviews them now",
                        summary.left_out.join(", ")
                    ),
                );
            }
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

    /// Applies step `index` unless its marker says it is done with these very inputs; its
    /// outputs join `outputs` for the steps that wait for it.
    fn apply_step(
        &self,
        prepared: &Prepared,
        index: usize,
        outputs: &Mutex<Outputs>,
        reviewed: Option<&Reviewed>,
    ) -> Result<Applied> {
        let Prepared {
            journal,
            code,
            recorded,
            ..
        } = prepared;
        let step = &self.loaded.workflow.steps[index];
        let _step = tracing::info_span!("step", step = %step.name).entered();
        self.supervisor.shutdown.check()?;
        let marker = recorded.markers[index].as_ref();
        let leave_out = |reason: &str| {
            self.logger().warn(
                Some(&step.name),
                &format!("not reviewed, left out: {reason}"),
            );
            if let Some(marker) = marker {
                outputs
                    .lock()
                    .expect("no panics while held")
                    .insert(step.name.clone(), marker.outputs.clone());
            }
            Ok(Applied::LeftOut)
        };
        if let (Some(reviewed), None) = (reviewed, marker) {
            // Rendering it may need outputs of steps left out before it.
            if !reviewed.planned(&step.name) {
                return leave_out("the last diff saved no plan for it");
            }
        }
        let known = outputs.lock().expect("no panics while held").clone();
        let rendered = prepared
            .rendered(&self.loaded, index, &known)
            .map_err(|p| Error::StepFailed {
                step: step.name.clone(),
                message: p.to_string(),
            })?;
        let inputs = rendered.inputs(code.record.identity.as_deref());
        let mut decided = decide::apply(&rendered, &inputs, marker, &Default::default(), journal)?;
        let mut plan_file = None;
        if let Some(reviewed) = reviewed {
            match reviewed.verdict(&step.name, &inputs, marker) {
                Ok(Verdict::Skip) => decided.decision = Decision::Skip,
                Ok(Verdict::Apply(file)) => plan_file = Some(file),
                Ok(Verdict::LeaveOut(reason)) => return leave_out(&reason),
                // The steps before it were applied from their reviewed plans, and their
                // outputs changed what this one was planned with.
                Err(problem) => {
                    return Err(Error::StepFailed {
                        step: step.name.clone(),
                        message: problem.to_string(),
                    })
                }
            }
        }
        match (decided.decision, marker) {
            _ if plan_file.is_some() => {}
            (Decision::Skip, Some(marker)) => {
                self.logger()
                    .info(Some(&step.name), "done, inputs unchanged: skipped");
                outputs
                    .lock()
                    .expect("no panics while held")
                    .insert(step.name.clone(), marker.outputs.clone());
                return Ok(Applied::Before);
            }
            (_, Some(marker)) => self.logger().info(
                Some(&step.name),
                &format!(
                    "inputs changed since it was applied at {} ({}): applying again",
                    clock::format(marker.finished_at),
                    decided.changed_inputs.join(", ")
                ),
            ),
            (_, None) => self.logger().info(Some(&step.name), "applying"),
        }
        if let Some(file) = &plan_file {
            self.logger().info(
                Some(&step.name),
                &format!("applying the reviewed plan {}", file.display()),
            );
        }
        // A reviewed plan is tried once: a failed apply leaves it stale.
        let retry = match plan_file {
            Some(_) => crate::workflow::file::Retry {
                retries: 0,
                ..step.retry
            },
            None => step.retry,
        };
        let digest = render::digest(&inputs);
        let (started_at, attempts, (values, sensitive)) =
            self.with_retries(journal, &rendered.name, retry, Action::Apply, || {
                self.terraform_step_with(&code.dir, &rendered, Action::Apply, plan_file.as_deref())
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
        crate::root::recorded::mask_sensitive(self.logger().redactor(), &marker);
        journal.write_marker(&marker)?;
        if let Some(file) = &plan_file {
            // Applied: it is stale now, and the marker says it was applied.
            crate::base::durable::remove(file)
                .map_err(|e| Error::io(format!("cannot remove {}", file.display()), e))?;
        }
        self.logger().info(
            Some(&step.name),
            &format!(
                "applied in {} (attempt {attempts}); marker written",
                clock::human((marker.finished_at - started_at).unsigned_abs())
            ),
        );
        outputs
            .lock()
            .expect("no panics while held")
            .insert(step.name.clone(), marker.outputs);
        Ok(Applied::Now)
    }
}
