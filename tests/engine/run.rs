//! `bootstrapper run` end to end: the real binary applying the four-step
//! fixture with real terraform, the later steps' states in a real PostgreSQL
//! server. Every test asserts on the ledger that the fixtures' provisioners
//! append to (`start|create|destroying|destroy <step>/<resource>`), on the
//! terraform states, and on what the engine printed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::four_step_resources as resources;
use crate::support::*;
use serde_json::{json, Value};

/// How long `network/slow` sleeps in the runs that a test kills or races: far
/// longer than any test waits, so the kill always lands while it sleeps.
const SLOW_SECONDS: u64 = 600;

/// Bounds a wait for something that takes a few terraform commands.
const PATIENCE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// The fixture, as these tests use it.

/// The four-step workflow without retries: a failure must show at once, not
/// after the default three retries with back-off.
fn workflow() -> String {
    format!(
        "{}\n[settings]\nretries = 0\n",
        four_step_workflow(&fixtures_dir())
    )
}

/// A root with the four-step workflow and params pointing at a fresh database.
fn four_steps() -> (Bootstrapper, String) {
    let b = Bootstrapper::new();
    let conn_str = fresh_database();
    b.write_workflow(&workflow());
    set_params(&b, &conn_str, json!({}));
    (b, conn_str)
}

/// Writes the fixture's params plus `extra` (sleep_*, tag_* entries).
fn set_params(b: &Bootstrapper, conn_str: &str, extra: Value) {
    let mut params = four_step_params(&b.ledger_path(), conn_str);
    let object = params.as_object_mut().expect("params are an object");
    for (key, value) in extra.as_object().expect("extra params are an object") {
        object.insert(key.clone(), value.clone());
    }
    b.write_params(&params);
}

/// Every resource of the workflow, as the ledger names it (`network/slow`).
fn all_resources() -> Vec<String> {
    FOUR_STEPS
        .iter()
        .flat_map(|step| resources(step).iter().map(move |r| format!("{step}/{r}")))
        .collect()
}

/// How many ledger lines say `<event> <resource>`.
fn count(ledger: &[String], event: &str, resource: &str) -> usize {
    let line = format!("{event} {resource}");
    ledger.iter().filter(|l| **l == line).count()
}

/// The code directory of a step on the PVC.
fn step_dir(b: &Bootstrapper, step: &str) -> PathBuf {
    b.root().join("code").join(step)
}

/// The resources in a step's state: the local state on the PVC for
/// control-network, the pg backend (schema = step, workspace c1) for the rest.
fn state_of(b: &Bootstrapper, conn_str: &str, step: &str) -> Vec<String> {
    if step == "control-network" {
        local_state_resources(&step_dir(b, step).join("terraform.tfstate"))
    } else {
        pg_state_resources(conn_str, step, "c1")
    }
}

/// Every step's state holds each of its resources exactly once, nothing else.
#[track_caller]
fn assert_states_complete(b: &Bootstrapper, conn_str: &str) {
    for step in FOUR_STEPS {
        assert_eq!(
            state_of(b, conn_str, step),
            expected_state(step),
            "state of {step}"
        );
    }
}

/// Every resource in a state now, as the ledger names it (`network/first`).
fn resources_in_states(b: &Bootstrapper, conn_str: &str) -> Vec<String> {
    let mut found = Vec::new();
    for step in FOUR_STEPS {
        for address in state_of(b, conn_str, step) {
            let resource = address.trim_start_matches("terraform_data.");
            found.push(format!("{step}/{resource}"));
        }
    }
    found
}

/// After a restart (`after`: its ledger lines), a resource that was in a
/// state when the pod died was not created again, and every other resource
/// was created exactly once; nothing was destroyed.
#[track_caller]
fn assert_created_only_what_was_missing(after: &[String], in_state_at_kill: &[String]) {
    for resource in all_resources() {
        let expected = usize::from(!in_state_at_kill.contains(&resource));
        assert_eq!(
            count(after, "create", &resource),
            expected,
            "create {resource} after the restart (in state at kill: {in_state_at_kill:?}): {after:#?}"
        );
    }
    assert!(
        !after.iter().any(|l| l.starts_with("destroy")),
        "{after:#?}"
    );
}

