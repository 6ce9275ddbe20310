//! The controller (`bootstrapper serve`): the built binary driven by a real HTTP client, over a
//! tenant workflow applied by real terraform into a real PostgreSQL backend.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(120);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

fn events(bed: &Bed, cluster: &str, event: &str) -> Vec<String> {
    bed.ledger()
        .into_iter()
        .filter(|e| e.cluster == cluster && e.event == event)
        .map(|e| e.resource)
        .collect()
}

// ---------------------------------------------------------------------------
// a. create, idempotent PUT, new params, delete, re-create

#[test]
fn a_cluster_is_created_changed_destroyed_and_created_again() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let id = ["c1".to_string()];

    let reply = c.put("c1", &json!({ "namesvr_count": 2 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 1);
    assert_eq!(reply.body["params"]["cluster_id"], "c1");
    c.wait_phase(&id, "ready", CONVERGE);
    let doc = c.cluster("c1");
    assert_eq!(
        doc["outputs"]["namesvr"]["address"],
        "c1-namesvr.internal:9876"
    );
    assert_eq!(doc["outputs"]["broker"]["broker"], "broker");
    for step in doc["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "done", "{doc:#}");
        assert_eq!(step["attempts"], 1, "{doc:#}");
    }
    assert_eq!(
        sorted(events(&bed, "c1", "create")),
        ["broker", "namesvr[0]", "namesvr[1]"]
    );
    assert_eq!(
        bed.state_resources("c1"),
        [
            "namesvr:terraform_data.namesvr[0]",
            "namesvr:terraform_data.namesvr[1]",
            "broker:terraform_data.broker"
        ]
    );

    let listed = |phase: &str| -> Vec<String> {
        c.get(&format!("/v1/clusters?phase={phase}")).body["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed("ready"), ["c1"]);
    assert!(listed("destroyed").is_empty());

    // The same params again: nothing to do, nothing started.
    let applies = c.metric(r#"bootstrapper_operations_total{kind="apply",result="succeeded"}"#);
    assert_eq!(applies, 1.0);
    let reply = c.put("c1", &json!({ "namesvr_count": 2, "cluster_id": "c1" }));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["phase"], "ready");
    assert_eq!(reply.body["generation"], 1);
    assert_eq!(c.metric(r#"bootstrapper_operations_running"#), 0.0);
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="succeeded"}"#),
        1.0
    );

    // New params: applied again; the tag replaces every resource.
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "tag": "-b" }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 2);
    wait_for(
        || c.cluster("c1")["last_operation"]["generation"] == 2,
        CONVERGE,
    );
    c.wait_phase(&id, "ready", CONVERGE);
    assert_eq!(
        sorted(events(&bed, "c1", "create")),
        [
            "broker",
            "broker-b",
            "namesvr[0]",
            "namesvr[0]-b",
            "namesvr[1]"
        ]
    );
    let destroyed: BTreeSet<String> = events(&bed, "c1", "destroy").into_iter().collect();
    assert_eq!(
        destroyed,
        BTreeSet::from(["namesvr[0]".into(), "namesvr[1]".into(), "broker".into()])
    );

    // The log of the last operation, masked: the backend's address is a TF_VAR_* value.
    let log = c.get("/v1/clusters/c1/log");
    assert_eq!(log.status, 200, "{log:?}");
    let lines = log.body["lines"].as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().unwrap().ends_with(" run --recreate")),
        "{log:?}"
    );
    assert!(
        !log.text.contains(&bed.pg),
        "the backend's address leaked: {}",
        log.text
    );

    // Delete: everything destroyed, the states empty.
    let reply = c.delete("c1");
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&id, "destroyed", CONVERGE);
    assert!(bed.state_resources("c1").is_empty());
    assert_eq!(events(&bed, "c1", "destroy").len(), 5);
    assert_eq!(listed("destroyed"), ["c1"]);
    assert!(listed("ready").is_empty());

    // Created again after the destroy, then deleted again.
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "tag": "-b" }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 4);
    c.wait_phase(&id, "ready", CONVERGE);
    assert_eq!(
        bed.state_resources("c1"),
        [
            "namesvr:terraform_data.namesvr[0]",
            "broker:terraform_data.broker"
        ]
    );
    assert_eq!(events(&bed, "c1", "create").len(), 7);
    assert_eq!(c.delete("c1").status, 202);
    c.wait_phase(&id, "destroyed", CONVERGE);
    assert!(bed.state_resources("c1").is_empty());
    assert_eq!(events(&bed, "c1", "destroy").len(), 7);
    assert_one_operation_per_cluster(&bed.ledger());
    assert!(
        !c.stderr().contains(&bed.pg),
        "the backend's address leaked into the log"
    );
}

