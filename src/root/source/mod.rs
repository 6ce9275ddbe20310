//! Putting the code on the PVC: reuse what is there, or copy the image's tree, or clone it
//! with git, atomically (into a temp sibling, synced, then one rename), and remember the
//! code's identity. `reset source` takes it away again, just as atomically.

mod credentials;
mod git;
mod kept_state;

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use credentials::{
    FILE_SUFFIX, PASSWORD, SSH_KEY, SSH_KNOWN_HOSTS, SSH_PASSPHRASE, TOKEN, USERNAME,
};

use crate::base::durable;
use crate::base::error::{Error, Problem, Problems, Result};
use crate::base::log::Logger;
use crate::root::journal::{Journal, STATE_DIR};
use crate::workflow::render::{hex, RenderedOverlay, RenderedSource};
use credentials::{Credentials, GitUrl, Scheme};

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
    let kept = journal.kept_state_dir();
    if dir.is_dir() {
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
                .map_err(|e| {
                    Error::io(format!("cannot restore state into {}", dir.display()), e)
                })?;
            discard_kept_state(&kept, restored, logger)?;
        }
        return Ok(Code { dir, record });
    }
    if dir.symlink_metadata().is_ok() {
        return Err(input(
            format!("{} exists but is not a directory", dir.display()),
            "remove it, or point `source.dir` elsewhere",
        ));
    }
    fs::create_dir_all(&parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    if let Some(image_dir) = &source.image_dir {
        if image_dir.exists() {
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
            let record = build_atomically(&dir, journal, logger, &source.overlays, |temp| {
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
            return Ok(Code { dir, record });
        }
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
            let record = clone(url, source, &dir, journal, logger)?;
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

/// Fills a temp sibling of `dir` with `fill`, puts back the state kept by `reset source`,
/// records where the code came from, and renames it into place: a crash at any point leaves
/// no half tree under `dir`, and never code without its record.
fn build_atomically(
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
fn add_overlays(
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

/// Clones into a temp sibling of `dir`, then renames it into place.
fn clone(
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

/// Makes a finished temp tree durable and puts it in place with one rename.
fn publish(temp: &Path, to: &Path) -> io::Result<()> {
    sync_tree(temp)?;
    fs::rename(temp, to)?;
    durable::sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Copies the tree `from` to `to` (which must not exist); returns the tree's hash.
fn copy_hashed(from: &Path, to: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    copy_tree(from, to, Path::new(""), &mut hasher)?;
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// Copies one directory level, in name order so the hash does not depend on the filesystem.
fn copy_tree(from: &Path, to: &Path, rel: &Path, hasher: &mut Sha256) -> io::Result<()> {
    fs::create_dir(to)?;
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if crate::base::signals::stop_requested().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "stopped by a signal",
            ));
        }
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        let rel = rel.join(&name);
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        if kind.is_symlink() {
            let target = fs::read_link(&src)?;
            if !stays_inside(&rel, &target) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    LeavingLink { link: src, target },
                ));
            }
            std::os::unix::fs::symlink(&target, &dst)?;
            hasher.update(b"l");
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if kind.is_dir() {
            hasher.update(format!("d{:o}", meta.mode() & 0o7777));
            copy_tree(&src, &dst, &rel, hasher)?;
        } else if kind.is_file() {
            hasher.update(format!("f{:o}", meta.mode() & 0o7777));
            let mut input = fs::File::open(&src)?;
            let mut output = fs::File::create(&dst)?;
            let mut tee = HashingReader {
                inner: &mut input,
                hasher,
            };
            io::copy(&mut tee, &mut output)?;
            output.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        hasher.update([0]);
    }
    let mode = fs::metadata(from)?.mode() & 0o7777;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
}

/// A symbolic link in the image's tree that points out of it.
#[derive(Debug)]
struct LeavingLink {
    link: PathBuf,
    target: PathBuf,
}

impl std::fmt::Display for LeavingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the link {} points to {}",
            self.link.display(),
            self.target.display()
        )
    }
}

impl std::error::Error for LeavingLink {}

/// Whether a link at `rel` (relative to a tree's top) to `target` stays inside the tree,
/// judged on the names alone: an absolute target, or one that climbs above the top, leaves it.
fn stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth: usize = rel.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The directories that must stay under the root once every link is followed: the code's
/// and each step's. Each that leads outside is a problem naming the link that takes it there.
pub fn confinement_problems(
    root: &Path,
    dirs: &[(Option<&crate::workflow::file::Step>, PathBuf)],
) -> Problems {
    let mut problems = Problems::default();
    let Ok(real_root) = root.canonicalize() else {
        return problems;
    };
    for (step, dir) in dirs {
        let Some((link, target)) = link_out_of(&real_root, root, dir) else {
            continue;
        };
        let what = match step {
            Some(_) => "its directory",
            None => "the code directory",
        };
        let mut problem = Problem::new(format!(
            "{what} {} leads outside the root {}: {} is a link to {}",
            dir.display(),
            root.display(),
            link.display(),
            target.display()
        ))
        .hint("terraform would write its state and the rendered vars (secrets) there; replace the link with the directory it points to, under the root");
        if let Some(step) = step {
            problem = problem.at(step.dir.origin.clone()).in_step(&step.name);
        }
        problems.push(problem);
    }
    problems
}

/// [`confinement_problems`] of the code already on the root, if any, for `validate`.
pub fn check_links(root: &Path, loaded: &crate::workflow::load::Loaded) -> Problems {
    let renderer = loaded.renderer();
    let Ok(source) = renderer.render_source() else {
        return Problems::default();
    };
    let code = root.join(&source.dir);
    if !code.exists() {
        return Problems::default();
    }
    let outputs = crate::root::recorded::read_journal(loaded, &Journal::at(root))
        .map(|r| r.outputs)
        .unwrap_or_default();
    let mut dirs = vec![(None, code.clone())];
    for (index, step) in loaded.workflow.steps.iter().enumerate() {
        if let Ok(rendered) = renderer.render_step(index, &outputs, true) {
            dirs.push((Some(step), code.join(&rendered.dir)));
        }
    }
    confinement_problems(root, &dirs)
}

/// The first link on the way from `root` to `dir` that leads out of `real_root`, with its
/// target; none when `dir` does not exist or stays inside.
fn link_out_of(real_root: &Path, root: &Path, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let real = dir.canonicalize().ok()?;
    if real.starts_with(real_root) {
        return None;
    }
    let rel = dir.strip_prefix(root).ok()?;
    let mut at = root.to_path_buf();
    for component in rel.components() {
        at.push(component);
        let is_link = at
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link && !at.canonicalize().is_ok_and(|p| p.starts_with(real_root)) {
            let target = fs::read_link(&at).unwrap_or_else(|_| real.clone());
            return Some((at, target));
        }
    }
    Some((dir.to_path_buf(), real))
}

struct HashingReader<'a, R> {
    inner: &'a mut R,
    hasher: &'a mut Sha256,
}

