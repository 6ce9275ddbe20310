//! Running the steps of a [`Graph`] as their dependencies allow, several at once.
//!
//! `run` goes forwards (a step starts once every step it waits for is done), `destroy`
//! backwards (once every step that waits for it is done). After a failure or a stop request
//! no step starts, but the running ones are not interrupted: each finishes, or stops on its
//! own when a signal asks every running terraform to.

use std::collections::BTreeSet;
use std::sync::mpsc;

use crate::base::error::Result;
use crate::workflow::graph::Graph;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Dependencies first: apply.
    Forward,
    /// Dependents first: destroy.
    Reverse,
}

/// How each step ended: `None` for a step that never started.
pub type Outcomes<T> = Vec<Option<Result<T>>>;

/// Calls `work` for every step of `graph` in dependency order, at most `parallelism` at once,
/// each on its own thread inside the caller's current `tracing` span. `stop` is asked before
/// each start. Returns once no step runs and none may start.
pub fn schedule<T: Send>(
    graph: &Graph,
    direction: Direction,
    parallelism: usize,
    stop: &(dyn Fn() -> bool + Sync),
    work: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Outcomes<T> {
    let n = graph.len();
    let waits_for: Vec<BTreeSet<usize>> = (0..n)
        .map(|i| match direction {
            Direction::Forward => graph.needs(i).clone(),
            Direction::Reverse => graph.dependents(i),
        })
        .collect();
    // In file order forwards, and backwards in reverse, so that a chain keeps its order and
    // ties go the way the sequential engine went.
    let order: Vec<usize> = match direction {
        Direction::Forward => (0..n).collect(),
        Direction::Reverse => (0..n).rev().collect(),
    };
    let parent = tracing::Span::current();
    let mut outcomes: Outcomes<T> = (0..n).map(|_| None).collect();
    let mut started = vec![false; n];
    let mut running = 0usize;
    let mut halted = false;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Result<T>)>();
        loop {
            if !halted && stop() {
                halted = true;
            }
            if !halted {
                for &i in &order {
                    if running >= parallelism.max(1) {
                        break;
                    }
                    let ready = !started[i]
                        && waits_for[i]
                            .iter()
                            .all(|&j| matches!(outcomes[j], Some(Ok(_))));
                    if !ready {
                        continue;
                    }
                    started[i] = true;
                    running += 1;
                    let tx = tx.clone();
                    let parent = parent.clone();
                    scope.spawn(move || {
                        let result = parent.in_scope(|| work(i));
                        let _ = tx.send((i, result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let (i, result) = rx.recv().expect("a worker holds a sender");
            running -= 1;
            if result.is_err() {
                halted = true;
            }
            outcomes[i] = Some(result);
        }
    });
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::error::Error;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn diamond() -> Graph {
        let text = "[source]\ndir = \"c\"\n[[step]]\nname = \"a\"\ndir = \"a\"\n[[step]]\nname = \"b\"\ndir = \"b\"\n[[step]]\nname = \"c\"\ndir = \"c\"\nneeds = [\"a\"]\n[[step]]\nname = \"d\"\ndir = \"d\"\nneeds = [\"b\", \"c\"]\n";
        let wf = crate::workflow::file::parse(Path::new("wf.toml"), text).unwrap();
        Graph::build(&wf, |_| BTreeSet::new()).unwrap()
    }

    fn failed(step: &str) -> Error {
        Error::StepFailed {
            step: step.into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn every_step_runs_after_what_it_waits_for_and_never_more_than_allowed() {
        let g = diamond();
        for (direction, parallelism) in [
            (Direction::Forward, 1),
            (Direction::Forward, 2),
            (Direction::Reverse, 2),
        ] {
            let finished = Mutex::new(Vec::new());
            let now = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let outcomes = schedule(&g, direction, parallelism, &|| false, &|i| {
                let at = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(at, Ordering::SeqCst);
                let before = match direction {
                    Direction::Forward => g.needs(i).clone(),
                    Direction::Reverse => g.dependents(i),
                };
                let done = finished.lock().unwrap().clone();
                assert!(before.iter().all(|j| done.contains(j)), "{i} ran early");
                std::thread::yield_now();
                finished.lock().unwrap().push(i);
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            });
            assert!(outcomes.iter().all(|o| matches!(o, Some(Ok(_)))));
            assert!(peak.load(Ordering::SeqCst) <= parallelism);
            let order = finished.into_inner().unwrap();
            assert_eq!(order.len(), 4);
            if parallelism == 1 {
                assert_eq!(order, [0, 1, 2, 3], "one at a time keeps the file order");
            }
        }
    }

    #[test]
    fn after_a_failure_the_running_finish_and_nothing_new_starts() {
        let g = diamond();
        // b fails once c has started; c still finishes, d never starts.
        let c_started = Mutex::new(false);
        let outcomes = schedule(&g, Direction::Forward, 2, &|| false, &|i| {
            match i {
                1 => {
                    while !*c_started.lock().unwrap() {
                        std::thread::yield_now();
                    }
                    return Err(failed("b"));
                }
                2 => *c_started.lock().unwrap() = true,
                _ => {}
            }
            Ok(())
        });
        assert!(matches!(outcomes[0], Some(Ok(()))));
        assert!(matches!(outcomes[1], Some(Err(_))));
        assert!(matches!(outcomes[2], Some(Ok(()))));
        assert!(outcomes[3].is_none());
    }

    #[test]
    fn a_stop_request_starts_nothing_more() {
        let g = diamond();
        let stop = AtomicUsize::new(0);
        let outcomes = schedule(
            &g,
            Direction::Forward,
            4,
            &|| stop.load(Ordering::SeqCst) > 0,
            &|i| {
                stop.store(1, Ordering::SeqCst);
                Ok(i)
            },
        );
        assert!(matches!(outcomes[0], Some(Ok(0))));
        assert!(outcomes[1..].iter().all(Option::is_none));
    }
}
