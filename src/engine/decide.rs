//! The one place that decides what a command does to each step: apply it, skip it or destroy
//! it, why, and the exact terraform commands it runs. `plan` prints these decisions, `run`
//! and `destroy` carry them out, and `status` reads whether a finished step would run again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::base::clock;
use crate::base::error::Result;
use crate::process::Command;
use crate::root::journal::{Attempt, AttemptState, Journal, Marker, Tombstone};
use crate::terraform::command::Terraform;
use crate::workflow::render::{self, RenderedStep};

/// Terraform leaves this in the step's directory when it could not upload the final state.
pub const ERRORED_STATE: &str = "errored.tfstate";

/// What happens to one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Never applied: it is applied.
    Run,
    /// Applied, and inputs known to differ: it is applied again.
    RunAgain,
    /// Applied; whether it runs again depends on values known only later (outputs of a step
    /// that runs before it, or the code's identity once the code is in place).
    RunAgainIfChanged,
    /// Applied with these very inputs (or, for destroy: nothing to destroy).
    Skip,
    /// It is destroyed.
    Destroy,
    /// The command does not get to it (the workflow was destroyed).
    Blocked,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Run => "run",
            Decision::RunAgain => "run again",
            Decision::RunAgainIfChanged => "run again if changed",
            Decision::Skip => "skip",
            Decision::Destroy => "destroy",
            Decision::Blocked => "blocked",
        }
    }

    /// Whether the command starts terraform for the step.
    pub fn runs(self) -> bool {
        matches!(
            self,
            Decision::Run | Decision::RunAgain | Decision::RunAgainIfChanged | Decision::Destroy
        )
    }
}

/// A decision and its grounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub decision: Decision,
    pub reason: String,
    /// For `RunAgain`: the inputs that differ from what the step was applied with; for
    /// `RunAgainIfChanged`: the inputs that cannot be compared yet.
    pub changed_inputs: Vec<String>,
}

/// Whether `run` applies a step rendered as `rendered`, whose inputs digest to `inputs`.
/// `uncertain` names the inputs whose values are not known yet (see [`uncertain_inputs`]);
/// `run` itself knows every value, so for it that set is empty.
pub fn apply(
    rendered: &RenderedStep,
    inputs: &BTreeMap<String, String>,
    marker: Option<&Marker>,
    uncertain: &BTreeSet<String>,
    journal: &Journal,
) -> Result<Decided> {
    let Some(marker) = marker else {
        let reason = match journal.attempt(&rendered.name)? {
            None => "never applied".to_string(),
            Some(attempt) => format!("not applied yet: {}", describe_attempt(&attempt)),
        };
        return Ok(Decided {
            decision: Decision::Run,
            reason,
            changed_inputs: Vec::new(),
        });
    };
    let applied = clock::format(marker.finished_at);
    if marker.digest == render::digest(inputs) {
        return Ok(Decided {
            decision: Decision::Skip,
            reason: format!("applied at {applied} with these very inputs"),
            changed_inputs: Vec::new(),
        });
    }
    let (unsure, sure): (Vec<String>, Vec<String>) = render::changed_inputs(&marker.inputs, inputs)
        .into_iter()
        .partition(|name| uncertain.contains(name));
    if !sure.is_empty() {
        return Ok(Decided {
            decision: Decision::RunAgain,
            reason: format!(
                "inputs changed since it was applied at {applied}: {}",
                sure.join(", ")
            ),
            changed_inputs: sure,
        });
    }
    let mut why = Vec::new();
    if !rendered.unknown_outputs.is_empty() {
        why.push(format!(
            "the outputs it uses ({}) are known only after the steps before it run again",
            unknown_outputs(rendered).join(", ")
        ));
    }
    if unsure.iter().any(|n| n == "code") {
        why.push("the code's identity is known only once the code is in place".to_string());
    }
    Ok(Decided {
        decision: Decision::RunAgainIfChanged,
        reason: format!(
            "applied at {applied}; whether it runs again depends on its {}: {}",
            unsure.join(", "),
            why.join("; ")
        ),
        changed_inputs: unsure,
    })
}

/// Whether `destroy` destroys a step: every step that ever started applying and is not
/// destroyed yet.
pub fn destroy(step: &str, marker: Option<&Marker>, journal: &Journal) -> Result<Decided> {
    let skip = |reason: String| Decided {
        decision: Decision::Skip,
        reason,
        changed_inputs: Vec::new(),
    };
    if let Some(d) = journal.destroyed(step)? {
        return Ok(skip(format!(
            "already destroyed at {}",
            clock::format(d.finished_at)
        )));
    }
    if !journal.started(step) {
        return Ok(skip(
            "never started applying: nothing to destroy".to_string(),
        ));
    }
    let reason = match (marker, journal.destroy_attempt(step)?) {
        (_, Some(attempt)) => format!(
            "an earlier destroy did not finish: {}",
            describe_attempt(&attempt)
        ),
        (Some(marker), None) => format!("applied at {}", clock::format(marker.finished_at)),
        (None, None) => match journal.attempt(step)? {
            Some(attempt) => format!(
                "an apply started and may have created resources: {}",
                describe_attempt(&attempt)
            ),
            None => "an apply started and may have created resources".to_string(),
        },
    };
    Ok(Decided {
        decision: Decision::Destroy,
        reason,
        changed_inputs: Vec::new(),
    })
}

