//! Making a tree durable before it is renamed into place.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Past this many entries a tree is made durable with one `syncfs` instead of an fsync each.
const FSYNC_EACH_UP_TO: usize = 256;

/// Makes every file and directory of the tree at `path` durable. A small tree (the usual
/// Terraform roots) gets an fsync per entry, which writes only its own data; a large one (a
/// clone's objects) one `syncfs`, which costs as much as everything dirty on the filesystem,
/// other writers' data included.
pub(super) fn sync_tree(path: &Path) -> io::Result<()> {
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
pub(super) fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path)?;
    // SAFETY: syncfs only reads the descriptor, which stays open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
