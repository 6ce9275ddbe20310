//! `serve --executor kubernetes` against faults the fake API server and kubelet inject: an
//! evicted pod, API answers of 500 and 503, requests never answered, watches closed
//! mid-stream or refused as too old, a create refused by a quota. Jobs are followed by
//! their watches alone (`--job-poll 1h`, see `jobs::start_with`), so a watch the executor
//! lost track of shows as a cluster that never converges.

use serde_json::json;

use crate::fake_kube::FakeKube;
use crate::jobs::{events, fake, start, start_with, CONVERGE};
use crate::support::controller::*;
use crate::support::*;

/// `/readyz`'s status and text.
fn readyz(c: &Controller) -> (u16, String) {
    let reply = c.get("/readyz");
    (reply.status, reply.text)
}

/// Waits until cluster `id`'s Job has started terraform, then checks the Job's end is seen.
fn started(bed: &Bed, id: &str) {
    wait_for(|| !events(bed, id, "start").is_empty(), CONVERGE);
}

fn converged_once(bed: &Bed, kube: &FakeKube, c: &Controller, id: &str, resources: usize) {
    c.wait_phase(&one(id), "ready", CONVERGE);
    assert_eq!(kube.jobs_created(), [format!("bs-{id}-apply-1-1")]);
    assert_eq!(bed.state_resources(id).len(), resources);
    let mut created = events(bed, id, "create");
    let count = created.len();
    created.sort();
    created.dedup();
    assert_eq!(created.len(), count, "created twice: {:?}", bed.ledger());
    assert_eq!(kube.most_pods_at_once(id), 1);
}

/// An evicted pod is no failure: the Job controller replaces it, once it has stopped, by
/// the Job's podFailurePolicy and podReplacementPolicy, and the replacement's apply finds in
/// the remote state what the first one made.
#[test]
fn an_evicted_pod_is_replaced_within_its_job_and_creates_nothing_twice() {
    let bed = Bed::new();
    let kube = fake(&bed, 2);
    let c = start(&bed, &kube);
    assert_eq!(c.put("e1", &json!({ "namesvr_count": 2 })).status, 202);
    started(&bed, "e1");
    let evicted = kube.evict("bs-e1-apply-1-1");
    converged_once(&bed, &kube, &c, "e1", 3);
    let pods = kube.pods_of("bs-e1-apply-1-1");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_eq!(pods[0], evicted, "{}", c.stderr());
    let mut created = events(&bed, "e1", "create");
    created.sort();
    assert_eq!(created, ["broker", "namesvr[0]", "namesvr[1]"]);
    // The log kept is the replacement's, which ran the apply to its end.
    let log = std::fs::read_to_string(bed.b.root().join("clusters/e1/operation.log")).unwrap();
    assert!(log.contains(&format!("pod {}", pods[1])), "{log}");
}

