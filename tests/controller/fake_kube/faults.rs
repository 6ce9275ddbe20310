//! Faults the fake API server and kubelet inject on request: answers of 500 (or 503),
//! requests accepted and never answered, watches closed mid-stream or refused as too old
//! (410 Gone), and the eviction of a running pod.

use std::io::Read;
use std::time::Instant;

use serde_json::json;

use super::{matches, now, watch, FakeKube, State};

#[derive(Default)]
pub(super) struct Faults {
    fail: usize,
    fail_code: u16,
    hang: usize,
    pub(super) failed: usize,
    pub(super) hung: usize,
}

pub(super) enum Fault {
    Fail(u16),
    Hang,
}

/// The fault the next request meets, if any.
pub(super) fn take(state: &mut State) -> Option<Fault> {
    let faults = &mut state.faults;
    if faults.hang > 0 {
        faults.hang -= 1;
        faults.hung += 1;
        return Some(Fault::Hang);
    }
    if faults.fail > 0 {
        faults.fail -= 1;
        faults.failed += 1;
        return Some(Fault::Fail(faults.fail_code));
    }
    None
}

/// Holds a request's connection unanswered until the client gives up on it.
pub(super) fn hold(mut connection: impl Read) {
    let mut sink = [0; 1024];
    while matches!(connection.read(&mut sink), Ok(n) if n > 0) {}
}

impl FakeKube {
    /// The next `n` requests are answered `code` (500 or 503) with a Status.
    pub fn fail_requests(&self, n: usize, code: u16) {
        let mut state = self.state.lock().unwrap();
        state.faults.fail = n;
        state.faults.fail_code = code;
    }

    /// The next `n` requests are accepted and never answered.
    pub fn hang_requests(&self, n: usize) {
        self.state.lock().unwrap().faults.hang = n;
    }

    /// How many requests were answered with a failure, and how many were left hanging.
    pub fn faulted(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.faults.failed, state.faults.hung)
    }

    /// Closes every open watch in the middle of an event.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().history.drop_all();
    }

    /// Forgets every watch event so far, so that a watch from an earlier resource version
    /// gets 410 Gone.
    pub fn expire_watch_history(&self) {
        let mut state = self.state.lock().unwrap();
        let rv = state.rv;
        state.history.expire(rv);
    }

    /// From now on a watch from an expired version is refused with an HTTP 410 answer
    /// rather than an ERROR event in a 200 stream.
    pub fn refuse_expired_watches_by_status(&self) {
        self.state.lock().unwrap().history.gone_by_status = true;
    }

    /// Watches opened, closed mid-stream, and refused with 410 Gone, so far.
    pub fn watches(&self) -> (usize, usize, usize) {
        let state = self.state.lock().unwrap();
        let h = &state.history;
        (h.watches, h.dropped, h.gone)
    }

    /// Evicts the running pod of Job `job_name`, as a node drain or a preemption does: the
    /// pod gets a `DisruptionTarget` condition and is deleted, its process SIGTERM and
    /// SIGKILL after the pod's grace. Returns the pod's name.
    pub fn evict(&self, job_name: &str) -> String {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let selector = format!("job-name={job_name}");
        let pod_name = state
            .pods
            .iter()
            .find(|(name, p)| matches(p, &selector) && state.processes.contains_key(*name))
            .map(|(name, _)| name.clone())
            .expect("a running pod of the Job");
        state.changed.insert(("pods", pod_name.clone()));
        let pod = state.pods.get_mut(&pod_name).unwrap();
        pod["metadata"]["deletionTimestamp"] = json!(now());
        pod["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
            "lastTransitionTime": now()}]);
        let process = state.processes.get_mut(&pod_name).unwrap();
        unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
        process.terminated_at = Some(Instant::now());
        watch::record(state);
        pod_name
    }

    /// The names of Job `job_name`'s pods, in the order they were made.
    pub fn pods_of(&self, job_name: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let selector = format!("job-name={job_name}");
        // A pod is named after its Job and the resource version it was made at.
        let mut pods: Vec<(u64, String)> = state
            .pods
            .iter()
            .filter(|(_, p)| matches(p, &selector))
            .map(|(name, _)| {
                let made = name.rsplit('-').next().and_then(|n| n.parse().ok());
                (made.unwrap_or(0), name.clone())
            })
            .collect();
        pods.sort();
        pods.into_iter().map(|(_, name)| name).collect()
    }
}
