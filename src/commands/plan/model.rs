//! The plan worked out: per step, what the command would decide and run, and what stands in
//! its way, from the same decisions as [`crate::engine::decide`].

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::base::clock;
use crate::base::error::{Error, Result};
use crate::engine::decide;
use crate::process::Command;
use crate::root::journal::Journal;
use crate::root::lock::{self, Holder};
use crate::root::recorded::Recorded;
use crate::root::source;
use crate::terraform::command::Terraform;
use crate::terraform::local_state::LocalState;
use crate::workflow::load::{self, Loaded};
use crate::workflow::render::{Outputs, RenderedSource, RenderedStep};

/// Which command is being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    Run,
    Destroy,
}

pub use crate::engine::decide::Decision;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub command: CommandKind,
    pub root: String,
    /// False when nothing was ever put under the root (a plan from a laptop).
    pub root_exists: bool,
    /// Who holds the root's lock now: the command would wait for it, or fail with exit 3.
    pub lock: Option<Holder>,
    pub terraform: Program,
    pub code: CodePlan,
    /// Why the command would do nothing at all, if it would not.
    pub blocked: Option<String>,
    /// Things that would stop the command or that the operator should know.
    pub notes: Vec<String>,
    /// At most this many steps run at once.
    pub parallelism: usize,
    /// The steps in the order the command reaches them: each group runs together, once the
    /// groups before it are done (as far as `parallelism` allows).
    pub waves: Vec<Vec<String>>,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Serialize)]
pub struct Program {
    /// The binary as it would be run: resolved in PATH when found.
    pub path: String,
    pub found: bool,
}

