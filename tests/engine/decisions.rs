//! `plan` and `plan --destroy` against what `run` and `destroy` then do, step for step: the
//! decision, and every terraform command (its directory and argv, recorded by a wrapper in
//! front of the real terraform), on the four-step fixture with its later states in a real
//! PostgreSQL server.

use std::fs;

use crate::support::*;
use serde_json::{json, Value};

fn workflow() -> String {
    format!(
        "{}\n[settings]\nretries = 0\n",
        four_step_workflow(&fixtures_dir()).replace(".tfvars.tera\"", ".tfvars.json.tera\"")
    )
}

/// The recorded terraform calls that work on a step: every command checks the binary with
/// `terraform version` first (once per binary for run and destroy), which is no step's.
fn step_calls(record: &std::path::Path) -> Vec<Vec<String>> {
    terraform_calls(record)
        .into_iter()
        .filter(|call| call.get(1).map(String::as_str) != Some("version"))
        .collect()
}

fn plan(b: &Bootstrapper, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    let out = b.run(&args);
    out.assert_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

/// Fills the plan's placeholders with the outputs the markers hold now.
fn known(b: &Bootstrapper, text: &str) -> String {
    let mut text = text.to_string();
    for step in FOUR_STEPS {
        let path = b.root().join(format!(".bootstrapper/steps/{step}/inited"));
        if !path.exists() {
            continue;
        }
        for (name, value) in marker(b, step)["outputs"].as_object().unwrap() {
            let placeholder = format!("<known after apply: steps.{step}.outputs.{name}>");
            text = text.replace(&placeholder, value.as_str().unwrap_or(&value.to_string()));
        }
    }
    text
}

/// Per step in plan order: the decision, and the calls planned for it with placeholders
/// filled in.
fn planned(b: &Bootstrapper, plan: &Value) -> Vec<(String, String, Vec<Vec<String>>)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let calls = s["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let mut call = vec![c["cwd"].as_str().unwrap().to_owned()];
                    let argv = c["argv"].as_array().unwrap();
                    call.extend(argv[1..].iter().map(|a| known(b, a.as_str().unwrap())));
                    call
                })
                .collect();
            (
                s["step"].as_str().unwrap().to_owned(),
                s["decision"].as_str().unwrap().to_owned(),
                calls,
            )
        })
        .collect()
}

/// What the command did to each step, from its log, in the words of the plan.
fn done(stderr: &str, step: &str) -> &'static str {
    let said = |what: &str| stderr.contains(&format!("bootstrapper: info: {step}: {what}"));
    if said("done, inputs unchanged: skipped")
        || said("already destroyed: skipped")
        || said("never started applying")
    {
        "skip"
    } else if said("inputs changed since it was applied") {
        "run_again"
    } else if said("applying") {
        "run"
    } else if said("destroying") {
        "destroy"
    } else {
        panic!("nothing said of {step}:\n{stderr}")
    }
}

/// Checks that `command` did, step for step, what `plan` said, and ran exactly its commands.
#[track_caller]
fn assert_did_what_was_planned(
    b: &Bootstrapper,
    record: &std::path::Path,
    plan: &Value,
    command: &str,
) {
    let before = step_calls(record).len();
    let out = b.run(&[command]);
    out.assert_success();
    // The plan masks the userinfo of URLs (the backend's conn_str) as every output does.
    let masked = |calls: Vec<Vec<String>>| -> Vec<Vec<String>> {
        calls
            .into_iter()
            .map(|call| {
                call.into_iter()
                    .map(|a| a.replace("://postgres@", "://********@"))
                    .collect()
            })
            .collect()
    };
    let calls = masked(step_calls(record)[before..].to_vec());
    let mut expected = Vec::new();
    for (step, decision, planned_calls) in planned(b, plan) {
        let did = done(&out.stderr, &step);
        match decision.as_str() {
            // Whether it runs again is decided once the steps before it ran.
            "run_again_if_changed" => {
                assert!(did == "run_again" || did == "skip", "{step}: {did}\n{out}")
            }
            _ => assert_eq!(did, decision, "{step}\n{out}"),
        }
        if did != "skip" {
            expected.extend(planned_calls);
        }
    }
    assert_eq!(
        calls,
        masked(expected),
        "`{command}` ran other commands than planned\n{out}"
    );
}

#[test]
fn plan_and_plan_destroy_decide_step_for_step_what_run_and_destroy_do() {
    let mut b = Bootstrapper::new();
    let record = b.record_terraform();
    let conn_str = fresh_database();
    b.write_workflow(&workflow());
    b.write_params(&four_step_params(&b.ledger_path(), &conn_str));

    // A fresh root: every step runs.
    let fresh = plan(&b, &[]);
    assert!(step_calls(&record).is_empty(), "plan started terraform");
    assert_did_what_was_planned(&b, &record, &fresh, "run");
    // The vars written are those planned, once the outputs are known.
    let hosts = &fresh["steps"][2];
    assert_eq!(hosts["step"], "hosts");
    let written = fs::read_to_string(b.root().join("code/hosts/bootstrapper.tfvars.json")).unwrap();
    assert_eq!(
        known(&b, hosts["vars_file"]["content"].as_str().unwrap()),
        written
    );

    // A changed param of network: it runs again, hosts depends on its new output.
    let mut params = four_step_params(&b.ledger_path(), &conn_str);
    params["tag_network"] = json!("v2");
    b.write_params(&params);
    let changed = plan(&b, &[]);
    let decisions: Vec<(String, String)> = planned(&b, &changed)
        .into_iter()
        .map(|(s, d, _)| (s, d))
        .collect();
    assert_eq!(
        decisions,
        [
            ("control-network", "skip"),
            ("network", "run_again"),
            ("hosts", "run_again_if_changed"),
            ("system-job", "skip"),
        ]
        .map(|(s, d)| (s.to_string(), d.to_string()))
    );
    assert_did_what_was_planned(&b, &record, &changed, "run");

    // Nothing left to do: the plan says skip everywhere and run starts nothing.
    let idle = plan(&b, &[]);
    assert_did_what_was_planned(&b, &record, &idle, "run");

    // Destroy in reverse, every step, with the commands planned.
    let destroy = plan(&b, &["--destroy"]);
    let order: Vec<String> = planned(&b, &destroy)
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    assert_eq!(order, ["system-job", "hosts", "network", "control-network"]);
    assert_did_what_was_planned(&b, &record, &destroy, "destroy");
    for step in &FOUR_STEPS[1..] {
        assert!(
            pg_state_resources(&conn_str, step, "c1").is_empty(),
            "{step}"
        );
    }

    // A finished destroy: destroying again skips everything.
    let again = plan(&b, &["--destroy"]);
    assert_did_what_was_planned(&b, &record, &again, "destroy");
}
