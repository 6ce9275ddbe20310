//! Kill torture (issue 4, point 7e): the four-step workflow bootstrapped and destroyed over
//! many rounds, each phase SIGKILLed (the whole session, as a pod kill does) at random
//! moments and restarted until it finishes, against real terraform and a real PostgreSQL
//! backend.
//!
//! ```sh
//! cargo test --test engine torture::                  # TORTURE_ROUNDS rounds, 12 by default (CI)
//! TORTURE_ROUNDS=500 cargo test --release --test engine torture:: -- --nocapture   # the long run
//! TORTURE_FIRST_ROUND=37 TORTURE_ROUNDS=1 cargo test --test engine torture:: -- --nocapture  # replay one
//! ```
//!
//! Rounds run `TORTURE_JOBS` at a time (2 by default), each on its own root and database:
//! terraform mostly waits on its provisioners' sleeps, so two cores take two rounds at once.
//!
//! A round's random choices come from a PRNG seeded with the round number alone, so a failing
//! round (its number and seed are in the failure message) replays the same kill moments;
//! the timing of terraform itself still varies.
//!
//! After every round: a resource that was in a state when a kill came is never created again;
//! every expected resource is in its state exactly once after `run`; `destroy` leaves every
//! state empty, and a resource already gone from the state when a destroy was killed is never
//! destroyed again; a step marked done (`inited`, `destroyed`) when a kill came starts no
//! process afterwards; no restart ever fails (each one exits 0 or is killed by the test).
//! One round in four, a `diff` of the applied workflow is killed too: the diff that finishes
//! finds nothing to change, a `run` after it applies nothing, and no diff applies anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::four_step_resources as resources;
use crate::support::*;
use serde_json::{json, Value};

/// The workspace of every pg-backed step (`params.cluster_id`).
const WORKSPACE: &str = "c1";

const DEFAULT_ROUNDS: u32 = 12;
/// Kills per phase: a random number from 1 up to this, after which the phase runs to its end.
const MAX_KILLS_PER_PHASE: u64 = 4;
/// A kill comes at a random moment this long after the process started, at most. A phase
/// takes about 8 s, and a restart resumes where its predecessor stopped: with up to four
/// kills in 0–5 s each, kills land in every step of both phases, mid-init, mid-apply and
/// mid-provisioner.
const KILL_WINDOW: Duration = Duration::from_millis(5000);
/// A diff of the applied workflow takes about a second.
const DIFF_KILL_WINDOW: Duration = Duration::from_millis(1200);
/// Bounds a phase's last, unkilled attempt; it takes seconds when all is well.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Each control-network resource's input is padded with this many bytes: terraform then
/// takes tens of milliseconds between emptying its local state file and writing it again,
/// a window that a kill watching the file lands in.
const PAD_BYTES: u64 = 150_000;

/// xorshift64: enough randomness to spread kill moments, and no dependency.
struct Rng(u64);

impl Rng {
    /// Seeded from the round number (scrambled by splitmix64, so neighbouring rounds differ).
    fn for_round(round: u32) -> Self {
        let mut z = u64::from(round).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn seed(round: u32) -> u64 {
        Rng::for_round(round).0
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }
}

/// Every resource as (step, ledger name, state address).
fn all_resources() -> Vec<(&'static str, String, String)> {
    FOUR_STEPS
        .iter()
        .flat_map(|step| {
            resources(step)
                .iter()
                .map(move |r| (*step, format!("{step}/{r}"), format!("terraform_data.{r}")))
        })
        .collect()
}

type States = BTreeMap<&'static str, Vec<String>>;

/// What the test saw right after a kill: how far the ledger had got, and every state.
struct Kill {
    ledger_len: usize,
    /// `None` for a step whose state the kill left torn: what it held is unknown.
    states: BTreeMap<&'static str, Option<Vec<String>>>,
    /// The steps whose journal held a marker: `inited` after a run, `destroyed` after a
    /// destroy.
    marked: Vec<&'static str>,
}

#[derive(Default)]
struct Totals {
    rounds: u32,
    kills: u32,
    restarts: u32,
    /// Local states that a kill left torn and the engine put back.
    repairs: u32,
    /// Kills that left control-network's local state torn, with a complete copy to put back.
    tears: u32,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.rounds += other.rounds;
        self.kills += other.kills;
        self.restarts += other.restarts;
        self.repairs += other.repairs;
        self.tears += other.tears;
    }
}

/// How many torn local states the engine put back in this attempt.
fn repairs(outcome: &Outcome) -> u32 {
    let found = outcome.stderr.matches("was torn by a kill").count();
    found.try_into().expect("few")
}

/// Tells the other workers to stop taking rounds when this one panics.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

