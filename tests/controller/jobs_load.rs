//! `serve --executor kubernetes` under load, against the fake API server of `fake_kube`: many
//! clusters' Jobs at once, a controller SIGKILLed while several run, and a simulation of a
//! fleet on a cluster of limited room. What is checked is the controller's side — one Job per
//! operation, never two pods of one cluster, every intent carried out — and only as far as the
//! fake follows Kubernetes' rules: it is not a real Job controller or scheduler.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_kube::FakeKube;
use crate::jobs::{fake_with, start_with};
use crate::support::controller::*;
use crate::support::*;

const CONVERGE: Duration = Duration::from_secs(300);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The tenant fixture's workflow without its broker step: one terraform init and apply (or
/// destroy) per Job, so that dozens of Jobs cost seconds, not minutes.
fn namesvr_only() -> String {
    let full = tenant_workflow();
    let (first, _) = full
        .split_once("\n[[step]]\nname = \"broker\"")
        .expect("the fixture has a broker step");
    first.to_string()
}

/// The Jobs each cluster of `all` should have had: one apply (generation 1, the PUT) and one
/// destroy (generation 2, the DELETE), each created once.
#[track_caller]
fn assert_one_job_per_operation(kube: &FakeKube, all: &[String]) {
    let mut created = kube.jobs_created();
    created.sort();
    let mut wanted: Vec<String> = all
        .iter()
        .flat_map(|id| [format!("bs-{id}-apply-1-1"), format!("bs-{id}-destroy-2-1")])
        .collect();
    wanted.sort();
    assert_eq!(created, wanted, "Jobs created");
}

/// Every resource of `all` created once and destroyed once, per the ledger.
#[track_caller]
fn assert_created_and_destroyed_once(bed: &Bed, all: &[String], resources: &[&str]) {
    let ledger = bed.ledger();
    let wanted: Vec<(String, String)> = all
        .iter()
        .flat_map(|id| resources.iter().map(|r| (id.clone(), r.to_string())))
        .collect();
    for event in ["create", "destroy"] {
        let counts = counts(&ledger, event);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{event} more than once: {twice:?}");
        let mut seen: Vec<(String, String)> = counts.into_keys().collect();
        seen.sort();
        let mut wanted = wanted.clone();
        wanted.sort();
        assert_eq!(seen, wanted, "{event}s");
    }
}

