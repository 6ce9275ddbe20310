//! Putting new code in place: copied from the image or cloned with git into a temp sibling,
//! with the overlays and the kept state added, then renamed into place with its record.

use std::fs;
use std::io;
use std::path::Path;

use super::copy::copy_hashed;
use super::credentials::{
    Credentials, GitUrl, Scheme, FILE_SUFFIX, PASSWORD, SSH_KEY, SSH_KNOWN_HOSTS, TOKEN, USERNAME,
};
use super::links::LeavingLink;
use super::sync::sync_tree;
use super::{
    describe, discard_kept_state, git, input, kept_state, write_record, Record, RESET_NAME,
};
use crate::base::durable;
use crate::base::error::{Error, Result};
use crate::base::log::Logger;
use crate::root::journal::Journal;
use crate::workflow::render::{RenderedOverlay, RenderedSource};

/// Copies the image's tree into place.
pub(super) fn copy_image(
    image_dir: &Path,
    source: &RenderedSource,
    dir: &Path,
    journal: &Journal,
    logger: &Logger,
) -> Result<Record> {
    if !image_dir.is_dir() {
        return Err(input(
            format!(
                "`source.image_dir` {} is not a directory",
                image_dir.display()
            ),
            "point image_dir at the directory holding the Terraform code in the image",
        ));
    }
    logger.info(
        None,
        &format!("code: copying {} to {}", image_dir.display(), dir.display()),
    );
    let record = build_atomically(dir, journal, logger, &source.overlays, |temp| {
        let identity = copy_hashed(image_dir, temp).map_err(|e| {
            if let Some(link) = e.get_ref().and_then(|e| e.downcast_ref::<LeavingLink>())
            {
                return input(
                    format!("{link}, outside the copied tree {}", image_dir.display()),
                    "the code is copied as it is; make the link relative and keep its target inside the tree, or copy the target instead of linking it",
                );
            }
            Error::io(
                format!(
                    "cannot copy {} into {}",
                    image_dir.display(),
                    temp.display()
                ),
                e,
            )
        })?;
        Ok(Record {
            kind: "image".into(),
            origin: image_dir.display().to_string(),
            git_ref: None,
            identity: Some(identity),
            at: crate::base::clock::now_rfc3339(),
        })
    })?;
    logger.info(None, &format!("code: copied ({})", describe(&record)));
    Ok(record)
}

/// Fills a temp sibling of `dir` with `fill`, puts back the state kept by `reset source`,
/// records where the code came from, and renames it into place: a crash at any point leaves
/// no half tree under `dir`, and never code without its record.
pub(super) fn build_atomically(
    dir: &Path,
    journal: &Journal,
    logger: &Logger,
    overlays: &[RenderedOverlay],
    fill: impl FnOnce(&Path) -> Result<Record>,
) -> Result<Record> {
    let kept = journal.kept_state_dir();
    let temp = durable::temp_sibling(dir);
    let filled = fill(&temp).and_then(|record| add_overlays(&temp, overlays, record, logger));
    let result = filled.and_then(|record| {
        let restored = if kept.is_dir() {
            kept_state::restore(&kept, &temp, false).map_err(|e| {
                Error::io(format!("cannot restore state into {}", temp.display()), e)
            })?
        } else {
            0
        };
        // Before the rename: a record without its code is harmless (the next run puts the
        // code there and records it again), code without its record would lose its identity.
        write_record(journal, &record)?;
        publish(&temp, dir)
            .map_err(|e| Error::io(format!("cannot put the code at {}", dir.display()), e))?;
        Ok((record, restored))
    });
    if result.is_err() && temp.exists() {
        let _ = fs::remove_dir_all(&temp);
    }
    // A copy or clone cut short by a signal failed because we asked it to; say so.
    if let (Err(_), Some(signal)) = (&result, crate::base::signals::stop_requested()) {
        return Err(crate::base::signals::interrupted(signal));
    }
    let (record, restored) = result?;
    if kept.is_dir() {
        discard_kept_state(&kept, restored, logger)?;
    }
    Ok(record)
}

