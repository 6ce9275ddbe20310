//! `run --code current|previous`: moves the root to the image's code, or back to the code the
//! last upgrade replaced, keeping terraform's local state (as `reset source` does), just
//! before the run applies it.

use crate::base::error::{Error, Result};
use crate::engine::core::Engine;
use crate::root::journal::Journal;
use crate::root::lock::Lock;
use crate::root::source::Change;

pub fn change(engine: &Engine, change: Change) -> Result<()> {
    let (loaded, root, logger) = (&engine.loaded, engine.root.as_path(), engine.logger());
    let source = loaded.renderer().render_source().map_err(Error::Input)?;
    let journal = Journal::at(root);
    journal.check_root()?;
    journal.create()?;
    let _lock = Lock::acquire(journal.dir(), "run --code")?;
    crate::root::source::change(root, &source, &journal, change, logger)
}