#[test]
fn thirty_clusters_created_and_destroyed_by_jobs_on_eight_slots() {
    let bed = Bed::with_workflow(&namesvr_only());
    let kube = fake_with(&bed, vec![]);
    // Fewer slots than operations: Jobs wait Pending for room, as on a full cluster.
    kube.limit_pods(8);
    let c = start_with(&bed, &kube, &["--concurrency", "30"]);
    let all = ids("jl-", 30);
    for id in &all {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(&all, "ready", CONVERGE);
    for id in &all {
        assert_eq!(c.delete(id).status, 202);
    }
    c.wait_phase(&all, "destroyed", CONVERGE);

    assert_one_job_per_operation(&kube, &all);
    assert_eq!(
        kube.most_pods_of_one_cluster(),
        1,
        "two pods of one cluster"
    );
    // The slots were all used, and never more.
    assert_eq!(kube.most_live_pods(), 8);
    assert_created_and_destroyed_once(&bed, &all, &["namesvr[0]"]);
    assert_one_operation_per_cluster(&bed.ledger());
    for id in &all {
        assert!(bed.state_resources(id).is_empty(), "{id} left resources");
    }
    assert_eq!(
        c.metric(r#"bootstrapper_operations_total{kind="apply",result="succeeded"}"#),
        30.0
    );
    eprintln!(
        "API requests for 60 operations: {} ({} per operation)",
        kube.requests(),
        kube.requests() / 60
    );
}

#[test]
fn a_controller_killed_with_jobs_running_adopts_them_and_loses_no_intent() {
    let bed = Bed::with_workflow(&namesvr_only());
    let kube = fake_with(&bed, vec![]);
    let args = ["--concurrency", "20"];
    let mut c = start_with(&bed, &kube, &args);
    let all = ids("jk-", 20);
    let (early, late) = all.split_at(8);
    for id in early {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    c.wait_phase(early, "ready", CONVERGE);
    // Then destroys and applies together: 20 Jobs started at once. Their pods are held
    // Pending until all 20 exist, so that many run at the kill however slow the machine.
    kube.limit_pods(0);
    for id in early {
        assert_eq!(c.delete(id).status, 202);
    }
    for id in late {
        assert_eq!(c.put(id, &json!({ "namesvr_count": 1 })).status, 202);
    }
    let held = poll(|| kube.queued_pods() == all.len(), CONVERGE);
    assert!(
        held,
        "{} of 20 pods Pending; Jobs created: {:?}\n{}",
        kube.queued_pods(),
        kube.jobs_created(),
        c.stderr()
    );
    kube.limit_pods(all.len());
    wait_for(|| kube.live_pods() >= 8, CONVERGE);
    c.running.take().unwrap().kill_session();
    let running_at_kill = kube.running_jobs();
    eprintln!("running at the kill: {running_at_kill:?}");
    assert!(
        running_at_kill.len() >= 3,
        "several Jobs run on without their controller: {running_at_kill:?}"
    );
    for kind in ["-apply-", "-destroy-"] {
        assert!(
            running_at_kill.iter().any(|j| j.contains(kind)),
            "no {kind} Job was running at the kill"
        );
    }

    let c = start_with(&bed, &kube, &args);
    c.wait_phase(late, "ready", CONVERGE);
    c.wait_phase(early, "destroyed", CONVERGE);
    let stderr = c.stderr();
    for job in &running_at_kill {
        assert!(
            stderr.contains(&format!("following Job {job}, found running")),
            "{job} was not adopted:\n{stderr}"
        );
    }
    for id in late {
        assert_eq!(c.delete(id).status, 202);
    }
    c.wait_phase(&all, "destroyed", CONVERGE);

    // No second Job for any operation: the running ones were followed, not created again.
    assert_one_job_per_operation(&kube, &all);
    assert_eq!(
        kube.most_pods_of_one_cluster(),
        1,
        "two pods of one cluster"
    );
    // The pods ran on through the kill: nothing was cut short, so nothing ran twice.
    assert_created_and_destroyed_once(&bed, &all, &["namesvr[0]"]);
    assert_one_operation_per_cluster(&bed.ledger());
    for id in &all {
        assert!(bed.state_resources(id).is_empty(), "{id} left resources");
    }
}

/// A stand-in terraform for the simulation: it answers `version`, takes `step` seconds over an
/// apply or a destroy and writes a ledger line for it (the cluster is its workspace, the
/// operation its parent, the engine), prints no outputs, and does nothing else. The engine,
/// the controller and the Jobs around it are the real ones: this measures them, not terraform.
fn stand_in_terraform(bed: &Bed, step: f64) -> std::path::PathBuf {
    let path = bed.b.dir().join("terraform");
    let ledger = bed.b.ledger_path();
    write_script(
        &path,
        format!(
            "#!/bin/sh\n{FAKE_VERSION}\
             case \"$1\" in\n\
             apply) event=create ;;\n\
             destroy) event=destroy ;;\n\
             output) echo '{{}}'; exit 0 ;;\n\
             *) exit 0 ;;\n\
             esac\n\
             sleep {step}\n\
             echo \"$(date +%s%N) $event $TF_WORKSPACE data $PPID\" >> '{}'\n",
            ledger.display()
        ),
    );
    path
}

/// A one-step workflow whose module names a remote backend (the stand-in never reaches it).
fn simulation_workflow(bed: &Bed) -> String {
    let code = bed.b.dir().join("sim-code");
    std::fs::create_dir_all(code.join("data")).unwrap();
    std::fs::write(
        code.join("data/main.tf"),
        "terraform {\n  backend \"pg\" {}\n}\n",
    )
    .unwrap();
    format!(
        "[source]\ndir = \"code\"\nimage_dir = {:?}\n\n[[step]]\nname = \"data\"\ndir = \"data\"\nworkspace = \"{{{{ params.cluster_id }}}}\"\nbackend_config = {{ conn_str = \"unused\" }}\n",
        code.display().to_string()
    )
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a valid value")),
        Err(_) => default,
    }
}

/// CPU time (user + system, s) and peak RSS (KiB) of process `pid`, from /proc.
fn cpu_and_peak_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After the command name: utime and stime are fields 14 and 15 of stat, in clock ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (ticks as f64 / hz, hwm)
}

/// The fleet simulation of `scripts/bench.sh jobs N`, run small here: N clusters created, then
/// destroyed, each operation a Job whose pod runs the real engine over a stand-in terraform
/// taking STEP seconds, on a fake cluster with room for SLOTS pods (50 nodes of 4 pods is 200):
/// a pod beyond that stays Pending until one ends. Settings (environment):
/// BOOTSTRAPPER_SIM_CLUSTERS (12), BOOTSTRAPPER_SIM_SLOTS (4), BOOTSTRAPPER_SIM_STEP (0.5 s),
/// BOOTSTRAPPER_SIM_POLL (the controller's --job-poll: the safety-net relist, 1m). Prints the time to converge
/// against the ideal (each batch of SLOTS operations taking one STEP), the API requests per
/// operation and the controller's CPU time and peak RSS; fails if an intent is lost or a
/// cluster ever had two pods.
#[test]
fn simulation_of_a_fleet_on_a_full_cluster_loses_no_intent() {
    let clusters: usize = setting("BOOTSTRAPPER_SIM_CLUSTERS", 12);
    let slots: usize = setting("BOOTSTRAPPER_SIM_SLOTS", 4);
    let step: f64 = setting("BOOTSTRAPPER_SIM_STEP", 0.5);
    let poll: String = setting("BOOTSTRAPPER_SIM_POLL", "1m".to_string());
    let bed = Bed::bare(&tenant_workflow());
    bed.b.write_workflow(&simulation_workflow(&bed));
    let terraform = stand_in_terraform(&bed, step);
    let kube = FakeKube::start(bed.b.dir(), vec![]);
    kube.limit_pods(slots);
    let concurrency = clusters.min(u16::MAX as usize).to_string();
    let mut c = start_with(
        &bed,
        &kube,
        &[
            "--terraform",
            terraform.to_str().unwrap(),
            "--concurrency",
            &concurrency,
            "--job-poll",
            &poll,
            "--job-pending-timeout",
            "24h",
        ],
    );
    let all = ids("sim-", clusters);
    let timeout = Duration::from_secs_f64(60.0 + 20.0 * step * clusters as f64 / slots as f64);
    let started = Instant::now();
    for id in &all {
        assert_eq!(c.put(id, &json!({})).status, 202);
    }
    c.wait_phase(&all, "ready", timeout);
    let created = started.elapsed();
    let deleting = Instant::now();
    for id in &all {
        assert_eq!(c.delete(id).status, 202);
    }
    c.wait_phase(&all, "destroyed", timeout);
    let destroyed = deleting.elapsed();
    let total = started.elapsed();
    let (cpu, rss) = cpu_and_peak_rss(c.running().pid());
    let requests = kube.requests();

    let batches = clusters.div_ceil(slots) as f64;
    let ideal = batches * step;
    let operations = 2 * clusters;
    eprintln!(
        "simulation: {clusters} clusters, {slots} slots, {step} s steps, --job-poll {poll}\n\
         created in {:.1} s (ideal {ideal:.1} s, ratio {:.2}); destroyed in {:.1} s (ideal {ideal:.1} s, ratio {:.2}); total {:.1} s\n\
         API requests: {requests}, {:.1} per operation\n\
         controller: CPU {cpu:.2} s ({:.1} ms per operation), peak RSS {rss} KiB\n\
         most pods of one cluster at once: {}; most pods at once: {}",
        created.as_secs_f64(),
        created.as_secs_f64() / ideal,
        destroyed.as_secs_f64(),
        destroyed.as_secs_f64() / ideal,
        total.as_secs_f64(),
        requests as f64 / operations as f64,
        cpu * 1000.0 / operations as f64,
        kube.most_pods_of_one_cluster(),
        kube.most_live_pods(),
    );

    // No intent lost: every cluster's apply and destroy ran, each once, in one Job each.
    assert_one_job_per_operation(&kube, &all);
    assert_created_and_destroyed_once(&bed, &all, &["data"]);
    assert_eq!(
        kube.most_pods_of_one_cluster(),
        1,
        "two pods of one cluster"
    );
    assert!(kube.most_live_pods() <= slots, "more pods than slots");
    let mut phases = BTreeMap::new();
    for doc in c.get("/v1/clusters").body["clusters"].as_array().unwrap() {
        *phases.entry(doc["phase"].to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        phases,
        BTreeMap::from([("\"destroyed\"".to_string(), clusters)])
    );
}
