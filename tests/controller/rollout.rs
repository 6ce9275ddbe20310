//! Upgrading tenants to the code a new controller image ships: which code each cluster runs,
//! an upgrade of one cluster keeping its state, a rollback to the code it replaced, and
//! rollouts over many clusters.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(180);

/// The tenant fixture copied into the test's own directory, the controller's workflow
/// pointing there, so that the test can ship a new version by changing the copy.
pub struct Tenant {
    dir: tempfile::TempDir,
    pub workflow: String,
}

impl Tenant {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("tenant");
        copy_tree(&tenant_fixture_dir(), &copy);
        let original = tenant_fixture_dir().display().to_string();
        let workflow = tenant_workflow().replace(&original, &copy.display().to_string());
        assert_ne!(workflow, tenant_workflow());
        Tenant { dir, workflow }
    }

    pub fn tree(&self) -> PathBuf {
        self.dir.path().join("tenant")
    }

    /// Adds `text` to the broker module: a new version of the tenant code.
    pub fn add_to_broker(&self, text: &str) {
        let main = self.tree().join("broker/main.tf");
        let mut module = fs::read_to_string(&main).unwrap();
        module.push_str(text);
        fs::write(&main, module).unwrap();
    }

    /// Version 2 of the broker module: a new output, and a check that fails a cluster whose
    /// `tag` is `bad` (version 1 takes any tag). The workspaces exist by now, so the retries
    /// their creation needed are turned off: a failure is one at once.
    fn ship_v2(&self, bed: &Bed) {
        assert!(self.workflow.contains("retries = 5"));
        bed.b
            .write_workflow(&self.workflow.replace("retries = 5", "retries = 0"));
        self.add_to_broker(
            r#"
resource "terraform_data" "v2_check" {
  input = var.tag
  provisioner "local-exec" {
    command     = "EVENT=start; ${local.line}; sleep 0.3; test \"$TAG\" != bad || exit 1; EVENT=create; ${local.line}"
    environment = { TAG = var.tag, LEDGER = var.ledger, CLUSTER = var.cluster_id, NAME = "v2check" }
  }
}

output "version" {
  value = "v2"
}
"#,
        );
    }
}

pub fn send(c: &Controller, method: &str, path: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    c.request(method, path, body, Some(&format!("Bearer {TOKEN}")))
}

