//! Upgrades and rollouts under `serve --executor kubernetes`: every Job copies the code of its
//! image, so which code a cluster runs is read from its last Job's result, an upgrade is an
//! apply Job of the new image's code, and a rollback (which needs the replaced code, kept only
//! by the local executor) is refused. A new image is the tenant code the workflow's
//! `image_dir` points at, changed between two controllers (the fake kubelet's pods run on
//! this filesystem).

use serde_json::{json, Value};

use crate::jobs::{fake, start, CONVERGE};
use crate::rollout::{send, Tenant};
use crate::support::controller::*;
use crate::support::*;

/// Version 2 of the broker module: one more resource and a new output.
fn ship_v2(tenant: &Tenant) {
    tenant.add_to_broker(
        r#"
resource "terraform_data" "v2_check" {
  input = var.tag
  provisioner "local-exec" {
    command     = "EVENT=create; ${local.line}"
    environment = { LEDGER = var.ledger, CLUSTER = var.cluster_id, NAME = "v2check" }
  }
}

output "version" {
  value = "v2"
}
"#,
    );
}

fn listed(c: &Controller, query: &str) -> Vec<String> {
    c.get(&format!("/v1/clusters?{query}")).body["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

// Four clusters on v1, a controller with v2 shipped: they show as outdated, a plan_first
// rollout plans three through plan Jobs and, approved, upgrades them through apply Jobs,
// creating only what v2 adds; the fourth moves with its next apply; a rollback is refused.
#[test]
fn a_rollout_upgrades_clusters_through_jobs_and_a_rollback_is_refused() {
    let tenant = Tenant::new();
    let bed = Bed::with_workflow(&tenant.workflow);
    let kube = fake(&bed, 0);
    let mut c = start(&bed, &kube);
    let all: Vec<String> = ["u1", "u2", "u3"].map(String::from).to_vec();
    let fleet = [&all[..], &["u4".to_string()]].concat();
    for id in &fleet {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&fleet, "ready", CONVERGE);
    let v1 = c.cluster("u1")["code"].clone();
    assert!(
        v1["applied"]
            .as_str()
            .is_some_and(|a| a.starts_with("sha256:")),
        "{v1}"
    );
    assert_eq!(v1["applied"], v1["current"], "{v1}");
    assert_eq!(v1["outdated"], false, "{v1}");

    c.running.take().unwrap().kill_session();
    ship_v2(&tenant);
    let c = start(&bed, &kube);
    let before = c.cluster("u1")["code"].clone();
    assert_eq!(before["applied"], v1["applied"], "{before}");
    assert_ne!(before["current"], v1["current"], "{before}");
    assert_eq!(before["outdated"], true, "{before}");
    assert_eq!(before["previous"], Value::Null, "{before}");
    assert_eq!(listed(&c, "outdated=true"), fleet);
    let v1_id = v1["applied"].as_str().unwrap();
    assert_eq!(
        c.metric(&format!(
            "bootstrapper_clusters_by_code{{code=\"{v1_id}\"}}"
        )),
        4.0
    );

    let body =
        json!({ "canary": 1, "max_parallel": 2, "plan_first": true, "selector": { "ids": all } });
    let created = send(&c, "POST", "/v1/rollouts", Some(body));
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/rollouts/{id}");
    let mut doc = Value::Null;
    wait_for(
        || {
            doc = c.get(&path).body;
            doc["summary"]["planning"] == 0
        },
        CONVERGE,
    );
    // Planned in fresh pods against v2 (earlier steps' outputs read from their backends),
    // all alike: only the broker, which v2 changes, and nothing applied.
    let groups = doc["summary"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{doc}");
    assert_eq!(groups[0]["count"], 3, "{doc}");
    assert_eq!(groups[0]["error"], Value::Null, "{doc}");
    let changes = groups[0]["changes"].as_array().unwrap();
    assert!(
        !changes.is_empty()
            && changes
                .iter()
                .all(|c| c.as_str().unwrap().starts_with("broker: ")),
        "{doc}"
    );
    assert!(bed.ledger().iter().all(|e| e.resource != "v2check"));
    assert_eq!(c.cluster("u1")["code"]["outdated"], true);

    let approved = send(&c, "POST", &format!("{path}/approve"), None);
    assert_eq!(approved.status, 200, "{approved:?}");
    wait_for(
        || {
            doc = c.get(&path).body;
            let upgrading = doc["clusters"]["upgrading"].as_array().map_or(0, Vec::len);
            assert!(upgrading <= 2, "more than max_parallel at once: {doc}");
            doc["phase"] == "done"
        },
        CONVERGE,
    );
    assert_eq!(doc["counts"], json!({ "upgraded": 3 }), "{doc}");
    c.wait_phase(&all, "ready", CONVERGE);
    for id in &all {
        let cluster = c.cluster(id);
        let code = &cluster["code"];
        assert_eq!(code["applied"], before["current"], "{id}: {code}");
        assert_eq!(code["outdated"], false, "{id}: {code}");
        assert_eq!(code["previous"], Value::Null, "{id}: {code}");
        assert_eq!(cluster["outputs"]["broker"]["version"], "v2", "{id}");
        assert!(
            kube.jobs_created()
                .iter()
                .any(|j| j.starts_with(&format!("bs-{id}-plan-"))),
            "{:?}",
            kube.jobs_created()
        );
    }
    assert_eq!(listed(&c, "outdated=true"), ["u4"]);
    // Every apply runs the image's code: a PUT of other params moves u4 too.
    assert_eq!(c.put("u4", &json!({ "namesvr_count": 2 })).status, 202);
    c.wait_phase(&["u4".to_string()], "ready", CONVERGE);
    assert_eq!(c.cluster("u4")["code"]["applied"], before["current"]);
    assert!(listed(&c, "outdated=true").is_empty());
    // v2 created its resource once per cluster; nothing else was created again.
    let ledger = bed.ledger();
    for ((cluster, resource), n) in counts(&ledger, "create") {
        assert_eq!(n, 1, "{cluster} {resource} created {n} times");
    }
    let v2 = counts(&ledger, "create")
        .into_keys()
        .filter(|(_, r)| r == "v2check");
    assert_eq!(v2.count(), 4, "{ledger:?}");
    assert!(counts(&ledger, "destroy").is_empty(), "{ledger:?}");

    // Already on the image's code; no code kept to go back to.
    let params = json!({ "namesvr_count": 1 });
    let again = send(
        &c,
        "PUT",
        "/v1/clusters/u1",
        Some(json!({ "params": params, "upgrade": true })),
    );
    assert_eq!(again.status, 200, "{again:?}");
    let generation = c.cluster("u1")["generation"].clone();
    let back = send(
        &c,
        "PUT",
        "/v1/clusters/u1",
        Some(json!({ "params": params, "code": "previous" })),
    );
    assert_eq!(back.status, 409, "{back:?}");
    assert!(
        back.text.contains("local executor") && back.text.contains("--job-template"),
        "{back:?}"
    );
    assert_eq!(c.cluster("u1")["generation"], generation);
}
