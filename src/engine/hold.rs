//! The entrypoint's idle (`run --hold`) and how it ends.
//!
//! In a pod the entrypoint is the container's main process: when it exits, the container is
//! torn down and every process in it is SIGKILLed, a `destroy` or `run` started with
//! `kubectl exec` included. So on SIGTERM it first passes the signal on to whichever other
//! bootstrapper holds the root's lock (the lock file names its pid), and waits for it to
//! stop its terraform gracefully and let go, up to its own grace period.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::base::error::{exit, Result};
use crate::base::log::Logger;
use crate::base::signals::Shutdown;
use crate::root::lock;

const POLL: Duration = Duration::from_millis(50);

/// Idles until SIGTERM or SIGINT, then hands the stop on (see [`pass_on`]); a stop request
/// is the normal end of the pod's life, so it exits 0.
pub fn until_stopped(
    shutdown: &Shutdown,
    state_dir: &Path,
    grace: Duration,
    logger: &Logger,
) -> Result<i32> {
    if let Some(signal) = shutdown.wait(None, false) {
        pass_on(state_dir, signal, grace, logger);
    }
    Ok(exit::OK)
}

/// How much longer than its grace the entrypoint waits for a command it passed a stop on to.
const PASS_ON_MARGIN: Duration = Duration::from_secs(5);

/// Sends `signal` to the other bootstrapper holding the lock under `state_dir`, if there is
/// one this process can reach, and waits up to `grace` for it to let go of the lock.
/// Returns whether the lock is free (or was never held) when it returns.
pub fn pass_on(state_dir: &Path, signal: i32, grace: Duration, logger: &Logger) -> bool {
    let Some(holder) = lock::holder(state_dir) else {
        return true;
    };
    if !holder.is_reachable() {
        logger.warn(
            None,
            &format!(
                "stopping while the lock is held by {holder}, which cannot be signalled from here"
            ),
        );
        return false;
    }
    let pid = Pid::from_raw(holder.pid as i32);
    let signal = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
    if let Err(e) = kill(pid, signal) {
        logger.warn(
            None,
            &format!("cannot pass {signal} on to pid {} ({e})", holder.pid),
        );
        return false;
    }
    // The other command kills its terraform at the same grace, then still has its journal to
    // write: waiting a little longer keeps the pod up until it is done.
    let grace = grace + PASS_ON_MARGIN;
    logger.info(
        None,
        &format!(
            "passed {signal} on to pid {} (`bootstrapper {}`), which holds the lock; waiting up to {} for it to stop",
            holder.pid,
            holder.command,
            crate::base::clock::human(grace)
        ),
    );
    let deadline = Instant::now() + grace;
    loop {
        let gone = kill(pid, None) == Err(Errno::ESRCH);
        let let_go = lock::holder(state_dir).is_none_or(|h| h.pid != holder.pid);
        if gone || let_go {
            logger.info(
                None,
                &format!("pid {} stopped and let go of the lock", holder.pid),
            );
            return true;
        }
        if Instant::now() >= deadline {
            logger.warn(
                None,
                &format!(
                    "pid {} still holds the lock after {}; stopping without it",
                    holder.pid,
                    crate::base::clock::human(grace)
                ),
            );
            return false;
        }
        std::thread::sleep(POLL);
    }
}
