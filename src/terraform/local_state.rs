//! Terraform's local state, guarded against a kill in the middle of its write.
//!
//! The local backend rewrites `terraform.tfstate` in place: truncate, then write. A kill
//! between the two leaves the file empty or cut short, and terraform reads an empty file as
//! "no state": the next apply would create again everything the step had made, and a destroy
//! would destroy nothing and call it done. So while terraform runs, every complete state it
//! writes is copied beside the file, crash-safely; before the step runs again, a torn file is
//! put back from that copy.
//!
//! Steps whose state lives in a remote backend have no such file, and nothing here happens.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::base::durable;

pub const FILE: &str = "terraform.tfstate";
/// The last complete state seen, beside the state file.
pub const COPY: &str = "terraform.tfstate.last-complete";
/// Terraform's own copy of the state as it was before its run's first write.
const BACKUP: &str = "terraform.tfstate.backup";
/// States hold secrets.
const MODE: u32 = 0o600;
/// Two writes this close together may share a length and a timestamp, so a file changed this
/// recently is read again even when its length and timestamp look unchanged.
const SETTLE: Duration = Duration::from_secs(1);

/// The local state file of one step and workspace.
#[derive(Debug)]
pub struct LocalState {
    file: PathBuf,
    copy: PathBuf,
    backup: PathBuf,
    seen: Option<(u64, SystemTime)>,
    /// Where `init` records the backend's settings, rewritten in place like a state.
    backend_settings: PathBuf,
    /// What the copy holds, once read or written, so that it is not read again on every poll.
    copied: Option<Vec<u8>>,
}

impl LocalState {
    /// Where the local backend keeps the state of `workspace` for the module in `cwd`.
    pub fn of(cwd: &Path, workspace: Option<&str>) -> Self {
        let dir = match workspace {
            Some(name) if name != "default" => cwd.join("terraform.tfstate.d").join(name),
            _ => cwd.to_path_buf(),
        };
        LocalState {
            file: dir.join(FILE),
            copy: dir.join(COPY),
            backup: dir.join(BACKUP),
            seen: None,
            backend_settings: cwd.join(".terraform").join(FILE),
            copied: None,
        }
    }

    /// The outputs recorded in the state file, in the shape of `terraform output -json`
    /// (sensitive values included); `None` when it holds no readable state.
    pub fn outputs(&self) -> Option<crate::terraform::command::Outputs> {
        let state: serde_json::Value = serde_json::from_slice(&fs::read(&self.file).ok()?).ok()?;
        let outputs = serde_json::to_vec(state.get("outputs")?.as_object()?).ok()?;
        crate::terraform::command::parse_outputs(&outputs).ok()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Copies the state file when terraform has written a new, complete one; returns whether
    /// it did. A copy missed through an error only makes a later repair older.
    pub fn watch(&mut self) -> io::Result<bool> {
        let meta = match fs::metadata(&self.file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let modified = meta.modified()?;
        let stamp = (meta.len(), modified);
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= SETTLE);
        if self.seen == Some(stamp) && settled {
            return Ok(false);
        }
        let bytes = fs::read(&self.file)?;
        if !is_complete(&bytes) {
            // Terraform is in the middle of writing it: look again next time.
            return Ok(false);
        }
        self.seen = Some(stamp);
        let copied = self
            .copied
            .get_or_insert_with(|| fs::read(&self.copy).unwrap_or_default());
        if *copied == bytes {
            return Ok(false);
        }
        durable::write(&self.copy, &bytes, MODE)?;
        *copied = bytes;
        Ok(true)
    }

    /// Before terraform runs: puts back a state file that a kill left torn. Returns what it
    /// did, for the log, or why it cannot go on.
    pub fn repair(&self) -> Result<Option<String>, String> {
        let settings = self.remove_torn_backend_settings()?;
        let state = self.repair_state()?;
        Ok(match (settings, state) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        })
    }