fn put(c: &Controller, id: &str, body: Value) -> Reply {
    send(c, "PUT", &format!("/v1/clusters/{id}"), Some(body))
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn code(c: &Controller, id: &str) -> Value {
    c.cluster(id)["code"].clone()
}

/// Waits until `id` is `failed` (wait_phase fails the test at a failure).
fn wait_failed(c: &Controller, id: &str) {
    wait_for(|| c.phase(id) == "failed", CONVERGE);
}

/// Every resource of every cluster was created once, whatever code moves it went through.
#[track_caller]
fn assert_created_once(bed: &Bed) {
    let ledger = bed.ledger();
    for ((cluster, resource), n) in counts(&ledger, "create") {
        assert_eq!(n, 1, "{cluster} {resource} created {n} times");
    }
    assert!(
        counts(&ledger, "destroy").is_empty(),
        "something was destroyed"
    );
}

// A cluster keeps its code until asked to move; an upgrade moves it to the code the controller
// ships, keeping its state; a rollback puts back the code the upgrade replaced.
#[test]
fn a_cluster_is_upgraded_and_rolled_back_keeping_its_state() {
    let tenant = Tenant::new();
    let bed = Bed::with_workflow(&tenant.workflow);
    let mut c = bed.start(&["--concurrency", "4"], &[]);
    assert_eq!(
        put(&c, "good", json!({"params": {"namesvr_count": 1}})).status,
        202
    );
    let r = put(
        &c,
        "bad",
        json!({"params": {"namesvr_count": 1, "tag": "bad"}}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    c.wait_phase(&ids(&["good", "bad"]), "ready", CONVERGE);
    let v1 = code(&c, "good");
    assert_eq!(v1["applied"], v1["current"], "{v1}");
    assert_eq!(v1["outdated"], false);
    assert!(
        v1["applied"].as_str().unwrap().starts_with("sha256:"),
        "{v1}"
    );
    assert_eq!(
        put(
            &c,
            "good",
            json!({"params": {"namesvr_count": 1}, "code": "previous"})
        )
        .status,
        409,
        "no upgrade yet, nothing to roll back to"
    );

    // Version 2 shipped: a new controller over the same root.
    c.running.take().unwrap().kill_session();
    tenant.ship_v2(&bed);
    let c = bed.start(&["--concurrency", "4"], &[]);
    let before = code(&c, "good");
    assert_eq!(before["applied"], v1["applied"]);
    assert_ne!(before["current"], v1["current"]);
    assert_eq!(before["outdated"], true, "{before}");
    let outdated = c.get("/v1/clusters?outdated=true").body;
    let listed: Vec<&str> = outdated["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["bad", "good"]);
    let v1_id = v1["applied"].as_str().unwrap();
    assert_eq!(
        c.metric(&format!(
            "bootstrapper_clusters_by_code{{code=\"{v1_id}\"}}"
        )),
        2.0
    );

    // A PUT without upgrade keeps the code.
    assert_eq!(
        put(&c, "good", json!({"params": {"namesvr_count": 1}})).status,
        200
    );
    assert_eq!(code(&c, "good")["outdated"], true);
    // A new cluster gets the current code.
    assert_eq!(
        put(&c, "new", json!({"params": {"namesvr_count": 1}})).status,
        202
    );
    c.wait_phase(&ids(&["new"]), "ready", CONVERGE);
    assert_eq!(code(&c, "new")["outdated"], false);
    assert_eq!(c.cluster("new")["outputs"]["broker"]["version"], "v2");

    // The upgrade: on the new code, state kept (nothing created twice).
    assert_eq!(
        put(
            &c,
            "good",
            json!({"params": {"namesvr_count": 1}, "upgrade": true})
        )
        .status,
        202
    );
    c.wait_phase(&ids(&["good"]), "ready", CONVERGE);
    let after = code(&c, "good");
    assert_eq!(after["applied"], before["current"], "{after}");
    assert_eq!(after["outdated"], false);
    assert_eq!(after["previous"], v1["applied"]);
    assert_eq!(c.cluster("good")["outputs"]["broker"]["version"], "v2");
    assert_eq!(
        put(
            &c,
            "good",
            json!({"params": {"namesvr_count": 1}, "upgrade": true})
        )
        .status,
        200,
        "already current: nothing to do"
    );

    // An upgrade that fails leaves the cluster failed on the new code; the rollback puts
    // the old code back and applies it.
    assert_eq!(
        put(
            &c,
            "bad",
            json!({"params": {"namesvr_count": 1, "tag": "bad"}, "upgrade": true})
        )
        .status,
        202
    );
    wait_failed(&c, "bad");
    let failed = c.cluster("bad");
    assert_eq!(failed["code"]["applied"], before["current"], "{failed}");
    assert!(failed["last_error"].as_str().is_some(), "{failed}");
    assert_eq!(
        put(
            &c,
            "bad",
            json!({"params": {"namesvr_count": 1, "tag": "bad"}, "code": "previous"})
        )
        .status,
        202
    );
    c.wait_phase(&ids(&["bad"]), "ready", CONVERGE);
    let back = c.cluster("bad");
    assert_eq!(back["code"]["applied"], v1["applied"], "{back}");
    assert_eq!(back["code"]["outdated"], true);
    assert!(back["outputs"]["broker"].get("version").is_none(), "{back}");
    assert_eq!(
        put(
            &c,
            "bad",
            json!({"params": {"namesvr_count": 1, "tag": "bad"}, "code": "previous"})
        )
        .status,
        409,
        "rolled back already"
    );
    assert_eq!(
        put(
            &c,
            "bad",
            json!({"params": {"namesvr_count": 1}, "upgrade": true, "code": "previous"})
        )
        .status,
        400
    );
    assert_created_once(&bed);
}

fn rollout(c: &Controller, id: &str) -> Value {
    let reply = c.get(&format!("/v1/rollouts/{id}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn in_state(doc: &Value, state: &str) -> Vec<String> {
    doc["clusters"][state]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Waits until the rollout is in `phase`, checking at every look that it keeps its limits:
/// at most `max_parallel` upgrades at once, and no other cluster while a canary is under way.
#[track_caller]
fn wait_rollout(c: &Controller, id: &str, phase: &str, max_parallel: usize) -> Value {
    let mut last = Value::Null;
    wait_for(
        || {
            last = rollout(c, id);
            let upgrading = in_state(&last, "upgrading");
            assert!(upgrading.len() <= max_parallel, "{last}");
            last["phase"] == phase
        },
        CONVERGE,
    );
    last
}

fn ids_of(list: &Value) -> Vec<String> {
    list["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

// 30 clusters on v1, v2 shipped, failing for two of them: the canaries pass, the rollout halts
// at the second failure with the rest untouched; the two are rolled back, fixed, and a resume
// finishes; the controller killed mid-rollout resumes it; every resource is created once.
#[test]
fn a_rollout_upgrades_the_fleet_canaries_first_and_halts_on_failures() {
    let tenant = Tenant::new();
    let bed = Bed::with_workflow(&tenant.workflow);
    let args = ["--concurrency", "8"];
    let mut c = bed.start(&args, &[]);
    let all: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    let bad = ["c03", "c04"];
    let params = |id: &str| {
        if bad.contains(&id) {
            json!({"namesvr_count": 1, "tag": "bad"})
        } else {
            json!({"namesvr_count": 1})
        }
    };
    for id in &all {
        assert_eq!(c.put(id, &params(id)).status, 202);
    }
    c.wait_phase(&all, "ready", CONVERGE);
    let v1 = code(&c, "c00")["applied"].clone();

    c.running.take().unwrap().kill_session();
    tenant.ship_v2(&bed);
    let mut c = bed.start(&args, &[]);
    assert_eq!(ids_of(&c.get("/v1/clusters?outdated=true").body), all);
    let body = json!({"canary": 2, "max_parallel": 4, "max_failures": 1});
    let created = send(&c, "POST", "/v1/rollouts", Some(body.clone()));
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["counts"]["waiting"], 30, "{created:?}");
    let second = send(&c, "POST", "/v1/rollouts", Some(body));
    assert_eq!(second.status, 409, "{second:?}");

    let halted = wait_rollout(&c, &id, "halted", 4);
    assert_eq!(in_state(&halted, "failed"), bad, "{halted}");
    let upgraded = in_state(&halted, "upgraded");
    assert!(upgraded.contains(&"c00".to_string()) && upgraded.contains(&"c01".to_string()));
    let waiting = in_state(&halted, "waiting");
    assert!(!waiting.is_empty(), "{halted}");
    for w in &waiting {
        let doc = c.cluster(w);
        assert_eq!(doc["phase"], "ready", "{doc}");
        assert_eq!(doc["code"]["applied"], v1, "{doc}");
    }
    // The canaries finished before any other upgrade started.
    let ledger = bed.ledger();
    let checks: Vec<&Entry> = ledger.iter().filter(|e| e.resource == "v2check").collect();
    let canaries_done = checks
        .iter()
        .filter(|e| e.event == "create" && ["c00", "c01"].contains(&e.cluster.as_str()))
        .map(|e| e.ns)
        .max()
        .unwrap();
    let others_started = checks
        .iter()
        .filter(|e| e.event == "start" && !["c00", "c01"].contains(&e.cluster.as_str()))
        .map(|e| e.ns)
        .min()
        .unwrap();
    assert!(canaries_done < others_started);

    // The two rolled back, then fixed; the resume tries them again.
    for b in bad {
        let reply = put(&c, b, json!({"params": params(b), "code": "previous"}));
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    c.wait_phase(&ids(&bad), "ready", CONVERGE);
    for b in bad {
        assert_eq!(code(&c, b)["applied"], v1);
        assert_eq!(c.put(b, &json!({"namesvr_count": 1})).status, 202);
    }
    c.wait_phase(&ids(&bad), "ready", CONVERGE);
    let resumed = send(&c, "POST", &format!("/v1/rollouts/{id}/resume"), None);
    assert_eq!(resumed.status, 200, "{resumed:?}");

    // Killed in the middle: the restarted controller finishes the rollout.
    wait_for(
        || rollout(&c, &id)["counts"]["upgraded"].as_u64().unwrap_or(0) >= 14,
        CONVERGE,
    );
    c.running.take().unwrap().kill_session();
    // A provisioner that wrote its ledger line before terraform saved the state it belongs to
    // runs again after the kill, as a killed pod's would: only what a state held is settled.
    let killed_at = bed.ledger().iter().map(|e| e.ns).max().expect("ledger");
    let settled = bed.states_of(&all);
    let c = bed.start(&args, &[]);
    let done = wait_rollout(&c, &id, "done", 4);
    assert_eq!(in_state(&done, "upgraded").len(), 30, "{done}");
    assert!(ids_of(&c.get("/v1/clusters?outdated=true").body).is_empty());
    c.wait_phase(&all, "ready", CONVERGE);
    for id in &all {
        assert_eq!(c.cluster(id)["outputs"]["broker"]["version"], "v2");
    }
    let ledger = bed.ledger();
    let (before, after): (Vec<Entry>, Vec<Entry>) =
        ledger.iter().cloned().partition(|e| e.ns <= killed_at);
    for ((cluster, resource), n) in counts(&before, "create") {
        assert_eq!(
            n, 1,
            "{cluster} {resource} created {n} times before the kill"
        );
    }
    for ((cluster, resource), n) in counts(&after, "create") {
        assert_eq!(
            n, 1,
            "{cluster} {resource} created {n} times after the kill"
        );
        let address = match resource.as_str() {
            "broker" => "broker:terraform_data.broker".to_string(),
            "v2check" => "broker:terraform_data.v2_check".to_string(),
            r => format!("namesvr:terraform_data.{r}"),
        };
        assert!(
            !settled.contains(&(cluster.clone(), address.clone())),
            "{cluster} {address} was in its state at the kill and was created again"
        );
    }
    let checks: Vec<Entry> = ledger
        .into_iter()
        .filter(|e| e.resource == "v2check")
        .collect();
    assert_eq!(counts(&checks, "create").len(), 30);
    assert!(max_parallel(&checks) <= 4, "{}", max_parallel(&checks));
    assert_eq!(c.metric("bootstrapper_rollout_phase{state=\"done\"}"), 1.0);
    assert_eq!(
        c.metric("bootstrapper_rollout_clusters{state=\"upgraded\"}"),
        30.0
    );
}

// Bad requests are refused with nothing written; a rollout can be cancelled, paused and
// resumed; a second is refused while one is active; a tenant's DELETE wins over it.
#[test]
fn rollouts_are_paused_resumed_cancelled_and_bad_requests_refused() {
    let tenant = Tenant::new();
    let bed = Bed::with_workflow(&tenant.workflow);
    let args = ["--concurrency", "4"];
    let mut c = bed.start(&args, &[]);
    let all = ids(&["c0", "c1", "c2", "c3"]);
    for id in &all {
        assert_eq!(c.put(id, &json!({"namesvr_count": 1})).status, 202);
    }
    c.wait_phase(&all, "ready", CONVERGE);
    c.running.take().unwrap().kill_session();
    tenant.ship_v2(&bed);
    let c = bed.start(&args, &[]);

    let post = |body: &str| {
        c.request(
            "POST",
            "/v1/rollouts",
            Some(body.as_bytes().to_vec()),
            Some(&format!("Bearer {TOKEN}")),
        )
    };
    for bad in [
        r#"{"max_parallel": 1, "selector": {"region": "eu"}}"#,
        r#"{"max_parallel": 1, "speed": 2}"#,
        r#"{"max_parallel": 1, "canary": -1}"#,
        r#"{"max_parallel": 0}"#,
        r#"{"max_parallel": -3}"#,
        r#"{"canary": 1}"#,
        r#"{"max_parallel": 100000}"#,
        r#"{"max_parallel": 1, "max_failures": -1}"#,
        r#"{"max_parallel": 1, "selector": {"ids": []}}"#,
        r#"{"max_parallel": 1, "selector": {"ids": ["Not_An_Id"]}}"#,
        r#"{"max_parallel": "2"}"#,
        r#"not json"#,
    ] {
        let reply = post(bad);
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
    }
    let rollouts = bed.b.root().join("rollouts");
    assert!(!rollouts.exists() || fs::read_dir(&rollouts).unwrap().next().is_none());
    for (method, path) in [
        ("GET", "/v1/rollouts/0123456789abcdef"),
        ("POST", "/v1/rollouts/0123456789abcdef/pause"),
        ("DELETE", "/v1/rollouts/../x"),
    ] {
        let reply = send(&c, method, path, None);
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
    }

    // Cancelled: nothing new starts, and another rollout may start.
    let one = json!({"max_parallel": 1});
    let first = send(&c, "POST", "/v1/rollouts", Some(one.clone()));
    assert_eq!(first.status, 201, "{first:?}");
    let first = first.body["id"].as_str().unwrap().to_string();
    let approve = send(&c, "POST", &format!("/v1/rollouts/{first}/approve"), None);
    assert_eq!(
        approve.status, 409,
        "a running rollout awaits no approval: {approve:?}"
    );
    let resume = send(&c, "POST", &format!("/v1/rollouts/{first}/resume"), None);
    assert_eq!(resume.status, 409, "{resume:?}");
    let cancelled = send(&c, "DELETE", &format!("/v1/rollouts/{first}"), None);
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.body["phase"], "cancelled");
    let again = send(&c, "DELETE", &format!("/v1/rollouts/{first}"), None);
    assert_eq!(again.status, 409, "{again:?}");

    // Paused right away: what runs finishes, nothing new starts, and a tenant's DELETE of
    // a waiting cluster wins.
    let second = send(&c, "POST", "/v1/rollouts", Some(one.clone()));
    assert_eq!(second.status, 201, "{second:?}");
    let second = second.body["id"].as_str().unwrap().to_string();
    assert_eq!(send(&c, "POST", "/v1/rollouts", Some(one)).status, 409);
    let paused = send(&c, "POST", &format!("/v1/rollouts/{second}/pause"), None);
    assert_eq!(paused.status, 200, "{paused:?}");
    let mut doc = Value::Null;
    wait_for(
        || {
            doc = rollout(&c, &second);
            in_state(&doc, "upgrading").is_empty()
        },
        CONVERGE,
    );
    let waiting = in_state(&doc, "waiting");
    assert!(waiting.len() >= 2, "{doc}");
    let deleted = waiting[0].clone();
    assert_eq!(c.delete(&deleted).status, 202);
    c.wait_phase(&ids(&[&deleted]), "destroyed", CONVERGE);
    let still = rollout(&c, &second);
    assert_eq!(still["phase"], "paused");
    assert_eq!(
        in_state(&still, "waiting"),
        waiting,
        "something started while paused"
    );
    let resumed = send(&c, "POST", &format!("/v1/rollouts/{second}/resume"), None);
    assert_eq!(resumed.status, 200, "{resumed:?}");
    let done = wait_rollout(&c, &second, "done", 1);
    assert_eq!(in_state(&done, "skipped"), vec![deleted.clone()], "{done}");
    for id in all.iter().filter(|id| **id != deleted) {
        assert_eq!(code(&c, id)["outdated"], false, "{id}");
    }
    assert_eq!(c.phase(&deleted), "destroyed");

    let openapi = c.request("GET", "/openapi.json", None, None).body;
    for (path, method) in [
        ("/v1/rollouts", "post"),
        ("/v1/rollouts/{id}", "get"),
        ("/v1/rollouts/{id}", "delete"),
        ("/v1/rollouts/{id}/pause", "post"),
        ("/v1/rollouts/{id}/resume", "post"),
        ("/v1/rollouts/{id}/approve", "post"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{method} {path}"
        );
    }
    let put = &openapi["components"]["schemas"]["PutCluster"]["properties"];
    assert!(
        put["upgrade"].is_object() && put["code"].is_object(),
        "{put}"
    );
    assert!(openapi["components"]["schemas"]["Document"]["properties"]["code"].is_object());
}

// plan_first: every cluster planned against v2 with nothing applied, the fleet summary
// grouping the identical change sets; approval starts the upgrades, and only then.
#[test]
fn a_plan_first_rollout_waits_for_approval_with_a_fleet_summary() {
    let tenant = Tenant::new();
    let bed = Bed::with_workflow(&tenant.workflow);
    let args = ["--concurrency", "4"];
    let mut c = bed.start(&args, &[]);
    let all = ids(&["p0", "p1", "p2"]);
    for id in &all {
        assert_eq!(c.put(id, &json!({"namesvr_count": 1})).status, 202);
    }
    c.wait_phase(&all, "ready", CONVERGE);
    let v1 = code(&c, "p0")["applied"].clone();
    c.running.take().unwrap().kill_session();
    tenant.ship_v2(&bed);
    let c = bed.start(&args, &[]);

    let body = json!({"max_parallel": 2, "plan_first": true});
    let created = send(&c, "POST", "/v1/rollouts", Some(body));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["phase"], "awaiting_approval", "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    let mut doc = Value::Null;
    wait_for(
        || {
            doc = rollout(&c, &id);
            doc["summary"]["planning"] == 0
        },
        CONVERGE,
    );
    assert_eq!(doc["phase"], "awaiting_approval", "{doc}");
    let summary = &doc["summary"];
    assert_eq!(summary["planned"], 3, "{doc}");
    assert_eq!(
        summary["clusters_that_would"],
        json!({"create": 3}),
        "{doc}"
    );
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{doc}");
    assert_eq!(groups[0]["count"], 3, "{doc}");
    assert_eq!(groups[0]["actions"], json!({"create": 1}), "{doc}");
    let changes = groups[0]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{doc}");
    assert!(
        changes[0]
            .as_str()
            .unwrap()
            .ends_with(": create terraform_data.v2_check"),
        "{doc}"
    );
    // Nothing applied, nothing moved: every cluster still on v1, no v2 resource made.
    assert!(bed.ledger().iter().all(|e| e.resource != "v2check"));
    for id in &all {
        assert_eq!(code(&c, id)["applied"], v1);
        assert_eq!(c.phase(id), "ready");
    }
    // A tenant's PUT with the plan's id cannot apply it: it was made against other code.
    let plan = c.get("/v1/clusters/p0/plan").body;
    assert_eq!(plan["code_current"], true, "{plan}");
    // p2's params move on after its plan: it is planned again before its upgrade.
    let before = c.get("/v1/clusters/p2/plan").body;
    assert_eq!(
        put(&c, "p2", json!({"params": {"namesvr_count": 2}})).status,
        202
    );
    c.wait_phase(&ids(&["p2"]), "ready", CONVERGE);
    let generation = c.cluster("p2")["generation"].clone();
    assert_ne!(before["generation"], generation, "{before}");

    let approved = send(&c, "POST", &format!("/v1/rollouts/{id}/approve"), None);
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.body["phase"], "running", "{approved:?}");
    let again = send(&c, "POST", &format!("/v1/rollouts/{id}/approve"), None);
    assert_eq!(again.status, 409, "{again:?}");
    let done = wait_rollout(&c, &id, "done", 2);
    assert_eq!(in_state(&done, "upgraded"), all, "{done}");
    c.wait_phase(&all, "ready", CONVERGE);
    for id in &all {
        assert_eq!(c.cluster(id)["outputs"]["broker"]["version"], "v2");
    }
    assert_created_once(&bed);
    let replanned = c.get("/v1/clusters/p2/plan").body;
    assert_eq!(replanned["code_current"], true, "{replanned}");
    assert_eq!(replanned["generation"], generation, "{replanned}");
    assert_ne!(replanned["requested_at"], before["requested_at"]);
    let late = send(&c, "POST", &format!("/v1/rollouts/{id}/approve"), None);
    assert_eq!(late.status, 409, "{late:?}");

    let openapi = c.request("GET", "/openapi.json", None, None).body;
    let schemas = &openapi["components"]["schemas"];
    assert!(
        schemas["RolloutDocument"]["properties"]["summary"].is_object(),
        "{schemas:#}"
    );
    assert!(schemas["ChangeGroup"].is_object(), "{schemas:#}");
    assert!(openapi["paths"]["/v1/rollouts"]["post"]["responses"]["501"].is_null());
}