/// Every step is blocked: `run` on a destroyed workflow applies nothing.
pub fn blocked() -> Decided {
    Decided {
        decision: Decision::Blocked,
        reason: "the workflow was destroyed; run applies nothing".to_string(),
        changed_inputs: Vec::new(),
    }
}

/// Inputs whose value is not known yet: they hold placeholders, or (for `code`) the code is
/// not in place yet.
pub fn uncertain_inputs(rendered: &RenderedStep, code_present: bool) -> BTreeSet<String> {
    let placeholders = rendered.placeholders();
    let unknown = |text: &str| placeholders.iter().any(|p| text.contains(p.as_str()));
    let mut uncertain = BTreeSet::new();
    let mut check = |name: &str, texts: Vec<&str>| {
        if texts.into_iter().any(unknown) {
            uncertain.insert(name.to_string());
        }
    };
    let dir = rendered.dir.to_string_lossy();
    check("dir", vec![&dir]);
    check(
        "workspace",
        rendered.workspace.iter().map(String::as_str).collect(),
    );
    check(
        "backend_config",
        rendered
            .backend_config
            .iter()
            .map(|(_, v)| v.as_str())
            .collect(),
    );
    check("vars", rendered.vars.iter().map(String::as_str).collect());
    check(
        "init_args",
        rendered.init_args.iter().map(String::as_str).collect(),
    );
    check(
        "apply_args",
        rendered.apply_args.iter().map(String::as_str).collect(),
    );
    if !code_present {
        uncertain.insert("code".to_string());
    }
    uncertain
}

/// What one command of a step is for, so that its runner knows what to do around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Init,
    /// `state push errored.tfstate`: afterwards the file is kept under another name.
    PushErrored,
    Apply,
    Destroy,
    /// `output -json`: its stdout is the step's outputs, sensitive ones included.
    Output,
}

/// One terraform command of a step.
#[derive(Debug, Clone)]
pub struct Step {
    pub role: Role,
    pub command: Command,
}

/// The exact commands that apply (or destroy) a step in `cwd`, as they stand now: init
/// (the workspace is `TF_WORKSPACE` in every command's environment), a pending `errored.tfstate` push, then apply, or destroy. The apply's stream
/// carries the outputs' values, but for sensitive ones: `output -json` follows it only when
/// the module (its files in `module`, `cwd` or the tree it is copied from) declares one, and
/// keeps its state elsewhere than in a local file (see [`state_at_hand`]).
pub fn commands(
    terraform: &Terraform,
    rendered: &RenderedStep,
    cwd: &Path,
    module: &Path,
    destroy: bool,
) -> Vec<Step> {
    let mut steps = Vec::new();
    steps.extend(
        terraform
            .prepare_commands(rendered, cwd)
            .into_iter()
            .map(|command| Step {
                role: Role::Init,
                command,
            }),
    );
    // An incomplete one is set aside instead (see `Engine::set_aside_errored_state`).
    if crate::terraform::local_state::holds_complete_state(&cwd.join(ERRORED_STATE)) {
        steps.push(Step {
            role: Role::PushErrored,
            command: terraform.state_push_command(rendered, cwd, ERRORED_STATE),
        });
    }
    if destroy {
        steps.push(Step {
            role: Role::Destroy,
            command: terraform.destroy_command(rendered, cwd),
        });
    } else {
        let apply = terraform
            .apply_commands(rendered, cwd)
            .pop()
            .expect("apply is last");
        steps.push(Step {
            role: Role::Apply,
            command: apply,
        });
        if crate::workflow::module_vars::declares_sensitive_output(module)
            && !state_at_hand(rendered, module)
        {
            steps.push(Step {
                role: Role::Output,
                command: terraform.output_command(rendered, cwd),
            });
        }
    }
    steps
}

/// Whether the step's state is the local file in its directory, which holds the values of
/// its outputs, sensitive ones too: no `output -json` is needed to read them.
pub fn state_at_hand(rendered: &RenderedStep, module: &Path) -> bool {
    rendered.backend_config.is_empty() && crate::workflow::module_vars::keeps_state_locally(module)
}

/// `steps.<step>.outputs.<output>` for every output a rendering could not know yet.
pub fn unknown_outputs(rendered: &RenderedStep) -> Vec<String> {
    rendered
        .unknown_outputs
        .iter()
        .map(|(step, output)| format!("steps.{step}.outputs.{output}"))
        .collect()
}

pub fn describe_attempt(attempt: &Attempt) -> String {
    let n = attempt.attempts;
    match attempt.state {
        AttemptState::Running => format!(
            "attempt {n} (started {}) was cut off before it finished",
            clock::format(attempt.started_at)
        ),
        AttemptState::Failed => format!(
            "attempt {n} failed: {}",
            attempt.last_error.as_deref().unwrap_or("no error recorded")
        ),
        AttemptState::Succeeded => format!("attempt {n} succeeded"),
    }
}

/// What `run` says when the workflow was destroyed.
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
