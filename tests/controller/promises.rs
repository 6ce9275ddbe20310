//! The controller's promises about stopping and serving: a terraform that will not stop is
//! killed with its group within the grace period, a stopping controller accepts nothing new,
//! `/readyz` tells an unwritable root, and `--insecure-no-auth` serves without tokens.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::controller::*;
use crate::support::*;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(120);

/// `<dir>/bin/terraform`: terraform itself, except that an `apply` ignores SIGINT and runs
/// on (its provisioner sleeps as long as TF_VAR_sleep_seconds says), as a terraform stuck
/// in a slow backend would.
fn stubborn_terraform(dir: &Path) -> PathBuf {
    let wrapper = dir.join("bin/terraform");
    write_script(
        &wrapper,
        "#!/bin/sh\n[ \"$1\" = apply ] || exec terraform \"$@\"\ntrap '' INT\n\
         terraform \"$@\" &\ntf=$!\nwhile kill -0 $tf 2>/dev/null; do wait $tf; done\n",
    );
    wrapper
}

/// Waits until `cluster`'s broker provisioner has started (and sleeps).
fn wait_for_start(bed: &Bed, cluster: &str) {
    wait_for(
        || {
            bed.ledger()
                .iter()
                .any(|e| e.cluster == cluster && e.event == "start")
        },
        CONVERGE,
    );
}

#[test]
fn sigterm_kills_a_terraform_that_will_not_stop_with_its_group_within_the_grace() {
    let bed = Bed::new();
    let terraform = stubborn_terraform(bed.b.dir());
    let mut c = bed.start(
        &["--grace", "4s", "--terraform", terraform.to_str().unwrap()],
        &[("TF_VAR_sleep_seconds", "60")],
    );
    assert_eq!(c.put("s1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for_start(&bed, "s1");

    let signalled = Instant::now();
    c.running().signal(libc::SIGTERM);
    let running = c.running.take().unwrap();
    let sid = running.pid();
    let outcome = running.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    outcome.assert_code(143);
    // The operation's engine killed terraform's group when its own share of the grace (the
    // controller's less 2 s) was over; nothing had to be left behind.
    assert_eq!(
        outcome
            .stderr
            .matches("grace period over: killing terraform's process group")
            .count(),
        1,
        "{outcome}"
    );
    assert!(
        !outcome
            .stderr
            .contains("still running after the grace period"),
        "{outcome}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}\n{outcome}"
    );
    // Nothing of the operation (engine, terraform, its provisioner) outlives the controller.
    let gone = poll(|| session_members(sid).is_empty(), Duration::from_secs(5));
    assert!(gone, "left running: {:?}\n{outcome}", session_members(sid));
    // The broker never finished: it was cut off, not waited for.
    assert!(!bed
        .ledger()
        .iter()
        .any(|e| e.cluster == "s1" && e.resource == "broker" && e.event == "create"));
}

#[test]
fn a_stopping_controller_accepts_nothing_new_while_its_operations_stop() {
    let bed = Bed::new();
    // Terraform that stays a while after its SIGINT: the controller is still draining then.
    let terraform = sigint::counting_terraform(bed.b.dir(), &bed.b.dir().join("sigints"));
    let mut c = bed.start(
        &["--grace", "20s", "--terraform", terraform.to_str().unwrap()],
        &[("TF_VAR_sleep_seconds", "60")],
    );
    assert_eq!(c.put("a1", &json!({ "namesvr_count": 1 })).status, 202);
    wait_for_start(&bed, "a1");
    let address = c.base.trim_start_matches("http://").to_string();

    c.running().signal(libc::SIGTERM);
    wait_for(
        || c.stderr().contains("no longer accepting requests"),
        CONVERGE,
    );
    // A request now, while the operation is still stopping, is not taken in.
    let body = br#"{"params": {"namesvr_count": 1}}"#;
    let answer = match TcpStream::connect(&address) {
        Err(_) => None,
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let request = format!(
                "PUT /v1/clusters/late HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream
                .write_all(request.as_bytes())
                .and_then(|_| stream.write_all(body));
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            Some(answer).filter(|a| !a.is_empty())
        }
    };
    assert!(
        c.running().try_wait().is_none(),
        "the controller had exited already: the check proves nothing\n{}",
        c.stderr()
    );
    assert_eq!(answer, None, "a stopping controller answered a request");
    let outcome = c.running.take().unwrap().wait(Duration::from_secs(60));
    outcome.assert_code(143);
    assert!(!bed.b.root().join("clusters/late").exists());
}

/// Makes `dir` unwritable, even to root (immutable), until dropped.
struct Unwritable(PathBuf);

impl Unwritable {
    fn make(dir: &Path) -> Self {
        // SAFETY: geteuid cannot fail and has no side effects.
        if unsafe { libc::geteuid() } == 0 {
            // Root writes through any mode; an immutable directory refuses even root.
            let out = Command::new("chattr").arg("+i").arg(dir).output().unwrap();
            assert!(
                out.status.success(),
                "chattr +i {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        }
        Unwritable(dir.to_path_buf())
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        // SAFETY: as above.
        if unsafe { libc::geteuid() } == 0 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
        } else {
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn readyz_says_so_while_the_root_is_unwritable() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    assert_eq!(c.request("GET", "/readyz", None, None).status, 200);
    let clusters = bed.b.root().join("clusters");
    let unwritable = Unwritable::make(&clusters);
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready
            .text
            .contains(&format!("{} is not writable", clusters.display())),
        "{ready:?}"
    );
    drop(unwritable);
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 200, "{ready:?}");
}

#[test]
fn insecure_no_auth_serves_every_request_without_a_token() {
    let bed = Bed::new();
    let c = bed.start(&["--insecure-no-auth"], &[]);
    assert!(
        c.stderr().contains("serving without tokens"),
        "{}",
        c.stderr()
    );
    let body = serde_json::to_vec(&json!({ "params": { "namesvr_count": 1 } })).unwrap();
    let reply = c.request("PUT", "/v1/clusters/open", Some(body), None);
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_for(
        || {
            let reply = c.request("GET", "/v1/clusters/open", None, None);
            assert_eq!(reply.status, 200, "{reply:?}");
            reply.body["phase"] == "ready"
        },
        CONVERGE,
    );
    let list = c.request("GET", "/v1/clusters", None, None);
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.body["clusters"][0]["id"], "open", "{list:?}");
    let log = c.request("GET", "/v1/clusters/open/log", None, None);
    assert_eq!(log.status, 200, "{log:?}");
    assert_eq!(
        bed.state_resources("open"),
        [
            "namesvr:terraform_data.namesvr[0]",
            "broker:terraform_data.broker"
        ]
    );
}