/// Copies each overlay into the tree being built, and makes its content part of the code's
/// identity: a new overlay is new code, as a new commit is.
pub(super) fn add_overlays(
    tree: &Path,
    overlays: &[RenderedOverlay],
    mut record: Record,
    logger: &Logger,
) -> Result<Record> {
    for overlay in overlays {
        let target = tree.join(&overlay.into);
        let mut place = tree.to_path_buf();
        for part in overlay.into.components() {
            place.push(part);
            match place.symlink_metadata() {
                Ok(meta) if meta.is_dir() && place != target => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(Error::io(format!("cannot inspect {}", place.display()), e)),
                Ok(_) => {
                    return Err(input(
                        format!(
                            "the code already has {} where the overlay from {} goes",
                            overlay.into.display(),
                            overlay.from.display()
                        ),
                        "an overlay adds a directory to the code and never replaces or follows what is there; give `into` a new name",
                    ))
                }
            }
        }
        let parent = target.parent().unwrap_or(tree);
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        let hash = copy_hashed(&overlay.from, &target).map_err(|e| {
            if let Some(link) = e.get_ref().and_then(|e| e.downcast_ref::<LeavingLink>()) {
                return input(
                    format!("{link}, outside the overlay {}", overlay.from.display()),
                    "keep the overlay's links inside it",
                );
            }
            Error::io(
                format!(
                    "cannot copy the overlay {} into {}",
                    overlay.from.display(),
                    target.display()
                ),
                e,
            )
        })?;
        logger.info(
            None,
            &format!(
                "code: added {} as {}",
                overlay.from.display(),
                overlay.into.display()
            ),
        );
        let code = record.identity.take().unwrap_or_else(|| "unknown".into());
        record.identity = Some(format!("{code}+{}={hash}", overlay.into.display()));
    }
    Ok(record)
}

/// Clones into a temp sibling of `dir`, then renames it into place.
pub(super) fn clone(
    url: &str,
    source: &RenderedSource,
    dir: &Path,
    journal: &Journal,
    logger: &Logger,
) -> Result<Record> {
    let wanted = source.git_ref.as_deref();
    let url = GitUrl::parse(url);
    let creds = Credentials::from_env(|name| std::env::var(name).ok());
    let creds = match creds {
        Ok(creds) => creds,
        Err(problems) => {
            url.register(&Credentials::default(), logger.redactor());
            return Err(Error::Input(problems));
        }
    };
    url.register(&creds, logger.redactor());
    creds.register(logger.redactor());
    logger.info(
        None,
        &format!(
            "code: cloning {} ({}) into {}",
            url.shown,
            wanted.unwrap_or("its default branch"),
            dir.display()
        ),
    );
    build_atomically(dir, journal, logger, &source.overlays, |temp| {
        let cloned =
            git::clone(&url, wanted, &creds, temp).map_err(|f| clone_error(f, &url, wanted))?;
        logger.info(
            None,
            &format!(
                "code: cloned {} at commit {}",
                cloned.resolved, cloned.commit
            ),
        );
        Ok(Record {
            kind: "git".into(),
            origin: url.shown.clone(),
            git_ref: wanted.map(str::to_string),
            identity: Some(cloned.commit),
            at: crate::base::clock::now_rfc3339(),
        })
    })
}

fn clone_error(failure: git::Failure, url: &GitUrl, wanted: Option<&str>) -> Error {
    use git::Failure::*;
    let shown = url.shown.clone();
    let credentials_hint = format!(
        "for https set {TOKEN} (or {TOKEN}{FILE_SUFFIX}, a mounted secret), or {USERNAME} and {PASSWORD}; for ssh set {SSH_KEY} to a private key file"
    );
    match failure {
        UnknownRef { wanted: _, known } => {
            let what = match wanted {
                Some(wanted) => format!(
                    "`source.git_ref` = `{wanted}` is not a branch, tag or commit of {shown}"
                ),
                None => format!("`source.git_ref` is not set and {shown} has no default branch"),
            };
            let hint = if known.is_empty() {
                "the repository has no branches or tags yet".to_string()
            } else {
                let shown_refs: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
                let more = if known.len() > 10 { ", ..." } else { "" };
                format!("branches and tags there: {}{more}", shown_refs.join(", "))
            };
            input(what, &hint)
        }
        NotFound(why) => input(
            format!("no git repository at {shown}: {why}"),
            "check `source.git_url`",
        ),
        AuthRefused(why) => input(
            format!("authentication to {shown} failed: {why}"),
            &credentials_hint,
        ),
        Untrusted(why) => input(
            format!("{shown} is not trusted: {why}"),
            &match url.scheme {
                Scheme::Ssh => format!("list the server's host key in ~/.ssh/known_hosts, or in a file named by {SSH_KNOWN_HOSTS}"),
                _ => "for a server with a private CA, point SSL_CERT_FILE at the CA's certificate".to_string(),
            },
        ),
        Unreachable(why) => Error::StepFailed {
            step: RESET_NAME.into(),
            message: format!(
                "cannot reach {shown}: {why} (check the URL, and that this pod can reach the host)"
            ),
        },
        Other(why) => Error::StepFailed {
            step: RESET_NAME.into(),
            message: format!("cannot clone {shown}: {why}"),
        },
    }
}

/// Makes a finished temp tree durable and puts it in place with one rename.
fn publish(temp: &Path, to: &Path) -> io::Result<()> {
    sync_tree(temp)?;
    fs::rename(temp, to)?;
    durable::sync_dir(to.parent().unwrap_or(Path::new(".")))
}
