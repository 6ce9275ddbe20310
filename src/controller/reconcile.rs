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
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::controller::cluster::{self, Cluster, Document, Ended, Intent, Kind, Outcome};
use crate::controller::executor::{Ending, Executor, OnEnd, Operation};
use crate::controller::metrics::Metrics;
use crate::controller::plan::{self, Plan, PlanStatus};
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

/// An operation about to start: the cluster, its intent, the kind, the plan (for a plan)
/// and the last outcome.
type Starting = (Cluster, Intent, Kind, Option<Plan>, Option<Outcome>);

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
    /// Ready clusters whose drift check is due, and those whose check runs now.
    drift_due: VecDeque<String>,
    drift_running: HashSet<String>,
}

struct Started {
    generation: u64,
    at: Instant,
    timed_out: bool,
    /// A plan stopped because the cluster's intent changed while it ran.
    preempted: bool,
}

impl Started {
    fn now(generation: u64) -> Self {
        Started {
            generation,
            at: Instant::now(),
            timed_out: false,
            preempted: false,
        }
    }
}

/// How an operation ended, for the reconciler.
enum End {
    Done(Outcome),
    /// Stopped by a signal: not done, so the cluster is looked at again.
    Interrupted,
    /// Another engine held the cluster's root, or the outcome could not be recorded: looked
    /// at again after a pause rather than at once.
    Later,
    /// A plan ended and its result is recorded (true: it succeeded).
    Planned(bool),
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
                    Started::now(operation.generation),
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
        let intent = Cluster::new(&self.config.root, id).intent().ok().flatten();
        let absent = intent.as_ref().is_some_and(|i| !i.present);
        let mut inner = self.inner.lock().expect("reconciler lock");
        if absent && inner.running.get(id) == Some(&Kind::Apply) {
            self.executor.stop(id, Signal::SIGUSR1);
        }
        // What the tenant asked for wins over a plan: a plan of an intent that is no longer
        // the cluster's is stopped.
        if inner.running.get(id) == Some(&Kind::Plan) {
            let started = inner.started.get_mut(id);
            if let (Some(intent), Some(started)) = (&intent, started) {
                if intent.generation != started.generation && !started.preempted {
                    started.preempted = true;
                    info!(cluster = %id, "the intent changed: stopping the running plan");
                    self.executor.stop(id, Signal::SIGTERM);
                }
            }
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
        self.metrics.drifted.set(self.index.drifted() as i64);
        self.metrics.set_codes(&self.index.codes());
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
            let outcome = record.outcome().cloned();
            // What the tenant asked for first; then a plan asked for, if any.
            let (kind, plan) = if outcome.as_ref().is_some_and(|o| o.settles(&intent)) {
                match self.plan_asked(&cluster, &intent) {
                    Some(plan) => (Kind::Plan, Some(plan)),
                    None => continue,
                }
            } else {
                (Kind::for_intent(&intent), None)
            };
            inner
                .started
                .insert(id.clone(), Started::now(intent.generation));
            inner.running.insert(id.clone(), kind);
            self.metrics.running.set(inner.running.len() as i64);
            starting.push((cluster, intent, kind, plan, outcome));
        }
        if inner.queue.is_empty() && busy.is_empty() {
            self.start_drift_checks(&mut inner, &mut starting);
        }
        for id in busy {
            if inner.queued.insert(id.clone()) {
                inner.queue.push_back(id);
            }
        }
        self.metrics.queued.set(inner.queue.len() as i64);
        // Started without the lock: an operation that ends at once reports to `finish`.
        drop(inner);
        for (cluster, intent, kind, plan, outcome) in starting {
            self.start(cluster, intent, kind, plan, outcome);
        }
    }

    /// The plan asked for on a cluster whose intent is settled, if one waits (or was cut
    /// short by a restart).
    fn plan_asked(&self, cluster: &Cluster, intent: &Intent) -> Option<Plan> {
        let plan = Plan::read(cluster).ok().flatten()?;
        if !matches!(plan.status, PlanStatus::Pending | PlanStatus::Running) {
            return None;
        }
        if !intent.present {
            let failed = plan.failed("the cluster was deleted before the plan ran".to_string());
            if let Err(e) = failed.write(cluster) {
                warn!(cluster = %cluster.id, "cannot record the plan: {e}");
            }
            return None;
        }
        Some(plan)
    }

    /// Starts the drift checks that are due, never ahead of a cluster waiting for an
    /// operation: at most one at a time while other operations run, as many as there is room
    /// for when none do.
    fn start_drift_checks(&self, inner: &mut Inner, starting: &mut Vec<Starting>) {
        let limit = if inner.running.len() > inner.drift_running.len() {
            1
        } else {
            self.config.concurrency
        };
        while inner.running.len() < self.config.concurrency && inner.drift_running.len() < limit {
            let Some(id) = inner.drift_due.pop_front() else {
                break;
            };
            if inner.running.contains_key(&id) || inner.queued.contains(&id) {
                continue;
            }
            let cluster = Cluster::new(&self.config.root, &id);
            let record = Record::read(&cluster);
            let (Some(intent), Some(outcome)) = (record.intent(), record.outcome()) else {
                continue;
            };
            let ready =
                intent.present && outcome.settles(intent) && outcome.result == Ended::Succeeded;
            // A plan a tenant asked for runs first, and says as much of drift.
            let asked = Plan::read(&cluster)
                .ok()
                .flatten()
                .is_some_and(|p| p.status == PlanStatus::Pending);
            if !ready || asked {
                continue;
            }
            let plan = Plan::requested(&cluster, &intent.params, true, true, &self.config.workflow);
            inner
                .started
                .insert(id.clone(), Started::now(intent.generation));
            inner.running.insert(id.clone(), Kind::Plan);
            inner.drift_running.insert(id.clone());
            self.metrics.running.set(inner.running.len() as i64);
            starting.push((
                cluster,
                intent.clone(),
                Kind::Plan,
                Some(plan),
                Some(outcome.clone()),
            ));
        }
    }

    /// Finds the ready clusters whose last drift check (or apply) is older than `interval`,
    /// and has them checked when there is room.
    pub fn find_drift(&self, interval: Duration) {
        let now = std::time::SystemTime::now();
        let ready = self.index.ids(crate::controller::cluster::Phase::Ready);
        let mut due = Vec::new();
        for id in ready {
            let cluster = Cluster::new(&self.config.root, &id);
            let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            // A plan made since (a tenant's preview under review above all) counts as a check:
            // a drift check would replace it, and the PUT with its id would be refused.
            let last = [
                modified(cluster.drift_path()),
                modified(cluster.outcome_path()),
                modified(cluster.plan_path()),
            ]
            .into_iter()
            .flatten()
            .max();
            let old = last.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= interval);
            if old {
                due.push(id);
            }
        }
        if due.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("reconciler lock");
        for id in due {
            if !inner.drift_due.contains(&id) && !inner.drift_running.contains(&id) {
                inner.drift_due.push_back(id);
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Looks for drift every so often, until the controller stops.
    pub async fn watch_drift(self: Arc<Self>, interval: Duration) {
        let every = (interval / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            tokio::time::sleep(every).await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.find_drift(interval)).await;
        }
    }

    fn finish(self: &Arc<Self>, id: &str, end: End) {
        let stopping = {
            let mut inner = self.inner.lock().expect("reconciler lock");
            inner.running.remove(id);
            inner.started.remove(id);
            inner.drift_running.remove(id);
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
            End::Done(_) | End::Interrupted | End::Planned(_) => self.enqueue(id),
        }
    }

    /// Starts the one operation that brings `cluster` to `intent`; its outcome is recorded
    /// when it ends.
    fn start(
        self: &Arc<Self>,
        cluster: Cluster,
        intent: Intent,
        kind: Kind,
        plan: Option<Plan>,
        outcome: Option<Outcome>,
    ) {
        let span = tracing::info_span!("cluster", id = %cluster.id, generation = intent.generation);
        let _entered = span.enter();
        info!("{} started", kind.as_str());
        let started = Instant::now();
        let started_at = crate::base::clock::now_rfc3339();
        let home = records::identity(&cluster.dir);
        let plan = plan.map(|plan| self.plan_started(&cluster, &intent, outcome.as_ref(), plan));
        let early = if kind == Kind::Destroy && !cluster.journal().dir().exists() {
            // Nothing ever ran here, so there is nothing to destroy.
            Some(Ending::Succeeded)
        } else if let Some(Err(e)) = &plan {
            Some(Ending::failed(e.clone()))
        } else if kind == Kind::Plan {
            None
        } else if let Err(e) = cluster.write_params(&intent.params) {
            // Out of open files or memory for a moment: the operation waits, it did not fail.
            Some(if crate::controller::executor::starved(&e) {
                Ending::Later
            } else {
                Ending::failed(format!(
                    "cannot write {}: {e}",
                    cluster.params_path().display()
                ))
            })
        } else {
            None
        };
        let plan = plan.and_then(Result::ok);
        // A plan of the intent's own params on a ready cluster says whether it drifted.
        let ready = intent.present
            && outcome
                .as_ref()
                .is_some_and(|o| o.settles(&intent) && o.result == Ended::Succeeded);
        let operation = Operation {
            cluster: cluster.id.clone(),
            generation: intent.generation,
            kind,
            reviewed: intent.plan_id.clone().filter(|_| kind == Kind::Apply),
            code: match &plan {
                Some(plan) if plan.code_current => {
                    Some(crate::controller::code::CodeChoice::Current)
                }
                Some(_) => None,
                None => intent.code.filter(|_| kind == Kind::Apply),
            },
        };
        let this = self.clone();
        let span = span.clone();
        let on_end: OnEnd = Box::new(move |ending: Ending| {
            let _entered = span.enter();
            let ending = match this.timed_out(&cluster.id) {
                // Stopped for running too long: it is not tried again on its own.
                Some(after) if ending != Ending::Succeeded => Ending::failed(format!(
                    "timed out after {} (--operation-timeout); stopped",
                    spoken(after)
                )),
                _ => ending,
            };
            let end = if records::identity(&cluster.dir) != home {
                // The directory was removed while the operation ran: its end belongs to a
                // cluster no longer on record, and what its engine wrote since is debris in
                // the new directory, which a new operation would take for its own.
                warn!("the cluster's directory was removed while the {} ran: its end is not recorded, and what it left behind is removed", kind.as_str());
                records::clear_debris(&cluster);
                End::Interrupted
            } else if let Some(plan) = plan {
                let preempted = this.preempted(&cluster.id);
                this.record_plan(&cluster, plan, ending, preempted, ready)
            } else if kind == Kind::Plan {
                // Its record could not be written: tried again after a pause.
                warn!("the plan cannot start: {ending:?}");
                End::Later
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
                End::Planned(true) => "succeeded",
                End::Planned(false) => "failed",
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

    /// Whether the running plan of `id` was stopped for a new intent.
    fn preempted(&self, id: &str) -> bool {
        let inner = self.inner.lock().expect("reconciler lock");
        inner.started.get(id).is_some_and(|s| s.preempted)
    }

    /// Records that `plan` starts now against `intent` and `outcome`, its params written
    /// where the engine reads them; the reason when it cannot start.
    fn plan_started(
        &self,
        cluster: &Cluster,
        intent: &Intent,
        outcome: Option<&Outcome>,
        plan: Plan,
    ) -> Result<Plan, String> {
        // A plan of the stored params plans those stored now, whatever they were when asked.
        let plan = if plan.stored_params {
            let fresh = Plan::requested(
                cluster,
                &intent.params,
                true,
                plan.drift_check,
                &self.config.workflow,
            );
            crate::base::json::write(&cluster.plan_params_path(), &intent.params, 0o600).map_err(
                |e| format!("cannot write {}: {e}", cluster.plan_params_path().display()),
            )?;
            fresh
                .against_current_code(plan.code_current)
                .asked_at(plan.requested_at)
        } else {
            // Copied only now that nothing else of this cluster runs: a preview asked for
            // while another plan runs must not change the params that plan reads.
            let params: Map<String, Value> = crate::base::json::read(&cluster.plan_request_path())
                .ok()
                .flatten()
                .ok_or_else(|| {
                    "the preview's params cannot be read; POST the plan again".to_string()
                })?;
            crate::base::json::write(&cluster.plan_params_path(), &params, 0o600).map_err(|e| {
                format!("cannot write {}: {e}", cluster.plan_params_path().display())
            })?;
            plan
        };
        let plan = plan.started(intent, outcome);
        plan.write(cluster)
            .map_err(|e| format!("cannot write {}: {e}", cluster.plan_path().display()))?;
        Ok(plan)
    }

    /// Records how a plan ended: the plan's result, and what it says of drift when it was
    /// made with the intent's params on a ready cluster.
    fn record_plan(
        &self,
        cluster: &Cluster,
        plan: Plan,
        ending: Ending,
        preempted: bool,
        ready: bool,
    ) -> End {
        let drift = plan.stored_params && ready && !plan.code_current;
        let plan = match ending {
            Ending::Succeeded => match crate::controller::executor::last_diff(cluster) {
                Some(document) => plan.succeeded(document),
                None => plan.failed("the engine's diff record cannot be read".to_string()),
            },
            Ending::Failed { error, .. } => plan.failed(error),
            Ending::Interrupted if preempted => plan.failed(
                "stopped: the cluster's intent changed (a PUT or DELETE) while it ran; POST the plan again"
                    .to_string(),
            ),
            Ending::Interrupted => return End::Interrupted,
            Ending::Later => return End::Later,
        };
        // A newer plan asked for meanwhile is kept, and runs next.
        let current = Plan::read(cluster).ok().flatten();
        let newer = current.is_some_and(|c| {
            c.requested_at != plan.requested_at && c.status == PlanStatus::Pending
        });
        if !newer {
            if let Err(e) = plan.write(cluster) {
                warn!("cannot record the plan, it runs again: {e}");
                return End::Later;
            }
        }
        let succeeded = plan.status == PlanStatus::Succeeded;
        // A drift check whose plan a newer request replaced says nothing about the plan kept.
        if drift && !preempted && !newer {
            let (drift, result) = if succeeded {
                let drift = plan::drift_of(&plan);
                let result = if drift.drifted { "drifted" } else { "clean" };
                (drift, result)
            } else {
                let error = plan.error.clone().unwrap_or_default();
                (plan::drift_failed(cluster, error), "failed")
            };
            if let Err(e) = drift.write(cluster) {
                warn!("cannot record what the drift check found: {e}");
            }
            if drift.drifted {
                warn!("drifted: an apply would change {} resource(s); GET /v1/clusters/{}/plan shows them", drift.resources.len(), cluster.id);
            }
            self.metrics.drift_checked(result);
        }
        End::Planned(succeeded)
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
        if kind == Kind::Apply && outcome.result == Ended::Succeeded {
            // What the last check found is the past now; the next check looks again.
            if let Err(e) = crate::base::durable::remove(&cluster.drift_path()) {
                warn!("cannot remove {}: {e}", cluster.drift_path().display());
            }
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
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(spoken(d), said);
        }
    }
}