fn marker_path(b: &Bootstrapper, step: &str) -> PathBuf {
    b.root()
        .join(".bootstrapper/steps")
        .join(step)
        .join("inited")
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(step, state)` per row of a `status --json` document, in workflow order.
fn step_states(status: &Value) -> Vec<(String, String)> {
    status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|row| {
            (
                row["step"].as_str().expect("step").to_string(),
                row["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(step, state)| (step.to_string(), state.to_string()))
        .collect()
}

fn all_done() -> Vec<(String, String)> {
    FOUR_STEPS
        .iter()
        .map(|step| (step.to_string(), "done".to_string()))
        .collect()
}

/// Lines of terraform's own output for `step` (`[step] …`).
fn terraform_lines(stderr: &str, step: &str) -> usize {
    let prefix = format!("[{step}] ");
    stderr.lines().filter(|l| l.starts_with(&prefix)).count()
}

/// Whether the engine started any process for `step`: it logs each command
/// line before starting it, and tags every line the process prints.
fn started_a_process_for(stderr: &str, step: &str) -> bool {
    let command = format!("bootstrapper: info: {step}: $ ");
    terraform_lines(stderr, step) > 0 || stderr.lines().any(|l| l.starts_with(&command))
}

fn skipped(stderr: &str, step: &str) -> bool {
    stderr.contains(&format!(
        "bootstrapper: info: {step}: done, inputs unchanged: skipped"
    ))
}

/// A terraform stand-in that only records that it was started (and fails),
/// proving whether the engine ever ran a process.
fn terraform_probe(b: &Bootstrapper) -> (PathBuf, PathBuf) {
    let calls = b.dir().join("terraform-calls");
    let probe = b.dir().join("terraform-probe");
    write_script(
        &probe,
        format!(
            "#!/bin/sh\n{FAKE_VERSION}echo \"$*\" >> '{}'\nexit 1\n",
            calls.to_str().expect("UTF-8 path")
        ),
    );
    (probe, calls)
}

/// Waits until the ledger has `line`.
#[track_caller]
fn wait_for_ledger(b: &Bootstrapper, line: &str) {
    wait_for(|| b.ledger().iter().any(|l| l == line), PATIENCE);
}

// ---------------------------------------------------------------------------
// a. The four-step shape, end to end.

#[test]
fn four_steps_apply_end_to_end_creating_each_resource_once() {
    let (b, conn_str) = four_steps();
    let outcome = b.run(&["run"]);
    outcome.assert_success();

    let ledger = b.ledger();
    for resource in all_resources() {
        assert_eq!(
            count(&ledger, "create", &resource),
            1,
            "create {resource} in {ledger:#?}"
        );
    }
    let creates = ledger.iter().filter(|l| l.starts_with("create ")).count();
    assert_eq!(creates, all_resources().len(), "{ledger:#?}");
    assert!(
        !ledger.iter().any(|l| l.starts_with("destroy")),
        "{ledger:#?}"
    );
    // Steps run in order: each starts after the one before it is done.
    let first_create = |step: &str| {
        ledger
            .iter()
            .position(|l| l.starts_with(&format!("create {step}/")))
            .expect("created")
    };
    let last_create = |step: &str| {
        ledger
            .iter()
            .rposition(|l| l.starts_with(&format!("create {step}/")))
            .expect("created")
    };
    for pair in FOUR_STEPS.windows(2) {
        assert!(
            last_create(pair[0]) < first_create(pair[1]),
            "{} before {}: {ledger:#?}",
            pair[0],
            pair[1]
        );
    }

    // The later steps' backend is only named by control-network's conn_str
    // output: their states in that database prove the output got there, in
    // the workspace named by params.cluster_id.
    assert_states_complete(&b, &conn_str);
    for step in &FOUR_STEPS[1..] {
        assert!(
            pg_state_resources(&conn_str, step, "default").is_empty(),
            "{step} applied in the default workspace"
        );
    }
    assert_eq!(
        marker(&b, "control-network")["outputs"]["conn_str"],
        conn_str.as_str()
    );
    // network's output reached hosts through its vars template.
    let network_id = marker(&b, "network")["outputs"]["network_id"].clone();
    assert!(network_id.as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(marker(&b, "hosts")["outputs"]["network_id"], network_id);

    let status = status_json(&b);
    assert_eq!(step_states(&status), all_done(), "{status:#}");
    for row in status["steps"].as_array().expect("steps") {
        assert_eq!(row["attempts"], 1, "{row:#}");
        assert_eq!(row["last_error"], Value::Null, "{row:#}");
    }
    assert_eq!(status["lock"], Value::Null, "{status:#}");
}

// ---------------------------------------------------------------------------
// b. A pod kill during the second step's apply, then a restart.

#[test]
fn sigkill_during_the_second_step_then_rerun_completes_without_reapplying_the_first() {
    let (b, conn_str) = four_steps();
    set_params(&b, &conn_str, json!({ "sleep_network": SLOW_SECONDS }));
    let running = b.spawn(&["run"]);
    wait_for_ledger(&b, "start network/slow");
    let killed = running.kill_session();
    assert_eq!(killed.signal, Some(libc::SIGKILL), "{killed}");

    let at_kill = b.ledger();
    assert_eq!(count(&at_kill, "create", "network/slow"), 0, "{at_kill:#?}");
    // What the states held when the pod died: those resources exist and are
    // known, so the restart must not create them again.
    let in_state_at_kill = resources_in_states(&b, &conn_str);
    for resource in resources("control-network") {
        let resource = format!("control-network/{resource}");
        assert!(
            in_state_at_kill.contains(&resource),
            "{resource} not in state at kill time: {in_state_at_kill:?}"
        );
    }
    let vars = step_dir(&b, "control-network").join("bootstrapper.tfvars");
    let vars_written = mtime(&vars);
    let control_marker = fs::read(marker_path(&b, "control-network")).expect("marker");

    // The journal tells the story of the crash.
    let status = status_json(&b);
    assert_eq!(
        step_states(&status),
        states(&[
            ("control-network", "done"),
            ("network", "failed"),
            ("hosts", "pending"),
            ("system-job", "pending"),
        ]),
        "{status:#}"
    );
    let error = status["steps"][1]["last_error"].as_str().unwrap_or("");
    assert!(error.contains("interrupted"), "{status:#}");

    // The sleep was only a window for the kill; the restarted pod runs fast.
    set_params(&b, &conn_str, json!({}));
    let rerun = b.run(&["run"]);
    rerun.assert_success();

    assert!(skipped(&rerun.stderr, "control-network"), "{rerun}");
    assert!(
        !started_a_process_for(&rerun.stderr, "control-network"),
        "{rerun}"
    );
    assert_eq!(
        mtime(&vars),
        vars_written,
        "control-network's vars rewritten"
    );
    assert_eq!(
        fs::read(marker_path(&b, "control-network")).expect("marker"),
        control_marker
    );
    assert!(
        rerun.stderr.contains("network: attempt 1 (started"),
        "the cut-off attempt is not reported\n{rerun}"
    );

    let after = b.ledger()[at_kill.len()..].to_vec();
    assert!(
        !after.iter().any(|l| l.contains("control-network/")),
        "control-network applied again: {after:#?}"
    );
    assert_created_only_what_was_missing(&after, &in_state_at_kill);
    assert_states_complete(&b, &conn_str);
    assert_eq!(step_states(&status_json(&b)), all_done());
}

// ---------------------------------------------------------------------------
// c. A pod kill just after a marker was written, a torn temp marker beside it.

#[test]
fn sigkill_just_after_a_marker_leaves_a_torn_temp_that_the_rerun_removes_and_ignores() {
    let (b, conn_str) = four_steps();
    // network sleeps, so the kill lands before a second marker can exist.
    set_params(&b, &conn_str, json!({ "sleep_network": SLOW_SECONDS }));
    let running = b.spawn(&["run"]);
    let pid = running.pid();
    let marker_file = marker_path(&b, "control-network");
    wait_for(|| marker_file.exists(), PATIENCE);
    running.kill_session();

    let written = fs::read(&marker_file).expect("marker");
    // The marker is whole: a JSON record of the step.
    let parsed: Value = serde_json::from_slice(&written).expect("marker is JSON");
    assert_eq!(parsed["step"], "control-network");
    assert!(!marker_path(&b, "network").exists());

    // The next write of the marker was cut off half way, as a crash leaves it.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let torn = marker_file.with_file_name(format!(".inited.tmp-{pid}-{nanos}"));
    let half = &written[..written.len() / 2];
    fs::write(&torn, half).expect("write torn marker");
    assert!(serde_json::from_slice::<Value>(half).is_err());
    let at_kill = b.ledger();
    let in_state_at_kill = resources_in_states(&b, &conn_str);

    set_params(&b, &conn_str, json!({}));
    let rerun = b.run(&["run"]);
    rerun.assert_success();

    assert!(!torn.exists(), "the torn temp file is still there");
    let torn_name = torn.file_name().unwrap().to_str().unwrap();
    assert!(
        rerun
            .stderr
            .lines()
            .any(|l| l.contains("torn") && l.contains(torn_name)),
        "the removal is not reported\n{rerun}"
    );
    assert!(skipped(&rerun.stderr, "control-network"), "{rerun}");
    assert!(
        !started_a_process_for(&rerun.stderr, "control-network"),
        "{rerun}"
    );
    assert_eq!(fs::read(&marker_file).expect("marker"), written);
    let after = b.ledger()[at_kill.len()..].to_vec();
    assert!(
        !after.iter().any(|l| l.contains("control-network/")),
        "control-network applied again: {after:#?}"
    );
    assert_created_only_what_was_missing(&after, &in_state_at_kill);
    assert_states_complete(&b, &conn_str);
    assert_eq!(step_states(&status_json(&b)), all_done());
}

// ---------------------------------------------------------------------------
// Terraform's local backend rewrites terraform.tfstate in place (truncate, then
// write): a kill between the two leaves it empty or cut short. The engine keeps
// the last complete state beside it and puts it back before the step runs again.

/// Cuts the file to `keep` bytes, as a kill in the middle of terraform's write leaves it.
fn tear(path: &Path, keep: usize) -> Vec<u8> {
    let whole = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(keep < whole.len());
    fs::write(path, &whole[..keep]).expect("tear the state");
    whole
}

/// The torn files the engine kept beside the state it put back.
fn kept_torn(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("step dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("terraform.tfstate.torn-"))
        .collect()
}

#[test]
fn a_local_state_torn_by_a_kill_is_put_back_and_nothing_is_created_twice() {
    let (b, conn_str) = four_steps();
    set_params(
        &b,
        &conn_str,
        json!({ "sleep_control_network": SLOW_SECONDS }),
    );
    let running = b.spawn(&["run"]);
    wait_for_ledger(&b, "start control-network/slow");
    let state_file = step_dir(&b, "control-network").join("terraform.tfstate");
    // `first` is in the state before `slow` starts; the engine's copy follows within a poll.
    let copy = state_file.with_file_name("terraform.tfstate.last-complete");
    wait_for(
        || local_state_resources(&copy) == ["terraform_data.first"],
        PATIENCE,
    );
    let killed = running.kill_session();
    assert_eq!(killed.signal, Some(libc::SIGKILL), "{killed}");
    assert_eq!(local_state_resources(&state_file), ["terraform_data.first"]);
    let whole = tear(&state_file, 40);
    let at_kill = b.ledger();

    set_params(&b, &conn_str, json!({}));
    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(
        rerun
            .stderr
            .contains("was torn by a kill while terraform wrote it (40 bytes)"),
        "{rerun}"
    );
    let after = &b.ledger()[at_kill.len()..];
    assert_eq!(
        count(after, "start", "control-network/first"),
        0,
        "{after:#?}"
    );
    assert_eq!(
        count(after, "create", "control-network/slow"),
        1,
        "{after:#?}"
    );
    assert_states_complete(&b, &conn_str);
    let kept = kept_torn(&step_dir(&b, "control-network"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(&kept[0]).expect("kept"), &whole[..40]);
    assert_eq!(
        fs::metadata(&copy).expect("copy").permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn destroy_puts_back_an_emptied_local_state_and_destroys_what_it_held() {
    let (b, conn_str) = four_steps();
    b.run(&["run"]).assert_success();
    let state_file = step_dir(&b, "control-network").join("terraform.tfstate");
    tear(&state_file, 0);
    let applied = b.ledger();

    // The dry run says what the destroy would do first, and does not do it.
    let plan = b.run(&["plan", "--destroy"]);
    plan.assert_success();
    assert!(
        plan.stdout
            .contains("would be put back from terraform.tfstate.last-complete first"),
        "{plan}"
    );
    assert_eq!(fs::metadata(&state_file).expect("state").len(), 0);

    let destroy = b.run(&["destroy"]);
    destroy.assert_success();
    assert!(destroy.stderr.contains("was torn by a kill"), "{destroy}");
    let after = &b.ledger()[applied.len()..];
    for resource in all_resources() {
        assert_eq!(count(after, "destroy", &resource), 1, "{after:#?}");
    }
    for step in FOUR_STEPS {
        assert!(state_of(&b, &conn_str, step).is_empty(), "state of {step}");
    }
}

// ---------------------------------------------------------------------------
// d. A changed param re-applies only the steps whose rendered inputs changed.

#[test]
fn a_changed_param_reapplies_only_the_step_whose_inputs_changed() {
    let (b, conn_str) = four_steps();
    b.run(&["run"]).assert_success();
    let before = b.ledger();

    set_params(&b, &conn_str, json!({ "tag_hosts": "v2" }));
    let status = status_json(&b);
    assert_eq!(
        step_states(&status),
        states(&[
            ("control-network", "done"),
            ("network", "done"),
            ("hosts", "changed"),
            ("system-job", "done"),
        ]),
        "{status:#}"
    );
    assert_eq!(status["steps"][2]["changed_inputs"], json!(["vars"]));
    let text = b.run(&["status"]);
    text.assert_success();
    let hosts_row = text
        .stdout
        .lines()
        .find(|l| l.starts_with("hosts "))
        .unwrap_or_else(|| panic!("no hosts row\n{text}"));
    assert!(
        hosts_row.contains("changed") && hosts_row.contains("vars"),
        "{text}"
    );

    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(
        rerun.stderr.lines().any(
            |l| l.starts_with("bootstrapper: info: hosts: inputs changed") && l.contains("(vars)")
        ),
        "the changed input is not named\n{rerun}"
    );
    assert!(terraform_lines(&rerun.stderr, "hosts") > 0, "{rerun}");
    for step in ["control-network", "network", "system-job"] {
        assert!(skipped(&rerun.stderr, step), "{step}\n{rerun}");
        assert!(
            !started_a_process_for(&rerun.stderr, step),
            "{step}\n{rerun}"
        );
    }

    // The new tag replaces every hosts resource, and nothing else.
    let after = b.ledger()[before.len()..].to_vec();
    assert!(
        after.iter().all(|l| l.contains(" hosts/")),
        "other steps touched: {after:#?}"
    );
    for resource in resources("hosts") {
        let resource = format!("hosts/{resource}");
        assert_eq!(count(&after, "destroy", &resource), 1, "{after:#?}");
        assert_eq!(count(&after, "create", &resource), 1, "{after:#?}");
    }
    assert_states_complete(&b, &conn_str);
    assert_eq!(step_states(&status_json(&b)), all_done());
}

// ---------------------------------------------------------------------------
// e. Two runs at once.

#[test]
fn a_second_run_exits_3_naming_the_first_while_status_shows_the_step_in_flight() {
    let (b, conn_str) = four_steps();
    set_params(&b, &conn_str, json!({ "sleep_network": SLOW_SECONDS }));
    let mut first = b.spawn(&["run"]);
    wait_for_ledger(&b, "start network/slow");
    let ledger = b.ledger();

    let second = b.run(&["run"]);
    second.assert_code(3);
    assert!(
        first.try_wait().is_none(),
        "the second run waited for the first"
    );
    assert!(
        second.stderr.contains(&format!("pid {}", first.pid())),
        "{second}"
    );
    assert!(second.stderr.contains("`bootstrapper run`"), "{second}");
    for step in FOUR_STEPS {
        assert!(!started_a_process_for(&second.stderr, step), "{second}");
    }
    assert_eq!(b.ledger(), ledger);

    let status = status_json(&b);
    assert_eq!(
        step_states(&status),
        states(&[
            ("control-network", "done"),
            ("network", "running"),
            ("hosts", "pending"),
            ("system-job", "pending"),
        ]),
        "{status:#}"
    );
    assert_eq!(status["lock"]["pid"], first.pid(), "{status:#}");
    assert_eq!(status["lock"]["command"], "run", "{status:#}");
    let text = b.run(&["status"]);
    text.assert_success();
    assert!(
        text.stdout
            .contains(&format!("locked by pid {}", first.pid())),
        "{text}"
    );
    let network_row = text
        .stdout
        .lines()
        .find(|l| l.starts_with("network "))
        .unwrap_or_else(|| panic!("no network row\n{text}"));
    assert!(network_row.contains("running"), "{text}");
    assert!(first.try_wait().is_none(), "status disturbed the run");
    first.kill_session();
}

// ---------------------------------------------------------------------------
// f. Bad input: exit 2, naming the problem, before any process starts.

/// A root whose params need no database (these runs must never reach one),
/// with the terraform probe; the caller writes the workflow.
fn offline() -> (Bootstrapper, PathBuf) {
    let mut b = Bootstrapper::new();
    set_params(&b, "postgres://127.0.0.1:1/never-used", json!({}));
    let (probe, calls) = terraform_probe(&b);
    b.arg("--terraform").arg(probe);
    (b, calls)
}

/// Exit 2, and nothing ran: no terraform, no code copied, no ledger.
#[track_caller]
fn assert_refused_before_anything_ran(b: &Bootstrapper, calls: &Path, outcome: &Outcome) {
    outcome.assert_code(2);
    assert!(!calls.exists(), "terraform was started\n{outcome}");
    assert!(!b.root().join("code").exists(), "the code was copied");
    assert!(b.ledger().is_empty());
}

#[test]
fn the_terraform_probe_sees_a_run_on_valid_input() {
    // The control for the bad-input tests: with nothing wrong, the probe runs.
    let (b, calls) = offline();
    b.write_workflow(&workflow());
    let outcome = b.run(&["run"]);
    outcome.assert_code(1);
    let calls = read_lines(&calls);
    assert!(
        calls.first().is_some_and(|c| c.starts_with("init ")),
        "{calls:?}\n{outcome}"
    );
    assert!(b.root().join("code/control-network/main.tf").is_file());
}

#[test]
fn malformed_toml_exits_2_naming_file_line_and_column() {
    let (b, calls) = offline();
    b.write_workflow("[source]\ndir = \"code\"\n\n[[step]]\nname = \"network\"\ndir = network\n");
    let outcome = b.run(&["run"]);
    assert_refused_before_anything_ran(&b, &calls, &outcome);
    let at = format!("{}:6:", b.workflow_path().display());
    let position = outcome
        .stderr
        .find(&at)
        .unwrap_or_else(|| panic!("no {at}\n{outcome}"));
    let column: String = outcome.stderr[position + at.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(!column.is_empty(), "no column\n{outcome}");
    assert!(!b.root().join(".bootstrapper").exists());
}

#[test]
fn a_template_with_an_unknown_variable_exits_2_naming_template_variable_and_step() {
    let (b, calls) = offline();
    let original = fixtures_dir().join("templates/network.tfvars.tera");
    let template = b.dir().join("network.tfvars.tera");
    let mut text = fs::read_to_string(&original).expect("read template");
    text.push_str("region = \"{{ params.region }}\"\n");
    fs::write(&template, text).expect("write template");
    let workflow = workflow().replace(
        original.to_str().expect("UTF-8"),
        template.to_str().expect("UTF-8"),
    );
    assert_ne!(workflow, self::workflow());
    b.write_workflow(&workflow);
    let outcome = b.run(&["run"]);
    assert_refused_before_anything_ran(&b, &calls, &outcome);
    let line = outcome
        .stderr
        .lines()
        .find(|l| l.contains("`params.region`"))
        .unwrap_or_else(|| panic!("the variable is not named\n{outcome}"));
    assert!(line.contains(&template.display().to_string()), "{outcome}");
    assert!(line.contains("step `network`"), "{outcome}");
}

#[test]
fn a_step_dir_outside_the_code_tree_exits_2_naming_the_step() {
    let workflow = workflow()
        .replace("dir = \"network\"", "dir = \"../network\"")
        .replace("dir = \"hosts\"", "dir = \"/etc\"");
    let (b, calls) = offline();
    b.write_workflow(&workflow);
    let outcome = b.run(&["run"]);
    assert_refused_before_anything_ran(&b, &calls, &outcome);
    // Both at once: every problem is reported in one go.
    for (step, dir) in [("network", "../network"), ("hosts", "/etc")] {
        assert!(
            outcome
                .stderr
                .lines()
                .any(|l| l.contains(&format!("step `{step}`")) && l.contains(&format!("`{dir}`"))),
            "{step}\n{outcome}"
        );
    }
}

#[test]
fn a_missing_terraform_binary_exits_2_naming_it() {
    let mut b = Bootstrapper::new();
    b.write_workflow(&workflow());
    set_params(&b, "postgres://127.0.0.1:1/never-used", json!({}));
    let missing = b.dir().join("no-such-dir/terraform");
    b.arg("--terraform").arg(&missing);
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains(&missing.display().to_string()),
        "{outcome}"
    );
    assert!(!b.root().join("code").exists(), "the code was copied");
    assert!(b.ledger().is_empty());
}

// ---------------------------------------------------------------------------
// reset, validate, --log-format json.

#[test]
fn reset_forgets_one_step_and_the_next_run_applies_only_it() {
    let (b, conn_str) = four_steps();
    b.run(&["run"]).assert_success();
    let before = b.ledger();
    let applied_at = marker(&b, "network")["finished_at"].clone();

    let unknown = b.run(&["reset", "no-such-step"]);
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("no-such-step"), "{unknown}");
    assert!(marker_path(&b, "network").exists());

    b.run(&["reset", "network"]).assert_success();
    assert!(!marker_path(&b, "network").exists());
    assert_eq!(
        step_states(&status_json(&b))[1],
        ("network".to_string(), "pending".to_string())
    );

    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(
        rerun
            .stderr
            .contains("bootstrapper: info: network: applying"),
        "{rerun}"
    );
    assert!(terraform_lines(&rerun.stderr, "network") > 0, "{rerun}");
    for step in ["control-network", "hosts", "system-job"] {
        assert!(skipped(&rerun.stderr, step), "{step}\n{rerun}");
        assert!(
            !started_a_process_for(&rerun.stderr, step),
            "{step}\n{rerun}"
        );
    }
    assert_ne!(marker(&b, "network")["finished_at"], applied_at);
    // Its resources were in its state: applying again creates nothing.
    assert_eq!(b.ledger(), before);
    assert_states_complete(&b, &conn_str);
    assert_eq!(step_states(&status_json(&b)), all_done());
}

/// `bootstrapper validate` on a workflow and params of the repository.
fn validate(workflow: &str, params: &str) -> Outcome {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--workflow")
        .arg(repo.join(workflow))
        .arg("--params")
        .arg(repo.join(params))
        .arg("--root")
        .arg(root.path())
        .arg("validate");
    spawn_session(cmd, root.path()).wait(Duration::from_secs(60))
}

#[test]
fn validate_passes_on_the_shipped_workflows() {
    for (workflow, params, steps) in [
        (
            "workflows/demo.toml",
            "workflows/demo.params.json",
            "4 steps",
        ),
        (
            "workflows/bootstrap.toml",
            "workflows/bootstrap.params.example.json",
            "5 steps",
        ),
    ] {
        let outcome = validate(workflow, params);
        outcome.assert_success();
        assert!(outcome.stdout.contains(steps), "{workflow}\n{outcome}");
    }
}

/// Every line of `stderr` as a JSON object.
#[track_caller]
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

#[test]
fn log_format_json_makes_every_stderr_line_a_json_object() {
    // control-network alone: local state, no database.
    let full = workflow();
    let second = full.match_indices("[[step]]").nth(1).expect("two steps").0;
    let mut b = Bootstrapper::new();
    b.write_workflow(&format!("{}[settings]\nretries = 0\n", &full[..second]));
    set_params(&b, "postgres://127.0.0.1:1/never-used", json!({}));
    b.arg("--log-format").arg("json");

    let outcome = b.run(&["run"]);
    outcome.assert_success();
    let lines = json_lines(&outcome.stderr);
    for line in &lines {
        for key in ["timestamp", "level", "source", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
    // The engine's events about a step happen inside that step's span, within the command's.
    assert!(
        lines.iter().any(|l| l["source"] == "bootstrapper"
            && l["span"]["step"] == "control-network"
            && l["spans"][0]["command"] == "run"
            && l["spans"][0]["root"] == b.root().to_str().unwrap()),
        "{outcome}"
    );
    let from = |source: &str| {
        lines
            .iter()
            .filter(|l| l["source"] == source && l["step"] == "control-network")
            .count()
    };
    assert!(from("terraform") > 0, "{outcome}");
    assert!(from("bootstrapper") > 0, "{outcome}");
    assert_eq!(count(&b.ledger(), "create", "control-network/last"), 1);

    // A failure's last word is a log line too.
    let (probe, _) = terraform_probe(&b);
    b.arg("--terraform").arg(probe);
    b.run(&["reset", "control-network"]).assert_success();
    let failed = b.run(&["run"]);
    failed.assert_code(1);
    let last = json_lines(&failed.stderr).pop().expect("a line");
    assert_eq!(last["level"], "ERROR", "{failed}");
    assert_eq!(last["step"], "control-network", "{failed}");

    // So are validate's warnings, and an input error found before anything ran.
    set_params(
        &b,
        "postgres://127.0.0.1:1/never-used",
        json!({ "db_password": "abc" }),
    );
    let warned = b.run(&["validate"]);
    warned.assert_success();
    let lines = json_lines(&warned.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"].to_string().contains("db_password")),
        "{warned}"
    );
    b.write_workflow("[source]\ndir = code\n");
    let bad = b.run(&["run"]);
    bad.assert_code(2);
    let last = json_lines(&bad.stderr).pop().expect("a line");
    assert_eq!(last["level"], "ERROR", "{bad}");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{}:2:", b.workflow_path().display())),
        "{bad}"
    );
}

// ---------------------------------------------------------------------------
// A destroyed workflow: refused by a plain `run`, bootstrapped again by `run --recreate`.

#[test]
fn after_a_destroy_run_exits_1_and_run_recreate_bootstraps_again_in_one_command() {
    let (b, conn_str) = four_steps();
    b.run(&["run"]).assert_success();
    b.run(&["destroy"]).assert_success();
    let destroyed = b.ledger();

    let refused = b.run(&["run"]);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains("this workflow was destroyed at"),
        "{refused}"
    );
    assert_eq!(
        b.ledger(),
        destroyed,
        "a destroyed workflow was applied again"
    );

    let again = b.run(&["run", "--recreate"]);
    again.assert_success();
    assert!(
        again.stderr.contains("created again after a destroy"),
        "{again}"
    );
    let after = &b.ledger()[destroyed.len()..];
    for resource in all_resources() {
        assert_eq!(count(after, "create", &resource), 1, "{after:#?}");
    }
    assert_states_complete(&b, &conn_str);
    assert_eq!(step_states(&status_json(&b)), all_done());

    // Not destroyed any more: `--recreate` changes nothing, and a plain run skips it all.
    let skipped = b.run(&["run", "--recreate"]);
    skipped.assert_success();
    assert!(!skipped.stderr.contains("created again"), "{skipped}");
    assert_eq!(b.ledger().len(), destroyed.len() + after.len());
}
