//! Kill torture on the diamond (a → b and c → d), whose b and c run at the same time: `run`
//! and `destroy` SIGKILLed (the whole session, as a pod kill does) at random moments and
//! restarted until they finish, against real terraform and a PostgreSQL backend.
//!
//! ```sh
//! cargo test --test engine torture_diamond::                        # TORTURE_ROUNDS, 20 by default
//! TORTURE_ROUNDS=200 cargo test --release --test engine torture_diamond:: -- --nocapture
//! TORTURE_FIRST_ROUND=7 TORTURE_ROUNDS=1 cargo test --test engine torture_diamond:: -- --nocapture
//! ```
//!
//! After every round: a resource that was in a state when a kill came is never created again,
//! and one gone from its state when a destroy was killed is never destroyed again; a step
//! marked done when a kill came starts no process afterwards; every state holds each resource
//! once after `run` and is empty after `destroy`; no restart ever fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::diamond::{Diamond, STEPS, WORKSPACE};
use crate::support::*;
use serde_json::json;

const DEFAULT_ROUNDS: u32 = 20;
const MAX_KILLS_PER_PHASE: u64 = 4;
/// A run takes about 3 s (b and c each sleep a second, at once): kills in 0–2.5 s land in every
/// step, mid-init, mid-apply and mid-provisioner, with b and c both running.
const KILL_WINDOW_MS: u64 = 2500;
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const RESOURCES: [&str; 2] = ["first", "slow"];

/// xorshift64, seeded from the round number alone, so a failing round replays its kill moments.
struct Rng(u64);

impl Rng {
    fn for_round(round: u32) -> Self {
        let mut z = u64::from(round).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn up_to(&mut self, max: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % (max + 1)
    }
}

/// What the test saw right after a kill.
struct Kill {
    ledger_len: usize,
    /// Every instance in each state.
    states: BTreeMap<&'static str, Vec<String>>,
    /// The instances each state records as complete: terraform writes an object as tainted
    /// before its provisioners ran, and replaces a tainted one, as it must.
    complete: BTreeMap<&'static str, Vec<String>>,
    marked: Vec<&'static str>,
}

fn address(resource: &str) -> String {
    format!("terraform_data.{resource}")
}

struct Round {
    number: u32,
    rng: Rng,
    d: Diamond,
    kills: u32,
}

impl Round {
    fn new(number: u32) -> Self {
        // No retries: a restart that trips over what a kill left must fail visibly.
        let mut d = Diamond::new("retries = 0");
        d.set("sleep_b", json!(1)).set("sleep_c", json!(1));
        Round {
            number,
            rng: Rng::for_round(number),
            d,
            kills: 0,
        }
    }

    fn context(&self) -> String {
        format!(
            "round {} (replay: TORTURE_FIRST_ROUND={} TORTURE_ROUNDS=1), root {}",
            self.number,
            self.number,
            self.d.b.dir().display()
        )
    }

    fn states(&self) -> BTreeMap<&'static str, Vec<String>> {
        STEPS.iter().map(|s| (*s, self.d.state(s))).collect()
    }

