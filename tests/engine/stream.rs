//! Terraform's `-json` stream as the engine reads it, with real terraform: outputs taken from
//! the apply's own events (one process fewer), per-resource progress lines, and failures told
//! apart by their diagnostics, configuration errors failing at once, the rest retried.

use std::fs;
use std::path::Path;

use crate::support::*;
use serde_json::{json, Value};

/// The four-step fixture (the first step has a sensitive output, the others none), no retries.
fn four_steps() -> (Bootstrapper, std::path::PathBuf) {
    let mut b = Bootstrapper::new();
    let record = b.record_terraform();
    b.write_workflow(&format!(
        "{}\n[settings]\nretries = 0\n",
        four_step_workflow(&fixtures_dir())
    ));
    b.write_params(&four_step_params(&b.ledger_path(), &fresh_database()));
    (b, record)
}

/// The subcommands terraform was started with in `step`'s directory, in order.
fn subcommands(b: &Bootstrapper, record: &Path, step: &str) -> Vec<String> {
    let dir = b.root().join("code").join(step);
    terraform_calls(record)
        .into_iter()
        .filter(|call| Path::new(&call[0]) == dir)
        .map(|call| call[1].clone())
        .collect()
}

#[test]
fn outputs_come_from_the_apply_stream_or_a_local_state_without_a_process() {
    let (b, record) = four_steps();
    let out = b.run(&["run"]);
    out.assert_success();

    // No sensitive output: init and apply (the workspace is in their environment), and
    // nothing after.
    for step in &FOUR_STEPS[1..] {
        assert_eq!(
            subcommands(&b, &record, step),
            ["init", "apply"],
            "{step}\n{out}"
        );
    }
    // A sensitive output, whose value the stream leaves out, of a step whose state is a local
    // file: the value is read from there, without `output -json`.
    assert_eq!(
        subcommands(&b, &record, "control-network"),
        ["init", "apply"],
        "{out}"
    );
    let sensitive = fs::read_to_string(
        b.root()
            .join(".bootstrapper/steps/control-network/sensitive"),
    )
    .unwrap();
    assert!(sensitive.contains(ADMIN_TOKEN), "{sensitive}");
    assert!(!out.stderr.contains(ADMIN_TOKEN), "{out}");

    // The values are those `terraform output -json` gives, passed on to the next steps.
    for step in &FOUR_STEPS[1..] {
        let dir = b.root().join("code").join(step);
        let asked = terraform(&dir, &["output", "-json"]);
        asked.assert_success();
        let asked: Value = serde_json::from_str(&asked.stdout).unwrap();
        let expected: serde_json::Map<String, Value> = asked
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["value"].clone()))
            .collect();
        assert!(!expected.is_empty(), "{step}");
        assert_eq!(
            marker(&b, step)["outputs"],
            Value::Object(expected),
            "{step}"
        );
    }
    let network_id = &marker(&b, "network")["outputs"]["network_id"];
    assert_eq!(&marker(&b, "hosts")["outputs"]["network_id"], network_id);
}

/// A sensitive output of a step whose state is in a remote backend: its value is asked for.
#[test]
fn a_sensitive_output_kept_in_a_remote_backend_is_asked_for() {
    let mut b = Bootstrapper::new();
    let record = b.record_terraform();
    let image = b.dir().join("image");
    fs::create_dir_all(image.join("a")).unwrap();
    fs::write(
        image.join("a/main.tf"),
        "terraform {\n  backend \"pg\" {}\n}\n\n\
         output \"token\" {\n  value     = \"tok-remote-4711\"\n  sensitive = true\n}\n\n\
         output \"plain\" {\n  value = \"seen\"\n}\n",
    )
    .unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = {image:?}\n\n\
         [settings]\nretries = 0\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\nbackend_config = {{ conn_str = {:?} }}\n",
        fresh_database()
    ));
    b.write_params(&json!({}));
    let out = b.run(&["run"]);
    out.assert_success();
    assert_eq!(
        subcommands(&b, &record, "a"),
        ["init", "apply", "output"],
        "{out}"
    );
    let sensitive = fs::read_to_string(b.root().join(".bootstrapper/steps/a/sensitive")).unwrap();
    assert!(sensitive.contains("tok-remote-4711"), "{sensitive}");
    assert!(!out.stderr.contains("tok-remote-4711"), "{out}");
    assert_eq!(marker(&b, "a")["outputs"]["plain"], "seen");
}

