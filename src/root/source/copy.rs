//! Copying a tree and hashing it in the same pass, in an order that makes the hash the same
//! on every filesystem.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::links::{stays_inside, LeavingLink};
use crate::workflow::render::hex;

/// Copies the tree `from` to `to` (which must not exist); returns the tree's hash.
pub(super) fn copy_hashed(from: &Path, to: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    copy_tree(from, Some(to), Path::new(""), &mut hasher)?;
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// The hash [`copy_hashed`] would give the tree `from`, copying nothing.
pub(super) fn hash_tree(from: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    copy_tree(from, None, Path::new(""), &mut hasher)?;
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// Copies one directory level (or only hashes it, without `to`), in name order so the hash
/// does not depend on the filesystem.
fn copy_tree(from: &Path, to: Option<&Path>, rel: &Path, hasher: &mut Sha256) -> io::Result<()> {
    if let Some(to) = to {
        fs::create_dir(to)?;
    }
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
        let dst = to.map(|to| to.join(&name));
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
            if let Some(dst) = &dst {
                std::os::unix::fs::symlink(&target, dst)?;
            }
            hasher.update(b"l");
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if kind.is_dir() {
            hasher.update(format!("d{:o}", meta.mode() & 0o7777));
            copy_tree(&src, dst.as_deref(), &rel, hasher)?;
        } else if kind.is_file() {
            hasher.update(format!("f{:o}", meta.mode() & 0o7777));
            let mut input = fs::File::open(&src)?;
            let mut tee = HashingReader {
                inner: &mut input,
                hasher,
            };
            match &dst {
                Some(dst) => {
                    let mut output = fs::File::create(dst)?;
                    io::copy(&mut tee, &mut output)?;
                    output.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
                }
                None => {
                    io::copy(&mut tee, &mut io::sink())?;
                }
            }
        }
        hasher.update([0]);
    }
    let Some(to) = to else {
        return Ok(());
    };
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
