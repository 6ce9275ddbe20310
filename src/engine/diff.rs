//! `diff`: what terraform would change if `run` applied now. Per step, with the tfvars,
//! workspace, backend config and args that `run` would use (and the outputs of earlier steps
//! as their markers hold them): `init`, then `plan -detailed-exitcode -out=…`, then `show
//! -json` of the saved plan to name each resource that would change and the attributes that
//! do, never their values.
//!
//! It holds the root's lock like `run`, writes no marker and no attempt, and leaves only the
//! saved plans (owner-only) and [`Document`] (`.bootstrapper/diff.json`), which
//! `run --reviewed` ([`crate::engine::reviewed`]) applies and a caller (the controller) reads.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::clock;
use crate::base::durable;
use crate::base::error::{exit, Error, Problem, Problems, Result};
use crate::base::secrets::Redactor;
use crate::engine::core::{Engine, Output, Prepared};
use crate::engine::decide;
use crate::engine::schedule::{self, Direction};
use crate::root::lock::Lock;
use crate::terraform::plan::{self, Changes};
use crate::terraform::stream::Stream;
use crate::workflow::render::{self, RenderedStep};

/// The version of [`Document`]'s shape; raised on any change a reader must know of.
pub const FORMAT: u32 = 1;

/// What one `diff` found: the JSON that `diff --json` prints and `.bootstrapper/diff.json`
/// holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub format: u32,
    /// Names this diff and its plans: `run --reviewed=ID` applies them only if they are still
    /// the last diff's.
    pub id: String,
    pub made_at: String,
    /// The code's identity (a commit id, or a content hash of a copy).
    pub code: Option<String>,
    /// Whether `run` would change anything: some step has changes or is not known yet.
    pub changes: bool,
    /// Every step asked for, in the workflow's order.
    pub steps: Vec<StepDiff>,
    /// Planned against the image's code (`diff --code current`), not the code in place: its
    /// plans were discarded, and `run --reviewed` refuses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code_current: bool,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Planned: terraform would change something.
    Changes,
    /// Planned: nothing would change.
    NoChanges,
    /// Not planned: it uses outputs of steps never applied (`waits_for`).
    NotKnown,
    /// Its `init`, `plan` or `show` failed (`reason`).
    Failed,
    /// Not planned: the diff stopped at another step's failure first.
    NotPlanned,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Changes => "changes",
            Status::NoChanges => "no changes",
            Status::NotKnown => "not known",
            Status::Failed => "failed",
            Status::NotPlanned => "not planned",
        }
    }
}

/// One step of a [`Document`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDiff {
    pub step: String,
    pub status: Status,
    /// For `not_known`: the steps whose outputs it needs and that were never applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a planned step: what would change (masked names, never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// For a planned step: the saved plan and what it was planned with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<SavedPlan>,
}

/// A plan saved by `diff`, and the inputs it was made with, for `run --reviewed` to check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub file: PathBuf,
    pub sha256: String,
    /// The digest of every input, as a marker records it.
    pub digest: String,
    pub inputs: BTreeMap<String, String>,
}

