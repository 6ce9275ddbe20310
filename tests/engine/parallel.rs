//! Independent steps run at the same time, on the diamond (a → b and c → d) with real
//! terraform and a PostgreSQL backend: overlap proven from the ledger's timestamps, destroy
//! along the reversed graph, a failure that lets the running step finish and starts nothing
//! new, and SIGTERM reaching every running terraform exactly once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::diamond::{Diamond, STEPS};
use crate::support::*;
use serde_json::json;

const RESOURCES: [&str; 2] = ["first", "slow"];

fn expected_state() -> Vec<String> {
    RESOURCES
        .iter()
        .map(|r| format!("terraform_data.{r}"))
        .collect()
}

#[track_caller]
fn assert_all_applied(d: &Diamond) {
    for step in STEPS {
        assert_eq!(d.state(step), expected_state(), "state of {step}");
        assert!(d.marked(step, "inited"), "{step} has no marker");
    }
}

/// When a step's first resource started and its last was created, from the ledger.
fn span(d: &Diamond, step: &str) -> (f64, f64) {
    let start = d
        .when("start", &format!("{step}/first"))
        .unwrap_or_else(|| panic!("{step} never started: {:#?}", d.ledger()));
    let end = d
        .when("create", &format!("{step}/slow"))
        .unwrap_or_else(|| panic!("{step} never finished: {:#?}", d.ledger()));
    (start, end)
}

