//! The reconciler: compares each cluster's intent with what its last operation achieved and
//! has the [`Executor`] run what differs (an engine `run` or `destroy` over the cluster's own
//! root). Level-triggered: it looks at the files, not at the requests, so a restart finds
//! every unfinished cluster again. At most `concurrency` operations run at once, at most one
//! per cluster, and the latest intent wins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use crate::controller::cluster::{self, Cluster, Document, Ended, Intent, Kind, Outcome};
use crate::controller::executor::{Ending, Executor, Operation};
use crate::controller::metrics::Metrics;
use crate::controller::records::{self, Index, Record};
use crate::workflow::file::Workflow;

/// A cluster whose root another engine holds, or whose outcome could not be recorded, is
/// looked at again after this long.
const RETRY: Duration = Duration::from_secs(2);

/// What the reconciler decides over.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub workflow_path: PathBuf,
    pub workflow: Workflow,
    pub concurrency: usize,
    /// An operation running longer is stopped, and its cluster failed.
    pub operation_timeout: Duration,
}

pub struct Reconciler {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub executor: Arc<dyn Executor>,
    /// The documents the API lists, refreshed whenever a record is written.
    pub index: Index,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// What the executor runs, by cluster.
    running: HashMap<String, Kind>,
    /// When each running operation started, for which generation, and whether it was stopped
    /// for running too long.
    started: HashMap<String, Started>,
    /// Set once the controller is stopping: nothing new starts.
    stopping: Option<Signal>,
}

struct Started {
    generation: u64,
    at: Instant,
    timed_out: bool,
}

/// How an operation ended, for the reconciler.
enum End {
    Done(Outcome),
    /// Stopped by a signal: not done, so the cluster is looked at again.
    Interrupted,
    /// Another engine held the cluster's root, or the outcome could not be recorded: looked
    /// at again after a pause rather than at once.
    Later,
}

