//! Plans and drift in the controller: `POST /v1/clusters/{id}/plan` runs the engine's `diff`
//! as an operation of the cluster, a PUT with its `plan_id` applies exactly that plan (or is
//! refused with 409 when the cluster moved on), and `serve --drift-interval` finds what
//! changed behind the engine's back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);

/// The tenant fixture, copied, with a namesvr resource that reads
/// `$TF_VAR_drift_dir/<cluster>` with `file()`: what it reads can change behind the
/// engine's back, and only terraform's own plan sees it.
struct Fixture {
    _dir: tempfile::TempDir,
    workflow: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tenant");
    copy_tree(&tenant_fixture_dir(), &copy);
    let main = copy.join("namesvr/main.tf");
    let mut text = fs::read_to_string(&main).unwrap();
    text.push_str(
        r#"
variable "drift_dir" {
  type    = string
  default = ""
}

resource "terraform_data" "seen" {
  count = var.drift_dir == "" ? 0 : 1
  input = fileexists("${var.drift_dir}/${var.cluster_id}") ? file("${var.drift_dir}/${var.cluster_id}") : ""
}
"#,
    );
    fs::write(&main, text).unwrap();
    let original = tenant_fixture_dir().display().to_string();
    let workflow = tenant_workflow().replace(&original, &copy.display().to_string());
    assert_ne!(workflow, tenant_workflow());
    Fixture {
        _dir: dir,
        workflow,
    }
}

fn post_plan(c: &Controller, id: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    c.request(
        "POST",
        &format!("/v1/clusters/{id}/plan"),
        body,
        Some(&format!("Bearer {TOKEN}")),
    )
}

fn put_with(c: &Controller, id: &str, body: &Value) -> Reply {
    c.request(
        "PUT",
        &format!("/v1/clusters/{id}"),
        Some(serde_json::to_vec(body).unwrap()),
        Some(&format!("Bearer {TOKEN}")),
    )
}

/// Waits until the cluster's latest plan has ended, and returns it.
#[track_caller]
fn plan_ended(c: &Controller, id: &str) -> Value {
    let mut plan = Value::Null;
    wait_for(
        || {
            let reply = c.get(&format!("/v1/clusters/{id}/plan"));
            plan = reply.body;
            matches!(plan["status"].as_str(), Some("succeeded" | "failed"))
        },
        CONVERGE,
    );
    plan
}

/// Every (step, address, action) the plan would change.
fn changes(plan: &Value) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for step in plan["steps"].as_array().unwrap() {
        for r in step["changes"]["resources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            all.push((
                step["step"].as_str().unwrap().to_string(),
                r["address"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
            ));
        }
    }
    all
}

