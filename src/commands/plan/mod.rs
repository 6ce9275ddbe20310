//! `plan`: the dry run. What `run` (or `destroy`) would do now with this workflow, these
//! params and this root: per step, run, skip or run again and why, the exact commands and the
//! files it would write, every secret masked.
//!
//! Its decisions and commands are those of [`crate::engine::decide`], which `run` and `destroy`
//! carry out, so the plan cannot drift from the real thing. It only reads: no process is started (but
//! `terraform version`), and nothing is created under the root, not even the journal directory or the lock.
//!
//! `model` works the plan out; `print` writes it as text or JSON.

mod model;
mod print;

use crate::base::error::{exit, Error, Result};
use crate::engine::core::Engine;

pub use model::make;
pub use print::print;

/// `bootstrapper plan [--destroy] [--json]`.
pub fn command(engine: &mut Engine, destroy: bool, json: bool) -> Result<i32> {
    // Without terraform a laptop still plans, and the plan says where `run` would stop; a
    // terraform that is there must be one that `run` would accept.
    if engine.terraform.resolve().is_ok() {
        engine.terraform.verify(&engine.supervisor)?;
    }
    let (loaded, root) = (&engine.loaded, &engine.root);
    let plan = make(loaded, root, &engine.terraform, destroy)?;
    print(&plan, json, loaded, &mut std::io::stdout().lock())
        .map_err(|e| Error::io("cannot write to stdout", e))?;
    Ok(exit::OK)
}
