//! The end-to-end suite of `serve --executor kubernetes` against a real cluster, run only when
//! one is named: KUBECONFIG (the controller's credentials: Jobs, pods, pods/log and Secrets
//! in the namespace) and BOOTSTRAPPER_E2E_IMAGE (an image holding the binary, terraform and
//! the tenant workflow, as deploy/Dockerfile builds it). Without them the test prints
//! "skipped: …" and passes: it proves nothing then, and says so. With them it creates a
//! cluster through a Job, waits until it is ready, destroys it, and fails on anything else.
//!
//! Optional: BOOTSTRAPPER_E2E_NAMESPACE (`default`), BOOTSTRAPPER_E2E_SERVICE_ACCOUNT (the
//! pods', which the workflow's state backend uses; `default`), BOOTSTRAPPER_E2E_WORKFLOW (the
//! workflow's path in the image, which must hold the same file here: the controller reads it
//! too; /usr/share/bootstrapper/workflows/tenant-e2e.toml), BOOTSTRAPPER_E2E_TIMEOUT (seconds
//! per phase, 600).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::controller::listening_address;
use crate::support::*;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .expect("request");
        let mut response = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("read body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until cluster `id` is in `phase`; a failure, or the timeout, fails the test
    /// with the document, the operation's log and the controller's stderr.
    fn wait_phase(&self, id: &str, phase: &str, timeout: Duration, serve: &Running) {
        let start = Instant::now();
        loop {
            let (_, document) = self.call("GET", &format!("/v1/clusters/{id}"), None);
            if document["phase"] == phase {
                return;
            }
            if document["phase"] == "failed" || start.elapsed() > timeout {
                let (_, log) = self.call("GET", &format!("/v1/clusters/{id}/log"), None);
                panic!(
                    "{id} is not {phase} after {:?}: {document:#}\n--- its log ---\n{log:#}\n--- serve ---\n{}",
                    start.elapsed(),
                    serve.stderr()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

#[test]
fn real_cluster_e2e_runs_only_with_kubeconfig_and_image_else_skipped() {
    let (kubeconfig, image) = match (var("KUBECONFIG"), var("BOOTSTRAPPER_E2E_IMAGE")) {
        (Some(k), Some(i)) => (k, i),
        (k, _) => {
            let missing = if k.is_none() {
                "KUBECONFIG not set"
            } else {
                "BOOTSTRAPPER_E2E_IMAGE not set"
            };
            eprintln!(
                "skipped: {missing}: the end-to-end suite against a real cluster did not run (see the README, \"Operations as Kubernetes Jobs\")"
            );
            return;
        }
    };
    let namespace = var("BOOTSTRAPPER_E2E_NAMESPACE").unwrap_or_else(|| "default".into());
    let account = var("BOOTSTRAPPER_E2E_SERVICE_ACCOUNT").unwrap_or_else(|| "default".into());
    let workflow = var("BOOTSTRAPPER_E2E_WORKFLOW")
        .unwrap_or_else(|| "/usr/share/bootstrapper/workflows/tenant-e2e.toml".into());
    let timeout = Duration::from_secs(
        var("BOOTSTRAPPER_E2E_TIMEOUT").map_or(600, |t| t.parse().expect("seconds")),
    );
    assert!(
        std::path::Path::new(&workflow).is_file(),
        "{workflow} must be here as in the image (the controller reads it, the Jobs' engine too): copy workflows/ and demo/ to /usr/share/bootstrapper/, or set BOOTSTRAPPER_E2E_WORKFLOW"
    );
    eprintln!(
        "end-to-end against the cluster of {kubeconfig}, namespace {namespace}, image {image}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let template = dir.path().join("job-template.yaml");
    std::fs::write(
        &template,
        format!(
            "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      serviceAccountName: {account}\n      containers:\n        - name: engine\n          image: {image}\n          env:\n            - name: KUBE_IN_CLUSTER_CONFIG\n              value: \"true\"\n            - name: KUBE_NAMESPACE\n              value: {namespace}\n"
        ),
    )
    .unwrap();
    let root = dir.path().join("root");
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
            command.env_remove(key);
        }
    }
    command.args([
        "--workflow",
        &workflow,
        "--root",
        root.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-no-auth",
        "--executor",
        "kubernetes",
        "--namespace",
        &namespace,
        "--job-template",
        template.to_str().unwrap(),
    ]);
    let serve = spawn_session(command, dir.path());
    let address = listening_address(&serve, Duration::from_secs(60));
    let api = Api {
        base: format!("http://{address}"),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into(),
    };

    let id = format!("e2e-{}", std::process::id());
    let (status, body) = api.call(
        "PUT",
        &format!("/v1/clusters/{id}"),
        Some(json!({"params": {}})),
    );
    assert_eq!(status, 202, "{body}");
    api.wait_phase(&id, "ready", timeout, &serve);
    let log = std::fs::read_to_string(root.join("clusters").join(&id).join("operation.log"))
        .expect("the Job's log kept as the operation's");
    assert!(log.contains(&format!("# Job bs-{id}-apply-1-1")), "{log}");

    let (status, body) = api.call("DELETE", &format!("/v1/clusters/{id}"), None);
    assert_eq!(status, 202, "{body}");
    api.wait_phase(&id, "destroyed", timeout, &serve);
    serve.signal(libc::SIGTERM);
    serve.wait(Duration::from_secs(30)).assert_code(143);
    eprintln!("end-to-end: {id} created and destroyed through Jobs");
}
