//! The boundary between deciding and running: the reconciler decides which operation a
//! cluster needs; an [`Executor`] runs it and says how it ended. An operation is one engine
//! command over one cluster's root, so a second way of running it (a Kubernetes Job, say) is
//! a new file here, not an edit of the reconciler.

pub mod kubernetes;
mod local;
mod report;

pub use local::{last_diff, starved, Local, LocalConfig};

use nix::sys::signal::Signal;

use crate::base::error::FailureKind;
use crate::controller::cluster::Kind;

/// One engine command that brings one cluster to one generation of its intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub cluster: String,
    pub generation: u64,
    pub kind: Kind,
    /// For an apply: the reviewed plan (the engine's diff id) to apply exactly, with
    /// `run --reviewed=ID` rather than `run --recreate`.
    pub reviewed: Option<String>,
    /// For an apply: other code to move the cluster to first (`run --code`).
    pub code: Option<crate::controller::code::CodeChoice>,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    /// The engine failed (`exit_code` 1 or 2), or could not be started (`exit_code` None).
    Failed {
        exit_code: Option<i32>,
        /// What kind of terraform failure it was, when a step recorded one.
        failure: Option<FailureKind>,
        error: String,
    },
    /// Stopped by a signal: not done, so the cluster is looked at again.
    Interrupted,
    /// Another engine held the cluster's root: looked at again after a pause.
    Later,
}

/// What [`Executor::live_log`] answers: a log being read, or None for the kept one.
pub type LiveLogFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<kubernetes::logs::LiveLog>> + Send>>;

impl Ending {
    /// A failure before or without the engine's own: it left no exit code or failure kind.
    pub fn failed(error: impl Into<String>) -> Self {
        Ending::Failed {
            exit_code: None,
            failure: None,
            error: error.into(),
        }
    }
}

/// Called once, from any thread, when an operation has ended.
pub type OnEnd = Box<dyn FnOnce(Ending) + Send>;

/// Runs operations. Every method returns at once; an operation's end comes through its
/// [`OnEnd`].
pub trait Executor: Send + Sync {
    /// Starts `operation`; its log goes to the cluster's `operation.log` (a plan's to its
    /// `plan.log`). A plan runs with the cluster's `plan-params.json`, and succeeds when the
    /// engine wrote a new `.bootstrapper/diff.json`, changes or not.
    fn start(&self, operation: Operation, on_end: OnEnd);
    /// Passes `signal` to the running operation of `cluster`, if any: SIGUSR1 asks an apply
    /// to let go for a destroy, SIGTERM stops it.
    fn stop(&self, cluster: &str, signal: Signal);
    /// The operations running now, for a restarted controller to adopt.
    fn running(&self) -> Vec<Operation>;
    /// Why operations cannot run now; empty when they can (`/readyz`).
    fn problems(&self) -> Vec<String>;
    /// The controller is exiting: an executor whose operations run outside it leaves them
    /// running, ends each as interrupted at once, and takes later stops as no request to
    /// stop them. A restarted controller finds them again.
    fn detach(&self) {}
    /// The log of the cluster's running apply or destroy where it runs, when that is not
    /// its `operation.log` (a Job's pod): its last `tail_lines`, and with `follow` what it
    /// writes until it ends. None: the kept log is the one to read.
    fn live_log(&self, _cluster: &str, _follow: bool, _tail_lines: usize) -> LiveLogFuture {
        Box::pin(async { None })
    }
    /// Whether an apply can apply a plan an earlier operation saved (`run --reviewed`).
    fn applies_saved_plans(&self) -> bool {
        true
    }
    /// Whether a cluster keeps the code an upgrade replaced, so that an apply can move it
    /// back (`run --code previous`): a rollback.
    fn keeps_code(&self) -> bool {
        true
    }
}
