//! The pod's life against real terraform and a real PostgreSQL backend (issue 4, point 7):
//! SIGTERM during an apply, `run --hold` followed by `destroy`, a `destroy` that stops a
//! running `run`, and a `destroy` killed half way. Every assertion is on the ledger that the
//! fixtures' provisioners write and on the states themselves: control-network's local
//! terraform.tfstate on the PVC, and the pg backend's rows for the three later steps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::four_step_resources as resources;
use crate::support::*;
use serde_json::{json, Value};

/// The workspace of every pg-backed step (`params.cluster_id`).
const WORKSPACE: &str = "c1";

/// How long a test waits for something that takes seconds when all is well.
const PATIENCE: Duration = Duration::from_secs(120);

/// Every resource of the workflow as `<step>/<resource>`, the ledger's naming.
fn all_resources() -> Vec<String> {
    FOUR_STEPS
        .iter()
        .flat_map(|step| resources(step).iter().map(move |r| format!("{step}/{r}")))
        .collect()
}

/// The four-step workflow and its params on a fresh root and a fresh database.
struct Fixture {
    b: Bootstrapper,
    conn_str: String,
}

impl Fixture {
    /// `extra` params are merged over `four_step_params` (sleep_*, destroy_sleep_*).
    /// Retries are off: a step that fails here fails for a reason the test must see.
    fn new(extra: Value) -> Self {
        let b = Bootstrapper::new();
        let conn_str = fresh_database();
        let workflow = format!(
            "[settings]\nretries = 0\n\n{}",
            four_step_workflow(&fixtures_dir())
        );
        b.write_workflow(&workflow);
        let fixture = Fixture { b, conn_str };
        fixture.set_params(extra);
        fixture
    }

    fn set_params(&self, extra: Value) {
        let mut params = four_step_params(&self.b.ledger_path(), &self.conn_str);
        for (key, value) in extra.as_object().expect("extra params are an object") {
            params[key] = value.clone();
        }
        self.b.write_params(&params);
    }

    /// Every step's resources now: control-network's local state file under the code
    /// directory on the PVC (`source.dir = "code"`), the others' rows in PostgreSQL.
    fn states(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut states = BTreeMap::new();
        states.insert(
            FOUR_STEPS[0],
            local_state_resources(&self.b.root().join("code/control-network/terraform.tfstate")),
        );
        for step in &FOUR_STEPS[1..] {
            states.insert(*step, pg_state_resources(&self.conn_str, step, WORKSPACE));
        }
        states
    }

    #[track_caller]
    fn assert_all_applied(&self) {
        let states = self.states();
        for step in FOUR_STEPS {
            assert_eq!(states[step], expected_state(step), "state of {step}");
        }
    }

    /// Puts terraform behind the wrapper that records each SIGINT it gets and stays a while
    /// after the first; returns the record's path.
    fn count_sigints(&mut self) -> PathBuf {
        let record = self.b.dir().join("sigints");
        let wrapper = sigint::counting_terraform(self.b.dir(), &record);
        self.b.arg("--terraform").arg(wrapper);
        record
    }

    #[track_caller]
    fn assert_all_empty(&self) {
        for (step, resources) in self.states() {
            assert!(resources.is_empty(), "{step} still holds {resources:?}");
        }
    }
}

/// How many lines of `ledger` are exactly `line`.
fn count(ledger: &[String], line: &str) -> usize {
    ledger.iter().filter(|l| *l == line).count()
}

/// How often `needle` occurs in `text`.
fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The `destroy <step>/<resource>` lines, as (step, resource).
fn destroys(ledger: &[String]) -> Vec<(String, String)> {
    ledger
        .iter()
        .filter_map(|line| line.strip_prefix("destroy "))
        .map(|what| {
            let (step, resource) = what.split_once('/').expect("step/resource");
            (step.to_string(), resource.to_string())
        })
        .collect()
}

/// The steps in the order their resources were destroyed, one entry per run of lines.
fn destroy_order(ledger: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for (step, _) in destroys(ledger) {
        if order.last() != Some(&step) {
            order.push(step);
        }
    }
    order
}

