//! `serve --executor kubernetes` against the fake API server of `fake_kube` (no real
//! kube-apiserver runs here): each operation a Job whose pod is a local process of the real
//! binary, over real terraform and PostgreSQL. What is checked is the executor's side —
//! the objects it sends, the order of its deletes and creates, what it records — and only
//! as far as the fake follows Kubernetes' rules.

use std::time::Duration;

use serde_json::json;

use crate::fake_kube::FakeKube;
use crate::support::controller::*;
use crate::support::*;

pub const CONVERGE: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "tenants";

fn template(bed: &Bed) -> String {
    let path = bed.b.dir().join("job-template.yaml");
    std::fs::write(
        &path,
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n        - name: engine\n          image: registry.example.com/bootstrapper:test\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The fake API server, its pods' processes getting what the tenant modules read.
pub fn fake(bed: &Bed, sleep_seconds: u32) -> FakeKube {
    fake_with(
        bed,
        vec![("TF_VAR_sleep_seconds".into(), sleep_seconds.to_string())],
    )
}

/// The fake API server, its pods' processes getting the tenant modules' database and
/// ledger, and `env`.
pub fn fake_with(bed: &Bed, env: Vec<(String, String)>) -> FakeKube {
    let mut all = vec![
        ("TF_VAR_pg_conn_str".to_string(), bed.pg.clone()),
        (
            "TF_VAR_ledger".to_string(),
            bed.b.ledger_path().display().to_string(),
        ),
    ];
    all.extend(env);
    FakeKube::start(bed.b.dir(), all)
}

pub fn start(bed: &Bed, kube: &FakeKube) -> Controller {
    start_with(bed, kube, &[])
}

pub fn start_with(bed: &Bed, kube: &FakeKube, more: &[&str]) -> Controller {
    let template = template(bed);
    let kubeconfig = kube.kubeconfig(NAMESPACE);
    let mut args = vec![
        "--executor",
        "kubernetes",
        "--namespace",
        NAMESPACE,
        "--job-template",
        &template,
        "--grace",
        "20s",
    ];
    // Jobs are followed by their watches: no list again while a test lasts, unless asked.
    if !more.contains(&"--job-poll") {
        args.extend(["--job-poll", "1h"]);
    }
    args.extend_from_slice(more);
    bed.start(&args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

pub fn events(bed: &Bed, cluster: &str, event: &str) -> Vec<String> {
    bed.ledger()
        .into_iter()
        .filter(|e| e.cluster == cluster && e.event == event)
        .map(|e| e.resource)
        .collect()
}

#[test]
fn a_workflow_with_a_local_state_is_refused_naming_the_step() {
    let b = Bootstrapper::new();
    b.write_workflow(&four_step_workflow(&fixtures_dir()));
    let template = b.dir().join("job-template.yaml");
    std::fs::write(&template, "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n        - name: engine\n          image: i\n").unwrap();
    let template = template.to_str().unwrap();
    let outcome = b.run(&[
        "serve",
        "--insecure-no-auth",
        "--listen",
        "127.0.0.1:0",
        "--executor",
        "kubernetes",
        "--namespace",
        NAMESPACE,
        "--job-template",
        template,
    ]);
    outcome.assert_code(2);
    assert!(
        outcome
            .stderr
            .contains("step `control-network` keeps its state in a local file"),
        "{outcome}"
    );
    assert!(!outcome.stderr.contains("`network`"), "{outcome}");
}

#[test]
fn clusters_are_created_destroyed_and_created_again_by_jobs() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    let c = start(&bed, &kube);
    let id = ["j1".to_string()];
    assert_eq!(c.put("j1", &json!({ "namesvr_count": 2 })).status, 202);
    c.wait_phase(&id, "ready", CONVERGE);
    assert_eq!(
        bed.state_resources("j1").len(),
        3,
        "{:?}",
        bed.state_resources("j1")
    );
    assert_eq!(kube.jobs_created(), ["bs-j1-apply-1-1"]);
    let job = kube.job("bs-j1-apply-1-1").expect("the Job stays");
    assert_eq!(job["metadata"]["labels"]["bootstrapper/cluster"], "j1");
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"run\",\"--recreate\""), "{args}");
    // The params are in the Secret, and nowhere in the Job.
    let secret = kube.secret("bs-j1-params").expect("the params Secret");
    assert!(secret["data"]["params.json"].is_string());
    assert!(!job.to_string().contains("namesvr_count"));
    // The pod's log is kept as the cluster's operation log.
    let log = std::fs::read_to_string(bed.b.root().join("clusters/j1/operation.log")).unwrap();
    assert!(log.contains("# Job bs-j1-apply-1-1"), "{log}");
    assert!(log.contains("terraform"), "{log}");

    assert_eq!(c.delete("j1").status, 202);
    c.wait_phase(&id, "destroyed", CONVERGE);
    assert!(
        bed.state_resources("j1").is_empty(),
        "{}",
        std::fs::read_to_string(bed.b.root().join("clusters/j1/operation.log")).unwrap()
    );
    assert_eq!(
        kube.jobs_created(),
        ["bs-j1-apply-1-1", "bs-j1-destroy-2-1"]
    );
    // Nothing of a destroyed cluster keeps its params.
    assert!(kube.secret("bs-j1-params").is_none());

    assert_eq!(c.put("j1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&id, "ready", CONVERGE);
    assert_eq!(bed.state_resources("j1").len(), 2);
    assert_eq!(kube.most_pods_at_once("j1"), 1);
    eprintln!("API requests for 3 operations: {}", kube.requests());
}

#[test]
fn a_delete_during_an_apply_deletes_its_job_and_destroys_once_its_pod_is_gone() {
    let bed = Bed::new();
    let kube = fake(&bed, 60);
    let c = start(&bed, &kube);
    assert_eq!(c.put("slow", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| events(&bed, "slow", "start").len() == 1, CONVERGE);
    assert_eq!(c.phase("slow"), "applying");

    assert_eq!(c.delete("slow").status, 202);
    c.wait_phase(&["slow".to_string()], "destroyed", CONVERGE);
    assert!(bed.state_resources("slow").is_empty());
    assert_eq!(events(&bed, "slow", "create"), ["namesvr[0]"]);
    assert!(events(&bed, "slow", "destroy").contains(&"namesvr[0]".to_string()));
    assert_eq!(
        kube.jobs_created(),
        ["bs-slow-apply-1-1", "bs-slow-destroy-2-1"]
    );
    // Never two pods of one cluster at once.
    assert_eq!(kube.most_pods_at_once("slow"), 1);
}

#[test]
fn a_killed_controller_follows_the_running_job_and_starts_no_second_one() {
    let bed = Bed::new();
    let kube = fake(&bed, 3);
    let mut c = start(&bed, &kube);
    assert_eq!(c.put("k1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| events(&bed, "k1", "start").len() == 1, CONVERGE);
    c.running.take().unwrap().kill_session();
    // The Job runs on without its controller.
    assert_eq!(kube.live_pods(), 1);

    let c = start(&bed, &kube);
    c.wait_phase(&["k1".to_string()], "ready", CONVERGE);
    assert_eq!(kube.jobs_created(), ["bs-k1-apply-1-1"]);
    assert_eq!(events(&bed, "k1", "create").len(), 2, "{:?}", bed.ledger());
    assert_eq!(kube.most_pods_at_once("k1"), 1);
}

#[test]
fn sigterm_stops_the_controller_and_leaves_its_jobs_running() {
    let bed = Bed::new();
    let kube = fake(&bed, 60);
    let mut c = start(&bed, &kube);
    assert_eq!(c.put("t1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| events(&bed, "t1", "start").len() == 1, CONVERGE);
    let running = c.running.take().unwrap();
    let signalled = std::time::Instant::now();
    running.signal(libc::SIGTERM);
    let outcome = running.wait(Duration::from_secs(30));
    outcome.assert_code(143);
    // Promptly: not after the 20 s grace a local operation would get.
    assert!(signalled.elapsed() < Duration::from_secs(10), "{outcome}");
    assert_eq!(kube.live_pods(), 1, "the Job's pod runs on");
    assert!(kube.job("bs-t1-apply-1-1").is_some());
}

#[test]
fn a_create_refused_by_a_quota_is_tried_again_later() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    kube.refuse_job_creates(2);
    let c = start(&bed, &kube);
    assert_eq!(c.put("q1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["q1".to_string()], "ready", CONVERGE);
    assert_eq!(kube.jobs_created(), ["bs-q1-apply-1-1"]);
    let stderr = c.stderr();
    assert_eq!(stderr.matches("waiting for quota").count(), 2, "{stderr}");
}

#[test]
fn a_job_of_the_same_name_that_is_not_ours_is_not_adopted() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    kube.put_foreign_job("bs-x1-apply-1-1");
    let c = start(&bed, &kube);
    assert_eq!(c.put("x1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| c.phase("x1") == "failed", CONVERGE);
    let document = c.cluster("x1");
    let error = document["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("a Job named bs-x1-apply-1-1 exists that is not this operation's"),
        "{document}"
    );
    assert!(bed.state_resources("x1").is_empty());
    assert_eq!(kube.live_pods(), 0);
}

#[test]
fn a_job_deleted_by_someone_else_is_run_again() {
    let bed = Bed::new();
    let kube = fake(&bed, 60);
    let c = start(&bed, &kube);
    assert_eq!(c.put("d1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| events(&bed, "d1", "start").len() == 1, CONVERGE);
    kube.delete_job("bs-d1-apply-1-1");
    wait_for(|| kube.jobs_created().len() == 2, CONVERGE);
    assert_eq!(kube.jobs_created(), ["bs-d1-apply-1-1", "bs-d1-apply-1-1"]);
    assert!(
        c.stderr().contains("was deleted by someone else"),
        "{}",
        c.stderr()
    );
    assert_eq!(kube.most_pods_at_once("d1"), 1);
}

/// The Job controller may start a Job's program twice: the remote state's lock, which every
/// terraform command takes, is the fence.
#[test]
fn two_pods_of_one_operation_never_create_anything_twice() {
    let bed = Bed::new();
    let kube = fake(&bed, 1);
    kube.start_two_pods_per_job();
    let c = start(&bed, &kube);
    assert_eq!(c.put("w1", &json!({ "namesvr_count": 2 })).status, 202);
    c.wait_phase(&["w1".to_string()], "ready", CONVERGE);
    wait_for(|| kube.live_pods() == 0, CONVERGE);
    assert_eq!(kube.most_pods_at_once("w1"), 2, "both pods ran");
    let mut created = events(&bed, "w1", "create");
    created.sort();
    assert_eq!(
        created,
        ["broker", "namesvr[0]", "namesvr[1]"],
        "{:?}",
        bed.ledger()
    );
    assert_eq!(bed.state_resources("w1").len(), 3);
}

#[test]
fn a_pod_pending_past_its_timeout_fails_the_cluster_saying_why() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    kube.make_pods_unschedulable();
    let c = start_with(&bed, &kube, &["--job-pending-timeout", "2s"]);
    assert_eq!(c.put("p1", &json!({ "namesvr_count": 1 })).status, 202);
    if !poll(|| c.phase("p1") == "failed", Duration::from_secs(30)) {
        panic!("{}", c.stderr());
    }
    let document = c.cluster("p1");
    let error = document["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("stayed pending"), "{document}");
    assert!(error.contains("Insufficient memory"), "{document}");
    // Its Job is deleted, not left to start later beside the next operation.
    wait_for(|| kube.job("bs-p1-apply-1-1").is_none(), CONVERGE);
}
