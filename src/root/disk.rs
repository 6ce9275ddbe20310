//! Room on the PVC. Terraform that runs out of space mid-apply cannot save its state: the
//! resources it created are then recorded nowhere. So no terraform that writes state starts
//! while the root's filesystem has less than `settings.min_free_space` free.

use std::path::Path;

use crate::base::error::{Error, Result};

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Fails, naming the figures, when the filesystem of `path` has less than `min` bytes free.
pub fn ensure_room(path: &Path, min: u64) -> Result<()> {
    if min == 0 {
        return Ok(());
    }
    let free = free_space(path).map_err(|e| {
        Error::io(
            format!("cannot tell how much space is free at {}", path.display()),
            e,
        )
    })?;
    if free < min {
        return Err(Error::NoSpace {
            path: path.to_path_buf(),
            free,
            min,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_with_less_than_the_minimum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_room(dir.path(), 1).is_ok());
        assert!(ensure_room(dir.path(), 0).is_ok());
        let err = ensure_room(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("min_free_space"), "{err}");
    }
}
