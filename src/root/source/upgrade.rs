//! Moving a root to other code, keeping terraform's local state: to the image's code when it
//! differs from the code in place (`run --code current`), or back to the code an upgrade
//! replaced (`run --code previous`), which is kept beside the journal until the next upgrade.

use std::fs;
use std::path::Path;

use super::copy::hash_tree;
use super::kept_state;
use super::sync::sync_filesystem;
use super::{
    code_dir, describe, discard_kept_state, existing_record, input, keep_state, read_record,
    remove_any, remove_leftovers, write_record, Record,
};
use crate::base::durable;
use crate::base::error::{Error, Result};
use crate::base::log::Logger;
use crate::root::journal::Journal;
use crate::workflow::render::RenderedSource;

/// The code an upgrade replaced, and its record, under the journal's directory.
const PREVIOUS_CODE: &str = "previous-code";
const PREVIOUS_RECORD: &str = "previous-source.json";

/// Which code a run is to use instead of the code in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The workflow's code as the image has it now.
    Current,
    /// The code the last upgrade replaced.
    Previous,
}

/// The identity the engine records for the code it copies from the image with its overlays
/// (see [`super::Record::identity`]), computed without copying; None when the code is not
/// copied from the image.
pub fn identity(source: &RenderedSource) -> std::io::Result<Option<String>> {
    let Some(image_dir) = source.image_dir.as_ref().filter(|d| d.is_dir()) else {
        return Ok(None);
    };
    let mut identity = hash_tree(image_dir)?;
    for overlay in &source.overlays {
        let hash = hash_tree(&overlay.from)?;
        identity = format!("{identity}+{}={hash}", overlay.into.display());
    }
    Ok(Some(identity))
}