#[test]
fn a_delete_during_a_create_stops_the_apply_and_destroys() {
    let bed = Bed::new();
    let sigints = bed.b.dir().join("sigints");
    let terraform = sigint::counting_terraform(bed.b.dir(), &sigints);
    let c = bed.start(
        &["--grace", "20s", "--terraform", terraform.to_str().unwrap()],
        &[("TF_VAR_sleep_seconds", "60")],
    );
    let reply = c.put("slow", &json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    // The broker's provisioner is asleep: the apply is in the middle of its last step.
    wait_for(|| events(&bed, "slow", "start").len() == 1, CONVERGE);
    assert_eq!(c.phase("slow"), "applying");
    // The listing reads a running cluster's records again, as its own GET does: its phase
    // and the step it is in, not what the index held when the apply was queued.
    let listed = c.get("/v1/clusters?phase=applying").body;
    let listed = &listed["clusters"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(listed[0]["id"], "slow", "{listed:#}");
    assert_eq!(listed[0]["steps"], c.cluster("slow")["steps"], "{listed:#}");

    let reply = c.delete("slow");
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&["slow".to_string()], "destroyed", CONVERGE);
    assert!(bed.state_resources("slow").is_empty());
    // The broker never finished its creation; the apply was stopped, not waited for.
    assert!(events(&bed, "slow", "create") == ["namesvr[0]"]);
    assert!(events(&bed, "slow", "destroy").contains(&"namesvr[0]".to_string()));
    let stderr = c.stderr();
    assert_eq!(
        stderr.matches("sent SIGUSR1 to its child").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("sent SIGINT to terraform").count(),
        1,
        "{stderr}"
    );
    sigint::assert_each_got_one(&sigints, 1, &stderr);
    assert_one_operation_per_cluster(&bed.ledger());
}

// ---------------------------------------------------------------------------
// b. load

#[test]
fn load_thirty_clusters_at_concurrency_four_each_created_and_destroyed_once() {
    // No backend set up beforehand and no retries: the first operations create the pg
    // schemas and workspaces side by side, and only the engine's own handling of the
    // backend's races (run again, no attempt counted) lets every one of them through.
    let bed = Bed::bare(&tenant_workflow().replace("retries = 5", "retries = 0"));
    let c = bed.start(&["--concurrency", "4"], &[]);
    let all = ids("load-", 30);
    for id in &all {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&all, "ready", Duration::from_secs(300));
    for id in &all {
        for step in c.cluster(id)["steps"].as_array().unwrap() {
            assert_eq!(step["attempts"], 1, "{id}: {step}");
        }
    }
    for id in &all {
        assert_eq!(c.delete(id).status, 202);
    }
    c.wait_phase(&all, "destroyed", Duration::from_secs(300));
    let races = c
        .stderr()
        .matches("another terraform was setting up the same backend")
        .count();
    eprintln!("backend races met and run again: {races}");

    let ledger = bed.ledger();
    let created = counts(&ledger, "create");
    let destroyed = counts(&ledger, "destroy");
    assert_eq!(created.len(), 60, "{created:?}");
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    assert_eq!(
        created.keys().collect::<Vec<_>>(),
        destroyed.keys().collect::<Vec<_>>()
    );
    assert!(destroyed.values().all(|n| *n == 1), "{destroyed:?}");
    assert_eq!(assert_one_operation_per_cluster(&ledger), 60);
    // The limit is reached, not only kept: 30 queued clusters keep four operations busy.
    let parallel = max_parallel(&ledger);
    assert_eq!(parallel, 4, "operations at once");
    for id in &all {
        assert!(bed.state_resources(id).is_empty(), "{id}");
    }
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="succeeded"}"#),
        30.0
    );
}

// ---------------------------------------------------------------------------
// c. the controller's whole session killed in the middle of the load

