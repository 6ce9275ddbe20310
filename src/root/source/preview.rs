//! `diff --code current`: the image's code, with the local state of the code in place,
//! copied into a temporary tree under the journal's directory, for a diff to plan what an
//! upgrade would change without replacing the code in place. The tree is removed when the
//! [`Preview`] is dropped, and by the next preview if a crash left it.

use std::path::{Path, PathBuf};

use super::acquire::add_overlays;
use super::copy::copy_hashed;
use super::{code_dir, input, kept_state, remove_any, Code, Record};
use crate::base::error::{Error, Result};
use crate::base::log::Logger;
use crate::root::journal::Journal;
use crate::workflow::render::RenderedSource;

const PREVIEW_CODE: &str = "preview-code";

/// The temporary tree; removed on drop.
pub struct Preview {
    pub code: Code,
}

impl Drop for Preview {
    fn drop(&mut self) {
        let _ = remove_any(&self.code.dir);
    }
}

/// Builds the preview tree; must be called with the root lock held.
pub fn preview(
    root: &Path,
    source: &RenderedSource,
    journal: &Journal,
    logger: &Logger,
) -> Result<Preview> {
    let Some(image_dir) = source.image_dir.as_ref().filter(|d| d.is_dir()) else {
        return Err(input(
            "the workflow's code is not copied from the image (`source.image_dir` is not there), so it has no current version to plan against".to_string(),
            "set `source.image_dir` to the code in the image, or diff without --code",
        ));
    };
    let dir: PathBuf = journal.dir().join(PREVIEW_CODE);
    if dir.symlink_metadata().is_ok() {
        remove_any(&dir).map_err(|e| Error::io(format!("cannot remove {}", dir.display()), e))?;
    }
    // From here on the guard removes whatever was made, whatever fails.
    let mut preview = Preview {
        code: Code {
            dir: dir.clone(),
            record: Record {
                kind: "image".into(),
                origin: image_dir.display().to_string(),
                git_ref: None,
                identity: None,
                at: crate::base::clock::now_rfc3339(),
            },
        },
    };
    let identity = copy_hashed(image_dir, &dir).map_err(|e| {
        Error::io(
            format!("cannot copy {} into {}", image_dir.display(), dir.display()),
            e,
        )
    })?;
    let mut record = preview.code.record.clone();
    record.identity = Some(identity);
    record = add_overlays(&dir, &source.overlays, record, logger)?;
    // The state the code in place has (or, after `reset source`, the state kept for it).
    let in_place = code_dir(root, source)?;
    let state_from = if in_place.is_dir() {
        in_place
    } else {
        journal.kept_state_dir()
    };
    if state_from.is_dir() {
        let carried = kept_state::keep(&state_from, &dir).map_err(|e| {
            Error::io(
                format!("cannot copy the state files of {}", state_from.display()),
                e,
            )
        })?;
        logger.info(
            None,
            &format!(
                "code: planning against the image's code ({}) in {}, with {carried} state file(s) of the code in place",
                record.identity.as_deref().unwrap_or("?"),
                dir.display()
            ),
        );
    }
    preview.code.record = record;
    Ok(preview)
}