#[test]
fn independent_steps_overlap_and_destroy_goes_back_along_the_graph() {
    let mut d = Diamond::new("retries = 0");
    d.set("sleep_b", json!(2)).set("sleep_c", json!(2));

    let plan = d.b.run(&["plan"]);
    plan.assert_success();
    for line in ["b: waits for a", "c: waits for a", "d: waits for b, c"] {
        assert!(plan.stdout.contains(line), "{line:?} in\n{plan}");
    }
    assert!(plan.stdout.contains("b, c run together"), "{plan}");
    for (args, waves, d_waits) in [
        (
            vec!["plan", "--json"],
            json!([["a"], ["b", "c"], ["d"]]),
            json!(["b", "c"]),
        ),
        (
            vec!["plan", "--destroy", "--json"],
            json!([["d"], ["c", "b"], ["a"]]),
            json!([]),
        ),
    ] {
        let out = d.b.run(&args);
        out.assert_success();
        let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("plan JSON");
        assert_eq!(plan["waves"], waves, "{out}");
        let step_d = plan["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["step"] == "d")
            .expect("d");
        assert_eq!(step_d["waits_for"], d_waits, "{out}");
    }

    d.b.run(&["run"]).assert_success();
    assert_all_applied(&d);
    let (a, b, c, dd) = (span(&d, "a"), span(&d, "b"), span(&d, "c"), span(&d, "d"));
    // b and c overlap: each started before the other finished.
    assert!(
        b.0 < c.1 && c.0 < b.1,
        "b {b:?} and c {c:?} did not overlap\n{:#?}",
        d.ledger()
    );
    // And the graph holds: b and c after a, d after both.
    assert!(a.1 < b.0 && a.1 < c.0, "b or c before a\n{:#?}", d.ledger());
    assert!(
        b.1 < dd.0 && c.1 < dd.0,
        "d before b or c\n{:#?}",
        d.ledger()
    );

    let applied = d.ledger().len();
    d.b.run(&["destroy"]).assert_success();
    let destroyed: Vec<_> = d.ledger()[applied..].to_vec();
    assert_eq!(
        destroyed.len(),
        STEPS.len() * RESOURCES.len(),
        "{destroyed:#?}"
    );
    assert!(
        destroyed.iter().all(|e| e.event == "destroy"),
        "{destroyed:#?}"
    );
    let last = |step: &str| {
        destroyed
            .iter()
            .filter(|e| e.step() == step)
            .map(|e| e.at)
            .fold(f64::MIN, f64::max)
    };
    let first = |step: &str| {
        destroyed
            .iter()
            .filter(|e| e.step() == step)
            .map(|e| e.at)
            .fold(f64::MAX, f64::min)
    };
    // d, then b and c (in any order), then a.
    assert!(
        last("d") < first("b") && last("d") < first("c"),
        "{destroyed:#?}"
    );
    assert!(
        last("b") < first("a") && last("c") < first("a"),
        "{destroyed:#?}"
    );
    for step in STEPS {
        assert!(d.state(step).is_empty(), "{step} not empty after destroy");
        assert!(d.marked(step, "destroyed"), "{step} not marked destroyed");
    }
}

#[test]
fn one_step_at_a_time_when_parallelism_is_one() {
    let mut d = Diamond::new("retries = 0\nparallelism = 4");
    d.set("sleep_b", json!(1)).set("sleep_c", json!(1));
    // The environment overrides the workflow's setting.
    d.b.env("BOOTSTRAPPER_PARALLELISM", "1");
    d.b.run(&["run"]).assert_success();
    assert_all_applied(&d);
    let (b, c) = (span(&d, "b"), span(&d, "c"));
    assert!(
        b.1 < c.0 || c.1 < b.0,
        "b {b:?} and c {c:?} overlapped\n{:#?}",
        d.ledger()
    );
    // In file order: b before c, as the sequential engine went.
    assert!(b.1 < c.0, "{:#?}", d.ledger());

    let refused = d.b.run(&["--parallelism", "0", "plan"]);
    assert_eq!(refused.code, Some(2), "{refused}");
}

#[test]
fn a_failure_lets_the_running_step_finish_and_starts_nothing_new() {
    let mut d = Diamond::new("retries = 0");
    let fail = d.path("fail-b");
    fs::write(&fail, "").unwrap();
    // c is still running when b fails.
    d.set("fail_b", json!(fail)).set("sleep_c", json!(2));
    let failed = d.b.run(&["run"]);
    failed.assert_code(1);
    assert!(failed.stderr.contains("step `b` failed"), "{failed}");
    assert!(d.marked("c", "inited"), "c did not finish\n{failed}");
    assert_eq!(d.state("c"), expected_state());
    assert!(!d.marked("b", "inited"));
    assert!(
        !d.ledger().iter().any(|e| e.step() == "d"),
        "d started\n{:#?}",
        d.ledger()
    );
    assert!(
        !failed.stderr.contains("bootstrapper: info: d: $ "),
        "a process was started for d\n{failed}"
    );

    // The rerun applies b and d only.
    let before = d.ledger().len();
    fs::remove_file(&fail).unwrap();
    let rerun = d.b.run(&["run"]);
    rerun.assert_success();
    let created: Vec<String> = d.ledger()[before..]
        .iter()
        .filter(|e| e.event == "create")
        .map(|e| e.what.clone())
        .collect();
    assert_eq!(
        created,
        ["b/first", "b/slow", "d/first", "d/slow"],
        "{rerun}"
    );
    for step in ["a", "c"] {
        assert!(
            !rerun
                .stderr
                .contains(&format!("bootstrapper: info: {step}: $ ")),
            "{step} ran again\n{rerun}"
        );
    }
    assert_all_applied(&d);
}

#[test]
fn every_failed_step_is_named() {
    let mut d = Diamond::new("retries = 0");
    let fail = d.path("fail");
    fs::write(&fail, "").unwrap();
    d.set("fail_b", json!(fail)).set("fail_c", json!(fail));
    let failed = d.b.run(&["run"]);
    failed.assert_code(1);
    let last = failed.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("2 steps failed"), "{failed}");
    assert!(
        last.contains("step `b` failed") && last.contains("step `c` failed"),
        "{failed}"
    );
    assert!(!d.ledger().iter().any(|e| e.step() == "d"));
}