#[test]
fn a_plan_previews_without_applying_and_a_put_with_its_id_applies_exactly_it() {
    let f = fixture();
    let bed = Bed::with_workflow(&f.workflow);
    let c = bed.start(&[], &[]);
    assert_eq!(c.put("c1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    let none = c.get("/v1/clusters/c1/plan");
    assert_eq!(none.status, 404, "{none:?}");
    assert!(none.text.contains("has no plan"), "{none:?}");

    // With the stored params: nothing would change.
    let reply = post_plan(&c, "c1", None);
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "pending", "{reply:?}");
    let plan = plan_ended(&c, "c1");
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    assert_eq!(plan["changes"], false, "{plan:#}");
    assert_eq!(plan["stored_params"], true, "{plan:#}");
    assert!(plan.get("params_digest").is_none(), "{plan:#}");
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["no_changes", "no_changes"], "{plan:#}");

    // With other params: the changes are listed, and nothing is applied or kept.
    let ledger_before = bed.ledger().len();
    let before = c.cluster("c1");
    let reply = post_plan(&c, "c1", Some(json!({ "params": { "namesvr_count": 2 } })));
    assert_eq!(reply.status, 202, "{reply:?}");
    let plan = plan_ended(&c, "c1");
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    assert_eq!(plan["changes"], true, "{plan:#}");
    assert_eq!(plan["stored_params"], false, "{plan:#}");
    assert_eq!(plan["params"]["namesvr_count"], 2, "{plan:#}");
    assert_eq!(
        changes(&plan),
        [(
            "namesvr".to_string(),
            "terraform_data.namesvr[1]".to_string(),
            "create".to_string()
        )],
        "{plan:#}"
    );
    let after = c.cluster("c1");
    assert_eq!(after["params"], before["params"]);
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["phase"], "ready");
    // The plan of the stored params counted as a drift check; a preview says nothing of drift.
    assert_eq!(after["drift"]["drifted"], false, "{after:#}");
    let checks = |result: &str| {
        c.metric(&format!(
            "bootstrapper_drift_checks_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!((checks("clean"), checks("drifted")), (1.0, 0.0));
    assert_eq!(
        bed.ledger().len(),
        ledger_before,
        "a plan applied something"
    );
    let id = plan["id"].as_str().unwrap().to_string();

    // Other params than the plan's: refused, and nothing recorded.
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 3 }, "plan_id": id }),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.text.contains("params differ"), "{reply:?}");
    assert_eq!(c.cluster("c1")["generation"], before["generation"]);

    // The plan's params and id: exactly that plan is applied.
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 2 }, "plan_id": id }),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    assert_eq!(
        bed.creates("c1"),
        ["namesvr[0]", "broker", "namesvr[1]"],
        "{:?}",
        bed.ledger()
    );
    let log = c.get("/v1/clusters/c1/log").body;
    let first = log["lines"][0].as_str().unwrap();
    assert!(first.contains(&format!("run --reviewed={id}")), "{log:#}");
    // The same request again: nothing more to do.
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 2 }, "plan_id": id }),
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    // A plan whose cluster moved on since: refused.
    assert_eq!(post_plan(&c, "c1", None).status, 202);
    let plan = plan_ended(&c, "c1");
    assert_eq!(plan["changes"], false, "{plan:#}");
    let stale = plan["id"].as_str().unwrap().to_string();
    assert_eq!(c.put("c1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 2 }, "plan_id": stale }),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.text.contains("moved on"), "{reply:?}");
    assert_eq!(c.cluster("c1")["params"]["namesvr_count"], 1);
    assert!(
        c.metric("bootstrapper_operations_total{kind=\"plan\",result=\"succeeded\"}") >= 3.0,
        "{}",
        c.request("GET", "/metrics", None, None).text
    );
}

#[test]
fn drift_is_found_by_the_periodic_check_listed_and_never_corrected_on_its_own() {
    let f = fixture();
    let bed = Bed::with_workflow(&f.workflow);
    let drift_dir = bed.b.dir().join("drift");
    fs::create_dir(&drift_dir).unwrap();
    fs::write(drift_dir.join("c1"), "one").unwrap();
    fs::write(drift_dir.join("c2"), "one").unwrap();
    let env = [("TF_VAR_drift_dir", drift_dir.to_str().unwrap())];
    let mut c = bed.start(&["--drift-interval", "2s"], &env);
    let ids = ["c1".to_string(), "c2".to_string()];
    for id in &ids {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&ids, "ready", CONVERGE);
    // Each is checked once its apply is 2 seconds old, and nothing drifted yet.
    wait_for(
        || c.metric("bootstrapper_drift_checks_total{result=\"clean\"}") >= 2.0,
        CONVERGE,
    );
    assert_eq!(c.cluster("c1")["drift"]["drifted"], false);
    let listed = c.get("/v1/clusters?drifted=true");
    assert_eq!(listed.body["clusters"], json!([]), "{listed:?}");

    // What c1's namesvr reads changes behind the engine's back.
    let ledger_before = bed.ledger().len();
    fs::write(drift_dir.join("c1"), "two").unwrap();
    wait_for(|| c.cluster("c1")["drift"]["drifted"] == true, CONVERGE);
    let drift = c.cluster("c1")["drift"].clone();
    assert_eq!(
        drift["resources"],
        json!([{ "step": "namesvr", "address": "terraform_data.seen[0]", "action": "update", "outside": false }]),
        "{drift:#}"
    );
    let listed = c.get("/v1/clusters?drifted=true").body;
    let drifted: Vec<&str> = listed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(drifted, ["c1"], "{listed:#}");
    let clean = c.get("/v1/clusters?drifted=false").body;
    assert_eq!(clean["clusters"][0]["id"], "c2", "{clean:#}");
    assert_eq!(c.metric("bootstrapper_clusters_drifted"), 1.0);
    assert!(c.metric("bootstrapper_drift_checks_total{result=\"drifted\"}") >= 1.0);
    // Reported, not corrected: checked again, still drifted, nothing applied.
    let checked = drift["checked_at"].clone();
    wait_for(
        || c.cluster("c1")["drift"]["checked_at"] != checked,
        CONVERGE,
    );
    assert_eq!(c.cluster("c1")["drift"]["drifted"], true);
    assert_eq!(c.cluster("c1")["phase"], "ready");
    assert_eq!(bed.ledger().len(), ledger_before);
    assert_eq!(
        c.metric("bootstrapper_operations_total{kind=\"apply\",result=\"succeeded\"}"),
        2.0
    );

    // Without checks running, the plan that found it is applied as reviewed.
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    assert_eq!(outcome.code, Some(143), "{outcome}");
    let c = bed.start(&[], &env);
    // A check the stop cut short runs again first.
    let plan = plan_ended(&c, "c1");
    assert_eq!(plan["drift_check"], true, "{plan:#}");
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 1 }, "plan_id": plan["id"] }),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    assert_eq!(c.cluster("c1")["drift"], Value::Null);
    assert_eq!(c.metric("bootstrapper_clusters_drifted"), 0.0);
    assert_eq!(post_plan(&c, "c1", None).status, 202);
    assert_eq!(plan_ended(&c, "c1")["changes"], false);
}