#[test]
fn each_resource_is_logged_as_it_starts_and_finishes_with_the_change_summary() {
    let (mut b, _) = four_steps();
    let out = b.run(&["run"]);
    out.assert_success();
    for line in [
        "[hosts] terraform_data.client[1]: creating…",
        "[hosts] terraform_data.first: creating…",
        "[hosts] Apply complete! Resources: 4 added, 0 changed, 0 destroyed.",
    ] {
        assert!(out.stderr.lines().any(|l| l == line), "no {line:?}\n{out}");
    }
    let created = out
        .stderr
        .lines()
        .find(|l| l.starts_with("[hosts] terraform_data.client[1]: created in "))
        .unwrap_or_else(|| panic!("no created line\n{out}"));
    let seconds = created.rsplit(' ').next().unwrap();
    assert!(
        seconds.ends_with('s') && seconds[..seconds.len() - 1].parse::<f64>().is_ok(),
        "{created}"
    );
    // Terraform's raw events never reach the log.
    assert!(!out.stderr.contains("\"@level\""), "{out}");

    // The same as structured events, and for destroy.
    b.arg("--log-format").arg("json");
    let out = b.run(&["destroy"]);
    out.assert_success();
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let destroyed = lines
        .iter()
        .find(|l| {
            l["step"] == "hosts"
                && l["address"] == "terraform_data.first"
                && l["event"] == "apply_complete"
        })
        .unwrap_or_else(|| panic!("no destroyed event\n{out}"));
    assert_eq!(destroyed["step"], "hosts");
    assert_eq!(destroyed["action"], "delete");
    assert_eq!(destroyed["source"], "terraform");
    assert!(destroyed["elapsed_seconds"].is_number(), "{destroyed}");
    assert!(
        destroyed["message"]
            .as_str()
            .unwrap()
            .starts_with("terraform_data.first: destroyed in "),
        "{destroyed}"
    );
    let summary = lines
        .iter()
        .find(|l| l["event"] == "change_summary" && l["step"] == "hosts")
        .unwrap_or_else(|| panic!("no summary\n{out}"));
    assert_eq!(summary["operation"], "destroy");
    assert_eq!(summary["destroyed"], 4);
    assert_eq!(summary["added"], 0);
}

/// One step `a` of `main_tf`, copied from an image directory, with three retries a second apart.
fn one_step(main_tf: &str) -> Bootstrapper {
    let b = Bootstrapper::new();
    let image = b.dir().join("image");
    fs::create_dir_all(image.join("a")).unwrap();
    fs::write(image.join("a/main.tf"), main_tf).unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = {image:?}\n\n\
         [settings]\nretries = 3\nretry_delay = \"1s\"\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\n"
    ));
    b.write_params(&json!({}));
    b
}

fn status_of_a(b: &Bootstrapper) -> Value {
    let out = b.run(&["status", "--json"]);
    out.assert_success();
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    status["steps"][0].clone()
}

fn attempts_started(out: &Outcome) -> usize {
    out.stderr
        .lines()
        .filter(|l| l.contains("$ ") && l.contains(" apply "))
        .count()
}

#[test]
fn a_configuration_error_fails_at_once_naming_file_and_line() {
    let b = one_step(
        "resource \"terraform_data\" \"a\" {\n  input = 1\n}\n\nresource \"terraform_data\" \"b\" {\n  input = var.missing\n}\n",
    );
    let out = b.run(&["run"]);
    out.assert_code(1);
    assert_eq!(attempts_started(&out), 1, "retried\n{out}");
    assert!(!out.stderr.contains("retrying in"), "{out}");
    assert!(
        out.stderr.lines().any(|l| l
            .starts_with("[a] Error: Reference to undeclared input variable: ")
            && l.ends_with("(at main.tf line 6)")),
        "{out}"
    );
    let a = status_of_a(&b);
    assert_eq!(a["failure"], "configuration", "{a}");
    assert_eq!(a["attempts"], 1, "{a}");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("Error: Reference to undeclared input variable"),
        "{a}"
    );
    let text = b.run(&["status"]);
    assert!(text.stdout.contains("[configuration error]"), "{text}");
    assert!(b.ledger().is_empty());
}

