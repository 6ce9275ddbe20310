//! Where the controller's files and its engines' are: paths given relative to where it was
//! started, the engine's root apart from the controller's files, the controller's lock outside
//! the cluster ids, a full volume, and clusters left by an older version.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);

/// A client of a controller not started by [`Bed::start`].
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: String) -> Self {
        Client {
            base,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .max_idle_connections(0)
                .build()
                .into(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut response = self.agent.run(request).unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        (
            response.status().as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }
}

/// The address `serve` listens on, once it says so.
fn listening(running: &Running) -> String {
    let mut address = None;
    wait_for(
        || {
            let stderr = running.stderr();
            address = stderr
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .map(str::to_owned);
            address.is_some() || stderr.contains("error")
        },
        Duration::from_secs(30),
    );
    address.unwrap_or_else(|| panic!("serve did not start:\n{}", running.stderr()))
}

#[test]
fn serve_started_with_relative_paths_creates_a_cluster_that_becomes_ready() {
    let bed = Bed::new();
    let dir = bed.b.dir();
    // A terraform named by a path with a slash, relative like the rest.
    fs::create_dir(dir.join("bin")).unwrap();
    let terraform = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v terraform"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(terraform.trim(), dir.join("bin/terraform")).unwrap();
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_VAR_pg_conn_str", &bed.pg)
        .env("TF_VAR_ledger", bed.b.ledger_path())
        .env("TF_VAR_sleep_seconds", "0")
        .args(["--workflow", "workflow.toml", "--root", "root"])
        .args(["--terraform", "bin/terraform", "serve"])
        .args(["--listen", "127.0.0.1:0", "--tokens", "tokens"]);
    let running = spawn_session(cmd, dir);
    let client = Client::new(listening(&running));
    assert_eq!(client.send("GET", "/readyz", None).0, 200);
    let (status, _) = client.send(
        "PUT",
        "/v1/clusters/r1",
        Some(&json!({ "params": { "namesvr_count": 1 } })),
    );
    assert_eq!(status, 202);
    let mut doc = Value::Null;
    let settled = poll(
        || {
            doc = client.send("GET", "/v1/clusters/r1", None).1;
            doc["phase"] == "ready" || doc["phase"] == "failed"
        },
        CONVERGE,
    );
    assert!(settled && doc["phase"] == "ready", "{doc:#}");
    // The engine was handed absolute paths, whatever the controller was started with.
    let log = fs::read_to_string(bed.cluster_dir("r1").join("operation.log")).unwrap();
    let command = log.lines().next().unwrap();
    let root = bed.cluster_dir("r1").join("engine");
    assert!(
        command.contains(&format!("--root {}", root.display())),
        "{command}"
    );
    let bin = dir.join("bin/terraform");
    assert!(
        command.contains(&format!("--terraform {}", bin.display())),
        "{command}"
    );
}

#[test]
fn a_failed_operation_reports_the_engines_error_not_only_its_hint() {
    let dir = tenant_fixture_dir();
    let quoted = serde_json::to_string(dir.to_str().unwrap()).unwrap();
    let workflow = tenant_workflow().replace(
        &format!("image_dir = {quoted}"),
        "image_dir = \"/nonexistent/tenant-code\"",
    );
    assert!(workflow.contains("/nonexistent/tenant-code"));
    let bed = Bed::with_workflow(&workflow);
    let c = bed.start(&[], &[]);
    assert_eq!(c.put("e1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for(|| c.phase("e1") == "failed", CONVERGE);
    let doc = c.cluster("e1");
    let error = doc["last_error"].as_str().unwrap();
    assert!(
        error.contains("neither the code directory") && error.contains("/nonexistent/tenant-code"),
        "{doc:#}"
    );
    assert!(error.contains("hint: check `source.image_dir`"), "{doc:#}");
}

#[test]
fn an_operations_lines_are_the_engines_in_the_controllers_json_log() {
    let bed = Bed::new();
    let mut c = bed.start(&["--log-format", "json"], &[]);
    assert_eq!(c.put("j1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["j1".to_string()], "ready", CONVERGE);
    c.running().signal(libc::SIGTERM);
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    outcome.assert_code(143);
    let lines: Vec<Value> = outcome
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let engine = lines
        .iter()
        .filter(|l| l["step"] == "j1" && l["source"] == "engine")
        .count();
    assert!(engine > 0, "{}", outcome.stderr);
    // The controller runs no terraform of its own: no line can be terraform's.
    assert!(
        !lines.iter().any(|l| l["source"] == "terraform"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn the_engine_keeps_its_own_root_and_puts_during_operations_never_fail() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    assert_eq!(c.put("t1", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["t1".to_string()], "ready", CONVERGE);
    let dir = bed.cluster_dir("t1");
    // A temp file of the controller's, as one being written when an engine starts: the
    // engine removes torn temp files in its root, and must not see this one.
    let temp = dir.join(".intent.json.tmp-1-1");
    fs::write(&temp, "{}").unwrap();
    assert_eq!(c.put("t1", &json!({ "namesvr_count": 2 })).status, 202);
    wait_for(
        || c.cluster("t1")["last_operation"]["generation"] == 2,
        CONVERGE,
    );
    assert!(temp.exists(), "the engine removed the controller's file");
    assert!(dir.join("engine/.bootstrapper").is_dir());
    assert!(!dir.join(".bootstrapper").exists());
    fs::remove_file(&temp).unwrap();

    // New params as fast as they come while operations run, each starting an engine.
    let end = Instant::now() + Duration::from_secs(6);
    let mut puts = 0;
    while Instant::now() < end {
        let params = json!({ "namesvr_count": 1 + puts % 2, "sleep_seconds": 1 });
        let reply = c.put("t1", &params);
        assert!(
            reply.status == 202 || reply.status == 200,
            "PUT {puts}: {reply:?}"
        );
        puts += 1;
    }
    assert!(puts > 50, "only {puts} PUTs");
    c.wait_phase(&["t1".to_string()], "ready", CONVERGE);
}

#[test]
fn the_cluster_id_lock_is_free_and_an_older_controllers_lock_is_honoured() {
    let bed = Bed::new();
    let clusters = bed.b.root().join("clusters");
    fs::create_dir_all(&clusters).unwrap();
    // An older controller, still running on this root, holds its lock there.
    let old = fs::File::create(clusters.join("lock")).unwrap();
    old.try_lock().unwrap();
    let tokens = bed.tokens_path();
    let args = ["serve", "--listen", "127.0.0.1:0", "--tokens"];
    let refused = bed
        .b
        .run(&[&args[..], &[tokens.to_str().unwrap()]].concat());
    refused.assert_code(3);
    drop(old);

    let c = bed.start(&[], &[]);
    assert!(
        !clusters.join("lock").exists(),
        "the old lock is still there"
    );
    assert_eq!(c.put("lock", &json!({ "namesvr_count": 1 })).status, 202);
    c.wait_phase(&["lock".to_string()], "ready", CONVERGE);
    // The controller's own lock still keeps a second one out.
    let second = bed
        .b
        .run(&[&args[..], &[tokens.to_str().unwrap()]].concat());
    second.assert_code(3);
}

/// A tmpfs mounted for the length of a test; unmounted on drop, even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} (this test needs root and the right to mount): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_space(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

#[test]
fn a_full_volume_is_not_ready_and_a_put_it_refuses_leaves_nothing() {
    let workflow =
        tenant_workflow().replace("[settings]\n", "[settings]\nmin_free_space = \"1MiB\"\n");
    let bed = Bed::with_workflow(&workflow);
    let _tmpfs = Tmpfs::mount(&bed.b.root(), "4m");
    let mut c = bed.start(&[], &[]);
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 200, "{ready:?}");

    // Under the engine's floor: every apply would fail, so the controller is not ready.
    let filler = bed.b.root().join("filler");
    let free = free_space(&bed.b.root());
    fs::write(&filler, vec![0u8; (free - 512 * 1024) as usize]).unwrap();
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.text.contains("min_free_space"), "{ready:?}");

    // Full: the intent cannot be written, and the request leaves no trace.
    {
        use std::io::Write;
        let mut file = fs::OpenOptions::new().append(true).open(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    let reply = c.put("full", &json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 507, "{reply:?}");
    assert!(
        reply.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("free space")),
        "{reply:?}"
    );
    assert!(
        !bed.cluster_dir("full").exists(),
        "a refused PUT left its directory"
    );
    assert_eq!(c.get("/v1/clusters/full").status, 404);

    fs::remove_file(&filler).unwrap();
    assert_eq!(c.request("GET", "/readyz", None, None).status, 200);
    c.running().signal(libc::SIGTERM);
    c.running.take().unwrap().wait(Duration::from_secs(60));
}

#[test]
fn clusters_left_by_an_older_version_are_moved_with_every_file() {
    let bed = Bed::new();
    let mut c = bed.start(&[], &[]);
    assert_eq!(c.put("m1", &json!({ "namesvr_count": 2 })).status, 202);
    c.wait_phase(&["m1".to_string()], "ready", CONVERGE);
    let before = c.cluster("m1");
    c.running().signal(libc::SIGTERM);
    c.running
        .take()
        .unwrap()
        .wait(Duration::from_secs(60))
        .assert_code(143);

    // The layout of the older version: the engine's root is the cluster's directory, and the
    // controller's lock is `clusters/lock`.
    let dir = bed.cluster_dir("m1");
    let engine = dir.join("engine");
    let mut moved = Vec::new();
    for entry in fs::read_dir(&engine).unwrap() {
        let name = entry.unwrap().file_name();
        fs::rename(engine.join(&name), dir.join(&name)).unwrap();
        moved.push(name.to_string_lossy().into_owned());
    }
    fs::remove_dir(&engine).unwrap();
    moved.sort();
    assert_eq!(moved, [".bootstrapper", "code"]);
    fs::write(dir.join("code/namesvr/kept.tfstate"), "a local state").unwrap();
    fs::write(bed.b.root().join("clusters/lock"), "").unwrap();
    fs::remove_dir_all(bed.b.root().join("controller")).unwrap();
    let files = |root: &Path| {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() && !path.is_symlink() {
                    stack.push(path.clone());
                }
                files.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
        files.sort();
        files
    };
    let engine_files: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|p| p.starts_with(".bootstrapper") || p.starts_with("code"))
        .collect();

    let c = bed.start(&[], &[]);
    assert!(!dir.join(".bootstrapper").exists() && !dir.join("code").exists());
    assert_eq!(files(&engine), engine_files, "a file was lost in the move");
    assert_eq!(
        fs::read_to_string(engine.join("code/namesvr/kept.tfstate")).unwrap(),
        "a local state"
    );
    assert!(!bed.b.root().join("clusters/lock").exists());
    let after = c.cluster("m1");
    assert_eq!(after["phase"], "ready", "{after:#}");
    assert_eq!(after["steps"], before["steps"]);
    assert_eq!(after["outputs"], before["outputs"]);
    // The engine finds its journal and states where they were moved: the destroy removes
    // every resource.
    assert_eq!(c.delete("m1").status, 202);
    c.wait_phase(&["m1".to_string()], "destroyed", CONVERGE);
    assert!(bed.state_resources("m1").is_empty());
}