#[test]
fn a_controller_killed_mid_load_resumes_and_nothing_runs_twice() {
    let bed = Bed::new();
    let mut c = bed.start(&["--concurrency", "4"], &[("TF_VAR_sleep_seconds", "1")]);
    let all = ids("k-", 30);
    for id in &all {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    let (early, late) = all.split_at(10);
    c.wait_phase(early, "ready", Duration::from_secs(300));
    for id in early {
        assert_eq!(c.delete(id).status, 202);
    }
    // Destroys and applies are both in flight now.
    wait_for(
        || bed.ledger().iter().any(|e| e.event == "destroy"),
        CONVERGE,
    );
    c.running.take().unwrap().kill_session();
    let killed_at = bed
        .ledger()
        .iter()
        .map(|e| e.ns)
        .max()
        .expect("ledger lines");
    let in_state = bed.states_of(&all);

    let c = bed.start(&["--concurrency", "4"], &[]);
    c.wait_phase(late, "ready", Duration::from_secs(300));
    c.wait_phase(early, "destroyed", Duration::from_secs(300));
    for id in late {
        assert_eq!(c.delete(id).status, 202);
    }
    c.wait_phase(&all, "destroyed", Duration::from_secs(300));

    let ledger = bed.ledger();
    assert_one_operation_per_cluster(&ledger);
    for id in &all {
        assert!(bed.state_resources(id).is_empty(), "{id} left resources");
    }
    // A resource in a state when the kill came was never created again.
    for e in ledger
        .iter()
        .filter(|e| e.event == "create" && e.ns > killed_at)
    {
        let address = match e.resource.as_str() {
            "broker" => "broker:terraform_data.broker".to_string(),
            r => format!("namesvr:terraform_data.{r}"),
        };
        assert!(
            !in_state.contains(&(e.cluster.clone(), address.clone())),
            "{} {address} was in its state at the kill and was created again",
            e.cluster
        );
    }
    // Every cluster's resources were created, and only once each after the kill.
    let after: Vec<Entry> = ledger
        .iter()
        .filter(|e| e.ns > killed_at)
        .cloned()
        .collect();
    assert!(counts(&after, "create").values().all(|n| *n == 1));
    let created = counts(&ledger, "create");
    for id in &all {
        for r in ["namesvr[0]", "broker"] {
            assert!(
                created.contains_key(&(id.clone(), r.to_string())),
                "{id} {r}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// d. bad requests

/// Method, path, body, Authorization header, the status expected.
type Case = (&'static str, String, Option<Vec<u8>>, Option<String>, u16);

#[test]
fn bad_requests_get_a_json_error_and_change_nothing() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let good = format!("Bearer {TOKEN}");
    let put = |params: serde_json::Value| serde_json::to_vec(&params).unwrap();
    let big = {
        let mut body = br#"{"params": {"namesvr_count": 1, "pad": ""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        body.extend(br#""}}"#);
        body
    };
    let cases: Vec<Case> = vec![
        ("GET", "/v1/clusters".into(), None, None, 401),
        (
            "GET",
            "/v1/clusters".into(),
            None,
            Some("Bearer wrong-token".into()),
            401,
        ),
        (
            "GET",
            "/v1/clusters".into(),
            None,
            Some("Bearer ".into()),
            401,
        ),
        (
            "GET",
            "/v1/clusters".into(),
            None,
            Some(format!("Basic {TOKEN}")),
            401,
        ),
        ("GET", "/v1/clusters".into(), None, Some(TOKEN.into()), 401),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            None,
            401,
        ),
        (
            "DELETE",
            "/v1/clusters/c1".into(),
            None,
            Some(format!("Bearer {TOKEN}x")),
            401,
        ),
        (
            "PUT",
            "/v1/clusters/Upper".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/under_score".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            format!("/v1/clusters/{}", "x".repeat(41)),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/-dash".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/a.b".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(b"{not json".to_vec()),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(Vec::new()),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(b"[1, 2]".to_vec()),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": "namesvr_count=1"}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": {"namesvr_count": 1}, "force": true}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(json!({}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": {}}))),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(put(
                json!({"params": {"namesvr_count": 1, "cluster_id": "c2"}}),
            )),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(br#"{"params": {"namesvr_count": 1}} trailing"#.to_vec()),
            Some(good.clone()),
            400,
        ),
        (
            "PUT",
            "/v1/clusters/c1".into(),
            Some(big),
            Some(good.clone()),
            413,
        ),
        (
            "GET",
            "/v1/clusters/nope".into(),
            None,
            Some(good.clone()),
            404,
        ),
        (
            "DELETE",
            "/v1/clusters/nope".into(),
            None,
            Some(good.clone()),
            404,
        ),
        (
            "GET",
            "/v1/clusters/nope/log".into(),
            None,
            Some(good.clone()),
            404,
        ),
        (
            "DELETE",
            "/v1/clusters/Bad_Id".into(),
            None,
            Some(good.clone()),
            400,
        ),
        (
            "POST",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            405,
        ),
        (
            "PATCH",
            "/v1/clusters/c1".into(),
            Some(put(json!({"params": {"namesvr_count": 1}}))),
            Some(good.clone()),
            405,
        ),
        (
            "DELETE",
            "/v1/clusters".into(),
            None,
            Some(good.clone()),
            405,
        ),
        ("GET", "/v1/tenants".into(), None, Some(good.clone()), 404),
        (
            "GET",
            "/v1/clusters?phase=done".into(),
            None,
            Some(good.clone()),
            400,
        ),
        (
            "GET",
            "/v1/clusters?colour=red".into(),
            None,
            Some(good.clone()),
            400,
        ),
    ];
    assert!(cases.len() >= 25);
    let listing = || {
        let mut files = Vec::new();
        let mut stack = vec![bed.b.root()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                files.push(path.clone());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        files.sort();
        files
    };
    let before = listing();
    for (method, path, body, auth, status) in cases {
        let reply = c.request(method, &path, body, auth.as_deref());
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        let error = reply.body["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{method} {path}: no JSON error: {}",
            reply.text
        );
        assert!(
            reply.body["problems"].is_array(),
            "{method} {path}: {}",
            reply.text
        );
    }
    // The params' problems are listed, each naming what is wrong.
    let reply = c.put("c1", &json!({}));
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("namesvr_count"), "{}", reply.text);
    assert!(!reply.body["problems"].as_array().unwrap().is_empty());

    assert_eq!(listing(), before, "a rejected request wrote a file");
    assert!(
        bed.b.ledger().is_empty(),
        "a rejected request ran terraform"
    );
    assert_eq!(c.metric("bootstrapper_operations_running"), 0.0);
    assert!(!c
        .request("GET", "/metrics", None, None)
        .text
        .contains("bootstrapper_operations_total{"));
    // The open endpoints answer without a token.
    assert_eq!(c.request("GET", "/healthz", None, None).status, 200);
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 200, "{ready:?}");
    let openapi = c.request("GET", "/openapi.json", None, None);
    assert!(openapi.body["paths"]["/v1/clusters/{id}"]["put"].is_object());
}

