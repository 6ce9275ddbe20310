//! The journal on the PVC: per step, an `inited` marker once its apply exited 0, and a record
//! of its latest attempt. Both are written crash-safely; a marker is the only proof that a
//! step is done.
//!
//! Layout: `<root>/.bootstrapper/steps/<step>/{inited,attempt,destroyed,destroy-attempt}`, and
//! `<root>/.bootstrapper/tombstone` once a destroy has begun.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::base::clock::Timestamp;
use crate::base::durable;
use crate::base::error::{Error, Location, Problem, Problems, Result};
use crate::base::json;

pub const STATE_DIR: &str = ".bootstrapper";
const STEPS_DIR: &str = "steps";
const MARKER: &str = "inited";
const ATTEMPT: &str = "attempt";
const DESTROYED: &str = "destroyed";
const DESTROY_ATTEMPT: &str = "destroy-attempt";
const TOMBSTONE: &str = "tombstone";
/// The values of a step's sensitive outputs, kept out of its marker ([`Journal::write_marker`]).
const SENSITIVE: &str = "sensitive";
/// The lock file ([`crate::root::lock`]), which names its holder.
pub const LOCK: &str = "lock";
/// Where the code on the root came from ([`crate::root::source`]).
const SOURCE_RECORD: &str = "source";
/// Terraform's local states, kept across `reset source` ([`crate::root::source`]).
const KEPT_STATE: &str = "source-state";
/// The terraform binary whose version was last found good ([`crate::terraform::command`]).
const TERRAFORM_RECORD: &str = "terraform";

/// The plan `diff` saved for a step, which `run --reviewed` applies.
const REVIEWED_PLAN: &str = "reviewed.tfplan";
/// What the last `diff` found, and the plans it saved.
const DIFF_RECORD: &str = "diff.json";

/// Files here may hold sensitive outputs.
const FILE_MODE: u32 = 0o600;

/// Proof that a step was applied, and what with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub step: String,
    /// The digest of all inputs, and one per input to say which changed.
    pub digest: String,
    pub inputs: BTreeMap<String, String>,
    /// `terraform output -json` values, for later steps' templates after a restart.
    pub outputs: Map<String, Value>,
    /// Names of outputs terraform marked sensitive; masked wherever shown.
    #[serde(default)]
    pub sensitive: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: Timestamp,
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptState {
    /// Started and not known to have ended: after a restart, this means it was killed.
    Running,
    Failed,
    Succeeded,
}

/// The latest attempt at a step: how many there were and how the last one went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub state: AttemptState,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// For a failed terraform command: what its diagnostics say went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::base::error::FailureKind>,
    pub pid: u32,
}

/// Proof that a step's resources were destroyed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destroyed {
    pub step: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: Timestamp,
    pub attempts: u32,
}

/// Left by `destroy` when it begins, so that a restarted entrypoint never applies again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    /// Set once every started step is destroyed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
}

