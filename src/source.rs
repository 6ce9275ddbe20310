//! Putting the code on the PVC: reuse what is there, or copy the image's tree, atomically
//! (into a temp sibling, synced, then one rename), and remember the code's identity.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable;
use crate::error::{Error, Problem, Problems, Result};
use crate::journal::Journal;
use crate::log::Logger;
use crate::render::{hex, RenderedSource};

const RECORD: &str = "source";

/// Where the code on the PVC came from, recorded when it was put there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `image` (copied) or `existing` (found in place).
    pub kind: String,
    pub origin: String,
    /// A content hash of the tree as it was put there.
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
    for torn in durable::remove_temps(root)
        .map_err(|e| Error::io(format!("cannot clean {}", root.display()), e))?
    {
        logger.warn(
            None,
            &format!("removed {torn}, a copy of the code left unfinished by an earlier run"),
        );
    }
    let dir = root.join(&source.dir);
    if dir.is_dir() {
        let record = read_record(journal).unwrap_or_else(|| existing_record(&dir));
        logger.info(
            None,
            &format!("code: using {} ({})", dir.display(), describe(&record)),
        );
        return Ok(Code { dir, record });
    }
    if dir.exists() {
        return Err(input(
            format!("{} exists but is not a directory", dir.display()),
            "remove it, or point `source.dir` elsewhere",
        ));
    }
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
            let identity = copy_atomically(image_dir, &dir)?;
            let record = Record {
                kind: "image".into(),
                origin: image_dir.display().to_string(),
                identity: Some(identity),
                at: crate::clock::now_rfc3339(),
            };
            write_record(journal, &record)?;
            logger.info(None, &format!("code: copied ({})", describe(&record)));
            return Ok(Code { dir, record });
        }
    }
    match (&source.git_url, &source.image_dir) {
        (Some(url), _) => Err(input(
            format!(
                "{} does not exist and cloning {} is not available in this build",
                dir.display(),
                crate::secrets::mask_url_userinfo(url.into())
            ),
            "put the code into the image at `source.image_dir`, or under the root yourself",
        )),
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

fn describe(record: &Record) -> String {
    let identity = record
        .identity
        .as_deref()
        .map(|i| &i[..i.len().min(19)])
        .unwrap_or("identity unknown");
    format!("{} {}, {identity}", record.kind, record.origin)
}

fn input(message: String, hint: &str) -> Error {
    Error::Input(Problems::one(Problem::new(message).hint(hint)))
}

fn read_record(journal: &Journal) -> Option<Record> {
    let text = fs::read_to_string(journal.dir().join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(journal: &Journal, record: &Record) -> Result<()> {
    let path = journal.dir().join(RECORD);
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    durable::write(&path, &bytes, 0o600)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn existing_record(dir: &Path) -> Record {
    Record {
        kind: "existing".into(),
        origin: dir.display().to_string(),
        identity: None,
        at: crate::clock::now_rfc3339(),
    }
}

/// Copies `from` to `to` through a temp sibling and one rename; returns the tree's hash.
pub fn copy_atomically(from: &Path, to: &Path) -> Result<String> {
    let temp = durable::temp_sibling(to);
    let io_err = |what: &str, e: io::Error| {
        Error::io(
            format!("cannot {what} {} into {}", from.display(), temp.display()),
            e,
        )
    };
    let mut hasher = Sha256::new();
    let result = copy_tree(from, &temp, Path::new(""), &mut hasher)
        .map_err(|e| io_err("copy", e))
        .and_then(|_| sync_filesystem(&temp).map_err(|e| io_err("sync", e)))
        .and_then(|_| fs::rename(&temp, to).map_err(|e| io_err("rename", e)))
        .and_then(|_| {
            durable::sync_dir(to.parent().unwrap_or(Path::new("."))).map_err(|e| io_err("sync", e))
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temp);
    }
    result.map(|_| format!("sha256:{}", hex(&hasher.finalize())))
}

/// Copies one directory level, in name order so the hash does not depend on the filesystem.
fn copy_tree(from: &Path, to: &Path, rel: &Path, hasher: &mut Sha256) -> io::Result<()> {
    fs::create_dir(to)?;
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
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

    #[test]
    fn a_copy_keeps_modes_and_links_and_hashes_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("modules/a")).unwrap();
        fs::write(src.join("modules/a/main.tf"), "x").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("modules/a", src.join("link")).unwrap();
        let one = copy_atomically(&src, &tmp.path().join("one")).unwrap();
        let two = copy_atomically(&src, &tmp.path().join("two")).unwrap();
        assert_eq!(one, two);
        let copy = tmp.path().join("one");
        assert_eq!(
            fs::metadata(copy.join("run.sh")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("modules/a")
        );
        assert_eq!(
            fs::read_to_string(copy.join("modules/a/main.tf")).unwrap(),
            "x"
        );
        fs::write(src.join("modules/a/main.tf"), "y").unwrap();
        assert_ne!(
            copy_atomically(&src, &tmp.path().join("three")).unwrap(),
            one
        );
    }
}