/// Answers of 500 and 503 lose no operation: `/readyz` says what fails while it lasts, and
/// the running Job is followed again (not created again) once the API answers.
#[test]
fn api_errors_show_in_readyz_and_lose_no_operation() {
    let bed = Bed::new();
    let kube = fake(&bed, 2);
    let c = start(&bed, &kube);
    kube.fail_requests(usize::MAX, 503);
    assert_eq!(c.put("a1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| readyz(&c).1.contains("503"), CONVERGE);
    assert_eq!(readyz(&c).0, 503);
    kube.fail_requests(0, 503);
    started(&bed, "a1");

    // While the Job runs, its watches close and every request fails.
    kube.fail_requests(usize::MAX, 500);
    kube.drop_watches();
    wait_for(|| readyz(&c).1.contains("500"), CONVERGE);
    assert_eq!(readyz(&c).0, 503, "{}", readyz(&c).1);
    kube.fail_requests(0, 500);
    converged_once(&bed, &kube, &c, "a1", 2);
    wait_for(|| readyz(&c).0 == 200, CONVERGE);
}

/// A request accepted and never answered fails after `--kube-timeout`, a watch too: nothing
/// waits on it for ever, and the operation goes on once the API answers again.
#[test]
fn requests_that_hang_time_out_and_the_operation_resumes() {
    let bed = Bed::new();
    let kube = fake(&bed, 2);
    let c = start_with(&bed, &kube, &["--kube-timeout", "1s"]);
    assert_eq!(c.put("h1", &json!({ "namesvr_count": 1 })).status, 202);
    started(&bed, "h1");
    kube.hang_requests(usize::MAX);
    kube.drop_watches();
    // A watch's answer, or a request's.
    wait_for(
        || {
            let (_, text) = readyz(&c);
            text.contains("no answer after 1s") || text.contains("timed out")
        },
        CONVERGE,
    );
    // The requests that hang are given up: more are made.
    wait_for(|| kube.faulted().1 >= 3, CONVERGE);
    kube.hang_requests(0);
    converged_once(&bed, &kube, &c, "h1", 2);
}

/// A watch closed in the middle of an event is opened again from the last version seen.
#[test]
fn a_watch_closed_mid_stream_is_opened_again_and_sees_the_jobs_end() {
    let bed = Bed::new();
    let kube = fake(&bed, 2);
    let c = start(&bed, &kube);
    assert_eq!(c.put("w2", &json!({ "namesvr_count": 1 })).status, 202);
    started(&bed, "w2");
    let (opened, _, _) = kube.watches();
    kube.drop_watches();
    // The Job's watch and its pods'.
    wait_for(|| kube.watches().1 == 2, CONVERGE);
    converged_once(&bed, &kube, &c, "w2", 2);
    let (reopened, dropped, gone) = kube.watches();
    assert!(reopened > opened, "no watch opened again");
    assert_eq!((dropped, gone), (2, 0));
}

/// A watch from a resource version the server no longer keeps is refused, with an ERROR
/// event holding a 410 Status (then, for a second cluster, with an HTTP 410 answer): the
/// executor lists again, and watches from the list's version.
#[test]
fn a_watch_refused_as_too_old_lists_again_and_sees_the_jobs_end() {
    let bed = Bed::new();
    let kube = fake(&bed, 2);
    let c = start(&bed, &kube);
    for (id, gone) in [("g1", 1), ("g2", 2)] {
        if id == "g2" {
            kube.refuse_expired_watches_by_status();
        }
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
        started(&bed, id);
        kube.expire_watch_history();
        kube.drop_watches();
        wait_for(|| kube.watches().2 >= gone, CONVERGE);
        c.wait_phase(&one(id), "ready", CONVERGE);
        assert_eq!(bed.state_resources(id).len(), 2);
    }
    assert_eq!(kube.jobs_created(), ["bs-g1-apply-1-1", "bs-g2-apply-1-1"]);
    let stderr = c.stderr();
    assert!(stderr.contains("lost track (410"), "{stderr}");
    assert!(stderr.contains("is too old: listing again"), "{stderr}");
}

/// While a quota refuses its Job, the cluster's document says so, with the API's message;
/// once the Job is made, it no longer does.
#[test]
fn a_create_refused_by_a_quota_shows_in_the_document_until_the_job_is_made() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    kube.refuse_job_creates(usize::MAX);
    let c = start(&bed, &kube);
    assert_eq!(c.put("q2", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| c.cluster("q2")["waiting"].is_string(), CONVERGE);
    let document = c.cluster("q2");
    let waiting = document["waiting"].as_str().unwrap();
    assert!(waiting.starts_with("waiting for quota"), "{document}");
    assert!(
        waiting.contains("exceeded quota: tenant-jobs"),
        "{document}"
    );
    kube.refuse_job_creates(0);
    c.wait_phase(&one("q2"), "ready", CONVERGE);
    assert_eq!(c.cluster("q2")["waiting"], json!(null));
    assert_eq!(kube.jobs_created(), ["bs-q2-apply-1-1"]);
}
