//! Crash-safe writes on the PVC: temp file in the same directory, fsync, rename, fsync the
//! directory. A reader sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Temp files carry this infix; whatever a crash left behind is recognised by it and removed.
const TEMP_INFIX: &str = ".tmp-";

/// Replaces `path` with `bytes`, durably, creating it with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    let temp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Removes `path` durably; a missing file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes a rename or removal inside `dir` survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A name beside `path` for a temp file or directory, unique to this process and moment.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    parent(path).join(format!(".{name}{TEMP_INFIX}{}-{nanos}", std::process::id()))
}

/// Whether `name` is a temp file or directory made by [`temp_sibling`].
pub fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_INFIX)
}

/// Deletes the torn temp files and directories that a killed process left in `dir`, and
/// returns their names. Only call this while holding the root lock: another live process
/// may be writing them otherwise.
pub fn remove_temps(dir: &Path) -> io::Result<Vec<String>> {
    remove_temps_of(dir, "")
}

/// [`remove_temps`], only for the temporaries of files whose names start with `prefix`: for
/// a directory where other programs keep files too.
pub fn remove_temps_of(dir: &Path, prefix: &str) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_temp(&name) || !name[1..].starts_with(prefix) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
        removed.push(name);
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_replaces_content_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marker");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn torn_temps_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let torn = temp_sibling(&dir.path().join("inited"));
        fs::write(&torn, b"{\"half").unwrap();
        fs::write(dir.path().join("inited"), b"{}").unwrap();
        let removed = remove_temps(dir.path()).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!torn.exists());
        assert!(dir.path().join("inited").exists());
    }

    #[test]
    fn a_failed_removal_is_reported_and_a_missing_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("absent")).unwrap();
        let not_a_file = dir.path().join("plans");
        fs::create_dir(&not_a_file).unwrap();
        assert!(
            remove(&not_a_file).is_err(),
            "a file that stays must not be reported as removed"
        );
        assert!(not_a_file.exists());
    }

    #[test]
    fn cleaning_a_place_that_cannot_be_read_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remove_temps(&dir.path().join("absent")).unwrap().len(), 0);
        let file = dir.path().join("inited");
        fs::write(&file, b"{}").unwrap();
        assert!(
            remove_temps(&file).is_err(),
            "torn temps that were never looked for must not pass for none"
        );
    }

    #[test]
    fn a_bare_name_lives_in_the_current_directory() {
        assert_eq!(parent(Path::new("marker")), Path::new("."));
        assert_eq!(parent(Path::new("root/marker")), Path::new("root"));
    }
}