#[test]
fn serve_checks_its_inputs_at_start_reports_readiness_and_rereads_tokens() {
    let bed = Bed::new();
    let outcome = bed.b.run(&["serve", "--listen", "127.0.0.1:0"]);
    outcome.assert_code(2);
    assert!(outcome.stderr.contains("--insecure-no-auth"), "{outcome}");

    // A bad workflow is named with its line before anything listens.
    let good = std::fs::read_to_string(bed.b.workflow_path()).unwrap();
    bed.b
        .write_workflow("[source]\ndir = \"code\"\n\n[[step]\nname = \"x\"\n");
    let outcome = bed
        .b
        .run(&["serve", "--insecure-no-auth", "--listen", "127.0.0.1:0"]);
    outcome.assert_code(2);
    let at = format!("{}:4:", bed.b.workflow_path().display());
    assert!(outcome.stderr.contains(&at), "{outcome}");
    bed.b.write_workflow(&good);

    // Without terraform the controller runs, and says it is not ready.
    let c = bed.start(&["--terraform", "/nonexistent/terraform"], &[]);
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.text.contains("/nonexistent/terraform"), "{ready:?}");
    drop(c);

    let c = bed.start(&[], &[]);
    assert_eq!(c.request("GET", "/readyz", None, None).status, 200);
    // One controller per root.
    let tokens = bed.tokens_path();
    let second = bed.b.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    second.assert_code(3);
    let pid = format!("pid {}", c.running.as_ref().unwrap().pid());
    assert!(second.stderr.contains(&pid), "{second}");
    let openapi = c.request("GET", "/openapi.json", None, None).body;
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Every schema a route names is in the document.
    let text = openapi.to_string();
    let schemas = &openapi["components"]["schemas"];
    for reference in text.split("#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas[name].is_object(), "{name} is named but missing");
    }
    for path in [
        "/v1/clusters",
        "/v1/clusters/{id}",
        "/v1/clusters/{id}/log",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} undocumented");
    }
    let rotated = "tok-rotated-5d1e";
    assert_eq!(
        c.request(
            "GET",
            "/v1/clusters",
            None,
            Some(&format!("Bearer {rotated}"))
        )
        .status,
        401
    );
    std::fs::write(bed.tokens_path(), format!("{rotated}\n")).unwrap();
    assert_eq!(
        c.request(
            "GET",
            "/v1/clusters",
            None,
            Some(&format!("Bearer {rotated}"))
        )
        .status,
        200
    );
    assert_eq!(
        c.get("/v1/clusters").status,
        401,
        "the old token still works"
    );
}