struct Round {
    number: u32,
    seed: u64,
    rng: Rng,
    /// Whether the first kill of `run` waits for a local state write.
    tear: bool,
    b: Bootstrapper,
    conn_str: String,
    database: String,
}

impl Round {
    fn new(number: u32) -> Self {
        let b = Bootstrapper::new();
        let conn_str = fresh_database();
        let database = conn_str
            .rsplit_once('/')
            .and_then(|(_, rest)| rest.split('?').next())
            .expect("database name in conn_str")
            .to_string();
        // No retries: a restart that trips over what a kill left behind must show as a
        // failed exit, not be papered over by a second attempt.
        b.write_workflow(&format!(
            "[settings]\nretries = 0\n\n{}",
            four_step_workflow(&fixtures_dir())
        ));
        // Every step's slow resource takes a second to create and to destroy: windows in
        // which a kill lands mid-provisioner, besides those mid-init and mid-apply.
        let mut params = four_step_params(&b.ledger_path(), &conn_str);
        for step in FOUR_STEPS {
            let key = step.replace('-', "_");
            params[format!("sleep_{key}")] = json!(1);
            params[format!("destroy_sleep_{key}")] = json!(1);
        }
        // Every other round's first kill lands inside a local state write, which the pad
        // makes long enough to hit.
        let tear = number.is_multiple_of(2);
        if tear {
            params["pad_control_network"] = json!(PAD_BYTES);
        }
        b.write_params(&params);
        Round {
            number,
            seed: Rng::seed(number),
            rng: Rng::for_round(number),
            tear,
            b,
            conn_str,
            database,
        }
    }

    /// Names the round in every failure, so it can be replayed.
    fn context(&self) -> String {
        format!(
            "round {} (seed {:#018x}; replay: TORTURE_FIRST_ROUND={} TORTURE_ROUNDS=1), root {}",
            self.number,
            self.seed,
            self.number,
            self.b.dir().display()
        )
    }

    /// The resources in every state, once a phase is over: every file must be whole.
    fn states(&self) -> States {
        let mut states = BTreeMap::new();
        states.insert(FOUR_STEPS[0], local_state_resources(&self.local_state()));
        for step in &FOUR_STEPS[1..] {
            states.insert(*step, pg_state_resources(&self.conn_str, step, WORKSPACE));
        }
        states
    }

