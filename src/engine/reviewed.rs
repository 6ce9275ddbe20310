//! `run --reviewed`: apply exactly the plans the last `diff` saved. A step is applied from
//! its saved plan only while every input still digests as it did when planned; a step the
//! diff did not plan (not known yet, or not asked for) is left out unless it is done already.
//! Terraform itself refuses a plan whose state moved on since ("Saved plan is stale").

use std::path::PathBuf;

use crate::base::error::{Error, Location, Problem, Problems, Result};
use crate::engine::diff::{self, Document, Status, StepDiff};
use crate::root::journal::{Journal, Marker};
use crate::workflow::load::Loaded;
use crate::workflow::render::{self, RenderedStep};

/// The last diff, read and checked under the lock.
pub struct Reviewed {
    document: Document,
    record: PathBuf,
}

/// What `run --reviewed` does with one step.
pub enum Verdict {
    /// Applied before with these very inputs (the reviewed plan too, if it had one).
    Skip,
    /// Apply this saved plan.
    Apply(PathBuf),
    /// Not reviewed, and not done: left for the next diff.
    LeaveOut(String),
}

const RUN_DIFF: &str =
    "run `bootstrapper diff` to review what would change now, then `bootstrapper run --reviewed`";

impl Reviewed {
    /// Reads the last diff's document; refuses (exit 2) when there is none, it is not the
    /// diff `expected` names, it did not finish planning, or a saved plan is no longer the one
    /// reviewed.
    pub fn load(journal: &Journal, expected: Option<&str>) -> Result<Reviewed> {
        let record = journal.diff_record();
        let refuse = |message: String| {
            Error::Input(Problems::one(
                Problem::new(message)
                    .at(Location::file(&record))
                    .hint(RUN_DIFF),
            ))
        };
        let document: Document = match crate::base::json::read(&record) {
            Ok(Some(document)) => document,
            Ok(None) => {
                return Err(refuse(
                    "`run --reviewed`: there is no reviewed diff (none was made, it was cut short, or its plans were applied already)".to_string(),
                ))
            }
            Err(crate::base::json::ReadError::Io(e)) => {
                return Err(Error::io(format!("cannot read {}", record.display()), e))
            }
            Err(crate::base::json::ReadError::Corrupt(e)) => {
                return Err(refuse(format!("the record of the last diff is corrupt: {e}")))
            }
        };
        if document.format != diff::FORMAT {
            return Err(refuse(format!(
                "the last diff was recorded in format {}, not {}",
                document.format,
                diff::FORMAT
            )));
        }
        if document.code_current {
            return Err(refuse(
                "the last diff was made against the image's code (`diff --code current`), not the code in place: it cannot be applied exactly; upgrade with `run --code current`".to_string(),
            ));
        }
        if let Some(expected) = expected.filter(|e| *e != document.id) {
            return Err(refuse(format!(
                "`run --reviewed={expected}`: the last diff is {}, made at {}",
                document.id, document.made_at
            )));
        }
        let mut problems = Problems::default();
        for step in &document.steps {
            if matches!(step.status, Status::Failed | Status::NotPlanned) {
                problems.push(
                    Problem::new(format!(
                        "the last diff did not plan step `{}`: {}",
                        step.step,
                        step.reason.as_deref().unwrap_or("it failed")
                    ))
                    .in_step(&step.step)
                    .hint(RUN_DIFF),
                );
            }
            if let Some(plan) = &step.plan {
                if plan.file.exists() && diff::file_sha256(&plan.file)? != plan.sha256 {
                    problems.push(
                        Problem::new(format!(
                            "the saved plan {} is not the one the last diff reviewed: it changed since",
                            plan.file.display()
                        ))
                        .in_step(&step.step)
                        .hint(RUN_DIFF),
                    );
                }
            }
        }
        problems.into_result()?;
        Ok(Reviewed { document, record })
    }

    fn step(&self, name: &str) -> Option<&StepDiff> {
        self.document.steps.iter().find(|s| s.step == name)
    }

    /// Whether the diff saved a plan for `step`.
    pub fn planned(&self, step: &str) -> bool {
        self.step(step).is_some_and(|s| s.plan.is_some())
    }

    /// Before anything runs: every planned step whose inputs can be known now (with the
    /// outputs the journal holds) must have the inputs it was planned with.
    pub fn check(
        &self,
        loaded: &Loaded,
        rendered: &[RenderedStep],
        code: Option<&str>,
        markers: &[Option<Marker>],
    ) -> Result<()> {
        let mut problems = Problems::default();
        for (index, step) in loaded.workflow.steps.iter().enumerate() {
            let rendered = &rendered[index];
            if !rendered.unknown_outputs.is_empty() || !self.planned(&step.name) {
                continue;
            }
            let inputs = rendered.inputs(code);
            if let Err(problem) = self.verdict(&step.name, &inputs, markers[index].as_ref()) {
                problems.push(problem);
            }
        }
        problems.into_result()
    }

    /// What to do with `step`, whose inputs now digest to `inputs`.
    pub fn verdict(
        &self,
        step: &str,
        inputs: &std::collections::BTreeMap<String, String>,
        marker: Option<&Marker>,
    ) -> std::result::Result<Verdict, Problem> {
        let digest = render::digest(inputs);
        let done = marker.is_some_and(|m| m.digest == digest);
        let Some(reviewed) = self.step(step) else {
            return Ok(if done {
                Verdict::Skip
            } else {
                Verdict::LeaveOut("the last diff did not cover it".to_string())
            });
        };
        let Some(plan) = &reviewed.plan else {
            return Ok(if done {
                Verdict::Skip
            } else {
                Verdict::LeaveOut(format!(
                    "it was not known when the diff was made (it waits for {})",
                    reviewed.waits_for.join(", ")
                ))
            });
        };
        if !plan.file.exists() {
            // Applied by an earlier `run --reviewed`, which then removed the plan.
            if done && plan.digest == digest {
                return Ok(Verdict::Skip);
            }
            return Err(Problem::new(format!(
                "the plan the last diff saved for it, {}, is gone",
                plan.file.display()
            ))
            .in_step(step)
            .hint(RUN_DIFF));
        }
        if plan.digest != digest {
            return Err(Problem::new(format!(
                "its inputs changed since the diff at {} reviewed its plan: {}",
                self.document.made_at,
                render::changed_inputs(&plan.inputs, inputs).join(", ")
            ))
            .in_step(step)
            .hint(RUN_DIFF));
        }
        if reviewed.status == Status::NoChanges && done {
            return Ok(Verdict::Skip);
        }
        Ok(Verdict::Apply(plan.file.clone()))
    }

    /// Once every reviewed plan was applied: the record goes, so that the same plans are
    /// never offered again, and with it the plans a skipped step did not need (they hold
    /// every value, secrets too).
    pub fn finish(&self) -> Result<()> {
        let plans = self.document.steps.iter().filter_map(|s| s.plan.as_ref());
        for file in std::iter::once(&self.record).chain(plans.map(|p| &p.file)) {
            crate::base::durable::remove(file)
                .map_err(|e| Error::io(format!("cannot remove {}", file.display()), e))?;
        }
        Ok(())
    }

    pub fn made_at(&self) -> &str {
        &self.document.made_at
    }
}
