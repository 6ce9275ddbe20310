//! The pg backend's own races, met for real: its workspace-creation lock is one per database
//! and terraform does not wait for it, so an engine whose apply finds it held runs the apply
//! again shortly after, without counting a failed attempt.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