    /// The states right after a kill. Terraform creates the local state file empty when it
    /// takes the state lock, and rewrites it in place (truncate, then write) after every
    /// resource, so a kill can leave it empty or cut short. What it held is then unknown;
    /// the engine puts back its last complete copy before the step runs again.
    fn states_at_kill(&self) -> BTreeMap<&'static str, Option<Vec<String>>> {
        let local = self.local_state();
        let torn = std::fs::read(&local)
            .is_ok_and(|bytes| serde_json::from_slice::<Value>(&bytes).is_err());
        let mut states: BTreeMap<_, _> = FOUR_STEPS[1..]
            .iter()
            .map(|step| {
                let state = pg_state_resources(&self.conn_str, step, WORKSPACE);
                (*step, Some(state))
            })
            .collect();
        states.insert(
            FOUR_STEPS[0],
            (!torn).then(|| local_state_resources(&local)),
        );
        states
    }

    fn local_state(&self) -> std::path::PathBuf {
        self.b.root().join("code/control-network/terraform.tfstate")
    }

    /// The steps with the marker that `command` leaves when a step is done.
    fn marked(&self, command: &str) -> Vec<&'static str> {
        let marker = if command == "run" {
            "inited"
        } else {
            "destroyed"
        };
        let steps = self.b.root().join(".bootstrapper/steps");
        FOUR_STEPS
            .into_iter()
            .filter(|step| steps.join(step).join(marker).is_file())
            .collect()
    }

    /// A step already marked done when an earlier attempt was killed is skipped without
    /// starting any process: the engine logs `bootstrapper: info: <step>: $ <command>` for
    /// every one it starts.
    #[track_caller]
    fn assert_marked_skipped(&self, earlier: &[Kill], outcome: &Outcome) {
        for step in earlier.iter().flat_map(|kill| &kill.marked) {
            assert!(
                !outcome
                    .stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("bootstrapper: info: {step}: $ "))),
                "{step} was marked done, yet a process was started for it\n{outcome}\n{}",
                self.context()
            );
        }
    }

    /// Waits until terraform empties control-network's local state file to write it again,
    /// after a complete copy of an earlier write was kept; returns whether that moment came
    /// before the process exited.
    fn wait_for_a_state_write(&self, running: &mut Running) -> bool {
        let state = self.local_state();
        let copy = state.with_file_name("terraform.tfstate.last-complete");
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while Instant::now() < deadline {
            if running.try_wait().is_some() {
                return false;
            }
            let emptied = std::fs::metadata(&state).is_ok_and(|m| m.len() == 0);
            if emptied && copy.is_file() {
                return true;
            }
            // Far shorter than the write's window: the kill lands inside it.
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "no state write within {PHASE_TIMEOUT:?}\n{}",
            self.context()
        );
    }

    /// Runs `command` until it exits 0, SIGKILLing its session at random moments first. With
    /// `tear`, the first kill comes inside a write of control-network's local state instead.
    fn phase(&mut self, command: &str, tear: bool, totals: &mut Totals) -> Vec<Kill> {
        self.phase_within(command, KILL_WINDOW, tear, totals)
    }

    /// [`Round::phase`], each kill coming within `window` of the start.
    fn phase_within(
        &mut self,
        command: &str,
        window: Duration,
        tear: bool,
        totals: &mut Totals,
    ) -> Vec<Kill> {
        let planned = 1 + self.rng.up_to(MAX_KILLS_PER_PHASE - 1);
        let mut kills = Vec::new();
        // A kill left the local state torn; the next attempts must put it back.
        let mut torn = false;
        for attempt in 0..=planned {
            if attempt > 0 {
                totals.restarts += 1;
            }
            let mut running = self.b.spawn(&[command]);
            let outcome = if attempt < planned {
                let moment = Duration::from_millis(
                    self.rng
                        .up_to(window.as_millis().try_into().expect("small")),
                );
                let exited = if tear && attempt == 0 {
                    !self.wait_for_a_state_write(&mut running)
                } else {
                    poll(|| running.try_wait().is_some(), moment)
                };
                if exited {
                    running.try_wait().expect("exited")
                } else {
                    let outcome = running.kill_session();
                    if repairs(&outcome) > 0 {
                        torn = false;
                    }
                    totals.repairs += repairs(&outcome);
                    // It may have exited on its own just before the kill.
                    if outcome.signal == Some(libc::SIGKILL) {
                        totals.kills += 1;
                        let ledger = self.b.ledger();
                        self.assert_marked_skipped(&kills, &outcome);
                        eprintln!(
                            "round {}: killed `{command}` {moment:?} after it started (ledger: {})",
                            self.number,
                            ledger.last().map_or("empty", String::as_str)
                        );
                        let mut states = self.states_at_kill();
                        let copy = self
                            .local_state()
                            .with_file_name("terraform.tfstate.last-complete");
                        if states[FOUR_STEPS[0]].is_none() && copy.is_file() {
                            totals.tears += 1;
                            torn = true;
                            // An apply only adds to a state: what the last complete write
                            // held was still there when the kill tore the next one.
                            if command == "run" {
                                states.insert(FOUR_STEPS[0], Some(local_state_resources(&copy)));
                            }
                        }
                        kills.push(Kill {
                            ledger_len: ledger.len(),
                            states,
                            marked: self.marked(command),
                        });
                        continue;
                    }
                    outcome
                }
            } else {
                running.wait(PHASE_TIMEOUT)
            };
            totals.repairs += repairs(&outcome);
            if repairs(&outcome) > 0 {
                torn = false;
            }
            assert!(
                !torn,
                "`{command}` finished, and the torn local state a kill left was never put back\n{}\n{outcome}",
                self.context()
            );
            self.assert_marked_skipped(&kills, &outcome);
            // Not killed by us: it ran to its end, which must be success. A failure here is
            // the engine tripping over what an earlier kill left behind.
            assert_eq!(
                outcome.code,
                Some(0),
                "`{command}` (attempt {}) failed after {} kill(s)\n{}\n{outcome}",
                attempt + 1,
                kills.len(),
                self.context()
            );
            return kills;
        }
        unreachable!("the last attempt is never killed")
    }

    fn play(&mut self, totals: &mut Totals) {
        eprintln!("{}", self.context());
        let context = self.context();

        let run_kills = self.phase("run", self.tear, totals);
        let states = self.states();
        for step in FOUR_STEPS {
            assert_eq!(
                states[step],
                expected_state(step),
                "state of {step} after run\n{context}"
            );
        }
        let applied = self.b.ledger();
        for (_, resource, _) in all_resources() {
            assert!(
                applied.contains(&format!("create {resource}")),
                "{resource} never created\n{context}"
            );
        }

        // One round in four, a `diff` is killed at random moments too: what a killed diff
        // leaves behind trips neither the diff that finishes (nothing would change) nor a
        // `run` (nothing to apply), and no diff applies anything.
        if self.number.is_multiple_of(4) {
            self.phase_within("diff", DIFF_KILL_WINDOW, false, totals);
            assert_eq!(
                self.b.ledger(),
                applied,
                "a diff applied something\n{context}"
            );
            self.b.run(&["run"]).assert_success();
            assert_eq!(
                self.b.ledger(),
                applied,
                "nothing to apply after a diff\n{context}"
            );
        }

        let destroy_kills = self.phase("destroy", false, totals);
        let states = self.states();
        for (step, resources) in &states {
            assert!(
                resources.is_empty(),
                "{step} still holds {resources:?} after destroy\n{context}"
            );
        }
        let ledger = self.b.ledger();
        let destroy_lines = &ledger[applied.len()..];
        assert!(
            !destroy_lines.iter().any(|l| l.starts_with("start ")),
            "destroy created something\n{destroy_lines:#?}\n{context}"
        );
        for (_, resource, _) in all_resources() {
            assert!(
                destroy_lines.contains(&format!("destroy {resource}")),
                "{resource} never destroyed\n{context}"
            );
        }

        // In a state when a kill came: never created again, in this round.
        for kill in &run_kills {
            for (step, resource, address) in all_resources() {
                if kill.states[step]
                    .as_ref()
                    .is_some_and(|state| state.contains(&address))
                {
                    let again = ledger[kill.ledger_len..]
                        .iter()
                        .filter(|l| **l == format!("start {resource}"))
                        .count();
                    assert_eq!(
                        again, 0,
                        "{resource} was in the state at a kill (ledger line {}) and was created again\n{ledger:#?}\n{context}",
                        kill.ledger_len
                    );
                }
            }
        }
        // Gone from its state when a destroy was killed: never destroyed again. (Still in it,
        // it may be destroyed again though already destroyed: the pg backend writes a state
        // only when terraform ends, so terraform cannot know.)
        for kill in &destroy_kills {
            for (step, resource, address) in all_resources() {
                if kill.states[step]
                    .as_ref()
                    .is_some_and(|state| !state.contains(&address))
                {
                    let again = ledger[kill.ledger_len..]
                        .iter()
                        .filter(|l| **l == format!("destroy {resource}"))
                        .count();
                    assert_eq!(
                        again, 0,
                        "{resource} was gone from the state at a kill (ledger line {}) and was destroyed again\n{ledger:#?}\n{context}",
                        kill.ledger_len
                    );
                }
            }
        }

        // The journal agrees: every step destroyed.
        let status = self.b.run(&["status", "--json"]);
        status.assert_success();
        let report: Value = serde_json::from_str(&status.stdout).expect("status JSON");
        for row in report["steps"].as_array().expect("steps") {
            assert_eq!(row["state"], "destroyed", "{row}\n{context}");
        }
        totals.rounds += 1;
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        // Every process of the round is gone by now; FORCE in case a server backend of a
        // killed terraform is still on its way out.
        if !std::thread::panicking() {
            psql(
                &postgres().conn_str("postgres"),
                "DROP DATABASE :\"name\" WITH (FORCE);",
                &[("name", &self.database)],
            );
        }
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn kill_torture_bootstrap_and_destroy() {
    let rounds = env_u32("TORTURE_ROUNDS", DEFAULT_ROUNDS);
    let first = env_u32("TORTURE_FIRST_ROUND", 0);
    let jobs = env_u32("TORTURE_JOBS", 2).max(1);
    let started = Instant::now();
    let next = AtomicU32::new(first);
    let failed = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let _stop = StopOnPanic(&failed);
                while !failed.load(Ordering::SeqCst) {
                    let number = next.fetch_add(1, Ordering::SeqCst);
                    if number >= first + rounds {
                        break;
                    }
                    let mut round_totals = Totals::default();
                    Round::new(number).play(&mut round_totals);
                    totals.lock().expect("totals").add(&round_totals);
                }
            });
        }
    });
    let totals = totals.into_inner().expect("totals");
    eprintln!(
        "kill torture: {} rounds, {} kills, {} restarts, {} kills inside a local state write, {} torn local states put back, in {:.0?}",
        totals.rounds,
        totals.kills,
        totals.restarts,
        totals.tears,
        totals.repairs,
        started.elapsed()
    );
    assert_eq!(totals.rounds, rounds);
    // Each phase plans a kill within seconds of its start, and a run takes longer than that.
    assert!(totals.kills >= rounds, "only {} kills", totals.kills);
    // Half the rounds aim a kill at a state write: some must have torn it, and been repaired.
    if rounds >= 4 {
        assert!(
            totals.tears > 0,
            "no kill landed inside a local state write"
        );
        assert!(
            totals.repairs >= totals.tears,
            "{} tears, {} repairs",
            totals.tears,
            totals.repairs
        );
    }
}
