//! The test harness itself, checked against the real programs: PostgreSQL,
//! terraform with the pg backend, the four-step fixtures and their templates,
//! and session kills. If these fail, no engine test result can be trusted.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

/// Renders a fixture template the way the contract describes: Tera over
/// `params` and `steps.<name>.outputs.<output>`.
fn render(template: &str, context: &Value) -> String {
    let path = fixtures_dir().join("templates").join(template);
    let text = fs::read_to_string(&path).expect("read template");
    let context = tera::Context::from_value(context.clone()).expect("context");
    tera::Tera::one_off(&text, &context, false)
        .unwrap_or_else(|e| panic!("render {}: {e:?}", path.display()))
}

/// A copy of one fixture step with its rendered tfvars, as the engine lays it
/// out on the PVC.
fn prepare_step(work: &Path, step: &str, tfvars: &str) -> std::path::PathBuf {
    let dir = work.join(step);
    fs::create_dir_all(&dir).expect("create step dir");
    fs::copy(
        fixtures_dir().join(step).join("main.tf"),
        dir.join("main.tf"),
    )
    .expect("copy main.tf");
    fs::write(dir.join("bootstrapper.tfvars"), tfvars).expect("write tfvars");
    dir
}

fn tf(dir: &Path, args: &[&str]) -> Outcome {
    let outcome = terraform(dir, args);
    outcome.assert_success();
    outcome
}

fn init_pg(dir: &Path, conn_str: &str, schema: &str) {
    tf(
        dir,
        &[
            "init",
            "-input=false",
            &format!("-backend-config=conn_str={conn_str}"),
            &format!("-backend-config=schema_name={schema}"),
        ],
    );
}

const APPLY: &[&str] = &[
    "apply",
    "-auto-approve",
    "-input=false",
    "-var-file=bootstrapper.tfvars",
];
const DESTROY: &[&str] = &[
    "destroy",
    "-auto-approve",
    "-input=false",
    "-var-file=bootstrapper.tfvars",
];

