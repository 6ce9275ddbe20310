//! Following one Job and its pods by watching them: a list gives the objects and a resource
//! version, a watch from that version gives every change after it. A watch that ends (the
//! server's timeout, a connection closed mid-stream) is opened again from the last version
//! seen; one the server refuses as too old (410 Gone) or that fails is replaced by a new
//! list. The objects are listed again every `relist` whatever the watches say, in case a
//! change was missed.
//!
//! Requests go through a client with a read timeout, so that an API server that accepts a
//! request and never answers it costs that long, not the operation; watches, which may
//! rightly stay silent for minutes, go through one without, and are bounded by `relist`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use tokio::time::Instant;
use tracing::{debug, info};

/// The clients of the Kubernetes API: one for requests, one for watches.
#[derive(Clone)]
pub struct Clients {
    pub requests: Client,
    pub watches: Client,
}

impl Clients {
    /// From the in-cluster config, or `KUBECONFIG`'s; a request that has had no answer
    /// after `timeout` fails.
    pub async fn infer(timeout: Duration) -> kube::Result<Clients> {
        let mut config = Config::infer().await.map_err(kube::Error::InferConfig)?;
        // The client's own retries of a 429, 503 or 504 (15 of them, up to minutes apart)
        // would hide a failing API from `/readyz`: a failed request fails the attempt, which
        // the reconciler makes again a moment later.
        config.default_retry = false;
        let mut requests = config.clone();
        requests.connect_timeout = Some(timeout);
        requests.write_timeout = Some(timeout);
        requests.read_timeout = Some(timeout);
        // The timeout counts from the request, not from when its pooled connection went idle.
        requests.reset_reader_on_write = true;
        let mut watches = config;
        watches.connect_timeout = Some(timeout);
        watches.write_timeout = Some(timeout);
        watches.read_timeout = None;
        Ok(Clients {
            requests: Client::try_from(requests)?,
            watches: Client::try_from(watches)?,
        })
    }
}

/// A request that had no answer in time, as the client reports it.
pub fn timed_out(what: &str, after: Duration) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer after {}s", after.as_secs_f32()),
    )))
}

/// An error of the API with its causes: a client's error alone says little ("client error
/// (SendRequest)") where its cause says what happened ("timed out").
pub fn describe(error: &kube::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// The pod of a Job to follow among its pods: the newest one still running or about to,
/// else the newest (creation times are in whole seconds: a replacement made in the same
/// second as the pod it replaces is told apart by being active).
pub fn current_pod(pods: impl IntoIterator<Item = Pod>) -> Option<Pod> {
    pods.into_iter().max_by_key(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let active = !matches!(phase, Some("Succeeded") | Some("Failed"));
        (active, p.metadata.creation_timestamp.clone())
    })
}

struct Watches {
    jobs: BoxStream<'static, kube::Result<WatchEvent<Job>>>,
    pods: BoxStream<'static, kube::Result<WatchEvent<Pod>>>,
    opened: Instant,
}

/// Job `name` and its pods, as last seen.
pub struct Follow {
    jobs: Api<Job>,
    pods: Api<Pod>,
    watch_jobs: Api<Job>,
    watch_pods: Api<Pod>,
    name: String,
    timeout: Duration,
    relist: Duration,
    job: Option<Job>,
    job_pods: BTreeMap<String, Pod>,
    jobs_version: String,
    pods_version: String,
    watches: Option<Watches>,
    listed: Option<Instant>,
}

enum Seen {
    Changed,
    /// Nothing changed (a bookmark).
    Quiet,
    /// The watch ended: open it again from the last version.
    Ended,
    /// The watch cannot go on from its version: list again.
    Lost(String),
}

impl Follow {
    pub fn new(
        clients: &Clients,
        namespace: &str,
        name: &str,
        timeout: Duration,
        relist: Duration,
    ) -> Follow {
        Follow {
            jobs: Api::namespaced(clients.requests.clone(), namespace),
            pods: Api::namespaced(clients.requests.clone(), namespace),
            watch_jobs: Api::namespaced(clients.watches.clone(), namespace),
            watch_pods: Api::namespaced(clients.watches.clone(), namespace),
            name: name.to_string(),
            timeout,
            relist,
            job: None,
            job_pods: BTreeMap::new(),
            jobs_version: String::new(),
            pods_version: String::new(),
            watches: None,
            listed: None,
        }
    }

    pub fn job(&self) -> Option<&Job> {
        self.job.as_ref()
    }

    /// The pod to follow (see [`current_pod`]).
    pub fn pod(&self) -> Option<Pod> {
        current_pod(self.job_pods.values().cloned())
    }

    /// Whether the Job and all its pods are gone.
    pub fn gone(&self) -> bool {
        self.job.is_none() && self.job_pods.is_empty()
    }