/// Asserts that terraform got exactly one SIGINT from the engine and stopped gracefully:
/// the engine says so once, terraform acknowledged one interrupt (a second one prints
/// "Two interrupts received" and skips the final state write), and no group kill was needed.
#[track_caller]
fn assert_one_graceful_sigint(stderr: &str) {
    assert_eq!(occurrences(stderr, "sent SIGINT"), 1, "{stderr}");
    assert_eq!(occurrences(stderr, "Interrupt received"), 1, "{stderr}");
    assert_eq!(
        occurrences(stderr, "Two interrupts received"),
        0,
        "{stderr}"
    );
    assert_eq!(occurrences(stderr, "grace period over"), 0, "{stderr}");
}

/// Whether the instance at `address` is marked tainted in a pg state.
fn tainted(state: &Value, address: &str) -> bool {
    state["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| format!("terraform_data.{}", r["name"].as_str().unwrap_or("")) == address)
        .flat_map(|r| r["instances"].as_array().into_iter().flatten())
        .any(|i| i["status"] == "tainted")
}

// ---------------------------------------------------------------------------
// a. SIGTERM during an apply

#[test]
fn sigterm_during_an_apply_stops_terraform_with_one_sigint_and_the_next_run_completes() {
    signal_during_an_apply(libc::SIGTERM);
}

#[test]
fn sigint_during_an_apply_stops_terraform_with_one_sigint_and_the_next_run_completes() {
    signal_during_an_apply(libc::SIGINT);
}

/// `signal` to the engine while network's apply runs; it exits 128 + signal.
fn signal_during_an_apply(signal: libc::c_int) {
    // The slow provisioner of network sleeps far longer than the test could wait for it.
    let mut f = Fixture::new(json!({ "sleep_network": 60 }));
    let sigints = f.count_sigints();
    let mut run = f.b.spawn(&["run"]);
    wait_for(|| count(&f.b.ledger(), "start network/slow") == 1, PATIENCE);

    // As kubelet (or a Ctrl-C's kill) does: to the main process only, not to terraform.
    let signalled = Instant::now();
    run.signal(signal);
    wait_for(|| run.try_wait().is_some(), PATIENCE);
    let took = signalled.elapsed();
    let outcome = run.try_wait().expect("exited");
    outcome.assert_code(128 + signal);
    assert_one_graceful_sigint(&outcome.stderr);
    sigint::assert_each_got_one(&sigints, 1, &outcome.to_string());
    // Terraform stopped on its own once asked: it did not sit out the 25 s grace period,
    // nor the provisioner's 60 s sleep. (Its graceful stop cancels the running provisioner,
    // whose `sleep` child the engine then kills with terraform's group.)
    assert!(took < Duration::from_secs(20), "took {took:?}\n{outcome}");
    let sid = run.pid();
    wait_for(|| session_members(sid).is_empty(), Duration::from_secs(10));

    // What terraform finished is in its state, in PostgreSQL too: the pg backend writes
    // the state only when terraform ends, so `first` there proves terraform saved it on
    // the way out, which it does not after a second SIGINT or a SIGKILL. `slow` was cut
    // off (terraform's stop cancels the provisioner), so it is there as tainted, to be
    // replaced.
    let states = f.states();
    assert_eq!(states["control-network"], expected_state("control-network"));
    let network = pg_state(&f.conn_str, "network", WORKSPACE).expect("network's state row");
    let network_resources = state_resources(&network);
    assert!(
        network_resources.contains(&"terraform_data.first".to_string()),
        "{network_resources:?}"
    );
    assert!(
        !network_resources.contains(&"terraform_data.last".to_string()),
        "{network_resources:?}"
    );
    assert!(tainted(&network, "terraform_data.slow"), "{network:#}");
    assert!(states["hosts"].is_empty() && states["system-job"].is_empty());
    // The step is left unfinished: no marker, and status says it was interrupted.
    assert!(!f
        .b
        .root()
        .join(".bootstrapper/steps/network/inited")
        .exists());
    let status = f.b.run(&["status"]);
    status.assert_success();
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("network ") && l.contains("failed")),
        "{status}"
    );

    // The next run (no sleep this time, to keep the test short) completes.
    let before = f.b.ledger().len();
    f.set_params(json!({}));
    f.b.run(&["run"]).assert_success();
    f.assert_all_applied();
    let ledger = f.b.ledger();
    // Every resource was created exactly once; what was in a state at the signal never
    // started again.
    for resource in all_resources() {
        assert_eq!(
            count(&ledger, &format!("create {resource}")),
            1,
            "{resource} in {ledger:#?}"
        );
    }
    for resource in [
        "control-network/first",
        "control-network/slow",
        "control-network/last",
        "network/first",
    ] {
        assert_eq!(
            count(&ledger[before..], &format!("start {resource}")),
            0,
            "{resource} started again: {ledger:#?}"
        );
    }
}

