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

use std::io::Write;
use std::path::Path;

use crate::base::error::{exit, Error, Result};
use crate::terraform::command::Terraform;
use crate::workflow::load::Loaded;

pub use model::{
    make, CodePlan, CommandKind, Decision, Plan, PlannedCommand, Program, StepPlan, VarsFile,
};
pub use print::print;

/// `bootstrapper plan [--destroy] [--json]`.
pub fn main(
    loaded: &Loaded,
    root: &Path,
    terraform: &Terraform,
    destroy: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<i32> {
    let plan = make(loaded, root, terraform, destroy)?;
    print(&plan, json, loaded, out).map_err(|e| Error::io("cannot write to stdout", e))?;
    Ok(exit::OK)
}