#[test]
fn bad_plan_requests_and_options_are_refused_and_write_nothing() {
    let f = fixture();
    let bed = Bed::with_workflow(&f.workflow);
    for (bad, says) in [
        ("0s", "must be more than zero"),
        ("soon", "invalid value 'soon'"),
    ] {
        let out = bed.b.run(&[
            "serve",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            "--drift-interval",
            bad,
        ]);
        out.assert_code(2);
        assert!(out.stderr.contains("--drift-interval"), "{out}");
        assert!(out.stderr.contains(says), "{out}");
    }
    let c = bed.start(&[], &[]);
    for (method, path) in [
        ("POST", "/v1/clusters/nope/plan"),
        ("GET", "/v1/clusters/nope/plan"),
    ] {
        let reply = c.request(method, path, None, Some(&format!("Bearer {TOKEN}")));
        assert_eq!(reply.status, 404, "{reply:?}");
        assert!(reply.text.contains("no cluster `nope`"), "{reply:?}");
    }
    let reply = put_with(
        &c,
        "new",
        &json!({ "params": { "namesvr_count": 1 }, "plan_id": "0123456789abcdef" }),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(c.get("/v1/clusters/new").status, 404, "a refused PUT wrote");

    assert_eq!(c.put("c1", &json!({ "namesvr_count": 1 })).status, 202);
    let reply = c.get("/v1/clusters/c1/plan");
    assert_eq!(reply.status, 404, "{reply:?}");
    for (body, says) in [
        (json!({ "parms": {} }), "unknown field"),
        (
            json!({ "params": { "namesvr_count": "many" } }),
            "do not fit",
        ),
        (
            json!({ "params": { "namesvr_count": 1, "cluster_id": "c2" } }),
            "cluster_id",
        ),
    ] {
        let reply = post_plan(&c, "c1", Some(body));
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(reply.text.contains(says), "{reply:?}");
    }
    for plan_id in ["", "XYZ", "0123456789abcdeF", "../../etc"] {
        let reply = put_with(
            &c,
            "c1",
            &json!({ "params": { "namesvr_count": 1 }, "plan_id": plan_id }),
        );
        assert_eq!(reply.status, 400, "{plan_id}: {reply:?}");
        assert!(reply.text.contains("not a plan id"), "{reply:?}");
    }
    let reply = put_with(
        &c,
        "c1",
        &json!({ "params": { "namesvr_count": 2 }, "plan_id": "0123456789abcdef" }),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.text.contains("has no plan"), "{reply:?}");
    let reply = c.get("/v1/clusters?drifted=maybe");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(!bed.cluster_dir("c1").join("plan.json").exists());

    assert_eq!(c.delete("c1").status, 202);
    let reply = post_plan(&c, "c1", None);
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.text.contains("deleted"), "{reply:?}");
    let openapi = c.request("GET", "/openapi.json", None, None).body;
    assert!(
        openapi["paths"]["/v1/clusters/{id}/plan"]["post"].is_object(),
        "{openapi:#}"
    );
}