    /// A kill while `init` rewrote the backend's settings leaves them torn, and every later
    /// `init` fails to read them. `init` writes them afresh from the step's
    /// `-backend-config`, so a torn file is set aside.
    fn remove_torn_backend_settings(&self) -> Result<Option<String>, String> {
        let Ok(bytes) = std::fs::read(&self.backend_settings) else {
            return Ok(None);
        };
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
            return Ok(None);
        }
        let kept = self.backend_settings.with_file_name(format!(
            "{FILE}.torn-{}",
            crate::base::clock::now().unix_timestamp()
        ));
        std::fs::rename(&self.backend_settings, &kept)
            .and_then(|_| durable::sync_dir(kept.parent().unwrap_or(Path::new("."))))
            .map_err(|e| format!("cannot set aside {}: {e}", self.backend_settings.display()))?;
        Ok(Some(format!(
            "{} was torn by a kill while terraform init wrote it ({} bytes); set it aside as {}: init writes it again",
            self.backend_settings.display(),
            bytes.len(),
            kept.display()
        )))
    }

    fn repair_state(&self) -> Result<Option<String>, String> {
        // What a kill left of our own half-written copies; terraform's files and the
        // user's are left alone.
        if let Some(dir) = self.file.parent() {
            durable::remove_temps_of(dir, FILE)
                .map_err(|e| format!("cannot clean beside {}: {e}", self.file.display()))?;
        }
        let Some(torn) = self.torn()? else {
            return Ok(None);
        };
        let Some((source, bytes)) = &torn.good else {
            // Nothing complete was ever written: no state is what terraform knew.
            return Ok(Some(format!(
                "{} is empty and no complete copy exists; terraform starts from no state",
                self.file.display()
            )));
        };
        let kept = self.file.with_file_name(format!(
            "{FILE}.torn-{}",
            crate::base::clock::now().unix_timestamp()
        ));
        // The torn bytes are kept for a post-mortem; the state file itself is only ever
        // replaced whole, so a crash here leaves it torn or repaired, never missing.
        durable::write(&kept, &torn.bytes, MODE)
            .and_then(|_| durable::write(&self.file, bytes, MODE))
            .map_err(|e| format!("cannot repair {}: {e}", self.file.display()))?;
        Ok(Some(format!(
            "{} was torn by a kill while terraform wrote it ({} bytes); put back the last complete state (serial {}) from {}; the torn file is kept as {}",
            self.file.display(),
            torn.bytes.len(),
            serial(bytes),
            source.file_name().unwrap_or_default().to_string_lossy(),
            kept.display()
        )))
    }

    /// What [`LocalState::repair`] would do, without doing it: for `plan`.
    pub fn check(&self) -> Result<Option<String>, String> {
        let Some(torn) = self.torn()? else {
            return Ok(None);
        };
        Ok(Some(match &torn.good {
            Some((source, bytes)) => format!(
                "{} is torn ({} bytes, left by a kill while terraform wrote it): the last complete state (serial {}) would be put back from {} first",
                self.file.display(),
                torn.bytes.len(),
                serial(bytes),
                source.file_name().unwrap_or_default().to_string_lossy(),
            ),
            None => format!(
                "{} is empty and no complete copy exists: terraform would start from no state",
                self.file.display()
            ),
        }))
    }

    /// The state file when it is not a complete state, with the best complete one to put
    /// back; an error when it is cut short and nothing can replace it.
    fn torn(&self) -> Result<Option<Torn<'_>>, String> {
        let bytes = match fs::read(&self.file) {
            Ok(bytes) if is_complete(&bytes) => return Ok(None),
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.file.display())),
        };
        let good = [&self.copy, &self.backup].into_iter().find_map(|path| {
            let bytes = fs::read(path).ok()?;
            is_complete(&bytes).then_some((path.as_path(), bytes))
        });
        if good.is_none() && !bytes.is_empty() {
            return Err(format!(
                "{} is cut short ({} bytes, not a complete state), and neither {} nor {} holds a complete one; \
                 repair it by hand (`terraform state push` of a good copy) before running again",
                self.file.display(),
                bytes.len(),
                COPY,
                BACKUP
            ));
        }
        Ok(Some(Torn { bytes, good }))
    }
}

/// Whether `path` exists and holds a whole state document.
pub fn holds_complete_state(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| is_complete(&bytes))
}

/// Moves aside a state file that terraform left in place of one it could not save (its
/// `errored.tfstate`) when that holds no complete state: terraform ran out of space writing
/// it, and pushing it would fail with "no state" on every run. It is kept, renamed; returns
/// the new name and the size it had.
pub fn set_aside_if_incomplete(path: &Path) -> io::Result<Option<(PathBuf, u64)>> {
    let bytes = fs::read(path)?;
    if is_complete(&bytes) {
        return Ok(None);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let kept = path.with_file_name(format!(
        "{name}.incomplete-{}",
        crate::base::clock::now().unix_timestamp()
    ));
    fs::rename(path, &kept)?;
    durable::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(Some((kept, bytes.len() as u64)))
}

struct Torn<'a> {
    bytes: Vec<u8>,
    /// Where a complete state was found, and its content.
    good: Option<(&'a Path, Vec<u8>)>,
}

/// Whether `bytes` are a whole state document, not one cut short.
fn is_complete(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|doc| doc.get("version").is_some() && doc.get("lineage").is_some())
}

