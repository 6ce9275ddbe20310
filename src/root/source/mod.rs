//! Putting the code on the PVC: reuse what is there, or copy the image's tree, or clone it
//! with git, atomically (into a temp sibling, synced, then one rename), and remember the
//! code's identity. `reset source` takes it away again, just as atomically.

mod acquire;
mod copy;
mod credentials;
mod git;
mod kept_state;
mod links;
mod preview;
mod sync;
mod upgrade;

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use links::{check_links, confinement_problems};
pub use preview::preview;
pub use upgrade::{applied, change, identity, previous_record, Change};

use crate::base::durable;
use crate::base::error::{Error, Problem, Problems, Result};
use crate::base::log::Logger;
use crate::root::journal::{Journal, STATE_DIR};
use crate::workflow::render::RenderedSource;
use credentials::GitUrl;
use sync::sync_filesystem;

pub use crate::workflow::file::RESET_NAME;

/// Where the code on the PVC came from, recorded when it was put there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `image` (copied), `git` (cloned) or `existing` (found in place).
    pub kind: String,
    /// The image directory, or the repository's URL with its userinfo masked.
    pub origin: String,
    /// For a clone, the ref the workflow asked for (none: the default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The commit id of a clone, or a content hash of a copied tree.
    pub identity: Option<String>,
    pub at: String,
}

/// The code directory, ready to use, and its identity if known.
#[derive(Debug, Clone)]
pub struct Code {
    pub dir: PathBuf,
    pub record: Record,
}

/// The code as it stands, without changing anything (for `status` and `plan`).
pub fn inspect(root: &Path, source: &RenderedSource, journal: &Journal) -> Option<Code> {
    let dir = root.join(&source.dir);
    dir.is_dir().then(|| Code {
        record: read_record(journal).unwrap_or_else(|| existing_record(&dir)),
        dir,
    })
}

