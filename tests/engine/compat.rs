//! A root written by an earlier version is read by this one: `tests/fixtures/old-root/root` is
//! the demo bootstrapped by the engine before its source was regrouped into layers, with the
//! workflow, templates and tree it was applied with beside it. Its markers' digests name the
//! root's path, so the copy goes back to where it was written.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{copy_tree, local_state_resources, spawn_session, Outcome, BIN};

/// Where the fixture's root was written; its outputs and digests hold this path.
const WRITTEN_AT: &str = "/tmp/bootstrapper-old-root";

fn bootstrapper(fixture: &Path, log_dir: &Path, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .arg("--workflow")
        .arg(fixture.join("workflows/demo.toml"))
        .arg("--params")
        .arg(fixture.join("workflows/demo.params.json"))
        .arg("--root")
        .arg(WRITTEN_AT)
        .args(args);
    spawn_session(cmd, log_dir).wait(Duration::from_secs(120))
}

#[test]
fn a_root_written_before_the_layout_is_read_skipped_and_destroyed() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-root");
    let logs = tempfile::tempdir().unwrap();
    let root = Path::new(WRITTEN_AT);
    let _ = fs::remove_dir_all(root);
    copy_tree(&fixture.join("root"), root);

    let status = bootstrapper(&fixture, logs.path(), &["status", "--json"]);
    status.assert_success();
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let steps = status["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "{status}");
    for step in steps {
        assert_eq!(step["state"], "done", "{status}");
        assert_eq!(step["attempts"], 1, "{status}");
    }

    // Same inputs, same digests: nothing is applied again, no terraform starts.
    let run = bootstrapper(&fixture, logs.path(), &["run"]);
    run.assert_success();
    assert!(
        run.stderr.contains("0 applied, 4 unchanged"),
        "every step must be skipped\n{run}"
    );
    assert!(!run.stderr.contains("Apply complete"), "{run}");

    let control_network = root.join("demo/control-network/terraform.tfstate");
    assert!(!local_state_resources(&control_network).is_empty());
    bootstrapper(&fixture, logs.path(), &["destroy"]).assert_success();
    assert_eq!(
        local_state_resources(&control_network),
        Vec::<String>::new()
    );
    fs::remove_dir_all(root).unwrap();
}
