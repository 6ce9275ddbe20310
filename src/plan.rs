//! `plan`: the dry run.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::load::Loaded;

pub fn main(
    _loaded: &Loaded,
    _root: &Path,
    _terraform: &Path,
    _destroy: bool,
    _json: bool,
    _out: &mut impl Write,
) -> Result<i32> {
    Err(Error::input("plan: being written"))
}