/// Makes sure the code is under the root; must be called with the root lock held.
pub fn ensure(
    root: &Path,
    source: &RenderedSource,
    journal: &Journal,
    logger: &Logger,
) -> Result<Code> {
    let dir = code_dir(root, source)?;
    let parent = dir.parent().unwrap_or(root).to_path_buf();
    remove_leftovers(&[root, &parent, journal.dir()], logger)?;
    if dir.is_dir() {
        return use_existing(dir, source, journal, logger);
    }
    if dir.symlink_metadata().is_ok() {
        return Err(input(
            format!("{} exists but is not a directory", dir.display()),
            "remove it, or point `source.dir` elsewhere",
        ));
    }
    fs::create_dir_all(&parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    if let Some(image_dir) = source.image_dir.as_ref().filter(|d| d.exists()) {
        let record = acquire::copy_image(image_dir, source, &dir, journal, logger)?;
        return Ok(Code { dir, record });
    }
    match (&source.git_url, &source.image_dir) {
        (Some(url), image_dir) => {
            if let Some(image_dir) = image_dir {
                logger.info(
                    None,
                    &format!(
                        "code: {} is not in the image; cloning instead",
                        image_dir.display()
                    ),
                );
            }
            let record = acquire::clone(url, source, &dir, journal, logger)?;
            Ok(Code { dir, record })
        }
        (None, Some(image_dir)) => Err(input(
            format!(
                "neither the code directory {} nor `source.image_dir` {} exists",
                dir.display(),
                image_dir.display()
            ),
            "check `source.image_dir`, or set `source.git_url` to clone the code",
        )),
        (None, None) => Err(input(
            format!("the code directory {} does not exist", dir.display()),
            "set `source.image_dir` (copied from the image) or `source.git_url` (cloned)",
        )),
    }
}

/// The code already on the root, with the state kept by `reset source` put back into it.
fn use_existing(
    dir: PathBuf,
    source: &RenderedSource,
    journal: &Journal,
    logger: &Logger,
) -> Result<Code> {
    let kept = journal.kept_state_dir();
    let record = read_record(journal).unwrap_or_else(|| existing_record(&dir));
    logger.info(
        None,
        &format!("code: using {} ({})", dir.display(), describe(&record)),
    );
    if let Some(drift) = drift(&record, source) {
        logger.warn(
            None,
            &format!("code: {drift}; the code on the root is kept until `bootstrapper reset {RESET_NAME}`"),
        );
    }
    if kept.is_dir() {
        // Left by a run that died just after renaming the new code into place, or by an
        // operator who put code there by hand after `reset source`.
        let restored = kept_state::restore(&kept, &dir, true)
            .and_then(|n| sync_filesystem(&dir).map(|_| n))
            .map_err(|e| Error::io(format!("cannot restore state into {}", dir.display()), e))?;
        discard_kept_state(&kept, restored, logger)?;
    }
    Ok(Code { dir, record })
}

/// Takes the code directory and its record away, so that the next run copies or clones the
/// code again, keeping terraform's local state for the new code; must be called with the
/// root lock held. Returns whether there was code.
pub fn forget(
    root: &Path,
    source: &RenderedSource,
    journal: &Journal,
    logger: &Logger,
) -> Result<bool> {
    let dir = code_dir(root, source)?;
    let parent = dir.parent().unwrap_or(root).to_path_buf();
    remove_leftovers(&[root, &parent, journal.dir()], logger)?;
    let record = journal.source_record();
    let remove_record = || {
        durable::remove(&record)
            .map_err(|e| Error::io(format!("cannot remove {}", record.display()), e))
    };
    if dir.symlink_metadata().is_err() {
        remove_record()?;
        logger.info(
            None,
            &format!("code: {} does not exist; nothing to forget", dir.display()),
        );
        return Ok(false);
    }
    if dir.is_dir() {
        let kept = journal.kept_state_dir();
        let count = keep_state(&dir, &kept).map_err(|e| {
            Error::io(
                format!("cannot keep the state files of {}", dir.display()),
                e,
            )
        })?;
        if count > 0 {
            logger.info(
                None,
                &format!(
                    "code: kept {count} terraform state file(s) of the code in {}; the next run puts them into the new code",
                    kept.display()
                ),
            );
        }
    }
    // One rename takes the whole tree out of use: a crash while deleting leaves a temp
    // sibling, which the next run removes, never a half tree it would take for the code.
    let aside = durable::temp_sibling(&dir);
    fs::rename(&dir, &aside)
        .and_then(|_| durable::sync_dir(&parent))
        .map_err(|e| Error::io(format!("cannot move {} aside", dir.display()), e))?;
    remove_record()?;
    remove_any(&aside).map_err(|e| Error::io(format!("cannot remove {}", aside.display()), e))?;
    logger.info(
        None,
        &format!(
            "code: removed {}; the next run copies or clones it again",
            dir.display()
        ),
    );
    Ok(true)
}

/// Replaces the kept state with the state files of `code`, atomically; returns their count.
fn keep_state(code: &Path, kept: &Path) -> io::Result<usize> {
    let temp = durable::temp_sibling(kept);
    let result = kept_state::keep(code, &temp).and_then(|count| {
        if count == 0 {
            return Ok(0);
        }
        sync_filesystem(&temp)?;
        if kept.exists() {
            // Older than the code's own state, which is a superset of it by now.
            let old = durable::temp_sibling(kept);
            fs::rename(kept, &old)?;
            remove_any(&old)?;
        }
        fs::rename(&temp, kept)?;
        durable::sync_dir(kept.parent().unwrap_or(Path::new(".")))?;
        Ok(count)
    });
    if temp.exists() {
        let _ = remove_any(&temp);
    }
    result
}

/// Drops the kept state once the code it was restored into is in place.
fn discard_kept_state(kept: &Path, restored: usize, logger: &Logger) -> Result<()> {
    if restored > 0 {
        logger.info(
            None,
            &format!(
                "code: put back {restored} terraform state file(s) kept by `reset {RESET_NAME}`"
            ),
        );
    }
    let old = durable::temp_sibling(kept);
    fs::rename(kept, &old)
        .and_then(|_| durable::sync_dir(kept.parent().unwrap_or(Path::new("."))))
        .and_then(|_| remove_any(&old))
        .map_err(|e| Error::io(format!("cannot remove {}", kept.display()), e))
}

/// Removes what a killed process left half done in these directories.
fn remove_leftovers(places: &[&Path], logger: &Logger) -> Result<()> {
    let mut done: Vec<&Path> = Vec::new();
    for place in places.iter().copied() {
        if done.contains(&place) {
            continue;
        }
        done.push(place);
        for torn in durable::remove_temps(place)
            .map_err(|e| Error::io(format!("cannot clean {}", place.display()), e))?
        {
            logger.warn(
                None,
                &format!(
                    "removed {}, left unfinished by an earlier run",
                    place.join(torn).display()
                ),
            );
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.symlink_metadata()?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// The code directory, refused where it would hide the root or the journal.
fn code_dir(root: &Path, source: &RenderedSource) -> Result<PathBuf> {
    let first = source.dir.components().next();
    match first {
        Some(Component::Normal(name)) if name != STATE_DIR => Ok(root.join(&source.dir)),
        _ => Err(input(
            format!(
                "`source.dir` = `{}` is the root itself or the journal's directory",
                source.dir.display()
            ),
            "name a directory of its own below --root, like \"code\"",
        )),
    }
}

/// How the workflow's source differs from the code in place, if it does.
fn drift(record: &Record, source: &RenderedSource) -> Option<String> {
    let url = source.git_url.as_deref()?;
    if record.kind != "git" || source.image_dir.as_ref().is_some_and(|d| d.exists()) {
        return None;
    }
    let url = GitUrl::parse(url).shown;
    if record.origin != url || record.git_ref != source.git_ref {
        Some(format!(
            "the workflow now names {url} ({}), not {} ({})",
            source.git_ref.as_deref().unwrap_or("default branch"),
            record.origin,
            record.git_ref.as_deref().unwrap_or("default branch"),
        ))
    } else {
        None
    }
}

fn describe(record: &Record) -> String {
    let identity = record
        .identity
        .as_deref()
        .map(|i| &i[..i.len().min(19)])
        .unwrap_or("identity unknown");
    match &record.git_ref {
        Some(git_ref) => format!("{} {} {git_ref}, {identity}", record.kind, record.origin),
        None => format!("{} {}, {identity}", record.kind, record.origin),
    }
}

fn input(message: String, hint: &str) -> Error {
    Error::Input(Problems::one(Problem::new(message).hint(hint)))
}

fn read_record(journal: &Journal) -> Option<Record> {
    let text = fs::read_to_string(journal.source_record()).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(journal: &Journal, record: &Record) -> Result<()> {
    let path = journal.source_record();
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    durable::write(&path, &bytes, 0o600)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn existing_record(dir: &Path) -> Record {
    Record {
        kind: "existing".into(),
        origin: dir.display().to_string(),
        git_ref: None,
        identity: None,
        at: crate::base::clock::now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::acquire::build_atomically;
    use super::copy::copy_hashed;
    use super::*;
    use crate::base::log::Format;
    use crate::base::secrets::Redactor;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn logger() -> Logger {
        Logger::new(Format::Text, Redactor::default())
    }

    fn copy(from: &Path, to: &Path) -> String {
        let journal = Journal::at(&to.with_extension("root"));
        journal.create().unwrap();
        let record = build_atomically(to, &journal, &logger(), &[], |temp| {
            let identity = copy_hashed(from, temp).map_err(|e| Error::io("copy", e))?;
            Ok(Record {
                identity: Some(identity),
                ..existing_record(temp)
            })
        })
        .unwrap();
        assert_eq!(read_record(&journal), Some(record.clone()));
        record.identity.unwrap()
    }

    fn image_source(image: &Path, dir: &str) -> RenderedSource {
        RenderedSource {
            dir: PathBuf::from(dir),
            image_dir: Some(image.to_path_buf()),
            git_url: None,
            git_ref: None,
            overlays: Vec::new(),
        }
    }

    #[test]
    fn a_copy_keeps_modes_and_links_and_hashes_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("modules/a")).unwrap();
        fs::write(src.join("modules/a/main.tf"), "x").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("modules/a", src.join("link")).unwrap();
        let one = copy(&src, &tmp.path().join("one"));
        let two = copy(&src, &tmp.path().join("two"));
        assert_eq!(one, two);
        let copied = tmp.path().join("one");
        assert_eq!(
            fs::metadata(copied.join("run.sh")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(copied.join("link")).unwrap(),
            Path::new("modules/a")
        );
        assert_eq!(
            fs::read_to_string(copied.join("modules/a/main.tf")).unwrap(),
            "x"
        );
        fs::write(src.join("modules/a/main.tf"), "y").unwrap();
        assert_ne!(copy(&src, &tmp.path().join("three")), one);
    }

    #[test]
    fn forgetting_the_code_keeps_its_state_for_the_next_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("app")).unwrap();
        fs::write(image.join("app/main.tf"), "x").unwrap();
        let root = tmp.path().join("root");
        let journal = Journal::at(&root);
        journal.create().unwrap();
        let source = image_source(&image, "nested/code");
        let code = ensure(&root, &source, &journal, &logger()).unwrap();
        assert_eq!(code.dir, root.join("nested/code"));
        assert_eq!(code.record.kind, "image");
        fs::write(code.dir.join("app/terraform.tfstate"), "state").unwrap();
        // A leftover beside a nested code directory is found too.
        let torn = durable::temp_sibling(&code.dir);
        fs::create_dir(&torn).unwrap();

        assert!(forget(&root, &source, &journal, &logger()).unwrap());
        assert!(!code.dir.exists());
        assert!(!torn.exists());
        assert!(read_record(&journal).is_none());
        assert!(!forget(&root, &source, &journal, &logger()).unwrap());

        let again = ensure(&root, &source, &journal, &logger()).unwrap();
        assert_eq!(again.record.identity, code.record.identity);
        assert_eq!(
            fs::read_to_string(again.dir.join("app/terraform.tfstate")).unwrap(),
            "state"
        );
        assert!(!journal.kept_state_dir().exists());
        let names: Vec<_> = fs::read_dir(root.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["code"]);
    }

    #[test]
    fn a_copy_refuses_a_link_out_of_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("a")).unwrap();
        std::os::unix::fs::symlink("../../outside", image.join("a/state")).unwrap();
        let root = tmp.path().join("root");
        let journal = Journal::at(&root);
        journal.create().unwrap();
        let err = ensure(&root, &image_source(&image, "code"), &journal, &logger()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("the link {}", image.join("a/state").display())),
            "{text}"
        );
        assert!(text.contains("points to ../../outside"), "{text}");
        assert!(!root.join("code").exists());
    }

    #[test]
    fn the_code_cannot_be_the_root_or_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::at(tmp.path());
        for dir in [".", ".bootstrapper/x"] {
            let source = image_source(tmp.path(), dir);
            let err = ensure(tmp.path(), &source, &journal, &logger()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
    }

    #[test]
    fn an_image_dir_that_is_a_file_is_an_input_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let root = tmp.path().join("root");
        let journal = Journal::at(&root);
        journal.create().unwrap();
        let err = ensure(&root, &image_source(&file, "code"), &journal, &logger()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