// ---------------------------------------------------------------------------
// e. SIGTERM with operations running

#[test]
fn sigterm_stops_every_operation_with_one_sigint_and_they_resume_after_a_restart() {
    let bed = Bed::new();
    let sigints = bed.b.dir().join("sigints");
    let terraform = sigint::counting_terraform(bed.b.dir(), &sigints);
    let mut c = bed.start(
        &["--grace", "20s", "--terraform", terraform.to_str().unwrap()],
        &[("TF_VAR_sleep_seconds", "60")],
    );
    let all = ids("t-", 3);
    for id in &all {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    wait_for(
        || {
            let ledger = bed.ledger();
            all.iter().all(|id| {
                ledger
                    .iter()
                    .any(|e| &e.cluster == id && e.event == "start")
            })
        },
        CONVERGE,
    );
    let session = c.running().pid();
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    outcome.assert_code(143);
    // It exited only once its operations had: none of its session is left running.
    assert_eq!(
        session_members(session),
        Vec::<libc::pid_t>::new(),
        "{outcome}"
    );
    let stderr = &outcome.stderr;
    assert_eq!(
        stderr.matches("sent SIGTERM to its child").count(),
        3,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("sent SIGINT to terraform").count(),
        3,
        "{stderr}"
    );
    assert_eq!(stderr.matches("Interrupt received").count(), 3, "{stderr}");
    assert_eq!(
        stderr.matches("Two interrupts received").count(),
        0,
        "{stderr}"
    );
    assert_eq!(stderr.matches("grace period over").count(), 0, "{stderr}");
    // And it says so once they have, not before.
    let stopped = stderr.find("every operation stopped").expect(stderr);
    assert!(
        stderr.rfind("Interrupt received").unwrap() < stopped,
        "{stderr}"
    );
    sigint::assert_each_got_one(&sigints, 3, stderr);
    for id in &all {
        assert!(events(&bed, id, "create") == ["namesvr[0]"], "{id}");
    }

    let c = bed.start(&[], &[]);
    c.wait_phase(&all, "ready", CONVERGE);
    for id in &all {
        assert_eq!(events(&bed, id, "create"), ["namesvr[0]", "broker"], "{id}");
        assert_eq!(
            bed.state_resources(id),
            [
                "namesvr:terraform_data.namesvr[0]",
                "broker:terraform_data.broker"
            ]
        );
    }
    assert_one_operation_per_cluster(&bed.ledger());
}

#[test]
fn new_params_during_an_apply_apply_after_it_and_secrets_stay_masked() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let secret = "pw-9d2e7c1b44f0";
    let first = json!({ "namesvr_count": 1, "sleep_seconds": 3, "admin_password": secret });
    let reply = c.put("p1", &first);
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["params"]["admin_password"], "********");
    wait_for(|| events(&bed, "p1", "start").len() == 1, CONVERGE);

    let second = json!({ "namesvr_count": 1, "tag": "-v2", "admin_password": secret });
    let reply = c.put("p1", &second);
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 2);
    // The apply of the first params goes on; the second follows it.
    assert_eq!(reply.body["phase"], "applying");
    wait_for(
        || c.cluster("p1")["last_operation"]["generation"] == 2,
        CONVERGE,
    );
    c.wait_phase(&["p1".to_string()], "ready", CONVERGE);
    assert_eq!(
        events(&bed, "p1", "create"),
        ["namesvr[0]", "broker", "namesvr[0]-v2", "broker-v2"]
    );
    assert_eq!(assert_one_operation_per_cluster(&bed.ledger()), 2);

    // Each answer scanned must be a full one, not an error that holds nothing.
    let text = |path: &str| {
        let reply = c.get(path);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        reply.text
    };
    let document = text("/v1/clusters/p1");
    let log = text("/v1/clusters/p1/log");
    let list = text("/v1/clusters");
    for text in [&document, &log, &list, &c.stderr()] {
        assert!(!text.contains(secret), "the secret leaked: {text}");
    }
    assert!(document.contains("********"), "{document}");
    // The broker's provisioner printed the password it got through its vars: the log has
    // the line, masked.
    assert!(log.contains("admin password: ********"), "{log}");

    // The controller's files of the cluster, wherever under clusters/p1/ they live, and
    // every other file there that holds the secret, are their owner's alone.
    let files = files_under(&bed.b.root().join("clusters/p1"));
    for name in [
        "intent.json",
        "params.json",
        "outcome.json",
        "operation.log",
    ] {
        let found: Vec<_> = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n == name))
            .collect();
        assert!(!found.is_empty(), "no {name} under clusters/p1: {files:?}");
        for file in found {
            assert_eq!(
                mode(file) & 0o077,
                0,
                "{} is {:o}",
                file.display(),
                mode(file)
            );
        }
    }
    let holding: Vec<_> = files
        .iter()
        .filter(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).contains(secret))
        .collect();
    // params.json and the broker's rendered vars, at least.
    assert!(holding.len() >= 2, "{holding:?}");
    for file in holding {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is {:o}",
            file.display(),
            mode(file)
        );
    }
}

