//! Upgrading tenants to the code a new controller image ships: which code each cluster runs,
//! an upgrade of one cluster keeping its state, a rollback to the code it replaced, and
//! rollouts over many clusters.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(180);

/// The tenant fixture copied into the test's own directory, the controller's workflow
/// pointing there, so that the test can ship a new version by changing the copy.
struct Tenant {
    dir: tempfile::TempDir,
    workflow: String,
}

impl Tenant {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("tenant");
        copy_dir(&tenant_fixture_dir(), &copy);
        let original = tenant_fixture_dir().display().to_string();
        let workflow = tenant_workflow().replace(&original, &copy.display().to_string());
        assert_ne!(workflow, tenant_workflow());
        Tenant { dir, workflow }
    }

    fn tree(&self) -> PathBuf {
        self.dir.path().join("tenant")
    }

    /// Version 2 of the broker module: a new output, and a check that fails a cluster whose
    /// `tag` is `bad` (version 1 takes any tag).
    fn ship_v2(&self) {
        let main = self.tree().join("broker/main.tf");
        let mut text = fs::read_to_string(&main).unwrap();
        text.push_str(
            r#"
resource "terraform_data" "v2_check" {
  input = var.tag
  provisioner "local-exec" {
    command     = "test \"$TAG\" != bad"
    environment = { TAG = var.tag }
  }
}

output "version" {
  value = "v2"
}
"#,
        );
        fs::write(&main, text).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn send(c: &Controller, method: &str, path: &str, body: Option<Value>) -> Reply {
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
    tenant.ship_v2();
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