/// Steps that start together set up the same pg database at the same moment, and one
/// `init` can find the other's table made between its `IF NOT EXISTS` and its `CREATE` (the
/// real terraform does, now and then; a wrapper makes the first `init` of b and of c fail
/// exactly so, every time). It is run again, not counted as a failed attempt.
#[test]
fn an_init_that_met_another_setting_up_the_backend_is_run_again() {
    let mut d = Diamond::new("retries = 0");
    let raced = d.path("raced");
    fs::create_dir_all(&raced).unwrap();
    let wrapper = terraform_wrapper(
        d.b.dir(),
        &format!(
            "#!/bin/sh\n\
             step=$(basename \"$PWD\")\n\
             if [ \"$1\" = init ] && [ ! -e \"{raced}/$step\" ]; then\n\
             case $step in b|c)\n\
             : > \"{raced}/$step\"\n\
             echo 'Error: pq: duplicate key value violates unique constraint \"pg_class_relname_nsp_index\"' >&2\n\
             exit 1;;\n\
             esac\n\
             fi\n\
             exec terraform \"$@\"\n",
            raced = raced.display()
        ),
    );
    d.b.arg("--terraform").arg(&wrapper);

    let run = d.b.run(&["run"]);
    run.assert_success();
    let again = "another terraform was setting up the same backend at that moment: trying again";
    for step in ["b", "c"] {
        assert!(raced.join(step).exists(), "{step}'s init never raced");
        assert!(
            run.stderr.contains(&format!("warn: {step}: {again}")),
            "{step}\n{run}"
        );
    }
    assert_all_applied(&d);
    for step in STEPS {
        for resource in RESOURCES {
            let created = d
                .ledger()
                .iter()
                .filter(|e| e.event == "create" && e.what == format!("{step}/{resource}"))
                .count();
            assert_eq!(created, 1, "{step}/{resource}\n{:#?}", d.ledger());
        }
    }
}

/// Steps running at once take turns for `init`: terraform's plugin cache is not safe for two
/// at the same moment. A wrapper makes every `init` of b and c last a second and records any
/// `init` that starts while another runs.
#[test]
fn steps_running_at_once_take_turns_for_init() {
    let mut d = Diamond::new("retries = 0");
    let record = d.path("inits");
    let wrapper = terraform_wrapper(
        d.b.dir(),
        &format!(
            "#!/bin/sh\n\
             [ \"$1\" = init ] || exec terraform \"$@\"\n\
             step=$(basename \"$PWD\")\n\
             if ! mkdir \"{record}.running\" 2>/dev/null; then echo \"$step overlapped\" >> \"{record}\"; fi\n\
             echo \"$step init\" >> \"{record}\"\n\
             case $step in b|c) sleep 1;; esac\n\
             terraform \"$@\"; rc=$?\n\
             rmdir \"{record}.running\" 2>/dev/null\n\
             exit $rc\n",
            record = record.display()
        ),
    );
    d.b.arg("--terraform").arg(&wrapper);
    d.set("sleep_b", json!(2)).set("sleep_c", json!(2));

    let run = d.b.run(&["run"]);
    run.assert_success();
    let inits = read_lines(&record);
    assert_eq!(inits.len(), 4, "{inits:?}");
    assert!(
        !inits.iter().any(|l| l.ends_with("overlapped")),
        "{inits:?}\n{run}"
    );
    assert!(
        run.stderr
            .contains("waiting for another step's `init` to finish"),
        "{run}"
    );
    // The applies still overlap: only the inits took turns.
    let (b, c) = (span(&d, "b"), span(&d, "c"));
    assert!(b.0 < c.1 && c.0 < b.1, "b {b:?}, c {c:?}");
    assert_all_applied(&d);
}

/// Each of b's and c's applies got one SIGINT, and no other terraform got any.
#[track_caller]
fn assert_b_and_c_stopped_once(d: &Diamond, record: &Path, context: &str) {
    let code = d.b.root().join("code");
    let expected: BTreeMap<(String, String), Vec<usize>> = ["b", "c"]
        .iter()
        .map(|step| {
            let dir = code.join(step).display().to_string();
            ((dir, "apply".to_string()), vec![1])
        })
        .collect();
    assert_eq!(sigint::sigints(record), expected, "{context}");
}

