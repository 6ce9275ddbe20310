//! The reconciler: compares each cluster's intent with what its last operation achieved and
//! runs what differs, as child `bootstrapper run|destroy` processes over the cluster's own
//! root. Level-triggered: it looks at the files, not at the requests, so a restart finds
//! every unfinished cluster again. At most `concurrency` operations run at once, at most one
//! per cluster, and the latest intent wins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use crate::base::error::exit;
use crate::base::log::{Format, Logger};
use crate::controller::cluster::{self, Cluster, Ended, Intent, Kind, Outcome};
use crate::controller::metrics::Metrics;
use crate::process::{Command, Options, Stop, Supervisor};
use crate::terraform::diagnostics::FirstError;
use crate::workflow::file::Workflow;

/// A cluster whose root another engine holds, or whose outcome could not be recorded, is
/// looked at again after this long.
const RETRY: Duration = Duration::from_secs(2);

/// How operations are started.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub workflow_path: PathBuf,
    pub workflow: Workflow,
    /// This very binary: an operation is the engine's own command.
    pub exe: PathBuf,
    pub terraform: PathBuf,
    pub grace: Duration,
    pub concurrency: usize,
    /// The controller's own, passed on to the operations.
    pub log_format: Format,
}

pub struct Reconciler {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    running: HashMap<String, Running>,
    /// Set once the controller is stopping: nothing new starts.
    stopping: Option<Signal>,
}

struct Running {
    kind: Kind,
    /// The signal the operation's child is to get next (0: none).
    stop: Arc<AtomicI32>,
}

/// How an operation's child ended.
enum End {
    Done(Outcome),
    /// Stopped by a signal: not done, so the cluster is looked at again.
    Interrupted,
    /// Another engine held the cluster's root, or the outcome could not be recorded: looked
    /// at again after a pause rather than at once.
    Later,
}

impl Reconciler {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Reconciler {
            settings,
            metrics,
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Queues every cluster under the root: what a killed controller left unfinished resumes.
    pub fn enqueue_all(&self) -> std::io::Result<usize> {
        let ids = cluster::list(&self.settings.root)?;
        for id in &ids {
            self.enqueue(id);
        }
        Ok(ids.len())
    }