#[test]
fn a_plan_asked_for_during_an_apply_waits_for_it_and_for_the_next_apply_asked_for() {
    let f = fixture();
    let bed = Bed::with_workflow(&f.workflow);
    let c = bed.start(&[], &[]);
    let slow = json!({ "namesvr_count": 1, "sleep_seconds": 2 });
    assert_eq!(c.put("c1", &slow).status, 202);
    wait_for(|| c.phase("c1") == "applying", CONVERGE);
    let reply = post_plan(&c, "c1", None);
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "pending", "{reply:?}");
    // New params meanwhile: their apply runs before the plan too.
    let tagged = json!({ "namesvr_count": 1, "sleep_seconds": 2, "tag": "-b" });
    assert_eq!(c.put("c1", &tagged).status, 202);
    let plan = plan_ended(&c, "c1");
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    // Planned against what the second apply left: nothing to change, every step planned.
    assert_eq!(plan["generation"], 2, "{plan:#}");
    assert_eq!(plan["changes"], false, "{plan:#}");
    assert_eq!(plan["params"]["tag"], "-b", "{plan:#}");
    let document = c.cluster("c1");
    assert_eq!(document["phase"], "ready", "{document:#}");
    assert_eq!(document["last_operation"]["generation"], 2, "{document:#}");
    assert_eq!(
        plan["outcome_finished_at"], document["last_operation"]["finished_at"],
        "{plan:#}"
    );
}