/// The code the steps run in.
#[derive(Debug, Serialize)]
pub struct CodePlan {
    /// `<root>/<source.dir>`.
    pub dir: String,
    /// `use` (it is there), `copy` (from the image), `clone` (with git), or `none` (nothing
    /// to take it from: the command would stop).
    pub action: &'static str,
    /// The image directory or the repository URL (credentials masked), when not there yet.
    pub from: Option<String>,
    pub git_ref: Option<String>,
    /// What the root records of the code that is there.
    pub record: Option<source::Record>,
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StepPlan {
    pub step: String,
    pub decision: Decision,
    pub reason: String,
    /// The steps it starts only after: those it needs for `run`, those that need it for
    /// `destroy`.
    pub waits_for: Vec<String>,
    /// For `run_again`: the inputs that differ from what the step was applied with; for
    /// `run_again_if_changed`: the inputs that cannot be compared yet.
    pub changed_inputs: Vec<String>,
    /// `steps.<step>.outputs.<output>` values not known yet, shown as placeholders.
    pub unknown_outputs: Vec<String>,
    /// The directory terraform would run in.
    pub dir: String,
    pub workspace: Option<String>,
    pub backend_config: Map<String, Value>,
    /// The vars file it would write before running terraform.
    pub vars_file: Option<VarsFile>,
    pub commands: Vec<PlannedCommand>,
    /// Why the command would stop at this step, if it would.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VarsFile {
    pub path: String,
    pub mode: &'static str,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct PlannedCommand {
    pub cwd: String,
    pub argv: Vec<String>,
    pub env: Map<String, Value>,
}

/// Works out the plan; an input error is what the command itself would stop with.
pub fn make(loaded: &Loaded, root: &Path, terraform: &Terraform, destroy: bool) -> Result<Plan> {
    let journal = Journal::at(root);
    // Checks that the root is a directory or absent, before anything else reads it.
    let recorded = crate::root::recorded::read_journal(loaded, &journal).map_err(Error::Input)?;
    let root_exists = root.is_dir();
    let checked =
        load::check(loaded, &recorded.outputs, load::Modules::Under(root)).map_err(Error::Input)?;
    let source = checked.source;
    let rendered = checked.steps;
    source::check_links(root, loaded).into_result()?;

    let mut notes = checked.notes;
    let (terraform, found) = resolve(terraform, &mut notes);
    let lock = lock::holder(journal.dir());
    if let Some(holder) = &lock {
        notes.push(format!(
            "the root is locked by {holder}: {}",
            if destroy {
                "destroy would ask it to stop and wait for the lock"
            } else {
                "run would stop with exit 3 (run --hold waits for the lock)"
            }
        ));
    }
    let code = plan_code(root, &source, &journal);
    let code_dir = root.join(&source.dir);
    let identity = code
        .record
        .as_ref()
        .map(|r| r.identity.clone())
        .unwrap_or_default();
    // Where the modules are read from before the code is in place: the tree it is copied from.
    let module_dir = match (&code.record, &source.image_dir) {
        (None, Some(image)) if image.is_dir() => image.clone(),
        _ => code_dir.clone(),
    };
    let context = Context {
        loaded,
        journal: &journal,
        terraform: &terraform,
        code_dir: &code_dir,
        module_dir: &module_dir,
        code_present: code.record.is_some(),
        identity: identity.as_deref(),
        rendered: &rendered,
        rendered_with: &recorded.outputs,
    };
    let (blocked, mut steps) = context.steps(destroy, &recorded, &mut notes)?;
    let waves = order(loaded, destroy, &mut steps)?;
    state_notes(&steps, &mut notes);
    Ok(Plan {
        command: if destroy {
            CommandKind::Destroy
        } else {
            CommandKind::Run
        },
        root: root.display().to_string(),
        root_exists,
        lock,
        terraform: Program {
            path: terraform.program.display().to_string(),
            found,
        },
        code,
        blocked,
        notes,
        parallelism: loaded.workflow.settings.parallelism,
        waves,
        steps,
    })
}

/// Terraform with its program found in PATH, and whether it was; a note says what the
/// command would do without it.
fn resolve(terraform: &Terraform, notes: &mut Vec<String>) -> (Terraform, bool) {
    let mut terraform = terraform.clone();
    let found = match terraform.resolve() {
        Ok(program) => {
            terraform.program = program;
            true
        }
        Err(e) => {
            let why = match &e {
                Error::Input(problems) if !problems.is_empty() => problems.0[0].message.clone(),
                e => e.to_string(),
            };
            notes.push(format!("{why}: the command would stop with exit 2"));
            false
        }
    };
    (terraform, found)
}

/// Fills in what each step waits for; returns the groups the steps run in, in order.
fn order(loaded: &Loaded, destroy: bool, steps: &mut [StepPlan]) -> Result<Vec<Vec<String>>> {
    let graph = loaded.graph().map_err(Error::Input)?;
    let graph = if destroy { graph.reversed() } else { graph };
    let names = |set: &mut dyn Iterator<Item = usize>| -> Vec<String> {
        set.map(|i| loaded.workflow.steps[i].name.clone()).collect()
    };
    for plan in steps.iter_mut() {
        if let Some(i) = loaded.workflow.step_index(&plan.step) {
            plan.waits_for = names(&mut graph.needs(i).iter().copied());
        }
    }
    let wave_of = graph.waves();
    let mut order: Vec<usize> = (0..graph.len()).collect();
    if destroy {
        order.reverse();
    }
    let mut waves: Vec<Vec<String>> = Vec::new();
    for i in order {
        let w = wave_of[i];
        if waves.len() <= w {
            waves.resize(w + 1, Vec::new());
        }
        waves[w].push(loaded.workflow.steps[i].name.clone());
    }
    Ok(waves)
}

/// What the local state of each step that would run says about it.
fn state_notes(steps: &[StepPlan], notes: &mut Vec<String>) {
    for step in steps {
        if matches!(step.decision, Decision::Skip | Decision::Blocked) {
            continue;
        }
        let state = LocalState::of(Path::new(&step.dir), step.workspace.as_deref());
        match state.check() {
            Ok(None) => {}
            Ok(Some(what)) => notes.push(format!("step {}: {what}", step.step)),
            Err(why) => notes.push(format!("step {}: {why}; the step would fail", step.step)),
        }
        let errored = Path::new(&step.dir).join(crate::engine::decide::ERRORED_STATE);
        if errored.exists() && !crate::terraform::local_state::holds_complete_state(&errored) {
            notes.push(format!(
                "step {}: {} holds no complete state (terraform could not save one): it would be set aside, not pushed, and resources of the attempt that left it may be recorded nowhere",
                step.step,
                errored.display()
            ));
        }
    }
}

/// What the command would do about the code: use it, or copy or clone it first.
fn plan_code(root: &Path, source: &RenderedSource, journal: &Journal) -> CodePlan {
    let dir = root.join(&source.dir);
    let mut plan = CodePlan {
        dir: dir.display().to_string(),
        action: "use",
        from: None,
        git_ref: None,
        record: None,
        note: None,
    };
    if let Some(code) = source::inspect(root, source, journal) {
        plan.record = Some(code.record);
        return plan;
    }
    let unknown = "the code's identity is known only once it is in place, so steps applied \
                   before cannot be compared on it until then";
    match (&source.image_dir, &source.git_url) {
        (Some(image), _) if image.is_dir() => {
            plan.action = "copy";
            plan.from = Some(image.display().to_string());
        }
        (_, Some(url)) => {
            plan.action = "clone";
            plan.from =
                Some(crate::base::secrets::mask_url_userinfo(url.as_str().into()).into_owned());
            plan.git_ref = source.git_ref.clone();
        }
        (Some(image), None) => {
            plan.action = "none";
            plan.note = Some(format!(
                "neither the code directory nor `source.image_dir` {} exists: the command would stop here with exit 2",
                image.display()
            ));
            return plan;
        }
        (None, None) => {
            plan.action = "none";
            plan.note = Some(
                "the code directory does not exist and the workflow names no `source.image_dir` or `source.git_url`: the command would stop here with exit 2"
                    .to_string(),
            );
            return plan;
        }
    }
    plan.note = Some(unknown.to_string());
    plan
}

/// What every step's plan is worked out from.
struct Context<'a> {
    loaded: &'a Loaded,
    journal: &'a Journal,
    terraform: &'a Terraform,
    code_dir: &'a Path,
    /// The code, or the image's tree that it would be copied from.
    module_dir: &'a Path,
    code_present: bool,
    identity: Option<&'a str>,
    /// Every step as the checks rendered it, with `rendered_with`, to use again.
    rendered: &'a [RenderedStep],
    rendered_with: &'a Outputs,
}

