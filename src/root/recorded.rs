//! What the journal says of a loaded workflow's steps: every record read and checked at once,
//! before anything runs, so that a corrupt one stops a command before its first step.

use crate::base::error::{Error, Problem, Problems};
use crate::base::secrets::Redactor;
use crate::root::journal::{Journal, Marker};
use crate::workflow::load::Loaded;
use crate::workflow::render::Outputs;

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
                        .at(crate::base::error::Location::file(&loaded.workflow.path))
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