/// An open transaction holding `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` on a pg backend's
/// table: terraform's next state write waits on it. Dropping it rolls back.
struct TableLock {
    psql: Child,
}

impl TableLock {
    fn take(conn_str: &str, table: &str) -> Self {
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
        let sql =
            format!("BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n");
        psql.stdin
            .as_mut()
            .expect("psql stdin")
            .write_all(sql.as_bytes())
            .expect("write to psql");
        let stdout = psql.stdout.take().expect("psql stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).expect("psql took the lock");
        assert_eq!(line.trim(), "locked");
        TableLock { psql }
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

#[test]
fn terraform_that_outlives_the_grace_period_is_killed_with_its_group() {
    let f = Fixture::new(json!({ "sleep_network": 60 }));
    let mut run = spawn_session(f.b.command(&["--grace", "2s", "run"]), f.b.dir());
    wait_for(|| count(&f.b.ledger(), "start network/slow") == 1, PATIENCE);

    // Terraform's graceful stop cancels the provisioner at once, so it would exit well in
    // time; what keeps a real terraform from exiting is its final state write, here held
    // up by a lock on the pg backend's table, as a slow or unreachable backend would.
    let lock = TableLock::take(&f.conn_str, "network.states");
    let signalled = Instant::now();
    run.signal(libc::SIGTERM);
    wait_for(|| run.try_wait().is_some(), PATIENCE);
    let took = signalled.elapsed();
    let outcome = run.try_wait().expect("exited");
    outcome.assert_code(143);
    // One SIGINT, acknowledged once: terraform was still busy when the deadline came, so a
    // second SIGINT would have shown ("Two interrupts received").
    assert_eq!(occurrences(&outcome.stderr, "sent SIGINT"), 1, "{outcome}");
    assert_eq!(
        occurrences(&outcome.stderr, "Interrupt received"),
        1,
        "{outcome}"
    );
    assert_eq!(
        occurrences(&outcome.stderr, "Two interrupts received"),
        0,
        "{outcome}"
    );
    assert_eq!(
        occurrences(
            &outcome.stderr,
            "grace period over: killing terraform's process group"
        ),
        1,
        "{outcome}"
    );
    // Killed around the deadline: not before the 2 s grace, and far sooner than terraform
    // (blocked for good) or the provisioner (60 s) would have ended.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "took {took:?}\n{outcome}"
    );
    // Nothing of the session is left: terraform and the provisioner's sleep went with the
    // group.
    let sid = run.pid();
    wait_for(|| session_members(sid).is_empty(), Duration::from_secs(10));
    drop(lock);

    f.set_params(json!({}));
    f.b.run(&["run"]).assert_success();
    f.assert_all_applied();
    let ledger = f.b.ledger();
    for resource in all_resources() {
        let created = count(&ledger, &format!("create {resource}"));
        if resource.starts_with("network/") {
            // network/first may have been created twice: terraform was killed before its
            // state write went through.
            assert!(created >= 1, "{resource} in {ledger:#?}");
        } else {
            assert_eq!(created, 1, "{resource} in {ledger:#?}");
        }
    }
}

// ---------------------------------------------------------------------------
// b. `run --hold`, then `destroy` from a second process

#[test]
fn destroy_beside_a_holding_entrypoint_goes_in_reverse_and_a_restart_idles() {
    let f = Fixture::new(json!({}));
    let mut hold = f.b.spawn(&["run", "--hold"]);
    wait_for(|| hold.stderr().contains("holding until SIGTERM"), PATIENCE);
    assert!(hold.try_wait().is_none(), "{}", hold.stderr());
    f.assert_all_applied();
    let applied = f.b.ledger().len();

    let destroy = f.b.run(&["destroy"]);
    destroy.assert_success();
    let ledger = f.b.ledger();
    let destroyed = &ledger[applied..];
    assert_eq!(
        destroy_order(destroyed),
        ["system-job", "hosts", "network", "control-network"],
        "{destroyed:#?}"
    );
    // Each resource destroyed exactly once, and within a step against its dependencies.
    assert_eq!(
        destroys(destroyed).len(),
        all_resources().len(),
        "{destroyed:#?}"
    );
    for resource in all_resources() {
        assert_eq!(
            count(destroyed, &format!("destroy {resource}")),
            1,
            "{resource}"
        );
    }
    let at = |line: &str| destroyed.iter().position(|l| l == line).expect(line);
    for step in ["control-network", "network", "system-job"] {
        assert!(at(&format!("destroy {step}/last")) < at(&format!("destroy {step}/slow")));
        assert!(at(&format!("destroy {step}/slow")) < at(&format!("destroy {step}/first")));
    }
    for client in ["client[0]", "client[1]"] {
        assert!(at(&format!("destroy hosts/{client}")) < at("destroy hosts/slow"));
    }
    assert!(at("destroy hosts/slow") < at("destroy hosts/first"));
    assert!(!destroyed.iter().any(|l| l.starts_with("start ")));
    f.assert_all_empty();

    // The entrypoint did not hold the lock while idle, so it was not asked to stop, and it
    // is still up: an exiting entrypoint would restart the container.
    assert!(!destroy.stderr.contains("asked pid"), "{destroy}");
    assert!(hold.try_wait().is_none(), "{}", hold.stderr());
    hold.signal(libc::SIGTERM);
    wait_for(|| hold.try_wait().is_some(), PATIENCE);
    hold.try_wait().expect("exited").assert_success();

    // The pod restarts: the entrypoint finds the tombstone, applies nothing, and idles.
    let mut restarted = f.b.spawn(&["run", "--hold"]);
    wait_for(
        || restarted.stderr().contains("holding until SIGTERM"),
        PATIENCE,
    );
    let stderr = restarted.stderr();
    assert!(
        stderr.contains("this workflow was destroyed at"),
        "{stderr}"
    );
    assert!(stderr.contains("reset --all"), "{stderr}");
    assert!(!stderr.contains(": applying"), "{stderr}");
    assert_eq!(
        f.b.ledger(),
        ledger,
        "a destroyed workflow was applied again"
    );
    assert!(restarted.try_wait().is_none(), "{stderr}");
    f.assert_all_empty();
    restarted.signal(libc::SIGTERM);
    wait_for(|| restarted.try_wait().is_some(), PATIENCE);
    restarted.try_wait().expect("exited").assert_success();
}

// ---------------------------------------------------------------------------
// c. `destroy` while `run` is in the middle of the second step

fn destroy_stops_a_run_in_the_middle_of_the_second_step(hold: bool) {
    let mut f = Fixture::new(json!({ "sleep_network": 60 }));
    let sigints = f.count_sigints();
    let args: &[&str] = if hold { &["run", "--hold"] } else { &["run"] };
    let mut run = f.b.spawn(args);
    wait_for(|| count(&f.b.ledger(), "start network/slow") == 1, PATIENCE);

    let destroy = f.b.run(&["destroy"]);
    destroy.assert_success();
    assert!(
        destroy
            .stderr
            .contains(&format!("asked pid {} (`bootstrapper run", run.pid())),
        "{destroy}"
    );
    // Asked once, however long the run took to let go.
    assert_eq!(occurrences(&destroy.stderr, "asked pid"), 1, "{destroy}");

    // The run stopped its terraform with one SIGINT and let go of the lock.
    let stderr = if hold {
        wait_for(
            || run.stderr().contains("let go of the lock for a destroy"),
            PATIENCE,
        );
        assert!(run.try_wait().is_none(), "{}", run.stderr());
        // Nothing that terraform started goes on running beside the idle entrypoint.
        let sid = run.pid();
        wait_for(
            || session_members(sid) == [sid as libc::pid_t],
            Duration::from_secs(10),
        );
        run.stderr()
    } else {
        wait_for(|| run.try_wait().is_some(), PATIENCE);
        let outcome = run.try_wait().expect("exited");
        outcome.assert_code(128 + libc::SIGUSR1);
        assert!(
            outcome.stderr.contains("a destroy asking for the lock"),
            "{outcome}"
        );
        let sid = run.pid();
        wait_for(|| session_members(sid).is_empty(), Duration::from_secs(10));
        outcome.stderr
    };
    assert_one_graceful_sigint(&stderr);
    sigint::assert_each_got_one(&sigints, 1, &stderr);
    assert!(!stderr.contains("[hosts]"), "{stderr}");

    // Destroy covered control-network and the half-applied network, network first; it
    // skipped the two steps that never started.
    let ledger = f.b.ledger();
    assert_eq!(
        destroy_order(&ledger),
        ["network", "control-network"],
        "{ledger:#?}"
    );
    for resource in [
        "control-network/first",
        "control-network/slow",
        "control-network/last",
        "network/first",
    ] {
        assert_eq!(
            count(&ledger, &format!("destroy {resource}")),
            1,
            "{resource}"
        );
    }
    assert_eq!(count(&ledger, "destroy network/last"), 0);
    assert!(
        !ledger
            .iter()
            .any(|l| l.contains(" hosts/") || l.contains(" system-job/")),
        "{ledger:#?}"
    );
    for step in ["hosts", "system-job"] {
        assert!(
            destroy
                .stderr
                .contains(&format!("{step}: never started applying")),
            "{destroy}"
        );
    }
    f.assert_all_empty();

    if hold {
        run.signal(libc::SIGTERM);
        wait_for(|| run.try_wait().is_some(), PATIENCE);
        run.try_wait().expect("exited").assert_success();
    }
}

#[test]
fn destroy_stops_a_holding_run_in_the_middle_of_the_second_step() {
    destroy_stops_a_run_in_the_middle_of_the_second_step(true);
}

#[test]
fn destroy_stops_a_plain_run_in_the_middle_of_the_second_step() {
    destroy_stops_a_run_in_the_middle_of_the_second_step(false);
}

// ---------------------------------------------------------------------------
// d. SIGKILL `destroy` half way, then run it again

#[test]
fn destroy_killed_half_way_completes_when_run_again() {
    // destroy_sleep_* is read from the state at destroy time, so it is set when applying.
    let f = Fixture::new(json!({ "destroy_sleep_hosts": 8 }));
    f.b.run(&["run"]).assert_success();
    f.assert_all_applied();
    let applied = f.b.ledger().len();

    let destroy = f.b.spawn(&["destroy"]);
    wait_for(
        || count(&f.b.ledger(), "destroying hosts/slow") == 1,
        PATIENCE,
    );
    let killed = destroy.kill_session();
    assert_eq!(killed.signal, Some(libc::SIGKILL), "{killed}");
    let at_kill = f.b.ledger();
    let states_at_kill = f.states();
    let before_kill = &at_kill[applied..];
    assert_eq!(
        count(before_kill, "destroy hosts/slow"),
        0,
        "killed too late"
    );
    assert!(
        states_at_kill["system-job"].is_empty(),
        "{states_at_kill:?}"
    );
    assert!(
        states_at_kill["hosts"].contains(&"terraform_data.slow".to_string()),
        "{states_at_kill:?}"
    );

    let again = f.b.run(&["destroy"]);
    again.assert_success();
    assert!(
        again
            .stderr
            .contains("system-job: already destroyed: skipped"),
        "{again}"
    );
    f.assert_all_empty();
    let ledger = f.b.ledger();
    let after_kill = &ledger[at_kill.len()..];
    assert!(!after_kill.iter().any(|l| l.starts_with("start ")));

    // The pg backend writes a state once, when terraform ends, so a resource destroyed
    // before the kill may still have been in the state (here hosts' clients, destroyed
    // before `slow`): terraform cannot know it is gone and destroys it again, which is
    // terraform's at-least-once, not the engine's doing. What must hold: whatever was gone
    // from the state when the kill came is never destroyed again, whatever was still in it
    // is destroyed exactly once more, and nothing is destroyed twice before the kill.
    let mut twice = Vec::new();
    for resource in all_resources() {
        let (step, name) = resource.split_once('/').unwrap();
        let line = format!("destroy {resource}");
        let in_state = states_at_kill[step].contains(&format!("terraform_data.{name}"));
        let before = count(before_kill, &line);
        let after = count(after_kill, &line);
        assert!(
            before <= 1,
            "{resource} destroyed {before} times before the kill"
        );
        if in_state {
            assert_eq!(
                after, 1,
                "{resource} was in the state at the kill\n{ledger:#?}"
            );
        } else {
            assert_eq!((before, after), (1, 0), "{resource}\n{ledger:#?}");
        }
        if before + after > 1 {
            twice.push(resource);
        }
    }
    // Only hosts' resources can have been destroyed without the state knowing yet.
    assert!(twice.iter().all(|r| r.starts_with("hosts/")), "{twice:?}");
    assert!(!twice.contains(&"hosts/slow".to_string()));
    eprintln!("destroyed twice (done before the kill, not yet in the pg state): {twice:?}");
    assert_eq!(
        destroy_order(after_kill),
        ["hosts", "network", "control-network"],
        "{after_kill:#?}"
    );
}
