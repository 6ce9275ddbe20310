//! What a Job leaves the controller under `serve --executor kubernetes`, against the fake API
//! server of `fake_kube`: the engine's result as the cluster's steps and outputs, the pod's
//! log while it runs and its tail once it ended, and plans made by plan Jobs.

use std::io::BufRead;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::jobs::{fake, start, start_with};
use crate::support::controller::*;
use crate::support::*;

const CONVERGE: Duration = Duration::from_secs(120);
const SECRET: &str = "pw-Kx81-never-shown";

/// The outputs terraform keeps in the state of `cluster`'s `step`, as name: value.
fn state_outputs(bed: &Bed, step: &str, cluster: &str) -> Value {
    let state = pg_state(&bed.pg, step, cluster).expect("a state");
    let outputs: Map<String, Value> = state["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, o)| (name.clone(), o["value"].clone()))
        .collect();
    Value::Object(outputs)
}

#[test]
fn a_jobs_result_gives_the_document_its_steps_and_outputs() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    let c = start(&bed, &kube);
    // The broker's output is its name, with the tag: too long for a termination message.
    let tag = "t".repeat(4500);
    let r1 = json!({ "namesvr_count": 1, "admin_password": SECRET });
    assert_eq!(c.put("r1", &r1).status, 202);
    assert_eq!(
        c.put("r2", &json!({ "namesvr_count": 1, "tag": tag }))
            .status,
        202
    );
    c.wait_phase(&["r1".to_string(), "r2".to_string()], "ready", CONVERGE);

    let document = c.cluster("r1");
    // The engine's journal stayed in the pod: nothing on the controller's disk says this.
    let journal = bed.cluster_dir("r1").join("engine/.bootstrapper");
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    let steps = document["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["namesvr", "broker"], "{document:#}");
    for step in steps {
        assert_eq!(step["state"], "done", "{document:#}");
        assert_eq!(step["attempts"], 1, "{document:#}");
        assert!(step["started_at"].is_string(), "{document:#}");
        assert!(step["finished_at"].is_string(), "{document:#}");
    }
    let expected = json!({
        "namesvr": state_outputs(&bed, "namesvr", "r1"),
        "broker": state_outputs(&bed, "broker", "r1"),
    });
    assert_eq!(document["outputs"], expected, "{document:#}");
    assert_eq!(
        document["outputs"]["namesvr"]["address"],
        "r1-namesvr.internal:9876"
    );
    assert!(document.get("outputs_left_out").is_none(), "{document:#}");
    assert!(!document.to_string().contains(SECRET), "{document:#}");

    // An output the result had no room for is named, with where to read it.
    let document = c.cluster("r2");
    assert_eq!(
        document["outputs"]["namesvr"],
        state_outputs(&bed, "namesvr", "r2")
    );
    assert!(document["outputs"].get("broker").is_none(), "{document:#}");
    assert_eq!(document["outputs_left_out"], json!(["broker.broker"]));
    assert!(
        document["outputs_note"]
            .as_str()
            .unwrap()
            .contains("terraform output"),
        "{document:#}"
    );
}

/// The log as `GET …/log?follow=true` streams it, one line at a time.
fn follow(c: &Controller, id: &str) -> impl Iterator<Item = String> {
    let response = ureq::get(format!("{}/v1/clusters/{id}/log?follow=true", c.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .expect("follow the log");
    assert_eq!(response.status(), 200);
    let reader = response.into_body().into_reader();
    std::io::BufReader::new(reader)
        .lines()
        .map(|l| l.expect("a line"))
}

#[test]
fn the_log_is_the_pods_while_it_runs_and_its_kept_tail_after() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    let c = start(&bed, &kube);
    let params = json!({ "namesvr_count": 1, "admin_password": SECRET, "sleep_seconds": 4 });
    assert_eq!(c.put("l1", &params).status, 202);

    wait_for(
        || c.get("/v1/clusters/l1/log").body["pod"].is_string(),
        CONVERGE,
    );
    // The broker prints the password, then sleeps before it is created: its line comes
    // through while the pod still runs.
    let mut seen = Vec::new();
    for line in follow(&c, "l1") {
        let printed = line.contains("admin password:");
        seen.push(line);
        if printed {
            break;
        }
    }
    assert!(
        !bed.creates("l1").contains(&"broker".to_string()),
        "the broker was created before its log line came: {seen:#?}"
    );
    let log = c.get("/v1/clusters/l1/log");
    assert_eq!(log.status, 200, "{log:?}");
    let pod = log.body["pod"]
        .as_str()
        .expect("read from the pod")
        .to_string();
    assert!(pod.starts_with("bs-l1-apply-1-1"), "{log:?}");
    assert!(log.text.contains("admin password: "), "{log:?}");
    assert!(!log.text.contains(SECRET), "{log:?}");
    assert!(seen.iter().all(|l| !l.contains(SECRET)), "{seen:#?}");

    // A follow ends when the pod does, with all it wrote.
    let rest: Vec<String> = follow(&c, "l1").collect();
    assert!(
        bed.creates("l1").contains(&"broker".to_string()),
        "the follow ended before the pod: {rest:#?}"
    );
    assert!(rest.iter().any(|l| l.contains("admin password: ")));

    c.wait_phase(&one("l1"), "ready", CONVERGE);
    let kept = c.get("/v1/clusters/l1/log");
    assert!(kept.body["pod"].is_null(), "{kept:?}");
    let lines = kept.body["lines"].as_array().unwrap();
    assert!(lines[0].as_str().unwrap().starts_with("# Job "), "{kept:?}");
    assert!(kept.text.contains("admin password: "), "{kept:?}");
    assert!(!kept.text.contains(SECRET), "{kept:?}");
    // The end is there: the broker's apply completed.
    let last_lines: String = lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(last_lines.contains("broker"), "{kept:?}");
    // Without a pod, a follow answers the kept log and ends.
    let after: Vec<String> = follow(&c, "l1").collect();
    assert_eq!(after.len(), lines.len());
}

fn post_plan(c: &Controller, id: &str, body: Value) -> Reply {
    c.request(
        "POST",
        &format!("/v1/clusters/{id}/plan"),
        Some(serde_json::to_vec(&body).unwrap()),
        Some(&format!("Bearer {TOKEN}")),
    )
}

#[test]
fn a_plan_job_previews_the_changes_and_a_reviewed_apply_or_a_rollback_is_refused_saying_why() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    let c = start(&bed, &kube);
    assert_eq!(c.put("p1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("p1"), "ready", CONVERGE);

    let reply = post_plan(&c, "p1", json!({ "params": { "namesvr_count": 2 } }));
    assert_eq!(reply.status, 202, "{reply:?}");
    let mut plan = Value::Null;
    wait_for(
        || {
            plan = c.get("/v1/clusters/p1/plan").body;
            matches!(plan["status"].as_str(), Some("succeeded" | "failed"))
        },
        CONVERGE,
    );
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    assert_eq!(plan["changes"], true, "{plan:#}");
    let namesvr = &plan["steps"][0];
    assert_eq!(namesvr["step"], "namesvr", "{plan:#}");
    assert_eq!(namesvr["status"], "changes", "{plan:#}");
    assert_eq!(
        namesvr["changes"]["resources"][0]["address"], "terraform_data.namesvr[1]",
        "{plan:#}"
    );
    assert_eq!(namesvr["changes"]["resources"][0]["action"], "create");
    assert!(
        kube.jobs_created()
            .iter()
            .any(|j| j.starts_with("bs-p1-plan-")),
        "{:?}",
        kube.jobs_created()
    );
    assert_eq!(bed.creates("p1").len(), 2, "the plan applied something");

    // Its saved plan was in the plan Job's pod: applying it by id is refused, saying why.
    let id = plan["id"].as_str().unwrap();
    let body = json!({ "params": { "namesvr_count": 2 }, "plan_id": id });
    let reply = c.request(
        "PUT",
        "/v1/clusters/p1",
        Some(serde_json::to_vec(&body).unwrap()),
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(
        reply.text.contains("--executor kubernetes") && reply.text.contains("without plan_id"),
        "{reply:?}"
    );
    assert_eq!(
        c.cluster("p1")["generation"],
        1,
        "the refusal recorded something"
    );

    // Every Job copies its image's code: an upgrade to it has nothing to do, and no cluster
    // keeps code to go back to.
    let send = |body: Value| {
        let body = Some(serde_json::to_vec(&body).unwrap());
        c.request(
            "PUT",
            "/v1/clusters/p1",
            body,
            Some(&format!("Bearer {TOKEN}")),
        )
    };
    let params = json!({ "namesvr_count": 1 });
    let reply = send(json!({ "params": params, "upgrade": true }));
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = send(json!({ "params": params, "code": "previous" }));
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.text.contains("--job-template"), "{reply:?}");
    assert_eq!(
        c.cluster("p1")["generation"],
        1,
        "a refusal recorded something"
    );
}

#[test]
fn a_drift_check_through_a_plan_job_finds_an_unchanged_cluster_clean() {
    let bed = Bed::new();
    let kube = fake(&bed, 0);
    let c = start_with(&bed, &kube, &["--drift-interval", "1s"]);
    assert_eq!(c.put("d1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("d1"), "ready", CONVERGE);
    let checks = |result: &str| {
        c.metric(&format!(
            "bootstrapper_drift_checks_total{{result=\"{result}\"}}"
        ))
    };
    wait_for(|| checks("clean") + checks("drifted") >= 1.0, CONVERGE);
    // The broker reads the NameServer's outputs: a fresh pod reads them from the backend
    // and plans it, rather than count it as not known, which would be drift.
    let drift = c.cluster("d1")["drift"].clone();
    assert_eq!(drift["drifted"], false, "{drift:#}");
    assert_eq!(checks("drifted"), 0.0);
    assert!(
        kube.jobs_created()
            .iter()
            .any(|j| j.starts_with("bs-d1-plan-")),
        "{:?}",
        kube.jobs_created()
    );
}
