//! The `kubernetes` executor: each operation a Job (see [`super::job`]), its params in the
//! cluster's Secret. The controller runs no terraform: it creates the Job, follows it and
//! its pod until the Job concludes, and keeps the pod's log in the cluster's `operation.log`.
//!
//! A cluster never has two pods: before an operation's Job is created, every other Job of
//! the cluster still there is deleted with foreground propagation and waited for until its
//! pods are gone. A restarted controller creates no second Job for an operation whose Job
//! it finds: it follows that one (its result, if it has finished).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::follow::{current_pod, Clients, Follow};
use super::job::{self, JobSettings};
use super::status::{progress, Progress};
use super::{logs, results};
use crate::controller::cluster::{Cluster, Kind};
use crate::controller::executor::{Ending, Executor, LiveLogFuture, OnEnd, Operation};

/// What the executor needs besides the Jobs' settings.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    pub settings: JobSettings,
    /// Where `clusters/<id>/` live: the intents and the logs.
    pub root: PathBuf,
    /// How often a followed Job and its pods are listed again besides their watches.
    pub poll: Duration,
    /// How long a pod may stay Pending (unscheduled, its image not pulled) before its Job
    /// is deleted and the operation fails, saying why.
    pub pending_timeout: Duration,
    /// How long a request may go unanswered before it fails.
    pub request_timeout: Duration,
}

type Running = Arc<Mutex<HashMap<String, (Operation, Arc<AtomicBool>)>>>;

pub struct Kube {
    shared: Arc<Shared>,
    running: Running,
}

struct Shared {
    config: KubeConfig,
    /// Made on first use, inside the runtime that serves (the client's tasks live there).
    client: tokio::sync::OnceCell<Clients>,
    /// The Jobs whose endings this process reported: a finished Job not in it is one a
    /// restart found, and its result is reported once.
    reported: Mutex<HashSet<String>>,
    /// The last error the API answered, for `/readyz`; cleared by the next success.
    problem: Mutex<Option<String>>,
    /// Set when the controller exits: Jobs are left running, and followed no more.
    detached: AtomicBool,
}

impl Kube {
    pub fn new(config: KubeConfig) -> Self {
        Kube {
            shared: Arc::new(Shared {
                config,
                client: Default::default(),
                reported: Default::default(),
                problem: Default::default(),
                detached: AtomicBool::new(false),
            }),
            running: Default::default(),
        }
    }
}

impl Executor for Kube {
    fn start(&self, operation: Operation, on_end: OnEnd) {
        let stop = Arc::new(AtomicBool::new(false));
        self.running
            .lock()
            .expect("executor lock")
            .insert(operation.cluster.clone(), (operation.clone(), stop.clone()));
        let shared = self.shared.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            let ending = match shared.operate(&operation, &stop).await {
                Ok(ending) => {
                    *shared.problem.lock().expect("problem lock") = None;
                    ending
                }
                Err(e) => {
                    let text = format!("the Kubernetes API: {}", super::follow::describe(&e));
                    warn!(cluster = %operation.cluster, "{text}");
                    *shared.problem.lock().expect("problem lock") = Some(text.clone());
                    // The operation is looked at again after a pause, and finds its Job.
                    Ending::Later
                }
            };
            running
                .lock()
                .expect("executor lock")
                .remove(&operation.cluster);
            on_end(ending);
        });
    }

    /// Any stop deletes the Job: its pod gets SIGTERM, and the engine stops its terraform
    /// gracefully, as for a hand-over to a destroy.
    fn stop(&self, cluster: &str, _signal: Signal) {
        if self.shared.detached.load(Ordering::SeqCst) {
            return;
        }
        if let Some((_, stop)) = self.running.lock().expect("executor lock").get(cluster) {
            stop.store(true, Ordering::SeqCst);
        }
    }

    fn running(&self) -> Vec<Operation> {
        let running = self.running.lock().expect("executor lock");
        running.values().map(|(op, _)| op.clone()).collect()
    }

    fn detach(&self) {
        self.shared.detached.store(true, Ordering::SeqCst);
    }

    fn live_log(&self, cluster: &str, follow: bool, tail_lines: usize) -> LiveLogFuture {
        let shared = self.shared.clone();
        let cluster = cluster.to_string();
        Box::pin(async move {
            let client = shared.client().await.ok()?;
            let pods = shared.pods(&client);
            logs::live(&pods, &cluster, follow, tail_lines)
                .await
                .unwrap_or_else(|e| {
                    warn!(%cluster, "cannot read the pod's log, answering the kept one: {e}");
                    None
                })
        })
    }

    /// A saved plan lives in its plan Job's emptyDir, gone with its pod.
    fn applies_saved_plans(&self) -> bool {
        false
    }

    /// Each Job copies the code of its image into a fresh emptyDir: an upgrade is any apply,
    /// and nothing is kept to roll back to.
    fn keeps_code(&self) -> bool {
        false
    }

    fn problems(&self) -> Vec<String> {
        self.shared
            .problem
            .lock()
            .expect("problem lock")
            .iter()
            .cloned()
            .collect()
    }
}