/// The state's serial, for the log.
fn serial(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|doc| doc.get("serial")?.as_u64())
        .map_or_else(|| "unknown".to_string(), |serial| serial.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"{"version":4,"serial":7,"lineage":"l-1","outputs":{},"resources":[]}"#;

    #[test]
    fn torn_backend_settings_are_set_aside_and_whole_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let settings = dir.path().join(".terraform").join(FILE);
        std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
        std::fs::write(&settings, STATE).unwrap();
        let state = LocalState::of(dir.path(), Some("w"));
        assert_eq!(state.repair().unwrap(), None);
        assert!(settings.exists());
        std::fs::write(&settings, &STATE[..20]).unwrap();
        let done = state.repair().unwrap().expect("set aside");
        assert!(
            done.contains("torn by a kill while terraform init"),
            "{done}"
        );
        assert!(!settings.exists());
    }

    fn guarded() -> (tempfile::TempDir, LocalState) {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::of(dir.path(), None);
        (dir, state)
    }

    #[test]
    fn a_workspace_has_its_own_file() {
        let state = LocalState::of(Path::new("/c/m"), Some("c1"));
        assert_eq!(
            state.file(),
            Path::new("/c/m/terraform.tfstate.d/c1/terraform.tfstate")
        );
        let state = LocalState::of(Path::new("/c/m"), Some("default"));
        assert_eq!(state.file(), Path::new("/c/m/terraform.tfstate"));
    }

    #[test]
    fn complete_states_are_copied_and_torn_ones_are_not() {
        let (dir, mut state) = guarded();
        assert!(!state.watch().unwrap(), "no file yet");
        fs::write(dir.path().join(FILE), &STATE[..20]).unwrap();
        assert!(!state.watch().unwrap(), "cut short");
        fs::write(dir.path().join(FILE), STATE).unwrap();
        assert!(state.watch().unwrap());
        assert_eq!(fs::read_to_string(dir.path().join(COPY)).unwrap(), STATE);
        assert!(!state.watch().unwrap(), "same content again");
    }

    #[test]
    fn an_empty_or_cut_short_file_is_put_back_from_the_copy() {
        for torn in ["", &STATE[..30]] {
            let (dir, mut state) = guarded();
            fs::write(dir.path().join(FILE), STATE).unwrap();
            state.watch().unwrap();
            fs::write(dir.path().join(FILE), torn).unwrap();
            assert!(state
                .check()
                .unwrap()
                .unwrap()
                .contains("would be put back"));
            let half_copy = durable::temp_sibling(&dir.path().join(COPY));
            fs::write(&half_copy, &STATE[..9]).unwrap();
            let said = state.repair().unwrap().expect("repaired");
            assert!(said.contains("serial 7"), "{said}");
            assert_eq!(fs::read_to_string(dir.path().join(FILE)).unwrap(), STATE);
            let kept: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
                .collect();
            assert_eq!(kept.len(), 1);
            assert_eq!(fs::read_to_string(kept[0].path()).unwrap(), torn);
            assert!(!half_copy.exists(), "a half-written copy is left");
        }
    }

    #[test]
    fn an_incomplete_errored_state_is_kept_aside_and_a_complete_one_stays() {
        let (dir, _) = guarded();
        let errored = dir.path().join("errored.tfstate");
        fs::write(&errored, STATE).unwrap();
        assert_eq!(set_aside_if_incomplete(&errored).unwrap(), None);
        assert!(errored.exists());
        for incomplete in ["", "{\"version\":4,"] {
            fs::write(&errored, incomplete).unwrap();
            let (kept, size) = set_aside_if_incomplete(&errored)
                .unwrap()
                .expect("set aside");
            assert!(!errored.exists());
            assert_eq!(size, incomplete.len() as u64);
            assert_eq!(fs::read_to_string(&kept).unwrap(), incomplete);
            fs::remove_file(kept).unwrap();
        }
    }

    #[test]
    fn a_complete_file_is_left_alone() {
        let (dir, state) = guarded();
        fs::write(dir.path().join(COPY), STATE.replace("7", "6")).unwrap();
        fs::write(dir.path().join(FILE), STATE).unwrap();
        assert_eq!(state.repair().unwrap(), None);
        assert_eq!(fs::read_to_string(dir.path().join(FILE)).unwrap(), STATE);
    }

    #[test]
    fn terraforms_backup_serves_when_no_copy_exists() {
        let (dir, state) = guarded();
        fs::write(dir.path().join(BACKUP), STATE).unwrap();
        fs::write(dir.path().join(FILE), "").unwrap();
        let said = state.repair().unwrap().expect("repaired");
        assert!(said.contains(BACKUP), "{said}");
        assert_eq!(fs::read_to_string(dir.path().join(FILE)).unwrap(), STATE);
    }

    #[test]
    fn a_cut_short_file_with_nothing_to_put_back_stops_the_step() {
        let (cut, state) = guarded();
        fs::write(cut.path().join(FILE), &STATE[..30]).unwrap();
        let err = state.repair().unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        let (empty, state) = guarded();
        fs::write(empty.path().join(FILE), "").unwrap();
        assert!(state.repair().unwrap().unwrap().contains("no state"));
    }
}
