//! What the controller keeps under `--root` besides the clusters: its lock, in `controller/`,
//! outside the namespace of cluster ids. And the move, at start-up, of what older versions left
//! elsewhere: their lock in `clusters/lock` (where a cluster `lock` belongs), and each
//! cluster's engine root, which was the cluster's directory itself and is now its `engine/`.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::base::durable;
use crate::base::error::{Error, Result};
use crate::controller::cluster::{self, Cluster, CONTROLLER_FILES, ENGINE_DIR};
use crate::root::journal::{LOCK, STATE_DIR};
use crate::root::lock::Lock;

/// Where an engine root is gathered before it takes its place: a name no engine file has.
const MOVING: &str = ".engine-moving";

/// The directory of the controller's own files.
pub fn controller_dir(root: &Path) -> PathBuf {
    root.join("controller")
}

/// Takes the controller's lock on `root`. The lock older versions took, `clusters/lock`, is
/// taken too when it is there, so that an older controller still running on this root is
/// refused like any other; then it is removed, since its name is a cluster id's.
pub fn lock(root: &Path) -> Result<Lock> {
    let dir = controller_dir(root);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let lock = Lock::acquire(&dir, "serve")?;
    let clusters = cluster::clusters_dir(root);
    let old = clusters.join(LOCK);
    if old.symlink_metadata().is_ok_and(|m| m.is_file()) {
        let old_lock = Lock::acquire(&clusters, "serve")?;
        durable::remove(&old)
            .map_err(|e| Error::io(format!("cannot remove {}", old.display()), e))?;
        drop(old_lock);
        info!(
            "removed {}, the lock of an older version: it is {} now",
            old.display(),
            dir.join(LOCK).display()
        );
    }
    Ok(lock)
}

/// Moves each cluster's engine root that an older version kept in the cluster's directory
/// into its `engine/`. A move cut short by a crash is finished at the next start. A root an
/// engine still holds (an operation of a controller killed without its children) is left
/// where it is, and used there, until a later start.
pub fn migrate(root: &Path) -> Result<()> {
    let clusters = cluster::clusters_dir(root);
    let entries = match fs::read_dir(&clusters) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot read {}", clusters.display()), e)),
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::io(format!("cannot read {}", clusters.display()), e))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        if cluster::check_id(&id).is_err() || !entry.path().is_dir() {
            continue;
        }
        let cluster = Cluster::new(root, &id);
        let moved = move_engine_root(&cluster)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot move the engine's files of cluster {id} into {} (the layout of an older version); move every file but {} there by hand",
                        cluster.dir.join(ENGINE_DIR).display(),
                        CONTROLLER_FILES.join(", ")
                    ),
                    e,
                )
            })?;
        if moved {
            info!(cluster = %id, "moved the engine's files into {}", cluster.dir.join(ENGINE_DIR).display());
        }
    }
    Ok(())
}

/// Whether `name`, in a cluster's directory, is the controller's: one of its files, or the
/// temp file of one.
fn is_controllers(name: &str) -> bool {
    CONTROLLER_FILES.iter().any(|file| {
        name == *file
            || durable::is_temp(name)
                && name[1..]
                    .strip_prefix(file)
                    .is_some_and(|rest| rest.starts_with(".tmp-"))
    })
}

/// Moves one cluster's engine root; false when there was nothing to move, or it is held.
fn move_engine_root(cluster: &Cluster) -> io::Result<bool> {
    let dir = &cluster.dir;
    let moving = dir.join(MOVING);
    let journal = dir.join(STATE_DIR);
    let old_journal = journal.is_dir();
    if !old_journal && !moving.is_dir() {
        return Ok(false);
    }
    let target = dir.join(ENGINE_DIR);
    // The engine's lock, held while its files move: no engine may start in them meanwhile.
    let _held = if old_journal {
        match Lock::acquire(&journal, "serve") {
            Ok(lock) => Some(lock),
            Err(Error::Locked { holder, .. }) => {
                warn!(cluster = %cluster.id, "an engine still works in {} ({holder}): its files stay there until the controller starts again", dir.display());
                return Ok(false);
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    } else {
        None
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&moving)?;
    // The journal last: while it is in the cluster's directory, the move is not done.
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != MOVING && name != STATE_DIR && !is_controllers(&name) {
            names.push(name);
        }
    }
    for name in names {
        fs::rename(dir.join(&name), moving.join(&name))?;
    }
    if old_journal {
        fs::rename(&journal, moving.join(STATE_DIR))?;
    }
    durable::sync_dir(&moving)?;
    fs::rename(&moving, &target)?;
    durable::sync_dir(dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_files_and_their_temps_stay() {
        for name in [
            "intent.json",
            ".intent.json.tmp-12-345",
            "operation.log",
            ".outcome.json.tmp-1-2",
        ] {
            assert!(is_controllers(name), "{name}");
        }
        for name in [
            ".bootstrapper",
            "tenant",
            "engine",
            ".tenant.tmp-1-2",
            "intent.jsonx",
        ] {
            assert!(!is_controllers(name), "{name}");
        }
    }

    #[test]
    fn a_root_an_engine_holds_stays_and_is_used_where_it_is() {
        let root = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(root.path(), "c1");
        let dir = &cluster.dir;
        fs::create_dir_all(dir.join(".bootstrapper")).unwrap();
        fs::create_dir_all(dir.join("code")).unwrap();
        let engine = Lock::acquire(&dir.join(".bootstrapper"), "run").unwrap();
        migrate(root.path()).unwrap();
        assert_eq!(cluster.engine_root(), *dir);
        assert!(dir.join("code").is_dir() && !dir.join(MOVING).exists());
        drop(engine);
        migrate(root.path()).unwrap();
        assert_eq!(cluster.engine_root(), dir.join("engine"));
        assert!(dir.join("engine/code").is_dir());
    }

    #[test]
    fn a_move_cut_short_is_finished() {
        let root = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(root.path(), "c1");
        let dir = &cluster.dir;
        fs::create_dir_all(dir.join(".bootstrapper/steps/a")).unwrap();
        fs::create_dir_all(dir.join("code/a")).unwrap();
        fs::write(dir.join("code/a/terraform.tfstate"), "state").unwrap();
        fs::write(dir.join("intent.json"), "{}").unwrap();
        // Cut short: the code moved, the journal not yet.
        fs::create_dir_all(dir.join(MOVING)).unwrap();
        fs::rename(dir.join("code"), dir.join(MOVING).join("code")).unwrap();
        assert_eq!(cluster.engine_root(), *dir);
        migrate(root.path()).unwrap();
        assert_eq!(cluster.engine_root(), dir.join("engine"));
        let state = dir.join("engine/code/a/terraform.tfstate");
        assert_eq!(fs::read_to_string(state).unwrap(), "state");
        assert!(dir.join("engine/.bootstrapper/steps/a").is_dir());
        assert!(dir.join("intent.json").is_file());
        assert!(!dir.join(MOVING).exists());
        // Cut short after the journal moved too.
        fs::rename(dir.join("engine"), dir.join(MOVING)).unwrap();
        migrate(root.path()).unwrap();
        assert!(dir.join("engine/.bootstrapper/steps/a").is_dir());
        // Nothing left to move: nothing changes.
        migrate(root.path()).unwrap();
        assert!(dir.join("engine/code/a").is_dir());
    }
}
