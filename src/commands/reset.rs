//! `reset`: forgets what the journal says of a step, of the code, or of everything, so the
//! next run does that work again. It never touches terraform's state.

use crate::base::error::{exit, Error, Problem, Problems, Result};
use crate::engine::core::Engine;
use crate::root::journal::Journal;
use crate::root::lock::Lock;

/// `reset STEP`: forgets one step, or the code (`reset source`), so the next run applies it
/// again.
pub fn step(engine: &Engine, step: &str) -> Result<i32> {
    let (loaded, root, logger) = (&engine.loaded, engine.root.as_path(), engine.logger());
    let journal = Journal::at(root);
    if step == crate::root::source::RESET_NAME {
        let source = loaded.renderer().render_source().map_err(Error::Input)?;
        let code = root.join(&source.dir);
        if !journal.dir().is_dir() && code.symlink_metadata().is_err() {
            logger.info(None, "code: nothing on the root yet; nothing to forget");
            return Ok(exit::OK);
        }
        journal.create()?;
        let _lock = Lock::acquire(journal.dir(), &format!("reset {step}"))?;
        crate::root::source::forget(root, &source, &journal, logger)?;
        return Ok(exit::OK);
    }
    let known = journal
        .step_names()
        .map_err(|e| Error::input(e.to_string()))?;
    if loaded.workflow.step(step).is_none() && !known.iter().any(|s| s == step) {
        let names: Vec<&str> = loaded
            .workflow
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        return Err(Error::Input(Problems::one(
            Problem::new(format!("no step `{step}` in the workflow or the journal")).hint(format!(
                "steps are: {}; `{}` forgets the code",
                names.join(", "),
                crate::root::source::RESET_NAME
            )),
        )));
    }
    let _lock = Lock::acquire(journal.dir(), &format!("reset {step}"))?;
    if journal.forget(step)? {
        logger.info(Some(step), "forgotten: the next run applies it again");
    } else {
        logger.info(Some(step), "nothing recorded; nothing to forget");
    }
    Ok(exit::OK)
}

/// `reset --all`: forgets every step and a past destroy.
pub fn all(engine: &Engine) -> Result<i32> {
    let (root, logger) = (engine.root.as_path(), engine.logger());
    let journal = Journal::at(root);
    let _lock = Lock::acquire(journal.dir(), "reset --all")?;
    let forgotten = journal.forget_all()?;
    logger.info(
        None,
        &format!(
            "forgot {} step(s) and any record of a destroy: the next run bootstraps from scratch",
            forgotten.len()
        ),
    );
    Ok(exit::OK)
}
