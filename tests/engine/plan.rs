//! `bootstrapper plan`: the dry run, against the demo workflow and real terraform. It must
//! start no process and write nothing under the root, decide as `run` and `destroy` do, and
//! show the very commands they then run: terraform here is a wrapper that records every
//! call (its directory and argv) before handing over to the real terraform.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::{read_lines, Bootstrapper, Outcome};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// The demo, with its relative paths made absolute so that it runs from a temp directory.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo_workflow() -> String {
    let text = fs::read_to_string(repo().join("workflows/demo.toml")).unwrap();
    text.replace("\"../", &format!("\"{}/", repo().display()))
}

fn demo_params() -> Value {
    let text = fs::read_to_string(repo().join("workflows/demo.params.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A demo setup whose terraform is the recording wrapper; returns it and the record's path.
fn demo() -> (Bootstrapper, PathBuf) {
    let mut b = Bootstrapper::new();
    b.write_workflow(&demo_workflow());
    b.write_params(&demo_params());
    let calls = b.record_terraform();
    (b, calls)
}

/// Every terraform call recorded so far: the directory, then argv without the program.
fn calls(path: &Path) -> Vec<Vec<String>> {
    read_lines(path)
        .iter()
        .map(|line| {
            let line = line.strip_suffix('\0').unwrap_or(line);
            line.split('\0').map(str::to_owned).collect()
        })
        .collect()
}

/// A step's planned commands in the same shape as [`calls`].
fn planned_calls(step: &Value) -> Vec<Vec<String>> {
    step["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut call = vec![c["cwd"].as_str().unwrap().to_owned()];
            let argv = c["argv"].as_array().unwrap();
            call.extend(argv[1..].iter().map(|a| a.as_str().unwrap().to_owned()));
            call
        })
        .collect()
}

fn plan_json(b: &Bootstrapper, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    let out = b.run(&args);
    out.assert_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

fn decisions(plan: &Value) -> Vec<(String, String)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn step<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {plan:#}"))
}

/// Everything observable about a tree: per path, its kind, mode, size, mtime and content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, base: &Path, into: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                walk(&path, base, into);
                String::from("dir")
            } else if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else {
                format!("file {:?}", fs::read(&path).unwrap())
            };
            let stamp = format!(
                "{what} mode {:o} size {} mtime {}.{}",
                meta.mode(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec()
            );
            into.insert(path.strip_prefix(base).unwrap().to_path_buf(), stamp);
        }
    }
    let mut tree = BTreeMap::new();
    let meta = fs::metadata(root).unwrap();
    tree.insert(
        PathBuf::from("."),
        format!(
            "mode {:o} mtime {}.{}",
            meta.mode(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
    walk(root, root, &mut tree);
    tree
}

fn run_ok(b: &Bootstrapper, args: &[&str]) -> Outcome {
    let out = b.run(args);
    out.assert_success();
    out
}

// ---------------------------------------------------------------------------

#[test]
fn a_fresh_root_plans_every_step_with_placeholders_and_stays_absent() {
    let (b, calls_path) = demo();
    fs::remove_dir(b.root()).unwrap();

    let text = run_ok(&b, &["plan"]).stdout;
    for step in ["control-network", "network", "hosts", "system-job"] {
        assert!(
            text.contains(&format!(". {step}: run (never applied)")),
            "{text}"
        );
    }
    assert!(
        text.contains("does not exist: nothing applied yet"),
        "{text}"
    );
    assert!(text.contains("would copy it from"), "{text}");
    assert!(
        text.contains(
            "-backend-config=workspace_dir=<known after apply: steps.control-network.outputs.state_dir>/network"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "subnet_ids         = \"<known after apply: steps.network.outputs.subnet_ids>\""
        ),
        "{text}"
    );
    assert!(
        text.contains("$ TF_WORKSPACE=demo ") && !text.contains("workspace select"),
        "{text}"
    );
    // The demo's one secret param, masked in the vars file shown.
    assert!(text.contains("root_password      = \"********\""), "{text}");
    assert!(!text.contains("demo-only"), "{text}");

    let plan = plan_json(&b, &[]);
    assert_eq!(plan["root_exists"], false);
    assert_eq!(plan["code"]["action"], "copy");
    assert_eq!(
        decisions(&plan),
        pairs(&[
            ("control-network", "run"),
            ("network", "run"),
            ("hosts", "run"),
            ("system-job", "run"),
        ])
    );
    assert_eq!(
        step(&plan, "system-job")["unknown_outputs"],
        json!([
            "steps.control-network.outputs.state_dir",
            "steps.hosts.outputs.nomad_address",
            "steps.hosts.outputs.nomad_token"
        ])
    );
    let destroy = plan_json(&b, &["--destroy"]);
    assert!(destroy["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["decision"] == "skip" && s["commands"] == json!([])));

    assert!(!b.root().exists(), "plan created the root");
    assert!(!calls_path.exists(), "plan started terraform");
}

#[test]
fn plan_shows_the_commands_run_then_runs_and_skips_what_it_said() {
    let (b, calls_path) = demo();
    let planned = plan_json(&b, &[]);
    assert!(!calls_path.exists(), "plan started terraform");

    run_ok(&b, &["run"]);
    let ran = calls(&calls_path);
    // The placeholders stand for what control-network announced; filled in, the plan is
    // exactly what ran, call for call.
    let marker: Value = serde_json::from_str(
        &fs::read_to_string(b.root().join(".bootstrapper/steps/control-network/inited")).unwrap(),
    )
    .unwrap();
    let state_dir = marker["outputs"]["state_dir"].as_str().unwrap();
    let mut expected = Vec::new();
    for name in ["control-network", "network", "hosts"] {
        for call in planned_calls(step(&planned, name)) {
            expected.push(
                call.into_iter()
                    .map(|a| {
                        a.replace(
                            "<known after apply: steps.control-network.outputs.state_dir>",
                            state_dir,
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert_eq!(ran[..expected.len()], expected[..]);

    // Done: everything is skipped now, and nothing would run.
    let again = plan_json(&b, &[]);
    assert!(
        again["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["decision"] == "skip" && s["commands"] == json!([])),
        "{again:#}"
    );
    assert_eq!(again["code"]["action"], "use");
    assert_eq!(again["code"]["record"]["kind"], "image");
}

#[test]
fn plan_on_an_applied_root_writes_nothing_and_names_the_changed_input() {
    let (b, calls_path) = demo();
    run_ok(&b, &["run"]);
    let calls_after_run = calls(&calls_path).len();
    let before = snapshot(&b.root());

    let text = run_ok(&b, &["plan"]).stdout;
    assert!(text.contains("4 skipped"), "{text}");
    plan_json(&b, &[]);
    run_ok(&b, &["plan", "--destroy"]);
    plan_json(&b, &["--destroy"]);

    let mut params = demo_params();
    params["nomad_client_count"] = json!(3);
    b.write_params(&params);
    let text = run_ok(&b, &["plan"]).stdout;
    assert!(
        text.contains("3. hosts: run again (inputs changed since it was applied at"),
        "{text}"
    );
    assert!(text.contains(": vars)"), "{text}");
    let plan = plan_json(&b, &[]);
    assert_eq!(
        decisions(&plan),
        pairs(&[
            ("control-network", "skip"),
            ("network", "skip"),
            ("hosts", "run_again"),
            ("system-job", "run_again_if_changed"),
        ])
    );
    assert_eq!(step(&plan, "hosts")["changed_inputs"], json!(["vars"]));
    assert_eq!(
        step(&plan, "hosts")["vars_file"]["content"]
            .as_str()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("nomad_client_count")),
        Some("nomad_client_count = 3")
    );
    // Values of skipped steps are known: no placeholder for network's subnets.
    assert_eq!(step(&plan, "hosts")["unknown_outputs"], json!([]));
    assert_eq!(
        step(&plan, "system-job")["unknown_outputs"],
        json!([
            "steps.hosts.outputs.nomad_address",
            "steps.hosts.outputs.nomad_token"
        ])
    );

    assert_eq!(snapshot(&b.root()), before, "plan changed the root");
    assert_eq!(
        calls(&calls_path).len(),
        calls_after_run,
        "plan started terraform"
    );

    // And `run` does what the plan said: hosts again, the rest skipped (system-job too:
    // hosts' outputs came out the same).
    let out = run_ok(&b, &["run"]);
    assert!(
        out.stderr
            .contains("hosts: inputs changed since it was applied"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("system-job: done, inputs unchanged: skipped"),
        "{out}"
    );
}

#[test]
fn plan_destroy_lists_started_steps_in_reverse_with_the_commands_destroy_runs() {
    let (b, calls_path) = demo();
    run_ok(&b, &["run"]);
    // system-job forgotten: as if it had never started applying.
    run_ok(&b, &["reset", "system-job"]);
    let applied = calls(&calls_path).len();

    let text = run_ok(&b, &["plan", "--destroy"]).stdout;
    assert!(
        text.contains("1. system-job: skip (never started applying: nothing to destroy)"),
        "{text}"
    );
    assert!(text.contains("2. hosts: destroy (applied at"), "{text}");
    assert!(text.contains("3 to destroy, 1 skipped"), "{text}");

    let plan = plan_json(&b, &["--destroy"]);
    assert_eq!(plan["command"], "destroy");
    assert_eq!(
        decisions(&plan),
        pairs(&[
            ("system-job", "skip"),
            ("hosts", "destroy"),
            ("network", "destroy"),
            ("control-network", "destroy"),
        ])
    );
    let hosts = planned_calls(step(&plan, "hosts"));
    let args: Vec<String> = hosts.iter().map(|c| c[1..].join(" ")).collect();
    let state_dir = b.root().join("state");
    assert_eq!(
        args,
        [
            format!(
                "init -no-color -input=false -lock-timeout=300s -backend-config=workspace_dir={}/hosts",
                state_dir.display()
            ),
            "destroy -no-color -json -auto-approve -input=false -lock-timeout=300s -var-file=bootstrapper.tfvars"
                .to_string(),
        ]
    );
    assert_eq!(calls(&calls_path).len(), applied, "plan started terraform");

    run_ok(&b, &["destroy"]);
    let destroyed = &calls(&calls_path)[applied..];
    let mut expected = Vec::new();
    for name in ["hosts", "network", "control-network"] {
        expected.extend(planned_calls(step(&plan, name)));
    }
    assert_eq!(destroyed, &expected[..]);
}

#[test]
fn plan_reads_a_locked_root_and_says_what_the_lock_means() {
    let (b, calls_path) = demo();
    let lock = b.root().join(".bootstrapper/lock");
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let mut cmd = std::process::Command::new("flock");
    cmd.arg(&lock).arg("sleep").arg("600");
    let holder = crate::support::spawn_session(cmd, b.dir());
    crate::support::wait_for(
        || {
            // flock(1) creates the file: until then, nobody holds it.
            fs::File::open(&lock)
                .is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
        },
        std::time::Duration::from_secs(30),
    );

    let text = run_ok(&b, &["plan"]).stdout;
    assert!(
        text.contains("the root is locked by a process that left no record of itself"),
        "{text}"
    );
    assert!(text.contains("run would stop with exit 3"), "{text}");
    let plan = plan_json(&b, &["--destroy"]);
    assert!(
        plan["notes"][0]
            .as_str()
            .unwrap()
            .contains("destroy would ask it to stop and wait for the lock"),
        "{plan:#}"
    );
    holder.kill_session();
    assert!(!calls_path.exists(), "plan started terraform");
}

#[test]
fn plan_without_terraform_installed_still_plans_and_says_where_run_would_stop() {
    let mut b = Bootstrapper::new();
    b.write_workflow(&demo_workflow());
    b.write_params(&demo_params());
    b.arg("--terraform").arg("terraform-not-installed-here");
    let text = run_ok(&b, &["plan"]).stdout;
    assert!(
        text.contains("terraform: terraform-not-installed-here (not found)"),
        "{text}"
    );
    assert!(
        text.contains("note: terraform binary `terraform-not-installed-here` not found in PATH"),
        "{text}"
    );
    assert!(
        text.contains("$ terraform-not-installed-here init -no-color -input=false"),
        "{text}"
    );
    assert_eq!(plan_json(&b, &[])["terraform"]["found"], false);
}