/// The record of the code an upgrade replaced, if it is kept.
pub fn previous_record(journal: &Journal) -> Option<Record> {
    if !journal.dir().join(PREVIOUS_CODE).is_dir() {
        return None;
    }
    let text = fs::read_to_string(journal.dir().join(PREVIOUS_RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Makes `change` to the code under the root, so that [`super::ensure`] then puts the wanted
/// code in place with the state kept; must be called with the root lock held. Each move is
/// one rename: a crash leaves the old code, or no code (the next run copies the image's), or
/// the wanted code, never half a tree; and the same change asked again does no harm.
pub fn change(
    root: &Path,
    source: &RenderedSource,
    journal: &Journal,
    change: Change,
    logger: &Logger,
) -> Result<()> {
    let dir = code_dir(root, source)?;
    let parent = dir.parent().unwrap_or(root).to_path_buf();
    remove_leftovers(&[root, &parent, journal.dir()], logger)?;
    let previous = journal.dir().join(PREVIOUS_CODE);
    let previous_record_path = journal.dir().join(PREVIOUS_RECORD);
    let kept = journal.kept_state_dir();
    let io = |what: String| move |e: std::io::Error| Error::io(what, e);
    match change {
        Change::Current => {
            let wanted = identity(source)
                .map_err(io("cannot read the image's code".to_string()))?
                .ok_or_else(|| {
                    input(
                        "the workflow's code is not copied from the image (`source.image_dir` is not there), so it has no current version to upgrade to".to_string(),
                        "set `source.image_dir` to the code in the image",
                    )
                })?;
            if !dir.is_dir() {
                // Nothing in place: the run copies the image's code, which is the current.
                return Ok(());
            }
            let record = read_record(journal).unwrap_or_else(|| existing_record(&dir));
            if record.identity.as_deref() == Some(wanted.as_str()) {
                logger.info(None, "code: already the image's current code");
                return Ok(());
            }
            let count = keep_state(&dir, &kept).map_err(io(format!(
                "cannot keep the state files of {}",
                dir.display()
            )))?;
            if previous.exists() {
                // An older version: only the code just replaced is kept.
                let old = durable::temp_sibling(&previous);
                fs::rename(&previous, &old)
                    .and_then(|_| remove_any(&old))
                    .map_err(io(format!("cannot remove {}", previous.display())))?;
            }
            let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
            durable::write(&previous_record_path, &bytes, 0o600).map_err(io(format!(
                "cannot write {}",
                previous_record_path.display()
            )))?;
            fs::rename(&dir, &previous)
                .and_then(|_| durable::sync_dir(&parent))
                .and_then(|_| durable::sync_dir(journal.dir()))
                .map_err(io(format!("cannot move {} aside", dir.display())))?;
            durable::remove(&journal.source_record()).map_err(io(format!(
                "cannot remove {}",
                journal.source_record().display()
            )))?;
            logger.info(
                None,
                &format!(
                    "code: upgrading from {} (kept for `run --code previous`), with {count} state file(s) kept",
                    describe(&record)
                ),
            );
            Ok(())
        }
        Change::Previous => {
            let Some(record) = previous_record(journal) else {
                // Asked again after a rollback that was done (a run cut short after it): the
                // record of what was rolled back to stays, and names the code in place.
                let done = fs::read_to_string(&previous_record_path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Record>(&t).ok())
                    .is_some_and(|r| {
                        r.identity.is_some()
                            && read_record(journal).is_some_and(|c| c.identity == r.identity)
                    });
                if done && dir.is_dir() {
                    logger.info(None, "code: already rolled back");
                    return Ok(());
                }
                return Err(input(
                    format!("no previous code is kept under {}: no upgrade replaced the code, or it was rolled back already", journal.dir().display()),
                    "run without --code to keep the code in place, or with --code current to upgrade",
                ));
            };
            if dir.is_dir() {
                // The state is the code's in place: the previous code's own is older.
                keep_state(&dir, &kept).map_err(io(format!(
                    "cannot keep the state files of {}",
                    dir.display()
                )))?;
                if kept.is_dir() {
                    let restored = kept_state::restore(&kept, &previous, false)
                        .and_then(|n| sync_filesystem(&previous).map(|_| n))
                        .map_err(io(format!(
                            "cannot put the state into {}",
                            previous.display()
                        )))?;
                    discard_kept_state(&kept, restored, logger)?;
                }
                // The code rolled back from is the image's, which an upgrade copies again.
                let aside = durable::temp_sibling(&dir);
                fs::rename(&dir, &aside)
                    .and_then(|_| durable::sync_dir(&parent))
                    .map_err(io(format!("cannot move {} aside", dir.display())))?;
                remove_any(&aside).map_err(io(format!("cannot remove {}", aside.display())))?;
            }
            write_record(journal, &record)?;
            fs::rename(&previous, &dir)
                .and_then(|_| durable::sync_dir(&parent))
                .and_then(|_| durable::sync_dir(journal.dir()))
                .map_err(io(format!("cannot put back {}", previous.display())))?;
            logger.info(None, &format!("code: rolled back to {}", describe(&record)));
            Ok(())
        }
    }
}

/// The record of the code in place, as the journal has it.
pub fn applied(journal: &Journal) -> Option<Record> {
    read_record(journal)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::root::source::ensure;

    fn logger() -> Logger {
        Logger::new(crate::base::log::Format::Text, Default::default())
    }

    #[test]
    fn an_upgrade_and_its_rollback_carry_the_state_and_can_be_asked_again() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("app")).unwrap();
        fs::write(image.join("app/main.tf"), "v1").unwrap();
        let root = tmp.path().join("root");
        let journal = Journal::at(&root);
        journal.create().unwrap();
        let source = RenderedSource {
            dir: PathBuf::from("code"),
            image_dir: Some(image.clone()),
            git_url: None,
            git_ref: None,
            overlays: Vec::new(),
        };
        let (log, state) = (logger(), |dir: &Path| {
            fs::read_to_string(dir.join("app/terraform.tfstate")).unwrap()
        });
        let v1 = ensure(&root, &source, &journal, &log).unwrap();
        assert_eq!(v1.record.identity, identity(&source).unwrap());
        fs::write(v1.dir.join("app/terraform.tfstate"), "s1").unwrap();
        let err = change(&root, &source, &journal, Change::Previous, &log).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");

        // The same code: nothing moves.
        change(&root, &source, &journal, Change::Current, &log).unwrap();
        assert!(previous_record(&journal).is_none());

        fs::write(image.join("app/main.tf"), "v2").unwrap();
        change(&root, &source, &journal, Change::Current, &log).unwrap();
        let v2 = ensure(&root, &source, &journal, &log).unwrap();
        assert_eq!(
            fs::read_to_string(v2.dir.join("app/main.tf")).unwrap(),
            "v2"
        );
        assert_eq!(v2.record.identity, identity(&source).unwrap());
        assert_eq!(state(&v2.dir), "s1");
        assert_eq!(
            previous_record(&journal).unwrap().identity,
            v1.record.identity
        );
        // Asked again (a run cut short after the move): nothing more moves.
        change(&root, &source, &journal, Change::Current, &log).unwrap();
        assert_eq!(
            previous_record(&journal).unwrap().identity,
            v1.record.identity
        );

        fs::write(v2.dir.join("app/terraform.tfstate"), "s2").unwrap();
        change(&root, &source, &journal, Change::Previous, &log).unwrap();
        let back = ensure(&root, &source, &journal, &log).unwrap();
        assert_eq!(
            fs::read_to_string(back.dir.join("app/main.tf")).unwrap(),
            "v1"
        );
        assert_eq!(back.record.identity, v1.record.identity);
        assert_eq!(
            state(&back.dir),
            "s2",
            "the newer state goes with the rollback"
        );
        assert!(previous_record(&journal).is_none());
        change(&root, &source, &journal, Change::Previous, &log).unwrap();
        assert_eq!(applied(&journal).unwrap().identity, v1.record.identity);
    }
}
