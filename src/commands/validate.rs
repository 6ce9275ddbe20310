//! `validate`: everything `run` would check before it starts, reported at once, and nothing
//! run or written.

use tracing::Level;

use crate::base::error::{exit, Error, Problems, Result};
use crate::base::log::Format;
use crate::engine::core::Engine;
use crate::workflow::load;

/// `validate`: every problem of workflow, templates, params, modules and terraform at once.
pub fn command(engine: &mut Engine) -> Result<i32> {
    let loaded = &engine.loaded.clone();
    let logger = engine.logger().clone();
    let (mut problems, notes) = match load::check(
        loaded,
        &Default::default(),
        load::Modules::Under(&engine.root),
    ) {
        Ok(checked) => (Problems::default(), checked.notes),
        Err(problems) => (problems, Vec::new()),
    };
    match engine.terraform.verify(&engine.supervisor) {
        Ok(_) => {}
        Err(Error::Input(p)) => problems.extend(p),
        Err(e) => return Err(e),
    }
    problems.extend(crate::root::source::check_links(&engine.root, loaded));
    problems.into_result()?;
    for warning in load::warnings(loaded).into_iter().chain(notes) {
        match logger.format() {
            Format::Json => logger.warn(None, &warning),
            Format::Text => logger.as_is(Level::WARN, None, &format!("warning: {warning}")),
        }
    }
    println!(
        "{}: {} steps, templates and params are valid",
        loaded.workflow.path.display(),
        loaded.workflow.steps.len()
    );
    Ok(exit::OK)
}
