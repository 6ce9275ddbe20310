//! The ways an operator breaks a pod that are not bad input: a full PVC, links out of the
//! code, two `destroy`s at once, an old terraform, secrets that terraform splits over lines,
//! and a log consumer that reads JSON only. Real terraform, PostgreSQL and git throughout;
//! a fake terraform only where the real one cannot be made to misbehave (an old version).

mod support;

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// How long a test waits for something that takes seconds when all is well.
const PATIENCE: Duration = Duration::from_secs(120);

/// The four-step workflow on a fresh root and database, retries off, `extra` params merged
/// over `four_step_params`.
fn four_steps(extra: Value) -> (Bootstrapper, String) {
    let b = Bootstrapper::new();
    let conn_str = fresh_database();
    b.write_workflow(&format!(
        "[settings]\nretries = 0\n\n{}",
        four_step_workflow(&fixtures_dir())
    ));
    let mut params = four_step_params(&b.ledger_path(), &conn_str);
    for (key, value) in extra.as_object().expect("an object") {
        params[key] = value.clone();
    }
    b.write_params(&params);
    (b, conn_str)
}

fn count(ledger: &[String], line: &str) -> usize {
    ledger.iter().filter(|l| *l == line).count()
}

// ---------------------------------------------------------------------------
// A second destroy waits for the first; it never interrupts it.

#[test]
fn a_second_destroy_waits_for_the_first_instead_of_interrupting_it() {
    // destroy_sleep_* is read from the state at destroy time, so it is set when applying.
    let (b, conn_str) = four_steps(json!({ "destroy_sleep_system_job": 6 }));
    b.run(&["run"]).assert_success();

    let first = b.spawn(&["destroy"]);
    wait_for(
        || count(&b.ledger(), "destroying system-job/slow") == 1,
        PATIENCE,
    );
    let impatient = b.run(&["destroy", "--wait", "1s"]);
    impatient.assert_code(3);
    assert!(
        impatient
            .stderr
            .contains(&format!("pid {} on {}", first.pid(), nix_hostname()))
            && impatient.stderr.contains("running `bootstrapper destroy`"),
        "{impatient}"
    );
    let patient = b.spawn(&["destroy"]);

    let first = first.wait(PATIENCE);
    first.assert_success();
    let patient = patient.wait(PATIENCE);
    patient.assert_success();
    assert!(
        patient
            .stderr
            .contains("system-job: already destroyed: skipped"),
        "{patient}"
    );
    let ledger = b.ledger();
    assert_eq!(
        count(&ledger, "destroying system-job/slow"),
        1,
        "{ledger:#?}"
    );
    assert_eq!(count(&ledger, "destroy system-job/slow"), 1, "{ledger:#?}");
    for step in &FOUR_STEPS[1..] {
        assert!(
            pg_state_resources(&conn_str, step, "c1").is_empty(),
            "{step}"
        );
    }
}

fn nix_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}