impl<R: io::Read> io::Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Past this many entries a tree is made durable with one `syncfs` instead of an fsync each.
const FSYNC_EACH_UP_TO: usize = 256;

/// Makes every file and directory of the tree at `path` durable. A small tree (the usual
/// Terraform roots) gets an fsync per entry, which writes only its own data; a large one (a
/// clone's objects) one `syncfs`, which costs as much as everything dirty on the filesystem,
/// other writers' data included.
fn sync_tree(path: &Path) -> io::Result<()> {
    fn walk(dir: &Path, entries: &mut Vec<PathBuf>) -> io::Result<bool> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                continue;
            }
            entries.push(entry.path());
            if entries.len() > FSYNC_EACH_UP_TO {
                return Ok(false);
            }
            if kind.is_dir() && !walk(&entry.path(), entries)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
    let mut entries = vec![path.to_path_buf()];
    if !walk(path, &mut entries)? {
        return sync_filesystem(path);
    }
    // Children before their directories, so a directory's entries are durable when it is.
    for entry in entries.iter().rev() {
        fs::File::open(entry)?.sync_all()?;
    }
    Ok(())
}

/// One `syncfs` makes every file of the copy durable, far cheaper than an fsync per file.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path)?;
    // SAFETY: syncfs only reads the descriptor, which stays open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::log::Format;
    use crate::base::secrets::Redactor;

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
    fn links_are_judged_by_where_they_point_from_where_they_are() {
        assert!(stays_inside(Path::new("link"), Path::new("modules/a")));
        assert!(stays_inside(Path::new("a/b/link"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("link"), Path::new("/etc")));
        assert!(!stays_inside(Path::new("link"), Path::new("./../x")));
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