/// Every regular file under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn json_logs_are_one_object_per_line_with_the_cluster_in_the_span() {
    let bed = Bed::new();
    let mut c = bed.start(&["--log-format", "json"], &[]);
    assert_eq!(c.put("j1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["j1".to_string()], "ready", CONVERGE);
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    outcome.assert_code(143);
    let lines: Vec<serde_json::Value> = outcome
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["span"]["id"] == "j1"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("apply succeeded"))),
        "{}",
        outcome.stderr
    );
    // The operation's own lines are JSON too, inside the controller's.
    assert!(
        lines.iter().any(|l| l["step"] == "j1"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"workflow done: 2 applied"))),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_failed_apply_is_reported_and_tried_again_by_the_next_put() {
    // One cluster alone meets no workspace-creation lock: no retries, so a failure is final.
    let bed = Bed::with_workflow(&tenant_workflow().replace("retries = 5", "retries = 0"));
    let c = bed.start(&[], &[]);
    let failed = |generation: u64| {
        let doc = c.cluster("f1");
        doc["phase"] == "failed" && doc["last_operation"]["generation"] == generation
    };
    assert_eq!(c.put("f1", &json!({ "namesvr_count": -1 })).status, 202);
    wait_for(|| failed(1), CONVERGE);
    let doc = c.cluster("f1");
    assert_eq!(doc["steps"][0]["state"], "failed", "{doc:#}");
    assert_eq!(doc["steps"][1]["state"], "pending", "{doc:#}");
    let error = doc["last_error"].as_str().unwrap();
    assert!(
        error.contains("namesvr") && error.contains("count"),
        "{doc:#}"
    );
    let log = c.get("/v1/clusters/f1/log").text;
    assert!(log.contains("Invalid count argument"), "{log}");
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="failed"}"#),
        1.0
    );

    // Not tried again on its own: while another cluster is created, its broker sleeping 3 s
    // (longer than the reconciler's own pause before it looks at a cluster again), f1
    // starts nothing.
    let first_try = c.cluster("f1")["last_operation"].clone();
    let g1 = json!({ "namesvr_count": 1, "sleep_seconds": 3 });
    assert_eq!(c.put("g1", &g1).status, 202);
    wait_for(|| c.phase("g1") == "ready", CONVERGE);
    assert_eq!(
        c.cluster("f1")["last_operation"],
        first_try,
        "f1 ran again on its own"
    );
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="failed"}"#),
        1.0
    );
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="succeeded"}"#),
        1.0
    );

    // The same params again: tried again, not answered from the failure.
    let reply = c.put("f1", &json!({ "namesvr_count": -1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 2);
    wait_for(|| failed(2), CONVERGE);
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="failed"}"#),
        2.0
    );

    // Fixed params: ready, then gone.
    assert_eq!(c.put("f1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["f1".to_string()], "ready", CONVERGE);
    assert_eq!(c.cluster("f1")["last_error"], serde_json::Value::Null);
    assert_eq!(c.delete("f1").status, 202);
    c.wait_phase(&["f1".to_string()], "destroyed", CONVERGE);
    assert!(bed.state_resources("f1").is_empty());
    // The failed attempts created nothing.
    assert_eq!(events(&bed, "f1", "create"), ["namesvr[0]", "broker"]);
}
