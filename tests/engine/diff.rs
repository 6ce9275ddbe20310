//! `bootstrapper diff` and `run --reviewed` end to end: real terraform planning the
//! four-step fixture (later steps' states in PostgreSQL) and a one-step module that reads a
//! file outside its state; what the diff names, what it leaves behind, and that `run
//! --reviewed` applies exactly the reviewed plans or refuses.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::support::*;
use serde_json::{json, Value};

fn four_steps(extra: Value) -> (Bootstrapper, String) {
    let b = Bootstrapper::new();
    let conn_str = fresh_database();
    b.write_workflow(&format!(
        "{}\n[settings]\nretries = 0\n",
        four_step_workflow(&fixtures_dir())
    ));
    set_params(&b, &conn_str, extra);
    (b, conn_str)
}

fn set_params(b: &Bootstrapper, conn_str: &str, extra: Value) {
    let mut params = four_step_params(&b.ledger_path(), conn_str);
    let object = params.as_object_mut().expect("params are an object");
    for (key, value) in extra.as_object().expect("extra params are an object") {
        object.insert(key.clone(), value.clone());
    }
    b.write_params(&params);
}

/// `diff --json`, exiting with `code`, its document parsed.
#[track_caller]
fn diff_json(b: &Bootstrapper, code: i32) -> (Value, Outcome) {
    let outcome = b.run(&["diff", "--json"]);
    outcome.assert_code(code);
    let document: Value =
        serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("{e}\n{outcome}"));
    (document, outcome)
}

fn step<'a>(document: &'a Value, name: &str) -> &'a Value {
    document["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {document:#}"))
}

