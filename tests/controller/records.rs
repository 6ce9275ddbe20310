//! The controller's records when they are damaged, removed, old or large: every cluster on
//! record stays visible and repairable, a stale operation never settles a newer intent,
//! destroyed clusters are purged, an operation that hangs is stopped, and a long log is read
//! from its end.

use std::fs;
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);

/// Stops the controller the way a pod is stopped, and waits for it.
fn stop(mut c: Controller) {
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    assert_eq!(outcome.code, Some(143), "{outcome}");
}

/// The ids a list answers with, and each one's document.
fn listed(c: &Controller, query: &str) -> Vec<Value> {
    let reply = c.get(&format!("/v1/clusters{query}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Puts `id` and waits until it is ready.
fn ready(c: &Controller, id: &str, params: &Value) {
    let reply = c.put(id, params);
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&one(id), "ready", CONVERGE);
}

#[test]
fn a_truncated_intent_is_shown_as_damaged_and_a_put_repairs_it() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    ready(&c, "c1", &json!({ "namesvr_count": 1 }));
    stop(c);

    let intent = bed.cluster_dir("c1").join("intent.json");
    let text = fs::read(&intent).unwrap();
    fs::write(&intent, &text[..text.len() / 2]).unwrap();
    let c = bed.start(&[], &[]);

    let all = listed(&c, "");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["id"], "c1");
    assert_eq!(all[0]["phase"], "damaged", "{all:#?}");
    assert_eq!(all[0]["damage"]["file"], "intent.json", "{all:#?}");
    assert!(
        all[0]["damage"]["error"].as_str().unwrap().contains("EOF"),
        "{all:#?}"
    );
    assert_eq!(listed(&c, "?phase=damaged").len(), 1);
    assert!(listed(&c, "?phase=ready").is_empty());
    assert_eq!(c.cluster("c1")["phase"], "damaged");
    assert_eq!(c.metric("bootstrapper_clusters_damaged"), 1.0);
    assert!(
        c.stderr().contains("intent.json"),
        "the reconciler says why it leaves c1 alone:\n{}",
        c.stderr()
    );

    // The new intent replaces the damaged one, above the generation the outcome names.
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "tag": "-b" }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 2, "{reply:?}");
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    assert!(bed.creates("c1").contains(&"broker-b".to_string()));
    let doc = c.cluster("c1");
    assert_eq!(doc["damage"], Value::Null, "{doc:#}");
    assert_eq!(doc["last_operation"]["generation"], 2, "{doc:#}");
    assert_eq!(c.metric("bootstrapper_clusters_damaged"), 0.0);
}

#[test]
fn a_missing_intent_is_shown_as_damaged_and_the_reconciler_says_so() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    ready(&c, "c1", &json!({ "namesvr_count": 1 }));
    stop(c);

    fs::remove_file(bed.cluster_dir("c1").join("intent.json")).unwrap();
    let c = bed.start(&[], &[]);
    let all = listed(&c, "?phase=damaged");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["damage"]["file"], "intent.json", "{all:#?}");
    wait_for(|| c.stderr().contains("intent.json is missing"), CONVERGE);
    assert!(
        c.stderr()
            .contains("nothing runs on it until a PUT or DELETE"),
        "{}",
        c.stderr()
    );
}

#[test]
fn a_garbage_intent_is_destroyed_by_a_delete() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    ready(&c, "c1", &json!({ "namesvr_count": 2 }));
    assert_eq!(bed.state_resources("c1").len(), 3);
    stop(c);

    fs::write(
        bed.cluster_dir("c1").join("intent.json"),
        "\u{0}\u{0}garbage",
    )
    .unwrap();
    let c = bed.start(&[], &[]);
    let doc = c.cluster("c1");
    assert_eq!(doc["phase"], "damaged", "{doc:#}");
    assert_eq!(doc["damage"]["file"], "intent.json", "{doc:#}");

    let reply = c.delete("c1");
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["present"], false, "{reply:?}");
    c.wait_phase(&one("c1"), "destroyed", CONVERGE);
    assert!(
        bed.state_resources("c1").is_empty(),
        "the resources are destroyed"
    );
}

#[test]
fn a_corrupt_outcome_is_reported_and_the_cluster_converges() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    ready(&c, "c1", &json!({ "namesvr_count": 1 }));
    stop(c);

    fs::write(bed.cluster_dir("c1").join("outcome.json"), "{\"gener").unwrap();
    let c = bed.start(&[], &[]);
    // Not settled: the apply runs again (and has nothing to change), and says why.
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    assert!(
        c.stderr().contains("outcome.json"),
        "the damaged outcome is reported:\n{}",
        c.stderr()
    );
    let doc = c.cluster("c1");
    assert_eq!(doc["damage"], Value::Null, "{doc:#}");

    let reply = c.delete("c1");
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&one("c1"), "destroyed", CONVERGE);
    assert!(bed.state_resources("c1").is_empty());
}