    /// Looks at `id` again soon. An apply running while the cluster's intent became absent
    /// is asked to stop (the hand-over `destroy` uses), so the destroy can follow it.
    pub fn enqueue(&self, id: &str) {
        let absent = Cluster::new(&self.settings.root, id)
            .intent()
            .ok()
            .flatten()
            .is_some_and(|i| !i.present);
        let mut inner = self.inner.lock().expect("reconciler lock");
        if let Some(running) = inner.running.get(id) {
            if absent && running.kind == Kind::Apply {
                running
                    .stop
                    .compare_exchange(
                        0,
                        Signal::SIGUSR1 as i32,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .ok();
            }
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
        inner.running.get(id).map(|r| r.kind)
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
        for (id, running) in &inner.running {
            info!(cluster = %id, "passing {signal} to the running {}", running.kind.as_str());
            running.stop.store(signal as i32, Ordering::SeqCst);
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
        while inner.running.len() < self.settings.concurrency {
            let Some(id) = inner.queue.pop_front() else {
                break;
            };
            inner.queued.remove(&id);
            if inner.running.contains_key(&id) {
                // Looked at again when its operation ends.
                busy.push(id);
                continue;
            }
            let cluster = Cluster::new(&self.settings.root, &id);
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
            let stop = Arc::new(AtomicI32::new(0));
            inner.running.insert(
                id.clone(),
                Running {
                    kind,
                    stop: stop.clone(),
                },
            );
            self.metrics.running.set(inner.running.len() as i64);
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                let end = this.operate(&cluster, &intent, kind, &stop);
                this.finish(&cluster.id, end);
            });
        }
        for id in busy {
            if inner.queued.insert(id.clone()) {
                inner.queue.push_back(id);
            }
        }
        self.metrics.queued.set(inner.queue.len() as i64);
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

    /// Runs the one operation that brings `cluster` to `intent`, and records its outcome.
    fn operate(&self, cluster: &Cluster, intent: &Intent, kind: Kind, stop: &AtomicI32) -> End {
        let span = tracing::info_span!("cluster", id = %cluster.id, generation = intent.generation);
        let _entered = span.enter();
        let started = Instant::now();
        let started_at = crate::base::clock::now_rfc3339();
        info!("{} started", kind.as_str());
        let end = match self.commands(cluster, intent, kind) {
            Err(e) => End::Done(self.outcome(intent, kind, &started_at, Some(e))),
            Ok(commands) => self.execute(cluster, intent, kind, &commands, stop, &started_at),
        };
        let result = match &end {
            End::Done(outcome) => {
                if let Err(e) = cluster.write_outcome(outcome) {
                    warn!("cannot record the outcome, the operation runs again: {e}");
                    return End::Later;
                }
                match outcome.result {
                    Ended::Succeeded => "succeeded",
                    Ended::Failed => "failed",
                }
            }
            End::Interrupted => "interrupted",
            End::Later => "postponed",
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.finished(kind.as_str(), result, seconds);
        info!("{} {result} after {:.1}s", kind.as_str(), seconds);
        end
    }

    /// The engine commands of one operation; `Err` when it cannot even start.
    fn commands(
        &self,
        cluster: &Cluster,
        intent: &Intent,
        kind: Kind,
    ) -> Result<Vec<Vec<String>>, String> {
        let journal = cluster.journal();
        if kind == Kind::Destroy && !journal.dir().exists() {
            // Nothing ever ran here, so there is nothing to destroy.
            return Ok(Vec::new());
        }
        cluster
            .write_params(&intent.params)
            .map_err(|e| format!("cannot write {}: {e}", cluster.params_path().display()))?;
        let mut commands = Vec::new();
        if kind == Kind::Apply {
            let destroyed = journal.tombstone().map_err(|e| e.to_string())?.is_some();
            if destroyed {
                // Created again after a destroy: the engine applies only after forgetting it.
                commands.push(vec!["reset".to_string(), "--all".to_string()]);
            }
            commands.push(vec!["run".to_string()]);
        } else {
            commands.push(vec!["destroy".to_string()]);
        }
        Ok(commands)
    }

    fn execute(
        &self,
        cluster: &Cluster,
        intent: &Intent,
        kind: Kind,
        commands: &[Vec<String>],
        stop: &AtomicI32,
        started_at: &str,
    ) -> End {
        let loaded = cluster.loaded(&self.settings.workflow, &intent.params);
        let supervisor = Supervisor {
            logger: Logger::new(self.settings.log_format, loaded.redactor.clone()),
            shutdown: Default::default(),
            grace: self.settings.grace,
        };
        let mut log = match std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(cluster.log_path())
        {
            Ok(file) => std::io::LineWriter::new(file),
            Err(e) => {
                let error = format!("cannot write {}: {e}", cluster.log_path().display());
                return End::Done(self.outcome(intent, kind, started_at, Some(error)));
            }
        };
        for args in commands {
            let command = self.command(cluster, args);
            let stop_signal = || match stop.load(Ordering::SeqCst) {
                0 => None,
                n => Signal::try_from(n).ok(),
            };
            let _ = writeln!(log, "$ {}", command.display());
            let mut on_line = |line: &str| {
                let _ = writeln!(log, "{line}");
            };
            let options = Options {
                name: "its child engine",
                stop: Stop::By(&stop_signal),
                on_line: Some(&mut on_line),
                // An engine passes terraform's lines on tagged with their step, so few open an
                // error here; one that does is still the best reason a failure can give.
                errors: Some(Box::new(FirstError::default())),
                ..Options::default()
            };
            let finished = match supervisor.run(&command, options) {
                Ok(finished) => finished,
                Err(e) => {
                    let error = format!("cannot start {}: {e}", command.program.display());
                    return End::Done(self.outcome(intent, kind, started_at, Some(error)));
                }
            };
            match finished.status.code() {
                Some(exit::OK) => continue,
                Some(exit::LOCKED) => return End::Later,
                Some(code) if code > 128 => return End::Interrupted,
                None => return End::Interrupted,
                Some(_) => {
                    let error = format!("`{}` failed: {}", args.join(" "), finished.reason());
                    return End::Done(self.outcome(intent, kind, started_at, Some(error)));
                }
            }
        }
        End::Done(self.outcome(intent, kind, started_at, None))
    }

    fn command(&self, cluster: &Cluster, args: &[String]) -> Command {
        let s = &self.settings;
        // The engine stops its terraform within its own grace; ours kills what is left after.
        let child_grace = s
            .grace
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1));
        let mut argv = vec![
            "--workflow".to_string(),
            s.workflow_path.display().to_string(),
            "--params".to_string(),
            cluster.params_path().display().to_string(),
            "--root".to_string(),
            cluster.dir.display().to_string(),
            "--terraform".to_string(),
            s.terraform.display().to_string(),
            format!("--grace={}s", child_grace.as_secs()),
            "--log-format".to_string(),
            match s.log_format {
                Format::Text => "text",
                Format::Json => "json",
            }
            .to_string(),
        ];
        argv.extend(args.iter().cloned());
        Command {
            program: s.exe.clone(),
            args: argv,
            cwd: cluster.dir.clone(),
            // The controller's own environment (its TF_VAR_* above all) is inherited; an
            // operation must end, not hold like an entrypoint.
            env: vec![("BOOTSTRAPPER_HOLD".to_string(), "false".to_string())],
            label: cluster.id.clone(),
        }
    }

    fn outcome(
        &self,
        intent: &Intent,
        kind: Kind,
        started_at: &str,
        error: Option<String>,
    ) -> Outcome {
        Outcome {
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
        }
    }
}
