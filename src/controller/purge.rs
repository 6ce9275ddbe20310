//! Housekeeping: operations that run longer than `--operation-timeout` are stopped, and
//! destroyed clusters are purged `--keep-destroyed` after their destroy, at start-up and
//! periodically.
//!
//! A purged cluster is gone: its directory is removed whole and it answers 404; a PUT of its
//! id creates it afresh at generation 1. No tombstone is needed for its generations: a new
//! intent gets a new uid, which no outcome of the old cluster names.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::base::durable;
use crate::controller::api::App;
use crate::controller::cluster::{self, Cluster, Phase};
use crate::controller::records::Record;

/// Where a purged cluster's directory is moved before it is removed: out of the listing at
/// once, and removed at the next start-up if a crash interrupted the removal.
const PURGED_PREFIX: &str = ".purged-";

/// Runs until the controller stops: stops overdue operations, purges old destroyed clusters.
pub async fn housekeeping(app: Arc<App>, keep_destroyed: Duration) {
    let timeout = app.reconciler.config.operation_timeout;
    let every = (keep_destroyed.min(timeout) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        app.reconciler.stop_overdue();
        purge(&app, keep_destroyed).await;
    }
}

/// Removes what an interrupted purge left.
pub fn remove_leftovers(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cluster::clusters_dir(root)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PURGED_PREFIX)
        {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

async fn purge(app: &App, keep: Duration) {
    let Some(before) = SystemTime::now().checked_sub(keep) else {
        return;
    };
    let ids = app.reconciler.index.destroyed_before(before);
    if ids.is_empty() {
        return;
    }
    // A PUT or DELETE of the cluster waits: it then finds it purged, or not yet.
    let _writes = app.writes.lock().await;
    tokio::task::block_in_place(|| {
        for id in ids {
            if let Err(e) = purge_one(app, &id, before) {
                warn!(cluster = %id, "cannot purge the destroyed cluster: {e}");
            }
        }
    });
}

fn purge_one(app: &App, id: &str, before: SystemTime) -> std::io::Result<()> {
    let reconciler = &app.reconciler;
    let cluster = Cluster::new(&reconciler.config.root, id);
    let record = Record::read(&cluster);
    let destroyed = record.intent().is_some_and(|intent| {
        Phase::of(intent, record.outcome(), reconciler.running(id)) == Phase::Destroyed
    });
    let modified = std::fs::metadata(cluster.outcome_path()).and_then(|m| m.modified())?;
    if !destroyed || modified >= before {
        reconciler.refresh(id);
        return Ok(());
    }
    let parent = cluster::clusters_dir(&reconciler.config.root);
    let moved = parent.join(format!("{PURGED_PREFIX}{id}"));
    if moved.exists() {
        std::fs::remove_dir_all(&moved)?;
    }
    std::fs::rename(&cluster.dir, &moved)?;
    durable::sync_dir(&parent)?;
    reconciler.purged(id);
    info!(cluster = %id, "purged: destroyed more than --keep-destroyed ago");
    std::fs::remove_dir_all(&moved)
}
