//! Loading and checking everything before anything runs: the workflow, the params, every
//! template of every step, and the journal, with every problem reported at once.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Problem, Problems, Result};
use crate::journal::{Journal, Marker};
use crate::render::{Outputs, RenderedSource, Renderer};
use crate::secrets::Redactor;
use crate::workflow::Workflow;

/// A workflow with its params and environment, parsed and ready to render.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub workflow: Workflow,
    pub params: Value,
    pub env: Vec<(String, String)>,
    pub redactor: Redactor,
}

impl Loaded {
    pub fn renderer(&self) -> Renderer<'_> {
        Renderer::new(&self.workflow, &self.params, &self.env)
    }
}

/// Parses both files, reporting the problems of both at once.
pub fn load(workflow: &Path, params: &Path) -> Result<Loaded> {
    let workflow = crate::workflow::load(workflow);
    let params = crate::params::load(params);
    let (workflow, params) = match (workflow, params) {
        (Ok(w), Ok(p)) => (w, p),
        (w, p) => {
            let mut problems = Problems::default();
            problems.extend(w.err().unwrap_or_default());
            problems.extend(p.err().unwrap_or_default());
            return Err(Error::Input(problems));
        }
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let redactor = Redactor::from_inputs(&params, &env);
    Ok(Loaded {
        workflow,
        params,
        env,
        redactor,
    })
}

/// What the journal says of each step, in workflow order, once every file has been read.
pub struct Recorded {
    pub markers: Vec<Option<Marker>>,
    pub outputs: Outputs,
}

/// Reads every step's marker; a corrupt one, or one of a step the workflow lacks, is a problem.
pub fn read_journal(loaded: &Loaded, journal: &Journal) -> std::result::Result<Recorded, Problems> {
    match journal.check_root() {
        Ok(()) => {}
        Err(Error::Input(p)) => return Err(p),
        Err(e) => return Err(Problems::one(Problem::new(e.to_string()))),
    }
    let mut problems = Problems::default();
    let mut markers = Vec::new();
    let mut outputs = Outputs::new();
    for step in &loaded.workflow.steps {
        match journal.marker(&step.name) {
            Ok(marker) => {
                if let Some(marker) = &marker {
                    outputs.insert(step.name.clone(), marker.outputs.clone());
                    mask_sensitive(&loaded.redactor, marker);
                }
                markers.push(marker);
            }
            Err(Error::Input(p)) => {
                problems.extend(p);
                markers.push(None);
            }
            Err(e) => {
                problems.push(Problem::new(e.to_string()).in_step(&step.name));
                markers.push(None);
            }
        }
        // The other records are read only when their step comes up; a corrupt one must stop
        // the command now, not after the steps before it were applied.
        let others = [
            journal.attempt(&step.name).map(drop),
            journal.destroyed(&step.name).map(drop),
            journal.destroy_attempt(&step.name).map(drop),
        ];
        for result in others {
            match result {
                Ok(()) => {}
                Err(Error::Input(p)) => problems.extend(p),
                Err(e) => problems.push(Problem::new(e.to_string()).in_step(&step.name)),
            }
        }
    }
    match journal.tombstone() {
        Ok(_) => {}
        Err(Error::Input(p)) => problems.extend(p),
        Err(e) => problems.push(Problem::new(e.to_string())),
    }
    match journal.step_names() {
        Ok(names) => {
            for name in names {
                if loaded.workflow.step(&name).is_none() {
                    problems.push(
                        Problem::new(format!(
                            "the journal under {} has records of a step `{name}` that the workflow does not have",
                            journal.dir().display()
                        ))
                        .at(crate::error::Location::file(&loaded.workflow.path))
                        .hint(format!(
                            "if that step's resources were destroyed or are managed elsewhere, `bootstrapper reset {name}` forgets it; otherwise use the workflow that has it"
                        )),
                    );
                }
            }
        }
        Err(e) => problems.push(Problem::new(e.to_string())),
    }
    if problems.is_empty() {
        Ok(Recorded { markers, outputs })
    } else {
        Err(problems)
    }
}

/// Sensitive outputs are masked from the moment they are known or read back.
pub fn mask_sensitive(redactor: &Redactor, marker: &Marker) {
    for name in &marker.sensitive {
        if let Some(value) = marker.outputs.get(name) {
            redactor.add_named(value, true);
        }
    }
}

/// Renders the source and every step (placeholders standing for outputs not known yet),
/// collecting every problem.
pub fn check(loaded: &Loaded, outputs: &Outputs) -> std::result::Result<RenderedSource, Problems> {
    let renderer = loaded.renderer();
    let mut problems = Problems::default();
    let source = renderer
        .render_source()
        .map_err(|p| problems.extend(p))
        .ok();
    for index in 0..loaded.workflow.steps.len() {
        if let Err(p) = renderer.render_step(index, outputs, true) {
            problems.extend(p);
        }
    }
    match source {
        Some(source) if problems.is_empty() => Ok(source),
        _ => Err(problems),
    }
}

/// Warnings that do not stop a run, for `validate` to show.
pub fn warnings(loaded: &Loaded) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(params) = loaded.params.as_object() {
        for (name, value) in params {
            if let Value::String(s) = value {
                if crate::secrets::is_secret_name(name)
                    && !s.is_empty()
                    && s.len() < crate::secrets::MIN_MASKED_LEN
                {
                    warnings.push(format!(
                        "param `{name}` looks secret but is shorter than {} characters, too short to mask in logs",
                        crate::secrets::MIN_MASKED_LEN
                    ));
                }
            }
        }
    }
    warnings
}