#[test]
fn a_resource_error_is_retried_and_its_kind_shown_while_it_lasts() {
    let b = one_step("");
    let flag = b.dir().join("second-time");
    fs::write(
        b.dir().join("image/a/main.tf"),
        format!(
            "resource \"terraform_data\" \"a\" {{\n  provisioner \"local-exec\" {{\n    command = \"test -e {flag} || {{ touch {flag}; echo refused >&2; exit 7; }}\"\n  }}\n}}\n",
            flag = flag.display()
        ),
    )
    .unwrap();
    let out = b.run(&["run"]);
    out.assert_success();
    assert_eq!(attempts_started(&out), 2, "{out}");
    assert!(
        out.stderr.contains("attempt 1 failed: step `a` failed: `terraform apply` failed with exit code 1: Error: local-exec provisioner error"),
        "{out}"
    );
    let a = status_of_a(&b);
    assert_eq!(a["state"], "done", "{a}");

    // With no retries left, status shows the kind of the failure.
    fs::remove_file(&flag).unwrap();
    let b2 = one_step("");
    fs::copy(
        b.dir().join("image/a/main.tf"),
        b2.dir().join("image/a/main.tf"),
    )
    .unwrap();
    b2.write_workflow(
        &fs::read_to_string(b2.workflow_path())
            .unwrap()
            .replace("retries = 3", "retries = 0"),
    );
    b2.run(&["run"]).assert_code(1);
    let a = status_of_a(&b2);
    assert_eq!(a["failure"], "resource", "{a}");
    assert_eq!(a["state"], "failed", "{a}");
}

/// A step whose provisioner kills terraform (its parent) the first time it runs.
fn killed_once(retries: u32) -> Bootstrapper {
    let b = one_step("");
    let flag = b.dir().join("killed-once");
    fs::write(
        b.dir().join("image/a/main.tf"),
        format!(
            "resource \"terraform_data\" \"a\" {{\n  provisioner \"local-exec\" {{\n    command = \"test -e {flag} || {{ touch {flag}; kill -KILL $PPID; sleep 5; }}\"\n  }}\n}}\n",
            flag = flag.display()
        ),
    )
    .unwrap();
    b.write_workflow(
        &fs::read_to_string(b.workflow_path())
            .unwrap()
            .replace("retries = 3", &format!("retries = {retries}")),
    );
    b
}

#[test]
fn a_terraform_killed_mid_apply_leaves_no_diagnostics_and_is_retried() {
    let b = killed_once(0);
    let out = b.run(&["run"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("`terraform apply` failed with killed by signal 9"),
        "{out}"
    );
    let a = status_of_a(&b);
    assert_eq!(a["failure"], "no_diagnostics", "{a}");

    let b = killed_once(3);
    let out = b.run(&["run"]);
    out.assert_success();
    assert_eq!(attempts_started(&out), 2, "{out}");
    assert!(
        out.stderr.contains(
            "attempt 1 failed: step `a` failed: `terraform apply` failed with killed by signal 9"
        ),
        "{out}"
    );
    assert_eq!(status_of_a(&b)["state"], "done");
}

#[test]
fn secrets_read_from_the_stream_are_masked_even_when_terraform_wraps_them() {
    // A secret with spaces: terraform's error detail may break it over lines.
    let secret = "correct horse battery staple";
    let mut b = one_step(
        r#"variable "db_password" {
  type = string
}

resource "terraform_data" "a" {
  provisioner "local-exec" {
    environment = { PW = var.db_password }
    command     = "echo connecting with $PW; echo \"refused: $(echo \"$PW\" | sed 's/ battery/\\n battery/')\"; exit 4"
  }
}
"#,
    );
    b.write_workflow(
        &fs::read_to_string(b.workflow_path())
            .unwrap()
            .replace("retries = 3", "retries = 0"),
    );
    b.env("TF_VAR_db_password", secret);
    for format in ["text", "json"] {
        let mut b2 = Bootstrapper::new();
        fs::create_dir_all(b2.dir().join("image/a")).unwrap();
        fs::copy(
            b.dir().join("image/a/main.tf"),
            b2.dir().join("image/a/main.tf"),
        )
        .unwrap();
        b2.write_workflow(&fs::read_to_string(b.workflow_path()).unwrap().replace(
            &b.dir().display().to_string(),
            &b2.dir().display().to_string(),
        ));
        b2.write_params(&json!({}));
        b2.env("TF_VAR_db_password", secret);
        b2.arg("--log-format").arg(format);
        let out = b2.run(&["run"]);
        out.assert_code(1);
        for part in [secret, "correct horse", "battery staple"] {
            assert!(!out.stderr.contains(part), "{format}: {part}\n{out}");
        }
        assert!(
            out.stderr.contains("connecting with ********"),
            "{format}\n{out}"
        );
        // The wrapped parts, in the provisioner's lines and in the diagnostic's detail.
        assert!(out.stderr.contains("refused: ********"), "{format}\n{out}");
        assert!(
            out.stderr
                .contains("Output: connecting with ******** refused: ********"),
            "{format}\n{out}"
        );
        let status = b2.run(&["status", "--json"]);
        assert!(!status.stdout.contains("horse"), "{status}");
        assert!(status.stdout.contains("resource"), "{status}");
    }
}