fn lines(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

#[test]
fn each_test_database_is_separate() {
    let first = fresh_database();
    let second = fresh_database();
    assert_ne!(first, second);
    assert!(
        first.starts_with("postgres://postgres@127.0.0.1:"),
        "{first}"
    );

    psql(&first, "CREATE TABLE only_here (x int);", &[]);
    let count = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here';";
    assert_eq!(psql(&first, count, &[]).trim(), "1");
    assert_eq!(psql(&second, count, &[]).trim(), "0");

    // No schema, table or row yet is an empty state, not an error.
    assert!(pg_state_resources(&second, "network", "c1").is_empty());
}

#[test]
fn network_and_hosts_fixtures_apply_and_destroy_in_pg_backend() {
    let conn_str = fresh_database();
    let other_db = fresh_database();
    let work = tempfile::tempdir().expect("temp dir");
    let ledger = work.path().join("ledger");
    let params = json!({ "ledger": ledger, "tag_network": "v1" });

    let network = prepare_step(
        work.path(),
        "network",
        &render("network.tfvars.tera", &json!({ "params": params })),
    );
    init_pg(&network, &conn_str, "network");
    tf(&network, &["workspace", "select", "-or-create", "c1"]);
    // Creating the workspace stores an empty state row for it.
    assert!(pg_state(&conn_str, "network", "c1").is_some());
    assert!(pg_state_resources(&conn_str, "network", "c1").is_empty());

    tf(&network, APPLY);
    // first -> slow -> last depend on each other, so the order is fixed.
    assert_eq!(
        read_lines(&ledger),
        lines(&[
            "start network/first",
            "create network/first",
            "start network/slow",
            "create network/slow",
            "start network/last",
            "create network/last",
        ])
    );
    assert_eq!(
        pg_state_resources(&conn_str, "network", "c1"),
        [
            "terraform_data.first",
            "terraform_data.last",
            "terraform_data.slow"
        ]
    );
    assert!(pg_state_resources(&conn_str, "network", "default").is_empty());
    assert!(pg_state_resources(&other_db, "network", "c1").is_empty());

    // hosts gets network's output through its template, like the engine does.
    let outputs: Value =
        serde_json::from_str(&tf(&network, &["output", "-json"]).stdout).expect("output json");
    let network_id = outputs["network_id"]["value"].clone();
    assert!(network_id.as_str().is_some_and(|id| !id.is_empty()));
    let hosts = prepare_step(
        work.path(),
        "hosts",
        &render(
            "hosts.tfvars.tera",
            &json!({
                "params": params,
                "steps": { "network": { "outputs": { "network_id": network_id } } },
            }),
        ),
    );
    init_pg(&hosts, &conn_str, "hosts");
    tf(&hosts, &["workspace", "select", "-or-create", "c1"]);
    tf(&hosts, APPLY);
    assert_eq!(
        pg_state_resources(&conn_str, "hosts", "c1"),
        [
            "terraform_data.client[0]",
            "terraform_data.client[1]",
            "terraform_data.first",
            "terraform_data.slow",
        ]
    );
    let hosts_out: Value =
        serde_json::from_str(&tf(&hosts, &["output", "-json"]).stdout).expect("output json");
    assert_eq!(hosts_out["network_id"]["value"], network_id);

    let created = read_lines(&ledger).len();
    tf(&hosts, DESTROY);
    tf(&network, DESTROY);
    let destroyed = read_lines(&ledger)[created..].to_vec();
    for resource in [
        "hosts/first",
        "hosts/slow",
        "hosts/client[0]",
        "hosts/client[1]",
        "network/first",
        "network/slow",
        "network/last",
    ] {
        let count = destroyed
            .iter()
            .filter(|line| **line == format!("destroy {resource}"))
            .count();
        assert_eq!(count, 1, "destroy {resource} in {destroyed:#?}");
    }
    assert!(pg_state_resources(&conn_str, "hosts", "c1").is_empty());
    assert!(pg_state_resources(&conn_str, "network", "c1").is_empty());
}

#[test]
fn control_network_fixture_keeps_local_state_and_outputs() {
    let work = tempfile::tempdir().expect("temp dir");
    let ledger = work.path().join("ledger");
    let conn_str = "postgres://postgres@127.0.0.1:1/unused?sslmode=disable";
    let params = four_step_params(&ledger, conn_str);
    let dir = prepare_step(
        work.path(),
        "control-network",
        &render("control-network.tfvars.tera", &json!({ "params": params })),
    );
    tf(&dir, &["init", "-input=false"]);
    tf(&dir, APPLY);

    assert_eq!(
        local_state_resources(&dir.join("terraform.tfstate")),
        [
            "terraform_data.first",
            "terraform_data.last",
            "terraform_data.slow"
        ]
    );
    let outputs: Value =
        serde_json::from_str(&tf(&dir, &["output", "-json"]).stdout).expect("output json");
    assert_eq!(outputs["conn_str"]["value"], conn_str);
    assert_eq!(outputs["endpoint"]["sensitive"], false);
    assert_eq!(outputs["admin_token"]["sensitive"], true);
    assert_eq!(outputs["admin_token"]["value"], ADMIN_TOKEN);

    tf(&dir, DESTROY);
    assert!(local_state_resources(&dir.join("terraform.tfstate")).is_empty());
    assert_eq!(
        read_lines(&ledger)
            .iter()
            .filter(|line| line.starts_with("destroy "))
            .count(),
        3
    );
}

#[test]
fn four_step_workflow_names_the_fixture_and_its_templates() {
    let workflow: toml::Value =
        toml::from_str(&four_step_workflow(&fixtures_dir())).expect("workflow is TOML");
    assert_eq!(workflow["source"]["dir"].as_str(), Some("code"));
    let image_dir = workflow["source"]["image_dir"].as_str().expect("image_dir");
    assert!(Path::new(image_dir).is_absolute() && Path::new(image_dir).is_dir());

    let steps = workflow["step"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, FOUR_STEPS);
    for step in steps {
        let name = step["name"].as_str().unwrap();
        assert!(Path::new(image_dir).join(name).join("main.tf").is_file());
        assert!(Path::new(step["vars"].as_str().unwrap()).is_file());
        if name == "control-network" {
            assert!(step.get("workspace").is_none() && step.get("backend_config").is_none());
        } else {
            assert_eq!(step["workspace"].as_str(), Some("{{ params.cluster_id }}"));
            assert_eq!(
                step["backend_config"]["conn_str"].as_str(),
                Some("{{ steps.control_network.outputs.conn_str }}")
            );
            assert_eq!(step["backend_config"]["schema_name"].as_str(), Some(name));
        }
    }
}

#[test]
fn kill_session_takes_every_process_of_the_session_and_no_other() {
    let logs = tempfile::tempdir().expect("temp dir");
    let mut victim = Command::new("sh");
    victim.args(["-c", "sleep 100 & sleep 100"]);
    let victim = spawn_session(victim, logs.path());
    let mut bystander = Command::new("sleep");
    bystander.arg("100");
    let mut bystander = spawn_session(bystander, logs.path());

    // Both sleeps run before the kill, so the background one, which is not
    // our child, is really in the session.
    let sid = victim.pid();
    let sleeps_in_session = || {
        session_members(sid)
            .iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
    };
    wait_for(|| sleeps_in_session() == 2, Duration::from_secs(10));

    let outcome = victim.kill_session();
    assert_eq!(outcome.signal, Some(libc::SIGKILL), "{outcome}");
    assert!(session_members(sid).is_empty());
    assert!(bystander.try_wait().is_none(), "bystander was killed too");
    assert_eq!(session_members(bystander.pid()).len(), 1);
}

#[test]
fn wait_for_panics_when_the_condition_never_holds() {
    let result = std::panic::catch_unwind(|| wait_for(|| false, Duration::from_millis(200)));
    let message = *result
        .expect_err("must panic")
        .downcast::<String>()
        .expect("message");
    assert!(message.contains("harness.rs"), "{message}");
}

#[test]
fn bootstrapper_command_puts_the_pod_layout_before_the_command() {
    let mut b = Bootstrapper::new();
    b.arg("--lock-timeout=5s").env("EXTRA", "1");
    let cmd = b.command(&["status", "--json"]);
    let args: Vec<String> = cmd
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    assert_eq!(
        args,
        [
            "--workflow".to_string(),
            path(b.workflow_path()),
            "--params".to_string(),
            path(b.params_path()),
            "--root".to_string(),
            path(b.root()),
            "--lock-timeout=5s".to_string(),
            "status".to_string(),
            "--json".to_string(),
        ]
    );
    let env: Vec<(String, Option<String>)> = cmd
        .get_envs()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.map(|v| v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    for key in ["TF_IN_AUTOMATION", "CHECKPOINT_DISABLE", "EXTRA"] {
        assert!(
            env.iter()
                .any(|(k, v)| k == key && v.as_deref() == Some("1")),
            "{key} in {env:?}"
        );
    }
    assert!(b.root().is_dir());
    assert!(b.ledger().is_empty());
}