    fn complete(&self) -> BTreeMap<&'static str, Vec<String>> {
        STEPS
            .iter()
            .map(|step| {
                let state = pg_state(&self.d.conn_str, step, WORKSPACE).unwrap_or_default();
                let mut complete = Vec::new();
                for resource in state["resources"].as_array().into_iter().flatten() {
                    let tainted = resource["instances"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|i| i["status"] == "tainted");
                    if resource["mode"] == "managed" && !tainted {
                        complete.push(format!(
                            "{}.{}",
                            resource["type"].as_str().unwrap_or_default(),
                            resource["name"].as_str().unwrap_or_default()
                        ));
                    }
                }
                complete.sort();
                (*step, complete)
            })
            .collect()
    }

    fn marked(&self, marker: &str) -> Vec<&'static str> {
        STEPS
            .into_iter()
            .filter(|s| self.d.marked(s, marker))
            .collect()
    }

    #[track_caller]
    fn assert_marked_skipped(&self, kills: &[Kill], outcome: &Outcome) {
        for step in kills.iter().flat_map(|k| &k.marked) {
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

    /// Runs `command` until it exits 0, SIGKILLing its session at random moments first.
    fn phase(&mut self, command: &str) -> Vec<Kill> {
        let marker = if command == "run" {
            "inited"
        } else {
            "destroyed"
        };
        let planned = 1 + self.rng.up_to(MAX_KILLS_PER_PHASE - 1);
        let mut kills = Vec::new();
        for attempt in 0..=planned {
            let mut running = self.d.b.spawn(&[command]);
            let outcome = if attempt < planned {
                let moment = Duration::from_millis(self.rng.up_to(KILL_WINDOW_MS));
                if poll(|| running.try_wait().is_some(), moment) {
                    running.try_wait().expect("exited")
                } else {
                    let outcome = running.kill_session();
                    if outcome.signal == Some(libc::SIGKILL) {
                        self.kills += 1;
                        self.assert_marked_skipped(&kills, &outcome);
                        kills.push(Kill {
                            ledger_len: self.d.ledger().len(),
                            states: self.states(),
                            complete: self.complete(),
                            marked: self.marked(marker),
                        });
                        continue;
                    }
                    outcome
                }
            } else {
                running.wait(PHASE_TIMEOUT)
            };
            self.assert_marked_skipped(&kills, &outcome);
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

    fn play(&mut self) {
        let context = self.context();
        let run_kills = self.phase("run");
        let expected: Vec<String> = RESOURCES.iter().map(|r| address(r)).collect();
        for (step, state) in self.states() {
            assert_eq!(state, expected, "state of {step} after run\n{context}");
        }
        let applied = self.d.ledger().len();

        let destroy_kills = self.phase("destroy");
        for (step, state) in self.states() {
            assert!(
                state.is_empty(),
                "{step} holds {state:?} after destroy\n{context}"
            );
        }
        let ledger = self.d.ledger();
        assert!(
            !ledger[applied..].iter().any(|e| e.event != "destroy"),
            "destroy created something\n{ledger:#?}\n{context}"
        );
        for step in STEPS {
            for resource in RESOURCES {
                let what = format!("{step}/{resource}");
                assert!(
                    ledger[applied..].iter().any(|e| e.what == what),
                    "{what} never destroyed\n{context}"
                );
            }
        }
        for (kills, event, in_state) in [
            (&run_kills, "start", true),
            (&destroy_kills, "destroy", false),
        ] {
            for kill in kills {
                // A complete object is never created again; one gone is never destroyed again.
                let states = if in_state {
                    &kill.complete
                } else {
                    &kill.states
                };
                for step in STEPS {
                    for resource in RESOURCES {
                        if states[step].contains(&address(resource)) != in_state {
                            continue;
                        }
                        let what = format!("{step}/{resource}");
                        let again = ledger[kill.ledger_len..]
                            .iter()
                            .filter(|e| e.event == event && e.what == what)
                            .count();
                        assert_eq!(
                            again, 0,
                            "{what}: `{event}` again after a kill at ledger line {}\n{ledger:#?}\n{context}",
                            kill.ledger_len
                        );
                    }
                }
            }
        }
        let status = self.d.b.run(&["status", "--json"]);
        status.assert_success();
        let report: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
        for row in report["steps"].as_array().expect("steps") {
            assert_eq!(row["state"], "destroyed", "{row}\n{context}");
        }
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).map_or(default, |t| {
        t.parse()
            .unwrap_or_else(|_| panic!("{name}={t:?} is not a number"))
    })
}

#[test]
fn kill_torture_on_a_diamond() {
    let rounds = env_u32("TORTURE_ROUNDS", DEFAULT_ROUNDS);
    let first = env_u32("TORTURE_FIRST_ROUND", 0);
    let jobs = env_u32("TORTURE_JOBS", 2).max(1);
    let started = Instant::now();
    let next = AtomicU32::new(first);
    let failed = AtomicBool::new(false);
    let totals = Mutex::new((0u32, 0u32));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let number = next.fetch_add(1, Ordering::SeqCst);
                    if number >= first + rounds {
                        break;
                    }
                    let mut round = Round::new(number);
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| round.play()));
                    if let Err(panic) = result {
                        failed.store(true, Ordering::SeqCst);
                        std::panic::resume_unwind(panic);
                    }
                    let mut totals = totals.lock().expect("totals");
                    totals.0 += 1;
                    totals.1 += round.kills;
                }
            });
        }
    });
    let (done, kills) = totals.into_inner().expect("totals");
    eprintln!(
        "diamond kill torture: {done} rounds, {kills} kills, in {:.0?}",
        started.elapsed()
    );
    assert_eq!(done, rounds);
}