impl Shared {
    async fn clients(&self) -> kube::Result<&Clients> {
        self.client
            .get_or_try_init(|| Clients::infer(self.config.request_timeout))
            .await
    }

    async fn client(&self) -> kube::Result<Client> {
        Ok(self.clients().await?.requests.clone())
    }

    /// Job `name` and its pods, watched.
    async fn follow(&self, name: &str) -> kube::Result<Follow> {
        Ok(Follow::new(
            self.clients().await?,
            &self.config.settings.namespace,
            name,
            self.config.request_timeout,
            self.config.poll,
        ))
    }

    fn jobs(&self, client: &Client) -> Api<Job> {
        Api::namespaced(client.clone(), &self.config.settings.namespace)
    }

    fn pods(&self, client: &Client) -> Api<Pod> {
        Api::namespaced(client.clone(), &self.config.settings.namespace)
    }

    /// Runs `operation` to its end through its Job.
    async fn operate(&self, operation: &Operation, stop: &AtomicBool) -> kube::Result<Ending> {
        if operation.reviewed.is_some() {
            return Ok(Ending::failed(
                results::REVIEWED_REFUSAL.replace("{id}", &operation.cluster),
            ));
        }
        let client = self.client().await?;
        let cluster = Cluster::new(&self.config.root, &operation.cluster);
        let found = self.job_for(&client, &cluster, operation).await?;
        // Only a create refused by a quota waits (and says so): anything else ends the wait.
        if !matches!(found, Err(Ending::Later)) {
            if let Err(e) = cluster.set_waiting(None) {
                warn!(cluster = %operation.cluster, "cannot remove {}: {e}", cluster.waiting_path().display());
            }
        }
        let name = match found {
            Ok(name) => name,
            Err(ending) => return Ok(ending),
        };
        let mut follow = self.follow(&name).await?;
        let mut said = String::new();
        let mut last_log = Instant::now();
        let mut pending_since: Option<Instant> = None;
        loop {
            if self.detached.load(Ordering::SeqCst) {
                return Ok(Ending::Interrupted);
            }
            if stop.load(Ordering::SeqCst) {
                info!(cluster = %operation.cluster, "deleting Job {name}: the operation is stopped");
                self.remove(&client, &name).await?;
                self.keep_log(&client, &cluster, operation.kind, &name, None)
                    .await;
                return Ok(Ending::Interrupted);
            }
            // Between changes, the stop and the exit are looked at this often.
            follow.next(Duration::from_millis(250)).await?;
            let Some(job) = follow.job() else {
                warn!(cluster = %operation.cluster, "Job {name} was deleted by someone else");
                return Ok(Ending::Interrupted);
            };
            let pod = follow.pod();
            match progress(operation.kind, job, pod.as_ref()) {
                Progress::Ended(ending) => {
                    let pod_name = pod.as_ref().and_then(|p| p.metadata.name.clone());
                    self.keep_log(&client, &cluster, operation.kind, &name, pod_name)
                        .await;
                    let pods = self.pods(&client);
                    let ending =
                        results::record(&pods, &cluster, operation.kind, pod.as_ref(), ending)
                            .await;
                    self.reported.lock().expect("reported lock").insert(name);
                    if operation.kind == Kind::Destroy && ending == Ending::Succeeded {
                        self.forget_params(&client, &operation.cluster).await;
                    }
                    return Ok(ending);
                }
                Progress::Waiting(why) => {
                    if why.starts_with("pod pending") {
                        let since = *pending_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.config.pending_timeout {
                            warn!(cluster = %operation.cluster, "Job {name}: {why}, for longer than the pending timeout: deleting it");
                            self.remove(&client, &name).await?;
                            return Ok(Ending::failed(format!(
                                    "the Job's pod stayed pending for {}s ({why}): check the Job template's resources, node selector and image",
                                    self.config.pending_timeout.as_secs()
                                )));
                        }
                    } else {
                        pending_since = None;
                    }
                    if why != said {
                        info!(cluster = %operation.cluster, "Job {name}: {why}");
                        said = why;
                    }
                }
                Progress::Running => {
                    pending_since = None;
                    // The log is read while the pod exists: a pod gone takes it along.
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        let pod_name = pod.as_ref().and_then(|p| p.metadata.name.clone());
                        self.keep_log(&client, &cluster, operation.kind, &name, pod_name)
                            .await;
                        last_log = Instant::now();
                    }
                }
            }
        }
    }

    /// The name of the Job that runs `operation`: one found (a restart's), or one created
    /// once every other Job of the cluster is gone. `Err` is an ending without a Job.
    async fn job_for(
        &self,
        client: &Client,
        cluster: &Cluster,
        operation: &Operation,
    ) -> kube::Result<Result<String, Ending>> {
        let jobs = self.jobs(client);
        let selector = format!(
            "{}={},{}={}",
            job::MANAGED_BY.0,
            job::MANAGED_BY.1,
            job::LABEL_CLUSTER,
            operation.cluster
        );
        let mut attempt = 1;
        let mut found = None;
        for existing in jobs.list(&ListParams::default().labels(&selector)).await? {
            let Some(name) = existing.metadata.name.clone() else {
                continue;
            };
            let finished = matches!(
                progress(operation.kind, &existing, None),
                Progress::Ended(_)
            );
            match job::operation_of(&existing) {
                Some((theirs, n)) if theirs == *operation => {
                    attempt = attempt.max(n + 1);
                    let reported = self.reported.lock().expect("reported lock").contains(&name);
                    if !finished || !reported {
                        found = Some(name);
                    }
                }
                _ if finished => {}
                _ => {
                    info!(cluster = %operation.cluster, "deleting Job {name}, of an earlier operation, before this one starts");
                    self.remove(client, &name).await?;
                }
            }
        }
        if let Some(name) = found {
            info!(cluster = %operation.cluster, "following Job {name}, found running");
            return Ok(Ok(name));
        }
        if let Err(ending) = self.write_secret(client, cluster, operation).await? {
            return Ok(Err(ending));
        }
        if operation.kind == Kind::Apply {
            // The reconciler takes a cluster whose engine root has no journal for one
            // nothing ever ran on, whose destroy has nothing to do: the journal is in the
            // Job's emptyDir, so its directory here says that an apply was started.
            let dir = cluster.journal().dir().to_path_buf();
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return Ok(Err(Ending::failed(format!(
                    "cannot create {}: {e}",
                    dir.display()
                ))));
            }
        }
        let wanted = job::job(&self.config.settings, operation, attempt);
        let name = wanted.metadata.name.clone().expect("jobs are named");
        match jobs.create(&PostParams::default(), &wanted).await {
            Ok(_) => {
                info!(cluster = %operation.cluster, "created Job {name}");
                Ok(Ok(name))
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                match jobs.get_opt(&name).await? {
                    Some(existing) if job::is_ours(&existing, operation, attempt) => {
                        info!(cluster = %operation.cluster, "following Job {name}, created before");
                        Ok(Ok(name))
                    }
                    _ => Ok(Err(Ending::failed(format!(
                            "a Job named {name} exists that is not this operation's: delete it, or rename it"
                        )))),
                }
            }
            Err(kube::Error::Api(status)) if status.is_forbidden() => {
                warn!(cluster = %operation.cluster, "Job {name} refused ({}): waiting for quota, trying again later", status.message);
                let why = format!("waiting for quota: {}", status.message);
                if let Err(e) = cluster.set_waiting(Some(&why)) {
                    warn!(cluster = %operation.cluster, "cannot write {}: {e}", cluster.waiting_path().display());
                }
                Ok(Err(Ending::Later))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the cluster's params Secret as the operation needs it.
    async fn write_secret(
        &self,
        client: &Client,
        cluster: &Cluster,
        operation: &Operation,
    ) -> kube::Result<Result<(), Ending>> {
        let params = match cluster.intent() {
            Ok(Some(intent)) => intent.params,
            Ok(None) => Default::default(),
            Err(e) => {
                return Ok(Err(Ending::failed(format!(
                    "cannot read the cluster's intent: {e}"
                ))))
            }
        };
        let plan = if operation.kind == Kind::Plan {
            match crate::base::json::read::<serde_json::Value>(&cluster.plan_params_path()) {
                Ok(plan) => Some(plan.unwrap_or_default()),
                Err(_) => return Ok(Err(Ending::failed("cannot read the plan's params"))),
            }
        } else {
            None
        };
        let namespace = &self.config.settings.namespace;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut secret = job::params_secret(
            namespace,
            &operation.cluster,
            &serde_json::Value::Object(params),
            plan.as_ref(),
        );
        let name = job::secret_name(&operation.cluster);
        match secrets.get_opt(&name).await? {
            None => {
                secrets.create(&PostParams::default(), &secret).await?;
            }
            Some(existing) => {
                secret.metadata.resource_version = existing.metadata.resource_version;
                secrets
                    .replace(&name, &PostParams::default(), &secret)
                    .await?;
            }
        }
        Ok(Ok(()))
    }

    /// Deletes the params Secret of a destroyed cluster: its params may hold secrets, and
    /// nothing of the cluster is left to read them. A later PUT writes it again.
    async fn forget_params(&self, client: &Client, cluster: &str) {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.config.settings.namespace);
        let name = job::secret_name(cluster);
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(cluster, "deleted Secret {name}: the cluster is destroyed"),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => warn!(
                cluster,
                "cannot delete Secret {name}, which holds the destroyed cluster's params: {}",
                super::follow::describe(&e)
            ),
        }
    }

    /// The newest pod of Job `name`.
    async fn pod_of(&self, client: &Client, name: &str) -> kube::Result<Option<Pod>> {
        let pods = self
            .pods(client)
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await?;
        Ok(current_pod(pods.items))
    }

    /// Deletes Job `name` with its pods, and waits until they are gone: the pod's engine
    /// gets its SIGTERM and its grace to stop terraform and save the state.
    async fn remove(&self, client: &Client, name: &str) -> kube::Result<()> {
        let jobs = self.jobs(client);
        match jobs.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let mut follow = self.follow(name).await?;
        loop {
            follow.next(self.config.poll).await?;
            if follow.gone() {
                return Ok(());
            }
        }
    }

    /// Copies the end of the pod's log to the cluster's log (a plan's to its `plan.log`); a
    /// pod already gone leaves what was copied before.
    async fn keep_log(
        &self,
        client: &Client,
        cluster: &Cluster,
        kind: Kind,
        job_name: &str,
        pod: Option<String>,
    ) {
        let pod = match pod {
            Some(pod) => pod,
            None => match self.pod_of(client, job_name).await {
                Ok(Some(p)) => p.metadata.name.unwrap_or_default(),
                _ => return,
            },
        };
        let Ok(text) = logs::tail(&self.pods(client), &pod).await else {
            return;
        };
        let path = match kind {
            Kind::Plan => cluster.plan_log_path(),
            Kind::Apply | Kind::Destroy => cluster.log_path(),
        };
        let text = format!("# Job {job_name}, pod {pod}\n{text}");
        if let Err(e) = crate::base::durable::write(&path, text.as_bytes(), 0o600) {
            warn!(cluster = %cluster.id, "cannot write {}: {e}", path.display());
        }
    }
}