#[test]
fn a_cluster_removed_during_an_apply_is_applied_again_by_the_next_put() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "sleep_seconds": 4 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    // The broker's provisioner has started: the apply is midway.
    wait_for(
        || {
            bed.ledger()
                .iter()
                .any(|e| e.cluster == "c1" && e.event == "start")
        },
        CONVERGE,
    );
    let dir = bed.cluster_dir("c1");
    // The running engine may write while the directory goes: removed until it is gone.
    wait_for(
        || fs::remove_dir_all(&dir).is_ok() || !dir.exists(),
        Duration::from_secs(10),
    );

    let reply = c.put("c1", &json!({ "namesvr_count": 1, "tag": "-b" }));
    assert_eq!(reply.status, 202, "{reply:?}");
    let generation = reply.body["generation"].as_u64().unwrap();
    assert!(generation >= 2, "generations never go back: {reply:?}");
    // The old operation's end must not settle the new intent: it is applied.
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    let doc = c.cluster("c1");
    assert_eq!(doc["generation"], generation, "{doc:#}");
    assert_eq!(doc["last_operation"]["generation"], generation, "{doc:#}");
    assert!(
        bed.creates("c1").contains(&"broker-b".to_string()),
        "the new params were applied: {doc:#}"
    );
}

#[test]
fn a_destroyed_cluster_is_purged_after_keep_destroyed() {
    let bed = Bed::new();
    let c = bed.start(&["--keep-destroyed", "1s"], &[]);
    let reply = c.put("c1", &json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(c.delete("c1").status, 202);
    let dir = bed.cluster_dir("c1");
    wait_for(|| c.get("/v1/clusters/c1").status == 404, CONVERGE);
    assert!(!dir.exists(), "{} is removed", dir.display());
    assert!(listed(&c, "").is_empty());
    assert!(bed.state_resources("c1").is_empty());

    // Created again from scratch.
    let reply = c.put("c1", &json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["generation"], 1, "{reply:?}");
}

#[test]
fn an_operation_running_too_long_is_stopped_and_the_cluster_fails() {
    let bed = Bed::new();
    let c = bed.start(&["--operation-timeout", "3s"], &[]);
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "sleep_seconds": 60 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_for(|| c.phase("c1") == "failed", CONVERGE);
    let doc = c.cluster("c1");
    let error = doc["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out after 3s"), "{doc:#}");
    assert_eq!(c.metric("bootstrapper_operations_running"), 0.0);
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="failed"}"#),
        1.0
    );
    // Stopped gracefully: the engine passed the stop on to terraform.
    assert!(
        c.stderr().contains("timed out"),
        "the controller says why it stopped the operation:\n{}",
        c.stderr()
    );
}

#[test]
fn an_operation_within_its_timeout_runs_on_through_every_check() {
    let bed = Bed::new();
    // Overdue operations are looked for every quarter of the shorter of the two: 500 ms.
    let c = bed.start(
        &["--operation-timeout", "60s", "--keep-destroyed", "2s"],
        &[],
    );
    let reply = c.put("c1", &json!({ "namesvr_count": 1, "sleep_seconds": 3 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_for(
        || matches!(c.phase("c1").as_str(), "ready" | "failed"),
        CONVERGE,
    );
    assert_eq!(c.phase("c1"), "ready", "{:#}", c.cluster("c1"));
    assert!(!c.stderr().contains("timed out"), "{}", c.stderr());
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn the_log_of_a_long_operation_is_read_from_its_end() {
    let bed = Bed::new();
    let mut c = bed.start(&[], &[]);
    ready(&c, "c1", &json!({ "namesvr_count": 1 }));

    // 64 MiB of log, as a chatty apply leaves.
    let lines = 600_000;
    let mut text = String::with_capacity(64 << 20);
    for i in 0..lines {
        text.push_str(&format!("{i:>9} {}\n", "x".repeat(100)));
    }
    fs::write(bed.cluster_dir("c1").join("operation.log"), &text).unwrap();
    drop(text);

    let pid = c.running().pid();
    let before = peak_rss_kib(pid);
    let reply = c.get("/v1/clusters/c1/log");
    assert_eq!(reply.status, 200);
    let got = reply.body["lines"].as_array().unwrap();
    assert_eq!(got.len(), 10_000);
    assert!(got[0]
        .as_str()
        .unwrap()
        .starts_with(&format!("{:>9} ", lines - 10_000)));
    assert!(got[9_999]
        .as_str()
        .unwrap()
        .starts_with(&format!("{:>9} ", lines - 1)));
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 24 * 1024,
        "reading the log's end grew the peak memory by {grown} KiB"
    );
}

#[test]
fn bad_values_of_the_new_options_are_refused() {
    let bed = Bed::new();
    for (option, value, says) in [
        ("--keep-destroyed", "soon", "not a duration"),
        ("--keep-destroyed", "0s", "more than zero"),
        ("--operation-timeout", "2 weeks", "unknown unit"),
        ("--operation-timeout", "0", "more than zero"),
        // A zero timeout would cut every connection, or answer every PUT 408.
        ("--header-timeout", "0s", "more than zero"),
        ("--body-timeout", "0s", "more than zero"),
        ("--idle-timeout", "0", "more than zero"),
    ] {
        let outcome = bed.b.run(&[
            "serve",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            option,
            value,
        ]);
        outcome.assert_code(2);
        assert!(
            outcome
                .stderr
                .contains(&format!("invalid value '{value}' for '{option}"))
                && outcome.stderr.contains(says),
            "{option} {value}: {outcome}"
        );
    }
}
