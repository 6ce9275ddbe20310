//! The JSON records both the journal and the controller keep: read whole, absent as `None`,
//! written crash-safely. Each caller says what a corrupt one means to its user.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::base::durable;

/// Why a record could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The file is there but is not the record: torn, edited or of another version.
    Corrupt(serde_json::Error),
}

/// The record at `path`, or `None` when there is no file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(ReadError::Corrupt),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Writes `value` pretty-printed, with the crash-safe sequence, readable only with `mode`.
pub fn write<T: Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    durable::write(path, &bytes, mode)
}