/// `bootstrapper diff [STEP…] [--json]`: 0 nothing would change, 2 something would, an
/// error (1) when a step could not be planned.
pub fn command(
    engine: &mut Engine,
    steps: &[String],
    json: bool,
    current: bool,
    every_step: bool,
) -> Result<i32> {
    let Some((document, failure)) = engine.diff(steps, current, every_step)? else {
        return Ok(exit::STEP_FAILED);
    };
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &document)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out))
    } else {
        print(&document, &mut out)
    };
    written.map_err(|e| Error::io("cannot write to stdout", e))?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(if document.changes {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// The document as text: per step its status, then one line per resource.
pub fn print(document: &Document, out: &mut impl Write) -> std::io::Result<()> {
    for step in &document.steps {
        let mut head = format!("{}: {}", step.step, step.status.as_str());
        if let Some(changes) = &step.changes {
            if step.status == Status::Changes {
                let c = changes.counts;
                head = format!(
                    "{}: {} to add, {} to change, {} to destroy",
                    step.step, c.add, c.change, c.destroy
                );
            }
        }
        if step.status == Status::NotKnown {
            head = format!(
                "{}: not known until {} {} applied",
                step.step,
                step.waits_for.join(", "),
                if step.waits_for.len() == 1 {
                    "is"
                } else {
                    "are"
                }
            );
        } else if let Some(reason) = &step.reason {
            head.push_str(&format!(": {reason}"));
        }
        writeln!(out, "{head}")?;
        let Some(changes) = &step.changes else {
            continue;
        };
        for r in &changes.resources {
            writeln!(
                out,
                "  {} {} ({}{})",
                r.action.sign(),
                r.address,
                r.action.as_str(),
                attributes(r)
            )?;
        }
        for o in &changes.outputs {
            writeln!(
                out,
                "  {} output.{} ({})",
                o.action.sign(),
                o.name,
                o.action.as_str()
            )?;
        }
        for r in &changes.drift {
            writeln!(
                out,
                "  drift: {} {} ({} outside terraform{})",
                r.action.sign(),
                r.address,
                r.action.as_str(),
                attributes(r)
            )?;
        }
    }
    let planned = document.steps.iter().any(|s| s.plan.is_some());
    if document.changes && planned {
        writeln!(
            out,
            "diff {}: plans saved; `bootstrapper run --reviewed={}` applies exactly these",
            document.id, document.id
        )?;
    }
    Ok(())
}

fn attributes(r: &plan::ResourceChange) -> String {
    if r.attributes.is_empty() {
        return String::new();
    }
    let names: Vec<String> = r
        .attributes
        .iter()
        .map(|a| {
            if a.sensitive {
                format!("{} (sensitive)", a.name)
            } else {
                a.name.clone()
            }
        })
        .collect();
    format!(": {}", names.join(", "))
}

impl Engine {
    /// Plans the steps named in `selected` (every step when empty). `None` when the workflow
    /// was destroyed (said in the log); otherwise the document, written to the journal too,
    /// and the error of a step that could not be planned. With `current`, planned against
    /// the image's code in a temporary tree (see [`crate::root::source::preview`]). With
    /// `every_step`, earlier steps' outputs are read from their backends rather than the
    /// journal: for a fresh root (a Job's emptyDir), whose journal knows no step.
    pub fn diff(
        &mut self,
        selected: &[String],
        current: bool,
        every_step: bool,
    ) -> Result<Option<(Document, Option<Error>)>> {
        let root = self.root.display().to_string();
        let _command = tracing::info_span!("command", command = "diff", root).entered();
        self.check_selected(selected)?;
        let mut prepared = self.prepare(|dir| Lock::acquire(dir, "diff"), false)?;
        // Declared after `prepared`, so dropped (its tree removed) before the lock is released.
        let _preview = if current {
            let source = self
                .loaded
                .renderer()
                .render_source()
                .map_err(Error::Input)?;
            let preview = crate::root::source::preview(
                &self.root,
                &source,
                &prepared.journal,
                self.logger(),
            )?;
            prepared.code = crate::root::source::Code {
                dir: preview.code.dir.clone(),
                record: preview.code.record.clone(),
            };
            Some(preview)
        } else {
            None
        };
        if every_step {
            let (outputs, _never_applied) = self.every_step_outputs(&prepared)?;
            prepared.rendered = crate::workflow::load::check(
                &self.loaded,
                &outputs,
                crate::workflow::load::Modules::Later,
            )
            .map_err(Error::Input)?
            .steps;
        }
        let journal = &prepared.journal;
        if let Some(tombstone) = journal.tombstone()? {
            self.logger()
                .warn(None, &decide::tombstone_message(&tombstone));
            return Ok(None);
        }
        // A diff cut short must leave nothing that `run --reviewed` would take for reviewed.
        let record = journal.diff_record();
        durable::remove(&record)
            .map_err(|e| Error::io(format!("cannot remove {}", record.display()), e))?;
        for step in &self.loaded.workflow.steps {
            let old = journal.reviewed_plan_path(&step.name);
            durable::remove(&old)
                .map_err(|e| Error::io(format!("cannot remove {}", old.display()), e))?;
        }
        let graph = self.loaded.graph().map_err(Error::Input)?;
        let wanted = |name: &str| selected.is_empty() || selected.iter().any(|s| s == name);
        let renderer = self.loaded.renderer();
        let references: Vec<BTreeSet<usize>> =
            (0..graph.len()).map(|i| renderer.references(i)).collect();
        // Steps whose outputs may change when applied: those that use them are not known.
        let unsettled = Mutex::new(BTreeSet::new());
        let this = &*self;
        let outcomes = schedule::schedule(
            &graph,
            Direction::Forward,
            this.loaded.workflow.settings.parallelism,
            &|| this.supervisor.shutdown.requested().is_some(),
            &|index| {
                let step = &this.loaded.workflow.steps[index];
                if !wanted(&step.name) {
                    return Ok(None);
                }
                let _step = tracing::info_span!("step", step = %step.name).entered();
                let moving: Vec<String> = {
                    let unsettled = unsettled.lock().expect("no panics while held");
                    references[index]
                        .iter()
                        .filter(|j| unsettled.contains(*j))
                        .map(|&j| this.loaded.workflow.steps[j].name.clone())
                        .collect()
                };
                let diff = this.diff_step(&prepared, index, moving)?;
                let outputs_move = diff.changes.as_ref().is_some_and(|c| !c.outputs.is_empty());
                if diff.status == Status::NotKnown || outputs_move {
                    unsettled
                        .lock()
                        .expect("no panics while held")
                        .insert(index);
                }
                Ok(Some(diff))
            },
        );
        let (steps, errors) = self.gather(outcomes, &wanted);
        // Stopped by a signal: no document, as if this diff had not run.
        let error = Error::of_steps(errors);
        if matches!(error, Some(Error::Interrupted { .. })) {
            return Err(error.expect("matched"));
        }
        self.supervisor.shutdown.check()?;
        let mut document = document(steps, prepared.code.record.identity.clone());
        if current {
            // Made in a tree about to go: no run may apply them.
            for step in &mut document.steps {
                if let Some(plan) = step.plan.take() {
                    durable::remove(&plan.file).map_err(|e| {
                        Error::io(format!("cannot remove {}", plan.file.display()), e)
                    })?;
                }
            }
            document.code_current = true;
        }
        crate::base::json::write(&record, &document, 0o600)
            .map_err(|e| Error::io(format!("cannot write {}", record.display()), e))?;
        Ok(Some((document, error)))
    }

    /// Each step's diff in the workflow's order, the failed and those never planned
    /// included, and the errors.
    fn gather(
        &self,
        outcomes: schedule::Outcomes<Option<StepDiff>>,
        wanted: &dyn Fn(&str) -> bool,
    ) -> (Vec<StepDiff>, Vec<Error>) {
        let redactor = self.logger().redactor();
        let mut steps = Vec::new();
        let mut errors = Vec::new();
        let mut first_failure = None;
        for (step, outcome) in self.loaded.workflow.steps.iter().zip(outcomes) {
            if !wanted(&step.name) {
                continue;
            }
            match outcome {
                Some(Ok(Some(diff))) => steps.push(diff),
                Some(Err(e)) => {
                    let reason = redactor.mask(&e.to_string()).into_owned();
                    first_failure.get_or_insert_with(|| step.name.clone());
                    steps.push(StepDiff::without_plan(&step.name, Status::Failed, reason));
                    errors.push(e);
                }
                Some(Ok(None)) => {}
                None => {
                    let reason = match &first_failure {
                        Some(at) => format!("the diff stopped after `{at}` failed"),
                        None => "the diff stopped before it".to_string(),
                    };
                    steps.push(StepDiff::without_plan(
                        &step.name,
                        Status::NotPlanned,
                        reason,
                    ));
                }
            }
        }
        (steps, errors)
    }

    /// Every name in `selected` must be a step of the workflow.
    fn check_selected(&self, selected: &[String]) -> Result<()> {
        let names: Vec<&str> = self
            .loaded
            .workflow
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let mut problems = Problems::default();
        for name in selected.iter().filter(|n| !names.contains(&n.as_str())) {
            problems.push(
                Problem::new(format!("`diff {name}`: the workflow has no step `{name}`"))
                    .at(crate::base::error::Location::file(
                        &self.loaded.workflow.path,
                    ))
                    .hint(format!("its steps are: {}", names.join(", "))),
            );
        }
        problems.into_result()
    }

    /// Plans one step, or says which earlier steps it waits for: those never applied, and
    /// `moving`, those whose plans change outputs it uses.
    fn diff_step(
        &self,
        prepared: &Prepared,
        index: usize,
        moving: Vec<String>,
    ) -> Result<StepDiff> {
        let rendered = &prepared.rendered[index];
        let name = rendered.name.clone();
        if !rendered.unknown_outputs.is_empty() || !moving.is_empty() {
            let mut waits_for: BTreeSet<String> = rendered
                .unknown_outputs
                .iter()
                .map(|(step, _)| step.clone())
                .collect();
            let mut why = Vec::new();
            if !rendered.unknown_outputs.is_empty() {
                why.push(format!(
                    "it uses {}, not known yet",
                    decide::unknown_outputs(rendered).join(", ")
                ));
            }
            if !moving.is_empty() {
                why.push(format!(
                    "it uses outputs of {}, which would change",
                    moving.join(", ")
                ));
            }
            waits_for.extend(moving);
            let mut diff = StepDiff::without_plan(&name, Status::NotKnown, why.join("; "));
            diff.waits_for = waits_for.into_iter().collect();
            self.logger().info(
                Some(&name),
                &format!(
                    "not known until {} {} applied",
                    diff.waits_for.join(", "),
                    if diff.waits_for.len() == 1 {
                        "is"
                    } else {
                        "are"
                    }
                ),
            );
            return Ok(diff);
        }
        let inputs = rendered.inputs(prepared.code.record.identity.as_deref());
        let file = prepared.journal.reviewed_plan(&name)?;
        let (changes, has_changes) = self.plan_step(&prepared.code.dir, rendered, &file)?;
        let sha256 = file_sha256(&file)?;
        let redactor = self.logger().redactor();
        let changes = masked(changes, redactor);
        let status = if has_changes {
            Status::Changes
        } else {
            Status::NoChanges
        };
        self.logger().info(
            Some(&name),
            &format!(
                "{}: {} to add, {} to change, {} to destroy; plan saved to {}",
                status.as_str(),
                changes.counts.add,
                changes.counts.change,
                changes.counts.destroy,
                file.display()
            ),
        );
        Ok(StepDiff {
            step: name,
            status,
            waits_for: Vec::new(),
            reason: None,
            changes: Some(changes),
            plan: Some(SavedPlan {
                file,
                sha256,
                digest: render::digest(&inputs),
                inputs,
            }),
        })
    }

    /// `init`, `plan -out` (to a temporary name, renamed to `file` once whole), `show -json`.
    fn plan_step(
        &self,
        code: &Path,
        rendered: &RenderedStep,
        file: &Path,
    ) -> Result<(Changes, bool)> {
        let cwd = code.join(&rendered.dir);
        let mut state = self.step_files(rendered, &cwd)?;
        if cwd.join(decide::ERRORED_STATE).exists() {
            self.logger().warn(
                Some(&rendered.name),
                &format!(
                    "{} holds a state terraform could not save to its backend: `run` pushes it first, and this plan does not take it into account",
                    cwd.join(decide::ERRORED_STATE).display()
                ),
            );
        }
        for init in self.terraform.prepare_commands(rendered, &cwd) {
            let _turn = self.init_turn(rendered);
            self.racing(rendered, || {
                self.execute_detailed(rendered, &init, Output::Log, &mut state, false)
            })?;
        }
        let temp = durable::temp_sibling(file);
        // Terraform writes into an existing file without changing its mode: the plan, which
        // holds every value, is owner-only from its first byte, not once it is whole.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| Error::io(format!("cannot create {}", temp.display()), e))?;
        let command = self.terraform.plan_command(rendered, &cwd, &temp);
        let planned = self.racing(rendered, || {
            let mut stream = Stream::new(&rendered.name, self.logger().redactor().clone());
            self.execute_detailed(
                rendered,
                &command,
                Output::Stream(&mut stream),
                &mut state,
                true,
            )
        });
        let has_changes = match planned {
            Ok((_, changes)) => changes,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        keep_plan(&temp, file)?;
        let show = self.terraform.show_plan_command(rendered, &cwd, file);
        let (stdout, _) =
            self.execute_detailed(rendered, &show, Output::Capture, &mut state, false)?;
        let changes = plan::parse(&stdout).map_err(|message| Error::StepFailed {
            step: rendered.name.clone(),
            message,
        })?;
        Ok((changes, has_changes))
    }
}

/// The document of a diff that planned `steps` with the code `code`.
fn document(steps: Vec<StepDiff>, code: Option<String>) -> Document {
    let made_at = clock::now_rfc3339();
    let mut id = Sha256::new();
    id.update(made_at.as_bytes());
    for step in &steps {
        id.update(step.step.as_bytes());
        if let Some(plan) = &step.plan {
            id.update(plan.sha256.as_bytes());
        }
    }
    Document {
        format: FORMAT,
        id: render::hex(&id.finalize()[..8]),
        made_at,
        code,
        changes: steps
            .iter()
            .any(|s| matches!(s.status, Status::Changes | Status::NotKnown)),
        steps,
        code_current: false,
    }
}

impl StepDiff {
    fn without_plan(step: &str, status: Status, reason: String) -> Self {
        StepDiff {
            step: step.to_string(),
            status,
            waits_for: Vec::new(),
            reason: Some(reason),
            changes: None,
            plan: None,
        }
    }
}

/// Makes the plan terraform wrote at `temp` owner-only (it holds every value, secrets
/// included) and durable, under its own name.
fn keep_plan(temp: &Path, file: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let result = std::fs::set_permissions(temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::File::open(temp)?.sync_all())
        .and_then(|_| std::fs::rename(temp, file))
        .and_then(|_| durable::sync_dir(file.parent().unwrap_or(Path::new("."))));
    result.map_err(|e| {
        let _ = std::fs::remove_file(temp);
        Error::io(format!("cannot save the plan as {}", file.display()), e)
    })
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(render::hex(&Sha256::digest(&bytes)))
}

/// Addresses and attribute names can hold a value (a `for_each` key): masked like the log.
fn masked(mut changes: Changes, redactor: &Redactor) -> Changes {
    let mask = |text: &mut String| *text = redactor.mask(text).into_owned();
    for r in changes.resources.iter_mut().chain(changes.drift.iter_mut()) {
        mask(&mut r.address);
        for a in &mut r.attributes {
            mask(&mut a.name);
        }
    }
    for o in &mut changes.outputs {
        mask(&mut o.name);
    }
    changes
}