/// `(address, action)` of every resource a step's diff would change, sorted.
fn changed(document: &Value, name: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = step(document, name)["changes"]["resources"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|r| {
                    (
                        r["address"].as_str().unwrap().to_string(),
                        r["action"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn plan_file(b: &Bootstrapper, step: &str) -> PathBuf {
    b.root()
        .join(".bootstrapper/steps")
        .join(step)
        .join("reviewed.tfplan")
}

fn journal_file(b: &Bootstrapper, step: &str, file: &str) -> PathBuf {
    b.root().join(".bootstrapper/steps").join(step).join(file)
}

#[test]
fn diff_plans_the_first_step_of_a_fresh_root_then_names_exactly_what_a_changed_param_changes() {
    let (b, conn_str) = four_steps(json!({}));

    // A fresh root: the first step is planned, the others wait for its outputs.
    let (document, outcome) = diff_json(&b, 2);
    assert_eq!(document["format"], 1, "{outcome}");
    assert_eq!(document["changes"], true);
    let first = step(&document, "control-network");
    assert_eq!(first["status"], "changes", "{document:#}");
    assert_eq!(
        first["changes"]["counts"],
        json!({"add": 3, "change": 0, "destroy": 0})
    );
    let creates: Vec<(String, String)> = expected_state("control-network")
        .into_iter()
        .map(|a| (a, "create".to_string()))
        .collect();
    assert_eq!(changed(&document, "control-network"), creates);
    for name in &FOUR_STEPS[1..] {
        let s = step(&document, name);
        assert_eq!(s["status"], "not_known", "{name}: {document:#}");
        assert!(
            s["waits_for"]
                .as_array()
                .unwrap()
                .contains(&json!("control-network")),
            "{name}: {document:#}"
        );
        assert!(s.get("plan").is_none(), "{name}: {document:#}");
    }
    // Nothing applied, no marker nor attempt; only the plan (owner-only) and the record.
    assert!(b.ledger().is_empty(), "{:?}", b.ledger());
    for name in FOUR_STEPS {
        assert!(!journal_file(&b, name, "inited").exists(), "{name}");
        assert!(!journal_file(&b, name, "attempt").exists(), "{name}");
    }
    let mode = fs::metadata(plan_file(&b, "control-network"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let record: Value = serde_json::from_str(
        &fs::read_to_string(b.root().join(".bootstrapper/diff.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record, document);
    let text = b.run(&["diff"]);
    text.assert_code(2);
    assert!(
        text.stdout
            .contains("network: not known until control-network is applied"),
        "{text}"
    );
    assert!(
        text.stdout.contains("+ terraform_data.first (create)"),
        "{text}"
    );

    // Applied: nothing would change.
    b.run(&["run"]).assert_success();
    let (document, outcome) = diff_json(&b, 0);
    for name in FOUR_STEPS {
        assert_eq!(step(&document, name)["status"], "no_changes", "{outcome}");
        assert!(changed(&document, name).is_empty(), "{name}: {outcome}");
    }

    // One param changed: exactly the resources it reaches would be replaced, nothing applied.
    let ledger = b.ledger();
    set_params(&b, &conn_str, json!({"tag_hosts": "v2"}));
    let (document, outcome) = diff_json(&b, 2);
    let replaced: Vec<(String, String)> = expected_state("hosts")
        .into_iter()
        .map(|a| (a, "replace".to_string()))
        .collect();
    assert_eq!(changed(&document, "hosts"), replaced, "{outcome}");
    let first = &step(&document, "hosts")["changes"]["resources"][0];
    assert!(
        first["attributes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "triggers_replace", "sensitive": false})),
        "{first:#}"
    );
    for name in ["control-network", "network", "system-job"] {
        assert_eq!(step(&document, name)["status"], "no_changes", "{outcome}");
    }
    assert_eq!(b.ledger(), ledger, "a diff applies nothing");

    // The reviewed plans, applied: only hosts' resources are replaced.
    b.run(&["run", "--reviewed"]).assert_success();
    let applied: Vec<String> = b.ledger()[ledger.len()..].to_vec();
    let touched: std::collections::BTreeSet<&str> = applied
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let expected: std::collections::BTreeSet<String> = four_step_resources("hosts")
        .iter()
        .map(|r| format!("hosts/{r}"))
        .collect();
    assert_eq!(
        touched,
        expected.iter().map(String::as_str).collect(),
        "{applied:#?}"
    );
    assert_eq!(
        pg_state_resources(&conn_str, "hosts", "c1"),
        expected_state("hosts")
    );
    for name in FOUR_STEPS {
        assert!(
            !plan_file(&b, name).exists(),
            "{name}: no plan is left once applied"
        );
    }
    diff_json(&b, 0);

    // The plans of a diff are applied once: a second `run --reviewed` finds none.
    b.run(&["diff"]).assert_success();
    b.run(&["run", "--reviewed"]).assert_success();
    let again = b.run(&["run", "--reviewed"]);
    again.assert_code(2);
    assert!(again.stderr.contains("no reviewed diff"), "{again}");
}

#[test]
fn run_reviewed_refuses_a_param_changed_since_the_diff_leaves_out_what_was_not_known_and_fails_a_stale_plan(
) {
    let (b, conn_str) = four_steps(json!({}));
    b.run(&["run"]).assert_success();
    let ledger = b.ledger();

    // network would be replaced, and its outputs with it: hosts, which uses them, is not
    // known until network is applied.
    set_params(&b, &conn_str, json!({"tag_network": "a"}));
    let (document, outcome) = diff_json(&b, 2);
    assert_eq!(
        changed(&document, "network"),
        expected_state("network")
            .into_iter()
            .map(|a| (a, "replace".to_string()))
            .collect::<Vec<_>>()
    );
    let hosts = step(&document, "hosts");
    assert_eq!(hosts["status"], "not_known", "{outcome}");
    assert_eq!(hosts["waits_for"], json!(["network"]), "{outcome}");
    assert_eq!(step(&document, "system-job")["status"], "no_changes");

    // Changed again after the review: refused before anything runs, naming the input.
    set_params(&b, &conn_str, json!({"tag_network": "b"}));
    let refused = b.run(&["run", "--reviewed"]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("step `network`")
            && refused.stderr.contains("inputs changed since the diff"),
        "{refused}"
    );
    assert!(refused.stderr.contains(": vars"), "{refused}");
    assert_eq!(b.ledger(), ledger, "nothing applied");

    // As reviewed: network is applied, hosts left out and named.
    set_params(&b, &conn_str, json!({"tag_network": "a"}));
    let applied = b.run(&["run", "--reviewed"]);
    applied.assert_success();
    assert!(applied.stderr.contains("left out: hosts"), "{applied}");
    let after = &b.ledger()[ledger.len()..];
    assert!(
        !after.is_empty() && after.iter().all(|l| l.contains(" network/")),
        "{after:#?}"
    );

    // Now hosts is planned; a plain `run` then moves its state on, and terraform refuses
    // the stale plan: the step fails with terraform's reason.
    let (document, outcome) = diff_json(&b, 2);
    assert_eq!(step(&document, "hosts")["status"], "changes", "{outcome}");
    let plain = b.run(&["run"]);
    plain.assert_success();
    assert!(
        plain
            .stderr
            .contains("hosts: inputs changed since it was applied"),
        "{plain}"
    );
    let ledger_after_run = b.ledger();
    let stale = b.run(&["run", "--reviewed"]);
    stale.assert_code(1);
    assert!(stale.stderr.contains("Saved plan is stale"), "{stale}");
    assert_eq!(b.ledger(), ledger_after_run, "nothing applied");
    diff_json(&b, 0);
}

/// A one-step workflow, local state: a resource holding a secret param, one reading a file
/// outside the code that the test edits behind the engine's back.
fn one_step(token: &str, external: &str) -> Bootstrapper {
    let b = Bootstrapper::new();
    let module = b.dir().join("image/app");
    fs::create_dir_all(&module).unwrap();
    fs::write(
        module.join("main.tf"),
        r#"
variable "api_token" {
  type      = string
  sensitive = true
}
variable "external" {
  type = string
}
resource "terraform_data" "app" {
  input = { token = var.api_token, name = "app" }
}
resource "terraform_data" "ext" {
  input = file(var.external)
}
"#,
    )
    .unwrap();
    fs::write(
        b.dir().join("app.tfvars.tera"),
        "api_token = \"{{ params.api_token }}\"\nexternal = \"{{ params.external }}\"\n",
    )
    .unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = {:?}\n[settings]\nretries = 0\n\n[[step]]\nname = \"app\"\ndir = \"app\"\nvars = {:?}\n",
        b.dir().join("image").display().to_string(),
        b.dir().join("app.tfvars.tera").display().to_string(),
    ));
    fs::write(b.dir().join("external.txt"), external).unwrap();
    set_token(&b, token);
    b
}

fn set_token(b: &Bootstrapper, token: &str) {
    b.write_params(&json!({
        "api_token": token,
        "external": b.dir().join("external.txt"),
    }));
}

fn external_in_state(b: &Bootstrapper) -> Value {
    let state: Value = serde_json::from_str(
        &fs::read_to_string(b.root().join("code/app/terraform.tfstate")).unwrap(),
    )
    .unwrap();
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ext")
        .map(|r| r["instances"][0]["attributes"]["input"].clone())
        .unwrap()
}

#[test]
fn diff_finds_what_changed_outside_the_engine_and_run_reviewed_applies_nothing_unreviewed() {
    let b = one_step("tok-0a1b2c3d4e", "v1");
    b.run(&["run"]).assert_success();
    diff_json(&b, 0);

    // The file changed behind the engine's back: the step's inputs did not, so `run` would
    // skip it; terraform's own plan shows the change.
    fs::write(b.dir().join("external.txt"), "v2").unwrap();
    let (document, outcome) = diff_json(&b, 2);
    assert_eq!(
        changed(&document, "app"),
        [("terraform_data.ext".to_string(), "update".to_string())],
        "{outcome}"
    );
    let attributes = &step(&document, "app")["changes"]["resources"][0]["attributes"];
    assert!(
        attributes
            .as_array()
            .unwrap()
            .contains(&json!({"name": "input", "sensitive": false})),
        "{attributes:#}"
    );

    // Edited once more after the review: terraform meets v3 where the reviewed plan says
    // v2, and the step fails without applying anything it was not shown.
    fs::write(b.dir().join("external.txt"), "v3").unwrap();
    let refused = b.run(&["run", "--reviewed"]);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains("inconsistent final plan"),
        "{refused}"
    );
    assert_eq!(external_in_state(&b)["value"], "v1");

    // Reviewed again, applied as reviewed, naming the diff.
    let (document, _) = diff_json(&b, 2);
    assert_eq!(
        changed(&document, "app"),
        [("terraform_data.ext".to_string(), "update".to_string())]
    );
    let id = document["id"].as_str().unwrap();
    assert_eq!(id.len(), 16, "{document:#}");
    b.run(&["run", &format!("--reviewed={id}")])
        .assert_success();
    assert_eq!(external_in_state(&b)["value"], "v3");
    diff_json(&b, 0);
}

#[test]
fn a_sensitive_attribute_is_named_but_its_values_never_shown() {
    let old = "tok-5f6e7d8c9b";
    let new = "tok-a1b2c3d4e5";
    let b = one_step(old, "v1");
    b.run(&["run"]).assert_success();
    set_token(&b, new);

    let (document, outcome) = diff_json(&b, 2);
    assert_eq!(
        changed(&document, "app"),
        [("terraform_data.app".to_string(), "update".to_string())],
        "{outcome}"
    );
    let attributes = &step(&document, "app")["changes"]["resources"][0]["attributes"];
    assert!(
        attributes
            .as_array()
            .unwrap()
            .contains(&json!({"name": "input.token", "sensitive": true})),
        "{attributes:#}"
    );
    let text = b.run(&["diff"]);
    text.assert_code(2);
    assert!(text.stdout.contains("input.token (sensitive)"), "{text}");
    let record = fs::read_to_string(b.root().join(".bootstrapper/diff.json")).unwrap();
    for shown in [
        &outcome.stdout,
        &outcome.stderr,
        &text.stdout,
        &text.stderr,
        &record,
    ] {
        for secret in [old, new] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
    }
}

#[test]
fn bad_inputs_of_diff_and_run_reviewed_are_refused_before_anything_runs() {
    let b = one_step("tok-0a1b2c3d4e", "v1");

    let unknown = b.run(&["diff", "app", "nosuch"]);
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("no step `nosuch`"), "{unknown}");
    assert!(unknown.stderr.contains("its steps are: app"), "{unknown}");
    assert!(unknown.stdout.is_empty(), "{unknown}");
    assert!(!b.root().join(".bootstrapper").exists(), "nothing written");

    for conflict in [
        ["run", "--reviewed", "--hold"],
        ["run", "--reviewed", "--recreate"],
    ] {
        let refused = b.run(&conflict);
        refused.assert_code(2);
        assert!(refused.stderr.contains("cannot be used with"), "{refused}");
    }

    let never = b.run(&["run", "--reviewed"]);
    never.assert_code(2);
    assert!(never.stderr.contains("no reviewed diff"), "{never}");
    assert!(!journal_file(&b, "app", "inited").exists());

    // A record that is not one.
    b.run(&["diff"]).assert_code(2);
    fs::write(b.root().join(".bootstrapper/diff.json"), "{\"format\": ").unwrap();
    let corrupt = b.run(&["run", "--reviewed"]);
    corrupt.assert_code(2);
    assert!(corrupt.stderr.contains("corrupt"), "{corrupt}");

    // A diff that is not the last one.
    b.run(&["diff"]).assert_code(2);
    let other = b.run(&["run", "--reviewed=0123456789abcdef"]);
    other.assert_code(2);
    assert!(other.stderr.contains("the last diff is "), "{other}");

    // A saved plan replaced after the review.
    b.run(&["diff"]).assert_code(2);
    let plan = plan_file(&b, "app");
    let mut bytes = fs::read(&plan).unwrap();
    bytes.push(0);
    fs::write(&plan, bytes).unwrap();
    let replaced = b.run(&["run", "--reviewed"]);
    replaced.assert_code(2);
    assert!(
        replaced
            .stderr
            .contains("not the one the last diff reviewed"),
        "{replaced}"
    );
    assert!(!journal_file(&b, "app", "inited").exists());
}

#[test]
fn a_diff_beside_a_running_run_exits_3_and_writes_nothing() {
    let (b, _) = four_steps(json!({ "sleep_network": 600 }));
    let first = b.spawn(&["run"]);
    wait_for(
        || b.ledger().iter().any(|l| l == "start network/slow"),
        std::time::Duration::from_secs(120),
    );
    let second = b.run(&["diff"]);
    second.assert_code(3);
    assert!(second.stderr.contains("locked"), "{second}");
    assert!(second.stdout.is_empty(), "{second}");
    assert!(!b.root().join(".bootstrapper/diff.json").exists());
    assert!(!plan_file(&b, "control-network").exists());
    first.kill_session();
}

#[test]
fn a_step_that_cannot_be_planned_fails_the_diff_with_its_reason_and_run_reviewed_refuses() {
    let b = one_step("tok-0a1b2c3d4e", "v1");
    b.run(&["run"]).assert_success();
    let code = b.root().join("code/app/broken.tf");
    fs::write(
        &code,
        "resource \"terraform_data\" \"broken\" {\n  input = var.nosuch\n}\n",
    )
    .unwrap();

    let (document, outcome) = diff_json(&b, 1);
    let app = step(&document, "app");
    assert_eq!(app["status"], "failed", "{outcome}");
    assert!(
        app["reason"].as_str().unwrap().contains("nosuch"),
        "{outcome}"
    );
    assert!(outcome.stderr.contains("nosuch"), "{outcome}");
    assert!(!plan_file(&b, "app").exists());

    let refused = b.run(&["run", "--reviewed"]);
    refused.assert_code(2);
    assert!(
        refused
            .stderr
            .contains("the last diff did not plan step `app`"),
        "{refused}"
    );
}

#[test]
fn diff_code_current_plans_the_image_code_with_the_state_in_place_and_leaves_the_code_untouched() {
    let b = one_step("tok-5f6e7d8c9b", "v1");
    b.run(&["run"]).assert_success();
    let journal = b.root().join(".bootstrapper");
    let record_before = fs::read_to_string(journal.join("source")).unwrap();
    let marker = journal_file(&b, "app", "inited");
    let marker_before = fs::read(&marker).unwrap();
    let state_before = fs::read(b.root().join("code/app/terraform.tfstate")).unwrap();
    // The image's code moves on: one more resource.
    fs::write(
        b.dir().join("image/app/extra.tf"),
        "resource \"terraform_data\" \"extra\" {\n  input = \"x\"\n}\n",
    )
    .unwrap();

    let outcome = b.run(&["diff", "--json", "--code", "current"]);
    outcome.assert_code(2);
    let document: Value =
        serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("{e}\n{outcome}"));
    // Only the new resource: the state in place came along, so the others are no change.
    assert_eq!(
        changed(&document, "app"),
        [("terraform_data.extra".to_string(), "create".to_string())],
        "{outcome}"
    );
    assert_eq!(document["code_current"], true, "{document:#}");
    assert!(step(&document, "app").get("plan").is_none(), "{document:#}");
    let in_place: Value = serde_json::from_str(&record_before).unwrap();
    assert_ne!(document["code"], in_place["identity"], "{document:#}");

    // The code in place, its record, its marker and its state: untouched; no tree left.
    assert!(!b.root().join("code/app/extra.tf").exists());
    assert_eq!(
        fs::read_to_string(journal.join("source")).unwrap(),
        record_before
    );
    assert_eq!(fs::read(&marker).unwrap(), marker_before);
    assert_eq!(
        fs::read(b.root().join("code/app/terraform.tfstate")).unwrap(),
        state_before
    );
    assert!(!journal.join("preview-code").exists());
    // Its plans cannot be applied; the code in place still has nothing to change.
    let refused = b.run(&["run", "--reviewed"]);
    refused.assert_code(2);
    assert!(refused.stderr.contains("--code current"), "{refused}");
    diff_json(&b, 0);
}