/// Whether an attempt applied or destroyed; each keeps its own attempt record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Apply,
    Destroy,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal of a root; nothing is read or created yet.
    pub fn at(root: &Path) -> Self {
        Journal {
            dir: root.join(STATE_DIR),
        }
    }

    /// `<root>/.bootstrapper`, where the lock lives too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of where the code came from.
    pub fn source_record(&self) -> PathBuf {
        self.dir.join(SOURCE_RECORD)
    }

    /// Names the terraform binary last found to be a version the engine can use, so that a
    /// restart with nothing to do need not start it to ask again.
    pub fn terraform_record(&self) -> PathBuf {
        self.dir.join(TERRAFORM_RECORD)
    }

    /// What the last `diff` found ([`crate::engine::diff`]).
    pub fn diff_record(&self) -> PathBuf {
        self.dir.join(DIFF_RECORD)
    }

    /// Where `diff` saves the plan of `step`, creating the step's directory if need be.
    pub fn reviewed_plan(&self, step: &str) -> Result<PathBuf> {
        let dir = self.step_dir(step);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| self.io("create", &dir, e))?;
            durable::sync_dir(&self.dir.join(STEPS_DIR)).map_err(|e| self.io("sync", &dir, e))?;
        }
        Ok(dir.join(REVIEWED_PLAN))
    }

    /// The plan `diff` saved for `step`, whether or not it is there.
    pub fn reviewed_plan_path(&self, step: &str) -> PathBuf {
        self.step_dir(step).join(REVIEWED_PLAN)
    }

    /// Where terraform's local states wait while the code is replaced.
    pub fn kept_state_dir(&self) -> PathBuf {
        self.dir.join(KEPT_STATE)
    }

    /// Whether the root can hold a journal: a directory, or nothing yet. One clear problem,
    /// instead of the same "Not a directory" from every file the journal would read below it.
    pub fn check_root(&self) -> Result<()> {
        let root = self.dir.parent().unwrap_or(&self.dir);
        let why = match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Ok(_) => "is not a directory".to_string(),
            Err(e) => format!("cannot be used: {e}"),
        };
        Err(Error::Input(Problems::one(
            Problem::new(format!("--root {} {why}", root.display()))
                .hint("--root is the PVC mount: a directory, or a path that does not exist yet"),
        )))
    }

    /// Creates the journal's directories; fails when the root is not writable.
    pub fn create(&self) -> Result<()> {
        self.check_root()?;
        let steps = self.dir.join(STEPS_DIR);
        fs::create_dir_all(&steps).map_err(|e| {
            Error::Input(Problems::one(
                Problem::new(format!("cannot create {}: {e}", steps.display()))
                    .hint("--root must be a writable directory (the PVC mount)"),
            ))
        })?;
        // A read-only mount lets directories be listed but fails the first write; find out now.
        // The probe is never read back, so it needs no fsync: a restart pays nothing for it.
        let probe = self.dir.join(".write-probe");
        let _ = fs::remove_file(&probe);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"probe"))
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| {
                Error::Input(Problems::one(
                    Problem::new(format!("cannot write under {}: {e}", self.dir.display()))
                        .hint("--root must be a writable directory (the PVC mount)"),
                ))
            })
    }

    /// Removes temp files that a killed process left half-written. Call with the lock held.
    pub fn remove_torn(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for name in self.step_names()? {
            let dir = self.step_dir(&name);
            for temp in durable::remove_temps(&dir).map_err(|e| self.io("clean", &dir, e))? {
                removed.push(dir.join(temp));
            }
        }
        Ok(removed)
    }

    /// The names of the steps that have a journal directory.
    pub fn step_names(&self) -> Result<Vec<String>> {
        let steps = self.dir.join(STEPS_DIR);
        let entries = match fs::read_dir(&steps) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("read", &steps, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io("read", &steps, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !durable::is_temp(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The step's marker, with its sensitive outputs' values put back in.
    pub fn marker(&self, step: &str) -> Result<Option<Marker>> {
        let Some(mut marker) = self.read::<Marker>(step, MARKER)? else {
            return Ok(None);
        };
        // A marker written before sensitive values moved out still has them inline.
        let missing: Vec<String> = marker
            .sensitive
            .iter()
            .filter(|name| !marker.outputs.contains_key(*name))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(Some(marker));
        }
        let path = self.step_dir(step).join(SENSITIVE);
        let mut values: Map<String, Value> = self.read(step, SENSITIVE)?.unwrap_or_default();
        for name in missing {
            match values.remove(&name) {
                Some(value) => {
                    marker.outputs.insert(name, value);
                }
                None => {
                    return Err(Error::Input(Problems::one(
                        Problem::new(format!(
                            "the marker lists a sensitive output `{name}`, but {} does not hold its value",
                            path.display()
                        ))
                        .at(Location::file(&self.marker_path(step)))
                        .in_step(step)
                        .hint(format!(
                            "`bootstrapper reset {step}` forgets the step; the next run applies it again and records its outputs anew"
                        )),
                    )))
                }
            }
        }
        Ok(Some(marker))
    }

    pub fn attempt(&self, step: &str) -> Result<Option<Attempt>> {
        self.read(step, ATTEMPT)
    }

    pub fn destroyed(&self, step: &str) -> Result<Option<Destroyed>> {
        self.read(step, DESTROYED)
    }

    pub fn destroy_attempt(&self, step: &str) -> Result<Option<Attempt>> {
        self.read(step, DESTROY_ATTEMPT)
    }

    /// The latest attempt at applying or destroying a step.
    pub fn attempt_of(&self, action: Action, step: &str) -> Result<Option<Attempt>> {
        self.read(step, attempt_file(action))
    }

    pub fn write_attempt_of(&self, action: Action, step: &str, attempt: &Attempt) -> Result<()> {
        self.write(step, attempt_file(action), attempt)
    }

    pub fn write_destroyed(&self, destroyed: &Destroyed) -> Result<()> {
        self.write(&destroyed.step, DESTROYED, destroyed)
    }

    /// Whether a step ever started applying: it may have created resources.
    pub fn started(&self, step: &str) -> bool {
        let dir = self.step_dir(step);
        dir.join(MARKER).exists() || dir.join(ATTEMPT).exists()
    }

    pub fn tombstone(&self) -> Result<Option<Tombstone>> {
        let path = self.dir.join(TOMBSTONE);
        read_json(&path, None)
    }

    pub fn write_tombstone(&self, tombstone: &Tombstone) -> Result<()> {
        let path = self.dir.join(TOMBSTONE);
        write_json(&path, tombstone)
    }

    /// Forgets every step and the tombstone: the next run bootstraps from scratch.
    pub fn forget_all(&self) -> Result<Vec<String>> {
        let names = self.step_names()?;
        // The tombstone goes last: until then, a crash leaves the root refusing to apply.
        for name in &names {
            self.forget(name)?;
        }
        let path = self.dir.join(TOMBSTONE);
        durable::remove(&path).map_err(|e| self.io("remove", &path, e))?;
        Ok(names)
    }

    /// Writes a marker. The values of sensitive outputs go to a separate file, written first
    /// (a marker is proof of done, so what it needs must be durable before it), so that the
    /// marker itself holds no secret and can be read, shown and copied freely.
    pub fn write_marker(&self, marker: &Marker) -> Result<()> {
        let mut public = marker.clone();
        let mut secret = Map::new();
        for name in &marker.sensitive {
            if let Some(value) = public.outputs.remove(name) {
                secret.insert(name.clone(), value);
            }
        }
        let sensitive = self.step_dir(&marker.step).join(SENSITIVE);
        if !secret.is_empty() {
            self.write(&marker.step, SENSITIVE, &secret)?;
        }
        self.write(&marker.step, MARKER, &public)?;
        if secret.is_empty() {
            // Left by an earlier apply that had sensitive outputs: no secret outlives its use.
            durable::remove(&sensitive).map_err(|e| self.io("remove", &sensitive, e))?;
        }
        Ok(())
    }

    /// Forgets everything about a step, so that the next run applies it again.
    pub fn forget(&self, step: &str) -> Result<bool> {
        let dir = self.step_dir(step);
        if !dir.exists() {
            return Ok(false);
        }
        // The marker goes first: if we die half way, the step is already not done.
        for file in [MARKER, SENSITIVE, ATTEMPT, DESTROYED, DESTROY_ATTEMPT] {
            let path = dir.join(file);
            durable::remove(&path).map_err(|e| self.io("remove", &path, e))?;
        }
        fs::remove_dir_all(&dir).map_err(|e| self.io("remove", &dir, e))?;
        durable::sync_dir(&self.dir.join(STEPS_DIR)).map_err(|e| self.io("sync", &dir, e))?;
        Ok(true)
    }

    pub fn marker_path(&self, step: &str) -> PathBuf {
        self.step_dir(step).join(MARKER)
    }

    fn step_dir(&self, step: &str) -> PathBuf {
        self.dir.join(STEPS_DIR).join(step)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, step: &str, file: &str) -> Result<Option<T>> {
        read_json(&self.step_dir(step).join(file), Some(step))
    }

    fn write<T: Serialize>(&self, step: &str, file: &str, value: &T) -> Result<()> {
        let dir = self.step_dir(step);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| self.io("create", &dir, e))?;
            durable::sync_dir(&self.dir.join(STEPS_DIR)).map_err(|e| self.io("sync", &dir, e))?;
        }
        write_json(&dir.join(file), value)
    }

    fn io(&self, verb: &str, path: &Path, e: io::Error) -> Error {
        io_error(verb, path, e)
    }
}