/// `script`, written as an executable `bin/terraform` under `dir`, to be `--terraform`.
fn terraform_wrapper(dir: &Path, script: &str) -> PathBuf {
    let wrapper = dir.join("bin/terraform");
    write_script(&wrapper, script);
    wrapper
}

#[test]
fn sigterm_sends_one_sigint_to_each_running_terraform() {
    let mut d = Diamond::new("retries = 0");
    let record = d.path("sigints");
    let wrapper = sigint::counting_terraform(d.b.dir(), &record);
    d.b.arg("--terraform").arg(&wrapper);
    d.set("sleep_b", json!(60)).set("sleep_c", json!(60));
    let mut running = d.b.spawn(&["run"]);
    wait_for(
        || {
            d.when("start", "b/slow").is_some() && d.when("start", "c/slow").is_some()
                || running.try_wait().is_some()
        },
        Duration::from_secs(120),
    );
    // status shows every running step.
    let status = d.b.run(&["status", "--json"]);
    status.assert_success();
    let report: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let running_steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|row| row["state"] == "running")
        .map(|row| row["step"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(running_steps, ["b", "c"], "{status}");
    running.signal(libc::SIGTERM);
    let stopped = running.wait(Duration::from_secs(120));
    stopped.assert_code(143);
    assert_b_and_c_stopped_once(&d, &record, &stopped.to_string());
    assert!(d.marked("a", "inited"), "a's marker was lost");
    assert!(!d.marked("b", "inited") && !d.marked("c", "inited"));
    assert!(!d.ledger().iter().any(|e| e.step() == "d"));

    d.set("sleep_b", json!(0)).set("sleep_c", json!(0));
    let rerun = d.b.run(&["run"]);
    rerun.assert_success();
    assert!(
        !rerun.stderr.contains("bootstrapper: info: a: $ "),
        "a ran again\n{rerun}"
    );
    assert_all_applied(&d);
    // Nothing recorded in a state at the stop was created again.
    for step in ["b", "c"] {
        let firsts = d
            .ledger()
            .iter()
            .filter(|e| e.event == "create" && e.what == format!("{step}/first"))
            .count();
        assert_eq!(firsts, 1, "{step}/first created again\n{:#?}", d.ledger());
    }
}

#[test]
fn a_destroy_during_run_stops_every_running_terraform_once_then_destroys() {
    let mut d = Diamond::new("retries = 0");
    let record = d.path("sigints");
    let wrapper = sigint::counting_terraform(d.b.dir(), &record);
    d.b.arg("--terraform").arg(&wrapper);
    d.set("sleep_b", json!(60)).set("sleep_c", json!(60));
    let mut entrypoint = d.b.spawn(&["run", "--hold"]);
    let both = poll(
        || {
            d.when("start", "b/slow").is_some() && d.when("start", "c/slow").is_some()
                || entrypoint.try_wait().is_some()
        },
        Duration::from_secs(120),
    );
    assert!(both, "b and c never ran together\n{}", entrypoint.stderr());
    // The hand-over: destroy sends the entrypoint SIGUSR1, which stops b and c.
    let destroy = d.b.run(&["destroy"]);
    destroy.assert_success();
    assert_b_and_c_stopped_once(&d, &record, &format!("{destroy}\n{}", entrypoint.stderr()));
    for step in STEPS {
        assert!(d.state(step).is_empty(), "{step} not empty after destroy");
    }
    assert!(!d.ledger().iter().any(|e| e.step() == "d"));
    assert!(
        entrypoint.try_wait().is_none(),
        "the entrypoint exited\n{}",
        entrypoint.stderr()
    );
    entrypoint.signal(libc::SIGTERM);
    entrypoint.wait(Duration::from_secs(60)).assert_success();
}