#[test]
fn a_put_stops_a_running_plan_and_applies() {
    let f = fixture();
    let bed = Bed::with_workflow(&f.workflow);
    // A terraform whose `plan` hangs while the file `slow` exists.
    let slow = bed.b.dir().join("slow");
    let wrapper = bed.b.dir().join("terraform-wrapper");
    write_script(&wrapper, "#!/bin/sh\nif [ \"$1\" = plan ] && [ -e \"$SLOW\" ]; then touch \"$SLOW.started\"; exec sleep 60; fi\nexec terraform \"$@\"\n");
    let env = [("SLOW", slow.to_str().unwrap())];
    let c = bed.start(&["--terraform", wrapper.to_str().unwrap()], &env);
    assert_eq!(c.put("c1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("c1"), "ready", CONVERGE);

    fs::write(&slow, "").unwrap();
    assert_eq!(post_plan(&c, "c1", None).status, 202);
    wait_for(|| slow.with_extension("started").exists(), CONVERGE);
    assert_eq!(c.get("/v1/clusters/c1/plan").body["status"], "running");
    fs::remove_file(&slow).unwrap();
    let asked = std::time::Instant::now();
    let tagged = json!({ "namesvr_count": 1, "tag": "-b" });
    assert_eq!(c.put("c1", &tagged).status, 202);
    let plan = plan_ended(&c, "c1");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the plan was not stopped"
    );
    assert_eq!(plan["status"], "failed", "{plan:#}");
    assert!(
        plan["error"].as_str().unwrap().contains("intent changed"),
        "{plan:#}"
    );
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    assert_eq!(c.cluster("c1")["last_operation"]["generation"], 2);
    assert!(bed.creates("c1").contains(&"broker-b".to_string()));
}

/// A terraform whose `plan` takes a second once the directory `plans` exists, and writes
/// down how many plans were in that second with it (`plans-seen`) and when each began
/// (`plans-seen.starts`): the wrapper, the directory and `plans-seen`.
fn plan_counting_terraform(bed: &Bed) -> (PathBuf, PathBuf, PathBuf) {
    let plans = bed.b.dir().join("plans");
    let seen = bed.b.dir().join("plans-seen");
    let wrapper = bed.b.dir().join("terraform-wrapper");
    write_script(&wrapper, "#!/bin/sh\nif [ \"$1\" = plan ] && [ -d \"$PLANS\" ]; then\n  s=$(date +%s%N); touch \"$PLANS/$$\"; echo $s >> \"$SEEN.starts\"; sleep 1\n  n=$(ls \"$PLANS\" | wc -l); echo $n >> \"$SEEN\"; rm -f \"$PLANS/$$\"\nfi\nexec terraform \"$@\"\n");
    (wrapper, plans, seen)
}

#[test]
fn drift_checks_take_free_slots_side_by_side_and_never_more() {
    let bed = Bed::new();
    let (wrapper, plans, seen) = plan_counting_terraform(&bed);
    let env = [
        ("PLANS", plans.to_str().unwrap()),
        ("SEEN", seen.to_str().unwrap()),
    ];
    let c = bed.start(
        &[
            "--drift-interval",
            "1s",
            "--concurrency",
            "2",
            "--terraform",
            wrapper.to_str().unwrap(),
        ],
        &env,
    );
    let ids: Vec<String> = (1..=3).map(|i| format!("d{i}")).collect();
    for id in &ids {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&ids, "ready", CONVERGE);
    // From here on only drift checks plan. Each cluster is due a second after its last
    // check, and a check plans for seconds: with nothing else running they overlap, as
    // many as `--concurrency` allows (2), not one at a time, and never more.
    fs::create_dir(&plans).unwrap();
    let most = || {
        fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .max()
            .unwrap_or(0)
    };
    // Each check, as (asked at, made at), per cluster.
    let mut checks: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut watch = || {
        for id in &ids {
            let plan = c.get(&format!("/v1/clusters/{id}/plan")).body;
            if plan["drift_check"] == true && plan["status"] == "succeeded" {
                let asked = plan["requested_at"].as_str().unwrap().to_string();
                let made = plan["made_at"].as_str().unwrap().to_string();
                checks.entry(id.as_str()).or_default().insert((asked, made));
            }
        }
    };
    wait_for(
        || {
            watch();
            most() >= 2
        },
        CONVERGE,
    );
    // Each of the three checked twice more: rounds enough for all three to be due at once.
    wait_for(
        || {
            watch();
            c.metric("bootstrapper_drift_checks_total{result=\"clean\"}") >= 6.0
        },
        CONVERGE,
    );
    assert_eq!(most(), 2, "{}", fs::read_to_string(&seen).unwrap());
    // A check plans for two seconds, longer than the interval: the next is asked for only
    // once the last is a second old, not as soon as it ends. (A file's time may lag the
    // clock by a tick: 900 ms.)
    let at = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let mut pairs = 0;
    for (id, made) in &checks {
        let made: Vec<_> = made.iter().collect();
        for pair in made.windows(2) {
            pairs += 1;
            let since = at(&pair[1].0) - at(&pair[0].1);
            assert!(
                since >= time::Duration::milliseconds(900),
                "{id}'s check asked for {since} after the last was made: {made:?}"
            );
        }
    }
    assert!(pairs >= 2, "{checks:?}");

    // Both slots taken by applies: no check starts beside them, however due d3 is.
    let slow = json!({ "namesvr_count": 1, "tag": "-b", "sleep_seconds": 8 });
    for id in ["d1", "d2"] {
        assert_eq!(c.put(id, &slow).status, 202);
    }
    c.wait_phase(&ids[..2], "ready", CONVERGE);
    let ledger = bed.ledger();
    let at = |id: &str, event: &str| {
        ledger
            .iter()
            .find(|e| e.cluster == id && e.event == event && e.resource == "broker-b")
            .map(|e| e.ns)
            .unwrap_or_else(|| panic!("no {event} of {id}'s broker-b: {ledger:?}"))
    };
    let from = at("d1", "start").max(at("d2", "start"));
    let to = at("d1", "create").min(at("d2", "create"));
    assert!(from < to, "the two applies never ran at once: {ledger:?}");
    let starts = fs::read_to_string(seen.with_extension("starts")).unwrap();
    let beside: Vec<u128> = starts
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|t| (from..to).contains(t))
        .collect();
    assert_eq!(beside, [], "plans started while both slots applied");
}