fn attempt_file(action: Action) -> &'static str {
    match action {
        Action::Apply => ATTEMPT,
        Action::Destroy => DESTROY_ATTEMPT,
    }
}

fn io_error(verb: &str, path: &Path, e: io::Error) -> Error {
    Error::io(format!("cannot {verb} {}", path.display()), e)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, step: Option<&str>) -> Result<Option<T>> {
    json::read(path).map_err(|e| match e {
        json::ReadError::Io(e) => io_error("read", path, e),
        json::ReadError::Corrupt(e) => {
            let location = Location {
                file: path.to_path_buf(),
                line: (e.line() > 0).then_some((e.line(), e.column())),
            };
            let mut problem =
                Problem::new(format!("the journal file is corrupt: {e}")).at(location);
            problem = match step {
                Some(step) => problem.in_step(step).hint(format!(
                    "if the step's resources are as they should be, `bootstrapper reset {step}` forgets it and the next run applies it again"
                )),
                None => problem.hint("`bootstrapper reset --all` forgets the whole journal"),
            };
            Error::Input(Problems::one(problem))
        }
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    json::write(path, value, FILE_MODE).map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(step: &str) -> Marker {
        Marker {
            step: step.into(),
            digest: "d".into(),
            inputs: BTreeMap::from([("vars".into(), "v".into())]),
            outputs: Map::from_iter([("conn_str".to_string(), Value::from("x"))]),
            sensitive: vec![],
            started_at: crate::base::clock::now(),
            finished_at: crate::base::clock::now(),
            attempts: 1,
        }
    }

    #[test]
    fn markers_round_trip_and_can_be_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        assert_eq!(journal.marker("network").unwrap(), None);
        journal.write_marker(&marker("network")).unwrap();
        let back = journal.marker("network").unwrap().unwrap();
        assert_eq!(back.step, "network");
        assert_eq!(back.outputs["conn_str"], "x");
        assert_eq!(journal.step_names().unwrap(), ["network"]);
        // A marker alone says the step applied, whatever became of its attempt record.
        assert!(journal.started("network"));
        assert!(journal.forget("network").unwrap());
        assert_eq!(journal.marker("network").unwrap(), None);
        assert!(!journal.forget("network").unwrap());
    }

    #[test]
    fn sensitive_values_live_outside_the_marker_and_come_back_on_read() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        let mut m = marker("hosts");
        m.outputs
            .insert("token".into(), Value::from("s3cr3t-token-value"));
        m.sensitive = vec!["token".into()];
        journal.write_marker(&m).unwrap();
        let on_disk = fs::read_to_string(journal.marker_path("hosts")).unwrap();
        assert!(!on_disk.contains("s3cr3t-token-value"), "{on_disk}");
        assert!(on_disk.contains("\"token\""), "the name stays: {on_disk}");
        let kept = journal.step_dir("hosts").join(SENSITIVE);
        let mode = fs::metadata(&kept).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(journal.marker("hosts").unwrap().unwrap(), m);

        // Applied again without sensitive outputs: the old secret goes.
        journal.write_marker(&marker("hosts")).unwrap();
        assert!(!kept.exists());

        // A marker naming a sensitive output whose value is gone is a clear input error.
        journal.write_marker(&m).unwrap();
        fs::remove_file(&kept).unwrap();
        let err = journal.marker("hosts").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("`token`"), "{err}");
    }

    #[test]
    fn a_corrupt_marker_is_an_input_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        journal.write_marker(&marker("hosts")).unwrap();
        fs::write(journal.marker_path("hosts"), "{\"step\": ").unwrap();
        let err = journal.marker("hosts").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("inited"), "{err}");
        assert!(err.to_string().contains("reset hosts"), "{err}");
        // It points at the line and column, as every input error does.
        assert!(err.to_string().contains("hosts/inited:1:9:"), "{err}");
    }

    fn attempt(state: AttemptState, attempts: u32) -> Attempt {
        Attempt {
            state,
            attempts,
            started_at: crate::base::clock::now(),
            finished_at: None,
            last_error: Some("boom".into()),
            failure: None,
            pid: 7,
        }
    }

    #[test]
    fn a_root_that_is_a_file_is_refused_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::at(dir.path()).check_root().is_ok());
        assert!(Journal::at(&dir.path().join("not-yet"))
            .check_root()
            .is_ok());
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = Journal::at(&file).check_root().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(Journal::at(&file).create().is_err());
        // Below a file, the path cannot even be looked at.
        let err = Journal::at(&file.join("below")).check_root().unwrap_err();
        assert!(err.to_string().contains("cannot be used"), "{err}");
    }

    #[test]
    fn step_names_are_none_before_the_journal_exists_and_an_error_when_unreadable() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        assert!(journal.step_names().unwrap().is_empty());
        journal.create().unwrap();
        fs::remove_dir(journal.dir().join(STEPS_DIR)).unwrap();
        fs::write(journal.dir().join(STEPS_DIR), "not a directory").unwrap();
        assert!(journal.step_names().is_err());
    }

    #[test]
    fn torn_temp_files_are_removed_and_named_and_the_records_stay() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        journal.write_marker(&marker("network")).unwrap();
        let torn = journal.step_dir("network").join(".inited.tmp-1234");
        fs::write(&torn, "{\"st").unwrap();
        assert_eq!(journal.remove_torn().unwrap(), std::slice::from_ref(&torn));
        assert!(!torn.exists());
        assert!(journal.marker("network").unwrap().is_some());
        assert!(journal.remove_torn().unwrap().is_empty());
    }

    #[test]
    fn attempts_and_destroys_are_kept_apart_per_step() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        assert_eq!(journal.attempt("hosts").unwrap(), None);
        assert!(!journal.started("hosts"));
        let apply = attempt(AttemptState::Failed, 2);
        let destroy = attempt(AttemptState::Running, 1);
        journal
            .write_attempt_of(Action::Apply, "hosts", &apply)
            .unwrap();
        journal
            .write_attempt_of(Action::Destroy, "hosts", &destroy)
            .unwrap();
        assert_eq!(journal.attempt("hosts").unwrap(), Some(apply.clone()));
        assert_eq!(
            journal.attempt_of(Action::Apply, "hosts").unwrap(),
            Some(apply)
        );
        assert_eq!(
            journal.destroy_attempt("hosts").unwrap(),
            Some(destroy.clone())
        );
        assert_eq!(
            journal.attempt_of(Action::Destroy, "hosts").unwrap(),
            Some(destroy)
        );
        assert!(journal.started("hosts"));
        assert_eq!(journal.destroyed("hosts").unwrap(), None);
        let destroyed = Destroyed {
            step: "hosts".into(),
            started_at: crate::base::clock::now(),
            finished_at: crate::base::clock::now(),
            attempts: 1,
        };
        journal.write_destroyed(&destroyed).unwrap();
        assert_eq!(journal.destroyed("hosts").unwrap(), Some(destroyed));
    }

    #[test]
    fn a_reviewed_plans_directory_is_made_when_asked_where_to_save_it() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        let path = journal.reviewed_plan("hosts").unwrap();
        assert_eq!(path, journal.reviewed_plan_path("hosts"));
        assert!(path.starts_with(journal.step_dir("hosts")), "{path:?}");
        assert!(path.parent().unwrap().is_dir());
        // The engine's own records are distinct files of the journal.
        let records = [
            journal.source_record(),
            journal.terraform_record(),
            journal.diff_record(),
            journal.kept_state_dir(),
        ];
        for record in &records {
            assert_eq!(record.parent(), Some(journal.dir()), "{record:?}");
        }
        let names: std::collections::BTreeSet<_> = records.iter().collect();
        assert_eq!(names.len(), records.len());
    }

    #[test]
    fn forget_all_forgets_every_step_and_the_tombstone_last() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::at(root.path());
        journal.create().unwrap();
        assert_eq!(journal.tombstone().unwrap(), None);
        journal.write_marker(&marker("network")).unwrap();
        journal
            .write_attempt_of(Action::Apply, "hosts", &attempt(AttemptState::Failed, 1))
            .unwrap();
        let tombstone = Tombstone {
            started_at: crate::base::clock::now(),
            finished_at: None,
        };
        journal.write_tombstone(&tombstone).unwrap();
        assert_eq!(journal.tombstone().unwrap(), Some(tombstone));

        assert_eq!(journal.forget_all().unwrap(), ["hosts", "network"]);
        assert!(journal.step_names().unwrap().is_empty());
        assert!(!journal.started("network") && !journal.started("hosts"));
        assert_eq!(journal.tombstone().unwrap(), None);
        assert!(journal.forget_all().unwrap().is_empty());
    }
}
