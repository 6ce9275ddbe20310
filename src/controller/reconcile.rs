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

use crate::controller::cluster::{self, Cluster, Ended, Intent, Kind, Outcome};
use crate::controller::executor::{Ending, Executor, Operation};
use crate::controller::metrics::Metrics;
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
}

pub struct Reconciler {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub executor: Arc<dyn Executor>,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// What the executor runs, by cluster.
    running: HashMap<String, Kind>,
    /// Set once the controller is stopping: nothing new starts.
    stopping: Option<Signal>,
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
                inner.running.insert(operation.cluster, operation.kind);
            }
        }
        let ids = cluster::list(&self.config.root)?;
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
            let (intent, outcome) = match (cluster.intent(), cluster.outcome()) {
                (Ok(Some(intent)), Ok(outcome)) => (intent, outcome),
                (Ok(None), _) => continue,
                (Err(e), _) | (_, Err(e)) => {
                    warn!(cluster = %id, "cannot read the cluster's records, leaving it alone: {e}");
                    continue;
                }
            };
            if outcome.as_ref().is_some_and(|o| o.settles(&intent)) {
                continue;
            }
            let kind = Kind::for_intent(&intent);
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
            let end = this.record(&cluster, &intent, kind, &started_at, ending);
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
        };
        if let Err(e) = cluster.write_outcome(&outcome) {
            warn!("cannot record the outcome, the operation runs again: {e}");
            return End::Later;
        }
        End::Done(outcome)
    }
}