/// A terraform that logs each call (`<command> <cluster>`, a line each) to `holds/log`, and
/// keeps a command of a cluster waiting while the file `holds/<command>-<cluster>` exists:
/// it touches `<that file>.started` first, and logs `go-<command> <cluster>` when let go.
/// Returns the wrapper and the holds directory.
fn holding_terraform(bed: &Bed) -> (PathBuf, PathBuf) {
    let holds = bed.b.dir().join("holds");
    fs::create_dir(&holds).unwrap();
    let wrapper = bed.b.dir().join("terraform-wrapper");
    write_script(
        &wrapper,
        r#"#!/bin/sh
cluster=$(pwd | sed -n 's#.*/clusters/\([^/]*\)/.*#\1#p')
echo "$1 $cluster" >> "$HOLDS/log"
hold="$HOLDS/$1-$cluster"
if [ -e "$hold" ]; then
  touch "$hold.started"
  while [ -e "$hold" ]; do sleep 0.1; done
  echo "go-$1 $cluster" >> "$HOLDS/log"
fi
exec terraform "$@"
"#,
    );
    (wrapper, holds)
}

/// The calls `holding_terraform` logged, as (command, cluster), in order.
fn held_log(holds: &std::path::Path) -> Vec<(String, String)> {
    fs::read_to_string(holds.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(command, cluster)| (command.to_string(), cluster.to_string()))
        .collect()
}

