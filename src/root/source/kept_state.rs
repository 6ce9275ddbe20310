//! Terraform's local state inside the code tree, carried across `reset source`.
//!
//! The first step keeps its state in its own directory on the PVC, since nothing else exists
//! yet; that directory is part of the code. Replacing the code must not lose that state, or
//! the next apply would create every resource of the step a second time. So `reset source`
//! keeps the state files under the journal, and the next copy or clone gets them back before
//! it is renamed into place.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;

use crate::base::durable;

/// Directories whose content is never state worth keeping: git's, and terraform's working
/// directory (plugins and the backend settings, all made again by `init`).
const SKIPPED_DIRS: [&str; 2] = [".git", ".terraform"];

/// Local state, its backup and its last complete copy, the per-workspace states, and a state
/// terraform could not upload.
fn is_state(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    matches!(
        name.as_ref(),
        "terraform.tfstate" | "terraform.tfstate.backup" | "terraform.tfstate.d"
    ) || name == crate::terraform::local_state::COPY
        || name.starts_with("errored.tfstate")
}

/// Copies every state file under `code` to the same relative path under `into`, which must
/// not exist yet; returns how many files there were (none: `into` is not created).
pub fn keep(code: &Path, into: &Path) -> io::Result<usize> {
    let mut count = 0;
    walk(code, Path::new(""), &mut |rel, src| {
        let dst = into.join(rel);
        fs::create_dir_all(dst.parent().unwrap_or(into))?;
        fs::copy(src, &dst)?;
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Puts the files kept under `kept` back under `code`, each with one rename, so that a crash
/// never leaves half a state file; with `missing_only`, files `code` has win.
pub fn restore(kept: &Path, code: &Path, missing_only: bool) -> io::Result<usize> {
    let mut count = 0;
    all_files(kept, Path::new(""), &mut |rel, src| {
        let dst = code.join(rel);
        if missing_only && dst.symlink_metadata().is_ok() {
            return Ok(());
        }
        fs::create_dir_all(dst.parent().unwrap_or(code))?;
        let temp = durable::temp_sibling(&dst);
        fs::copy(src, &temp)
            .and_then(|_| fs::rename(&temp, &dst))
            .inspect_err(|_| {
                let _ = fs::remove_file(&temp);
            })?;
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Calls `found` for every file of a state entry below `dir`.
fn walk(
    dir: &Path,
    rel: &Path,
    found: &mut impl FnMut(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        let rel = rel.join(&name);
        if is_state(&name) {
            if kind.is_dir() {
                all_files(&entry.path(), &rel, found)?;
            } else if kind.is_file() {
                found(&rel, &entry.path())?;
            }
        } else if kind.is_dir() && !SKIPPED_DIRS.iter().any(|s| name == OsStr::new(s)) {
            walk(&entry.path(), &rel, found)?;
        }
    }
    Ok(())
}

/// Calls `found` for every regular file below `dir`; symlinks are not followed.
fn all_files(
    dir: &Path,
    rel: &Path,
    found: &mut impl FnMut(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let rel = rel.join(entry.file_name());
        if kind.is_dir() {
            all_files(&entry.path(), &rel, found)?;
        } else if kind.is_file() {
            found(&rel, &entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_kept_and_put_back_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let code = tmp.path().join("code");
        for dir in ["cn/.terraform", "cn/terraform.tfstate.d/c1", "net", ".git"] {
            fs::create_dir_all(code.join(dir)).unwrap();
        }
        for (file, text) in [
            ("cn/main.tf", "code"),
            ("cn/terraform.tfstate", "state"),
            ("cn/terraform.tfstate.backup", "backup"),
            ("cn/terraform.tfstate.d/c1/terraform.tfstate", "ws state"),
            ("cn/.terraform/terraform.tfstate", "backend settings"),
            ("net/errored.tfstate", "errored"),
            (".git/terraform.tfstate", "not state"),
        ] {
            fs::write(code.join(file), text).unwrap();
        }
        let kept = tmp.path().join("kept");
        assert_eq!(keep(&code, &kept).unwrap(), 4);
        assert!(!kept.join("cn/main.tf").exists());
        assert!(!kept.join("cn/.terraform").exists());

        let fresh = tmp.path().join("fresh");
        fs::create_dir_all(fresh.join("cn")).unwrap();
        fs::write(fresh.join("cn/terraform.tfstate"), "newer").unwrap();
        assert_eq!(restore(&kept, &fresh, true).unwrap(), 3);
        assert_eq!(
            fs::read_to_string(fresh.join("cn/terraform.tfstate")).unwrap(),
            "newer"
        );
        assert_eq!(restore(&kept, &fresh, false).unwrap(), 4);
        assert_eq!(
            fs::read_to_string(fresh.join("cn/terraform.tfstate")).unwrap(),
            "state"
        );
        assert_eq!(
            fs::read_to_string(fresh.join("cn/terraform.tfstate.d/c1/terraform.tfstate")).unwrap(),
            "ws state"
        );
        assert_eq!(
            fs::read_to_string(fresh.join("net/errored.tfstate")).unwrap(),
            "errored"
        );
    }
}