    /// Waits for the next change of the Job or its pods, at most `at_most`; the first call
    /// lists them and returns at once.
    pub async fn next(&mut self, at_most: Duration) -> kube::Result<()> {
        let deadline = Instant::now() + at_most;
        loop {
            let listed = match self.listed {
                Some(at) if at.elapsed() < self.relist => at,
                _ => {
                    self.list().await?;
                    return Ok(());
                }
            };
            if self.watches.is_none() {
                match self.watch().await {
                    Ok(()) => {}
                    // A server may refuse the version with the watch's answer itself.
                    Err(kube::Error::Api(status)) if status.code == 410 => {
                        info!("the watch of Job {} is too old: listing again", self.name);
                        self.listed = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let watches = self.watches.as_mut().expect("opened above");
            let seen = tokio::select! {
                event = watches.jobs.next() => match event {
                    Some(Ok(event)) => apply_job(&mut self.job, &mut self.jobs_version, event),
                    Some(Err(e)) => Seen::Lost(e.to_string()),
                    None => Seen::Ended,
                },
                event = watches.pods.next() => match event {
                    Some(Ok(event)) => apply_pod(&mut self.job_pods, &mut self.pods_version, event),
                    Some(Err(e)) => Seen::Lost(e.to_string()),
                    None => Seen::Ended,
                },
                _ = tokio::time::sleep_until(deadline.min(listed + self.relist)) => {
                    if Instant::now() >= deadline {
                        return Ok(());
                    }
                    continue;
                }
            };
            match seen {
                Seen::Changed => return Ok(()),
                Seen::Quiet => {}
                Seen::Ended => {
                    // A watch the server ends at once, again and again, is opened no
                    // faster than twice a second.
                    let opened = watches.opened;
                    self.watches = None;
                    tokio::time::sleep_until(opened + Duration::from_millis(500)).await;
                }
                Seen::Lost(why) => {
                    info!(
                        "the watch of Job {} lost track ({why}): listing again",
                        self.name
                    );
                    self.listed = None;
                    self.watches = None;
                }
            }
        }
    }

    async fn list(&mut self) -> kube::Result<()> {
        self.watches = None;
        let jobs = self
            .jobs
            .list(&ListParams::default().fields(&format!("metadata.name={}", self.name)))
            .await?;
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("job-name={}", self.name)))
            .await?;
        self.job = jobs.items.into_iter().next();
        self.jobs_version = jobs.metadata.resource_version.unwrap_or_default();
        self.job_pods = pods
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, p)))
            .collect();
        self.pods_version = pods.metadata.resource_version.unwrap_or_default();
        self.listed = Some(Instant::now());
        Ok(())
    }

    async fn watch(&mut self) -> kube::Result<()> {
        // The server ends a watch after this long; the next list comes then anyway.
        let seconds = self.relist.as_secs().clamp(1, 290) as u32;
        let jobs = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(seconds);
        let pods = WatchParams::default()
            .labels(&format!("job-name={}", self.name))
            .timeout(seconds);
        let opened = Instant::now();
        let (jobs, pods) = tokio::time::timeout(self.timeout, async {
            let jobs = self.watch_jobs.watch(&jobs, &self.jobs_version).await?;
            let pods = self.watch_pods.watch(&pods, &self.pods_version).await?;
            Ok::<_, kube::Error>((jobs.boxed(), pods.boxed()))
        })
        .await
        .map_err(|_| timed_out(&format!("watching Job {}", self.name), self.timeout))??;
        debug!(
            "watching Job {} from versions {} and {}",
            self.name, self.jobs_version, self.pods_version
        );
        self.watches = Some(Watches { jobs, pods, opened });
        Ok(())
    }
}

/// Applies one watch event of the Job to `job`.
fn apply_job(job: &mut Option<Job>, version: &mut String, event: WatchEvent<Job>) -> Seen {
    match event {
        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
            *version = object.metadata.resource_version.clone().unwrap_or_default();
            *job = Some(object);
            Seen::Changed
        }
        WatchEvent::Deleted(object) => {
            *version = object.metadata.resource_version.clone().unwrap_or_default();
            *job = None;
            Seen::Changed
        }
        WatchEvent::Bookmark(bookmark) => {
            *version = bookmark.metadata.resource_version;
            Seen::Quiet
        }
        WatchEvent::Error(status) => Seen::Lost(format!("{} {}", status.code, status.message)),
    }
}

/// Applies one watch event of the Job's pods to `pods`.
fn apply_pod(
    pods: &mut BTreeMap<String, Pod>,
    version: &mut String,
    event: WatchEvent<Pod>,
) -> Seen {
    match event {
        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
            *version = object.metadata.resource_version.clone().unwrap_or_default();
            if let Some(name) = object.metadata.name.clone() {
                pods.insert(name, object);
            }
            Seen::Changed
        }
        WatchEvent::Deleted(object) => {
            *version = object.metadata.resource_version.clone().unwrap_or_default();
            if let Some(name) = &object.metadata.name {
                pods.remove(name);
            }
            Seen::Changed
        }
        WatchEvent::Bookmark(bookmark) => {
            *version = bookmark.metadata.resource_version;
            Seen::Quiet
        }
        WatchEvent::Error(status) => Seen::Lost(format!("{} {}", status.code, status.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, created: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_followed_is_the_active_one_then_the_newest() {
        let evicted = pod("a", "2026-01-01T00:00:01Z", "Failed");
        let replacement = pod("b", "2026-01-01T00:00:01Z", "Pending");
        let name = |p: Option<Pod>| p.and_then(|p| p.metadata.name);
        // Made in the same second: the active one.
        assert_eq!(
            name(current_pod([replacement.clone(), evicted.clone()])),
            Some("b".into())
        );
        assert_eq!(name(current_pod([evicted, replacement])), Some("b".into()));
        let older = pod("c", "2026-01-01T00:00:00Z", "Succeeded");
        let newer = pod("d", "2026-01-01T00:00:05Z", "Failed");
        assert_eq!(name(current_pod([newer, older])), Some("d".into()));
        assert_eq!(name(current_pod(Vec::new())), None);
    }
}