/// Plans that did not succeed, by how they ended: none, when every plan ran where it should.
fn plans_not_succeeded(c: &Controller) -> Vec<(&'static str, f64)> {
    ["failed", "interrupted", "postponed"]
        .into_iter()
        .map(|result| {
            let name =
                format!("bootstrapper_operations_total{{kind=\"plan\",result=\"{result}\"}}");
            (result, c.metric(&name))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// How long since the cluster's last apply, plan or drift check ended or began: what makes a
/// drift check due once it reaches `--drift-interval`.
fn quiet_for(bed: &Bed, id: &str) -> Duration {
    let dir = bed.cluster_dir(id);
    ["outcome.json", "drift.json", "plan.json"]
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
        .max()
        .map_or(Duration::ZERO, |t| t.elapsed().unwrap_or_default())
}

#[test]
fn beside_other_operations_drift_checks_go_one_at_a_time_and_never_on_a_busy_cluster() {
    let bed = Bed::new();
    let (wrapper, holds) = holding_terraform(&bed);
    let hold = |what: &str| fs::write(holds.join(what), "").unwrap();
    let started = |what: &str| holds.join(format!("{what}.started")).exists();
    let release = |what: &str| fs::remove_file(holds.join(what)).unwrap();
    let c = bed.start(
        &[
            "--drift-interval",
            "1s",
            "--concurrency",
            "3",
            "--terraform",
            wrapper.to_str().unwrap(),
        ],
        &[("HOLDS", holds.to_str().unwrap())],
    );
    let clean = || c.metric("bootstrapper_drift_checks_total{result=\"clean\"}");
    let both_due = Duration::from_secs(2);
    let quiet = |a: &str, b: &str| quiet_for(&bed, a) >= both_due && quiet_for(&bed, b) >= both_due;
    hold("apply-d1");
    assert_eq!(c.put("d1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| started("apply-d1"), CONVERGE);

    // Beside d1's apply, one drift check at a time, however many are due and however many
    // slots are free: of d2's and d3's first checks (both held), only one starts.
    hold("plan-d2");
    hold("plan-d3");
    let ids = ["d2".to_string(), "d3".to_string()];
    for id in &ids {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&ids, "ready", CONVERGE);
    wait_for(|| started("plan-d2") || started("plan-d3"), CONVERGE);
    wait_for(|| quiet("d2", "d3"), CONVERGE);
    assert_ne!(
        started("plan-d2"),
        started("plan-d3"),
        "{:?}",
        held_log(&holds)
    );

    // New params for d1 wait behind its apply: no check starts while they wait, and the one
    // running ends.
    let tagged = json!({ "namesvr_count": 1, "tag": "-b" });
    assert_eq!(c.put("d1", &tagged).status, 202);
    let before = clean();
    release("plan-d2");
    release("plan-d3");
    wait_for(|| clean() == before + 1.0, CONVERGE);
    wait_for(|| quiet("d2", "d3"), CONVERGE);
    assert_eq!(clean(), before + 1.0, "{:?}", held_log(&holds));
    release("apply-d1");
    wait_for(
        || c.cluster("d1")["last_operation"]["generation"] == 2 && c.phase("d1") == "ready",
        CONVERGE,
    );

    // A plan of d1 runs (held). d1 falls due for a check a second later, but a check never
    // starts on a cluster that runs something else: d2's and d3's go on meanwhile.
    hold("plan-d1");
    let asked = post_plan(&c, "d1", None);
    assert_eq!(asked.status, 202, "{asked:?}");
    wait_for(|| started("plan-d1"), CONVERGE);
    let before = clean();
    wait_for(|| clean() >= before + 3.0, CONVERGE);
    release("plan-d1");
    // Its result may already be replaced by d1's next check, due a second after it ended.
    let plan = plan_ended(&c, "d1");
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    let log = held_log(&holds);
    let go = log
        .iter()
        .position(|(command, id)| command == "go-plan" && id == "d1")
        .unwrap_or_else(|| panic!("{log:?}"));
    let d1_plans = log[..go]
        .iter()
        .filter(|(command, id)| command == "plan" && id == "d1")
        .count();
    assert_eq!(d1_plans, 1, "{log:?}");
    // Nor did one start, find the running plan's lock taken, and wait to run again.
    assert_eq!(plans_not_succeeded(&c), [], "{}", c.stderr());
    assert_eq!(c.cluster("d1")["drift"]["error"], Value::Null);
}

#[test]
fn a_cluster_deleted_while_its_drift_check_waits_is_never_checked_again() {
    let bed = Bed::new();
    let (wrapper, holds) = holding_terraform(&bed);
    let c = bed.start(
        &[
            "--drift-interval",
            "1s",
            "--concurrency",
            "1",
            "--terraform",
            wrapper.to_str().unwrap(),
        ],
        &[("HOLDS", holds.to_str().unwrap())],
    );
    assert_eq!(c.put("a", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("a"), "ready", CONVERGE);
    // b's apply holds the only slot while a falls due for a check, which waits.
    fs::write(holds.join("apply-b"), "").unwrap();
    assert_eq!(c.put("b", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| holds.join("apply-b.started").exists(), CONVERGE);
    wait_for(|| quiet_for(&bed, "a") >= Duration::from_secs(2), CONVERGE);
    assert_eq!(c.delete("a").status, 202);
    fs::remove_file(holds.join("apply-b")).unwrap();
    c.wait_phase(&one("a"), "destroyed", CONVERGE);
    // b's first check comes after a's destroy, and after any check of a.
    wait_for(|| !c.cluster("b")["drift"].is_null(), CONVERGE);
    let log = held_log(&holds);
    let destroyed = log
        .iter()
        .position(|(command, id)| command == "destroy" && id == "a")
        .unwrap_or_else(|| panic!("{log:?}"));
    let plans_after: Vec<_> = log[destroyed..]
        .iter()
        .filter(|(command, id)| command == "plan" && id == "a")
        .collect();
    assert_eq!(plans_after, Vec::<&(String, String)>::new(), "{log:?}");
    // Nor did one start and fail on the destroyed root before planning anything.
    assert_eq!(plans_not_succeeded(&c), [], "{}", c.stderr());
}

#[test]
fn a_failed_clusters_plan_says_nothing_of_drift_and_a_long_quiet_cluster_is_checked_at_start() {
    let bed = Bed::with_workflow(&tenant_workflow().replace("retries = 5", "retries = 0"));
    let mut c = bed.start(&[], &[]);
    assert_eq!(c.put("r1", &json!({ "namesvr_count": 1 })).status, 202);
    assert_eq!(c.put("f1", &json!({ "namesvr_count": -1 })).status, 202);
    wait_for(|| c.phase("r1") == "ready", CONVERGE);
    wait_for(|| c.phase("f1") == "failed", CONVERGE);
    // A plan of a failed cluster's own params: what it finds is the failure, not drift.
    assert_eq!(post_plan(&c, "f1", None).status, 202);
    let plan = plan_ended(&c, "f1");
    assert_eq!(plan["status"], "failed", "{plan:#}");
    assert_eq!(c.cluster("f1")["drift"], Value::Null);
    for result in ["clean", "drifted", "failed"] {
        let name = format!("bootstrapper_drift_checks_total{{result=\"{result}\"}}");
        assert_eq!(c.metric(&name), 0.0, "{name}");
    }

    // r1 was last applied longer ago than the interval: checked as soon as a controller
    // that checks starts.
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    assert_eq!(outcome.code, Some(143), "{outcome}");
    wait_for(|| quiet_for(&bed, "r1") >= Duration::from_secs(2), CONVERGE);
    let c = bed.start(&["--drift-interval", "1s"], &[]);
    wait_for(|| c.cluster("r1")["drift"]["drifted"] == false, CONVERGE);
    assert_eq!(c.cluster("f1")["drift"], Value::Null);
    // Only a successful apply clears what the last check found.
    assert_eq!(c.put("r1", &json!({ "namesvr_count": -1 })).status, 202);
    wait_for(|| c.phase("r1") == "failed", CONVERGE);
    assert_eq!(c.cluster("r1")["drift"]["drifted"], false);
}

#[test]
fn a_plan_cut_short_by_a_stop_runs_again_and_a_preview_asked_meanwhile_runs_after_it() {
    let bed = Bed::new();
    let (wrapper, holds) = holding_terraform(&bed);
    let args = ["--terraform", wrapper.to_str().unwrap()];
    let env = [("HOLDS", holds.to_str().unwrap())];
    let hold = holds.join("plan-c1");
    let started = holds.join("plan-c1.started");
    let mut c = bed.start(&args, &env);
    assert_eq!(c.put("c1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&one("c1"), "ready", CONVERGE);
    fs::write(&hold, "").unwrap();
    let asked = post_plan(&c, "c1", None);
    assert_eq!(asked.status, 202, "{asked:?}");
    wait_for(|| started.exists(), CONVERGE);

    // Stopped while it runs, it has not failed: the next controller runs it again.
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    assert_eq!(outcome.code, Some(143), "{outcome}");
    fs::remove_file(&started).unwrap();
    let c = bed.start(&args, &env);
    wait_for(|| started.exists(), CONVERGE);
    let running = c.get("/v1/clusters/c1/plan").body;
    assert_eq!(running["status"], "running", "{running:#}");
    assert_eq!(
        running["requested_at"], asked.body["requested_at"],
        "{running:#}"
    );

    // A preview asked for meanwhile waits; the running plan's end does not replace it.
    let preview = post_plan(
        &c,
        "c1",
        Some(json!({ "params": { "namesvr_count": 1, "tag": "-p" } })),
    );
    assert_eq!(preview.status, 202, "{preview:?}");
    fs::remove_file(&hold).unwrap();
    let mut plan = Value::Null;
    wait_for(
        || {
            plan = c.get("/v1/clusters/c1/plan").body;
            plan["requested_at"] == preview.body["requested_at"]
                && matches!(plan["status"].as_str(), Some("succeeded" | "failed"))
        },
        CONVERGE,
    );
    assert_eq!(plan["status"], "succeeded", "{plan:#}");
    assert_eq!(plan["params"]["tag"], "-p", "{plan:#}");
    assert_eq!(plan["changes"], true, "{plan:#}");
    assert_eq!(
        c.metric("bootstrapper_operations_total{kind=\"plan\",result=\"failed\"}"),
        0.0
    );
}
