//! Meeting another at the same moment: the pg backend's workspace-creation lock is one per
//! database and terraform does not wait for it, so an engine whose apply finds it held runs
//! the apply again shortly after, without counting a failed attempt; and a `destroy` that
//! finds a `reset` holding the root's lock waits for it, never interrupting it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use crate::support::*;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(120);

/// A psql session holding the pg backend's workspace-creation lock (advisory lock -1) in
/// `conn_str`'s database, as another terraform creating a workspace there does. Dropping it
/// ends the session, which lets go of the lock.
struct CreationLock {
    psql: Child,
}

impl CreationLock {
    fn take(conn_str: &str) -> Self {
        let mut psql = Command::new(pg_bin_dir().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conn_str,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run psql");
        psql.stdin
            .as_mut()
            .expect("psql stdin")
            .write_all(b"SELECT pg_advisory_lock(-1);\nSELECT 'locked';\n")
            .expect("write to psql");
        let stdout = psql.stdout.take().expect("psql stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.trim() == "locked" {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        rx.recv_timeout(PATIENCE).expect("psql took the lock");
        CreationLock { psql }
    }
}

impl Drop for CreationLock {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

#[test]
fn an_apply_that_finds_the_workspace_creation_lock_held_runs_again_without_an_attempt() {
    let b = Bootstrapper::new();
    let conn_str = fresh_database();
    let module = b.dir().join("tree/a");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(
        module.join("main.tf"),
        "terraform {\n  backend \"pg\" {}\n}\n\nresource \"terraform_data\" \"x\" {}\n",
    )
    .unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = \"tree\"\n\n[settings]\nretries = 0\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\nworkspace = \"w1\"\n\
         backend_config = {{ conn_str = {conn_str:?}, schema_name = \"a\" }}\n"
    ));
    b.write_params(&json!({}));

    let lock = CreationLock::take(&conn_str);
    let mut run = b.spawn(&["run"]);
    let retrying = "another terraform was setting up the same backend at that moment";
    wait_for(
        || run.stderr().contains(retrying) || run.try_wait().is_some(),
        PATIENCE,
    );
    drop(lock);
    let outcome = run.wait(PATIENCE);
    outcome.assert_success();
    assert!(
        outcome
            .stderr
            .contains("Already locked for workspace creation"),
        "{outcome}"
    );
    assert!(outcome.stderr.contains(retrying), "{outcome}");
    // Met a race, not a failure: one attempt, no error left behind.
    let status = status_json(&b);
    assert_eq!(status["steps"][0]["state"], "done", "{status:#}");
    assert_eq!(status["steps"][0]["attempts"], 1, "{status:#}");
    assert_eq!(
        pg_state_resources(&conn_str, "a", "w1"),
        ["terraform_data.x"]
    );
}

/// A one-step workflow of local state on a fresh root, applied.
fn applied_root() -> Bootstrapper {
    let b = Bootstrapper::new();
    let module = b.dir().join("tree/a");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(
        module.join("main.tf"),
        "resource \"terraform_data\" \"x\" {}\n",
    )
    .unwrap();
    b.write_workflow(
        "[source]\ndir = \"code\"\nimage_dir = \"tree\"\n\n[[step]]\nname = \"a\"\ndir = \"a\"\n",
    );
    b.write_params(&json!({}));
    b.run(&["run"]).assert_success();
    b
}

/// A process holding the root's lock (a real flock on the lock file) that names itself there
/// as the engine does: its own pid, `host` (this host's name by default), `command`. Its pid
/// is the process that a destroy would signal.
fn holder(b: &Bootstrapper, command: &str, host: Option<&str>) -> Running {
    let lock = b.root().join(".bootstrapper/lock");
    let host = match host {
        Some(host) => host.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string(),
    };
    let mut cmd = Command::new("flock");
    cmd.arg("-x").arg(&lock).args([
        "sh",
        "-c",
        r#"printf '{"pid":%d,"host":"%s","command":"%s","since":"2026-01-01T00:00:00Z"}' $$ "$1" "$2" > "$0"; exec sleep 120"#,
    ]);
    cmd.arg(&lock).arg(&host).arg(command);
    let running = spawn_session(cmd, b.dir());
    let named = format!("\"command\":\"{command}\"");
    wait_for(
        || std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&named)),
        PATIENCE,
    );
    running
}

#[test]
fn destroy_never_signals_a_run_that_another_host_named() {
    let b = applied_root();
    // A `run` on another host (the lock file on storage that two hosts share): its pid means
    // nothing here, and may be an unrelated process of this host.
    let mut run = holder(&b, "run --hold", Some("another-host"));
    let impatient = b.run(&["destroy", "--wait", "1s"]);
    impatient.assert_code(3);
    assert!(!impatient.stderr.contains("asked pid"), "{impatient}");
    assert!(impatient.stderr.contains("another-host"), "{impatient}");
    assert!(
        run.try_wait().is_none(),
        "the process was signalled\n{impatient}"
    );
}

#[test]
fn destroy_waits_for_a_reset_holding_the_lock_and_never_interrupts_it() {
    let b = applied_root();
    // A `reset --all` in the middle of its work: it holds the root's lock (a real flock on
    // the lock file) and names itself there as the engine does. Its pid is the process that
    // a destroy would signal.
    let mut reset = holder(&b, "reset --all", None);

    // Waited for up to --wait, then exit 3 naming it; the reset goes on.
    let impatient = b.run(&["destroy", "--wait", "1s"]);
    impatient.assert_code(3);
    assert!(impatient.stderr.contains("reset --all"), "{impatient}");
    assert!(!impatient.stderr.contains("asked pid"), "{impatient}");
    assert!(
        reset.try_wait().is_none(),
        "the reset was stopped\n{impatient}"
    );

    // A patient destroy waits, and goes on once the reset let go.
    let mut patient = b.spawn(&["destroy"]);
    wait_for(
        || patient.stderr().contains("waiting for the lock, held by"),
        PATIENCE,
    );
    let waited_from = Instant::now();
    // It keeps waiting, and the reset keeps running: polled for a second, a positive
    // check that neither changed (a signalled reset would be gone in a poll or two).
    while waited_from.elapsed() < Duration::from_secs(1) {
        assert!(
            reset.try_wait().is_none(),
            "the reset was stopped\n{}",
            patient.stderr()
        );
        assert!(patient.try_wait().is_none(), "{}", patient.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let sid = reset.pid();
    reset.kill_session();
    assert!(session_members(sid).is_empty());
    let destroyed = patient.wait(PATIENCE);
    destroyed.assert_success();
    assert!(!destroyed.stderr.contains("asked pid"), "{destroyed}");
    assert_eq!(status_json(&b)["steps"][0]["state"], "destroyed");
}