impl Context<'_> {
    /// Every step's plan, in the order the command reaches them, and why the command would
    /// do nothing at all, if it would not.
    fn steps(
        &self,
        destroy: bool,
        recorded: &Recorded,
        notes: &mut Vec<String>,
    ) -> Result<(Option<String>, Vec<StepPlan>)> {
        let tombstone = self.journal.tombstone()?;
        if !destroy {
            return Ok(match &tombstone {
                Some(t) => (Some(decide::tombstone_message(t)), self.blocked_steps()),
                None => (None, self.apply_steps(recorded)?),
            });
        }
        if let Some(t) = &tombstone {
            notes.push(match t.finished_at {
                Some(at) => format!(
                    "a destroy finished at {}; steps destroyed then are skipped",
                    clock::format(at)
                ),
                None => format!(
                    "a destroy began at {} and did not finish; this one would finish it",
                    clock::format(t.started_at)
                ),
            });
        }
        Ok((None, self.destroy_steps(recorded)?))
    }
    /// `run`, step by step in order.
    fn apply_steps(&self, recorded: &Recorded) -> Result<Vec<StepPlan>> {
        // The outputs `run` would have when it reaches each step: those of skipped steps;
        // a step that is applied (again) has outputs known only afterwards.
        let mut outputs = Outputs::new();
        let mut plans = Vec::new();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate() {
            let rendered = load::render_again(
                self.loaded,
                self.rendered,
                self.rendered_with,
                index,
                &outputs,
                true,
            )
            .map_err(Error::Input)?;
            let inputs = rendered.inputs(self.identity);
            let marker = recorded.markers[index].as_ref();
            let uncertain = decide::uncertain_inputs(&rendered, self.code_present);
            let decided = decide::apply(&rendered, &inputs, marker, &uncertain, self.journal)?;
            let mut plan = self.step_plan(&rendered, &decided);
            if decided.decision == Decision::Skip {
                let marker = marker.expect("skipped steps have markers");
                outputs.insert(step.name.clone(), marker.outputs.clone());
            } else {
                plan.commands = self.commands(&rendered, false);
                plan.problem = self.missing_dir(&rendered);
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// `destroy`, in reverse order.
    fn destroy_steps(&self, recorded: &Recorded) -> Result<Vec<StepPlan>> {
        // Every marker's outputs: earlier steps are still there when a later one is destroyed.
        let outputs = recorded.outputs.clone();
        let mut plans = Vec::new();
        for (index, step) in self.loaded.workflow.steps.iter().enumerate().rev() {
            let rendered = load::render_again(
                self.loaded,
                self.rendered,
                self.rendered_with,
                index,
                &outputs,
                true,
            )
            .map_err(Error::Input)?;
            let decided =
                decide::destroy(&step.name, recorded.markers[index].as_ref(), self.journal)?;
            let mut plan = self.step_plan(&rendered, &decided);
            if decided.decision == Decision::Destroy {
                plan.commands = self.commands(&rendered, true);
                plan.problem = self.missing_dir(&rendered);
                if !rendered.unknown_outputs.is_empty() {
                    plan.problem = Some(format!(
                        "destroy cannot render it: the outputs {} are not in the journal",
                        decide::unknown_outputs(&rendered).join(", ")
                    ));
                }
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Every step, untouched: `run` on a destroyed root applies nothing.
    fn blocked_steps(&self) -> Vec<StepPlan> {
        let decided = decide::blocked();
        self.loaded
            .workflow
            .steps
            .iter()
            .map(|step| StepPlan {
                step: step.name.clone(),
                decision: decided.decision,
                reason: decided.reason.clone(),
                waits_for: Vec::new(),
                changed_inputs: Vec::new(),
                unknown_outputs: Vec::new(),
                dir: String::new(),
                workspace: None,
                backend_config: Map::new(),
                vars_file: None,
                commands: Vec::new(),
                problem: None,
            })
            .collect()
    }

    fn step_plan(&self, rendered: &RenderedStep, decided: &decide::Decided) -> StepPlan {
        let cwd = self.cwd(rendered);
        StepPlan {
            step: rendered.name.clone(),
            decision: decided.decision,
            reason: decided.reason.clone(),
            waits_for: Vec::new(),
            changed_inputs: decided.changed_inputs.clone(),
            unknown_outputs: decide::unknown_outputs(rendered),
            dir: cwd.display().to_string(),
            workspace: rendered.workspace.clone(),
            backend_config: rendered
                .backend_config
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            vars_file: rendered
                .vars
                .as_ref()
                .filter(|_| decided.decision.runs())
                .map(|content| VarsFile {
                    path: cwd.join(rendered.vars_file()).display().to_string(),
                    mode: "0600",
                    content: content.clone(),
                }),
            commands: Vec::new(),
            problem: None,
        }
    }

    fn cwd(&self, rendered: &RenderedStep) -> PathBuf {
        self.code_dir.join(&rendered.dir)
    }

    /// The very commands `run` (or `destroy`) would run for the step.
    fn commands(&self, rendered: &RenderedStep, destroy: bool) -> Vec<PlannedCommand> {
        let module = self.module_dir.join(&rendered.dir);
        decide::commands(
            self.terraform,
            rendered,
            &self.cwd(rendered),
            &module,
            destroy,
        )
        .iter()
        .map(|step| planned(&step.command))
        .collect()
    }

    /// `run` checks every step's directory before the first step; say so where it would fail.
    fn missing_dir(&self, rendered: &RenderedStep) -> Option<String> {
        let cwd = self.cwd(rendered);
        (self.code_present && !rendered.dir_unknown() && !cwd.is_dir()).then(|| {
            format!(
                "its directory {} does not exist in the code: the command would stop before the first step, with exit 2",
                cwd.display()
            )
        })
    }
}

fn planned(command: &Command) -> PlannedCommand {
    let mut argv = vec![command.program.display().to_string()];
    argv.extend(command.args.iter().cloned());
    PlannedCommand {
        cwd: command.cwd.display().to_string(),
        argv,
        env: command
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    }
}