impl Reconciler {
    pub fn new(config: Config, metrics: Arc<Metrics>, executor: Arc<dyn Executor>) -> Arc<Self> {
        Arc::new(Reconciler {
            config,
            metrics,
            executor,
            index: Index::default(),
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Queues every cluster under the root: what a killed controller left unfinished resumes.
    pub fn enqueue_all(&self) -> std::io::Result<usize> {
        // What an executor still runs from before the restart is adopted: its cluster gets
        // no second operation, and is looked at again when that one ends.
        let adopted = self.executor.running();
        {
            let mut inner = self.inner.lock().expect("reconciler lock");
            for operation in adopted {
                inner.started.insert(
                    operation.cluster.clone(),
                    Started {
                        generation: operation.generation,
                        at: Instant::now(),
                        timed_out: false,
                    },
                );
                inner.running.insert(operation.cluster, operation.kind);
            }
        }
        let ids = cluster::list(&self.config.root)?;
        for id in &ids {
            self.refresh(id);
        }
        for id in &ids {
            self.enqueue(id);
        }
        Ok(ids.len())
    }

    /// Looks at `id` again soon. An apply running while the cluster's intent became absent
    /// is asked to stop (the hand-over `destroy` uses), so the destroy can follow it.
    pub fn enqueue(&self, id: &str) {
        let absent = Cluster::new(&self.config.root, id)
            .intent()
            .ok()
            .flatten()
            .is_some_and(|i| !i.present);
        let mut inner = self.inner.lock().expect("reconciler lock");
        if absent && inner.running.get(id) == Some(&Kind::Apply) {
            self.executor.stop(id, Signal::SIGUSR1);
        }
        if inner.queued.insert(id.to_string()) {
            inner.queue.push_back(id.to_string());
        }
        self.metrics.queued.set(inner.queue.len() as i64);
        drop(inner);
        self.wake.notify_one();
    }

    /// Reads the records of `id` again into the index; its document, if it is on record.
    pub fn refresh(&self, id: &str) -> Option<Arc<Document>> {
        let cluster = Cluster::new(&self.config.root, id);
        let document = self.index.refresh(&cluster, &self.config.workflow);
        self.metrics.damaged.set(self.index.damaged() as i64);
        document
    }

    /// Forgets `id`, whose directory was purged.
    pub fn purged(&self, id: &str) {
        self.index.purge(id);
        self.metrics.damaged.set(self.index.damaged() as i64);
    }

    /// What runs now, by cluster.
    pub fn running_all(&self) -> HashMap<String, Kind> {
        self.inner.lock().expect("reconciler lock").running.clone()
    }

    /// The generation a new intent of `id` must be above: the highest its records ever
    /// named in this process, or that of an operation still running on it (whose directory
    /// may have been removed meanwhile).
    pub fn generation_floor(&self, id: &str, record: &Record) -> u64 {
        let running = {
            let inner = self.inner.lock().expect("reconciler lock");
            inner.started.get(id).map_or(0, |s| s.generation)
        };
        record.generation().max(self.index.seen(id)).max(running)
    }

    /// Stops every operation that has run longer than the timeout; its cluster fails.
    pub fn stop_overdue(&self) {
        let timeout = self.config.operation_timeout;
        let mut inner = self.inner.lock().expect("reconciler lock");
        if inner.stopping.is_some() {
            return;
        }
        let Inner {
            started, running, ..
        } = &mut *inner;
        for (id, started) in started.iter_mut() {
            if started.timed_out || started.at.elapsed() < timeout {
                continue;
            }
            started.timed_out = true;
            let kind = running.get(id).map_or("operation", |k| k.as_str());
            warn!(cluster = %id, "the {kind} timed out after {}: stopping it; the cluster fails", spoken(timeout));
            self.executor.stop(id, Signal::SIGTERM);
        }
    }

    /// What runs on `id` now, if anything.
    pub fn running(&self, id: &str) -> Option<Kind> {
        let inner = self.inner.lock().expect("reconciler lock");
        inner.running.get(id).copied()
    }

    /// Starts queued operations as room frees up, until the controller stops.
    pub async fn work(self: Arc<Self>) {
        loop {
            self.dispatch();
            self.wake.notified().await;
        }
    }

    /// Passes `signal` to every running operation and starts nothing new.
    pub fn stop(&self, signal: Signal) {
        let mut inner = self.inner.lock().expect("reconciler lock");
        inner.stopping = Some(signal);
        for (id, kind) in &inner.running {
            info!(cluster = %id, "passing {signal} to the running {}", kind.as_str());
            self.executor.stop(id, signal);
        }
    }

    /// Waits until no operation runs, or `deadline`; returns how many still run.
    pub async fn drained(&self, deadline: Instant) -> usize {
        loop {
            let left = self.inner.lock().expect("reconciler lock").running.len();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn dispatch(self: &Arc<Self>) {
        let mut inner = self.inner.lock().expect("reconciler lock");
        if inner.stopping.is_some() {
            return;
        }
        let mut busy = Vec::new();
        let mut starting = Vec::new();
        while inner.running.len() < self.config.concurrency {
            let Some(id) = inner.queue.pop_front() else {
                break;
            };
            inner.queued.remove(&id);
            if inner.running.contains_key(&id) {
                // Looked at again when its operation ends.
                busy.push(id);
                continue;
            }
            let cluster = Cluster::new(&self.config.root, &id);
            let record = Record::read(&cluster);
            let intent = match &record.intent {
                Ok(Some(intent)) => intent.clone(),
                Ok(None) if !cluster.on_record() => continue,
                Ok(None) | Err(_) => {
                    let damage = record.damage().map_or_else(
                        || "intent.json is missing".to_string(),
                        |d| format!("{}: {}", d.file, d.error),
                    );
                    warn!(cluster = %id, "the cluster's intent cannot be read, so nothing runs on it until a PUT or DELETE replaces it ({damage}); GET /v1/clusters?phase=damaged lists such clusters");
                    continue;
                }
            };
            if let Err(damage) = &record.outcome {
                warn!(cluster = %id, "{}: {}; taken as not settled: the operation runs and records a good one", damage.file, damage.error);
            }
            if record.outcome().is_some_and(|o| o.settles(&intent)) {
                continue;
            }
            let kind = Kind::for_intent(&intent);
            inner.started.insert(
                id.clone(),
                Started {
                    generation: intent.generation,
                    at: Instant::now(),
                    timed_out: false,
                },
            );
            inner.running.insert(id.clone(), kind);
            self.metrics.running.set(inner.running.len() as i64);
            starting.push((cluster, intent, kind));
        }
        for id in busy {
            if inner.queued.insert(id.clone()) {
                inner.queue.push_back(id);
            }
        }
        self.metrics.queued.set(inner.queue.len() as i64);
        // Started without the lock: an operation that ends at once reports to `finish`.
        drop(inner);
        for (cluster, intent, kind) in starting {
            self.start(cluster, intent, kind);
        }
    }

    fn finish(self: &Arc<Self>, id: &str, end: End) {
        let stopping = {
            let mut inner = self.inner.lock().expect("reconciler lock");
            inner.running.remove(id);
            inner.started.remove(id);
            self.metrics.running.set(inner.running.len() as i64);
            inner.stopping.is_some()
        };
        if stopping {
            return;
        }
        match end {
            End::Later => {
                let this = self.clone();
                let id = id.to_string();
                tokio::runtime::Handle::current().spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    this.enqueue(&id);
                });
            }
            End::Done(_) | End::Interrupted => self.enqueue(id),
        }
    }

    /// Starts the one operation that brings `cluster` to `intent`; its outcome is recorded
    /// when it ends.
    fn start(self: &Arc<Self>, cluster: Cluster, intent: Intent, kind: Kind) {
        let span = tracing::info_span!("cluster", id = %cluster.id, generation = intent.generation);
        let _entered = span.enter();
        info!("{} started", kind.as_str());
        let started = Instant::now();
        let started_at = crate::base::clock::now_rfc3339();
        let home = records::identity(&cluster.dir);
        let early = if kind == Kind::Destroy && !cluster.journal().dir().exists() {
            // Nothing ever ran here, so there is nothing to destroy.
            Some(Ending::Succeeded)
        } else if let Err(e) = cluster.write_params(&intent.params) {
            Some(Ending::Failed {
                exit_code: None,
                failure: None,
                error: format!("cannot write {}: {e}", cluster.params_path().display()),
            })
        } else {
            None
        };
        let operation = Operation {
            cluster: cluster.id.clone(),
            generation: intent.generation,
            kind,
        };
        let this = self.clone();
        let span = span.clone();
        let on_end = Box::new(move |ending: Ending| {
            let _entered = span.enter();
            let ending = match this.timed_out(&cluster.id) {
                // Stopped for running too long: it is not tried again on its own.
                Some(after) if ending != Ending::Succeeded => Ending::Failed {
                    exit_code: None,
                    failure: None,
                    error: format!(
                        "timed out after {} (--operation-timeout); stopped",
                        spoken(after)
                    ),
                },
                _ => ending,
            };
            let end = if records::identity(&cluster.dir) != home {
                // The directory was removed while the operation ran: its end belongs to a
                // cluster no longer on record, and what its engine wrote since is debris in
                // the new directory, which a new operation would take for its own.
                warn!("the cluster's directory was removed while the {} ran: its end is not recorded, and what it left behind is removed", kind.as_str());
                records::clear_debris(&cluster);
                End::Interrupted
            } else {
                this.record(&cluster, &intent, kind, &started_at, ending)
            };
            // Before the cluster stops counting as running: a list never shows it settled
            // from an old document.
            this.refresh(&cluster.id);
            let result = match &end {
                End::Done(outcome) => match outcome.result {
                    Ended::Succeeded => "succeeded",
                    Ended::Failed => "failed",
                },
                End::Interrupted => "interrupted",
                End::Later => "postponed",
            };
            let seconds = started.elapsed().as_secs_f64();
            this.metrics.finished(kind.as_str(), result, seconds);
            info!("{} {result} after {seconds:.1}s", kind.as_str());
            this.finish(&cluster.id, end);
        });
        match early {
            Some(ending) => on_end(ending),
            None => self.executor.start(operation, on_end),
        }
    }

    /// The timeout, if the running operation of `id` was stopped for exceeding it.
    fn timed_out(&self, id: &str) -> Option<Duration> {
        let inner = self.inner.lock().expect("reconciler lock");
        inner
            .started
            .get(id)
            .filter(|s| s.timed_out)
            .map(|_| self.config.operation_timeout)
    }

    /// Records how an operation ended as the cluster's outcome.
    fn record(
        &self,
        cluster: &Cluster,
        intent: &Intent,
        kind: Kind,
        started_at: &str,
        ending: Ending,
    ) -> End {
        let error = match ending {
            Ending::Succeeded => None,
            Ending::Failed { error, .. } => Some(error),
            Ending::Interrupted => return End::Interrupted,
            Ending::Later => return End::Later,
        };
        let outcome = Outcome {
            generation: intent.generation,
            kind,
            result: if error.is_some() {
                Ended::Failed
            } else {
                Ended::Succeeded
            },
            error,
            started_at: started_at.to_string(),
            finished_at: crate::base::clock::now_rfc3339(),
            intent_uid: intent.uid.clone(),
        };
        if let Err(e) = cluster.write_outcome(&outcome) {
            warn!("cannot record the outcome, the operation runs again: {e}");
            return End::Later;
        }
        End::Done(outcome)
    }
}

/// A duration as it is given on the command line: `2h`, `90m`, `3s`, `1500ms`.
pub fn spoken(d: Duration) -> String {
    let secs = d.as_secs();
    match (d.subsec_nanos(), secs) {
        (0, s) if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        (0, s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_said_as_they_are_given() {
        for (d, said) in [
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_secs(3), "3s"),
            (Duration::from_secs(7 * 86_400), "7d"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(spoken(d), said);
        }
    }
}
