//! Signals, turned into flags the engine checks between and during commands.
//!
//! SIGTERM and SIGINT end the process (after terraform has stopped). SIGUSR1 is `destroy`
//! asking a running `run` to stop its work and give up the lock: the entrypoint must not exit
//! then, or its container would restart and apply again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use crate::base::error::Error;

/// The signal `destroy` sends to the process holding the lock.
pub const YIELD_SIGNAL: i32 = SIGUSR1;

/// The flags of the installed handlers, for work that has no [`Shutdown`] at hand (copying or
/// cloning the code) but must still stop when asked.
static INSTALLED: OnceLock<Shutdown> = OnceLock::new();

/// The signal that asked the process to stop, if handlers are installed and one came.
pub fn stop_requested() -> Option<i32> {
    INSTALLED.get().and_then(Shutdown::requested)
}

/// Whether, and why, the engine has been asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    terminate: Arc<AtomicUsize>,
    yield_lock: Arc<AtomicUsize>,
    /// When every terraform still running after a stop request is killed: one deadline for
    /// all the steps that run at once, set by the first to see the request.
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Shutdown {
    /// Routes the signals to the flags, replacing their default (die at once), so the engine
    /// can stop terraform gracefully first.
    pub fn install() -> std::io::Result<Self> {
        let shutdown = Shutdown::default();
        for signal in [SIGTERM, SIGINT] {
            signal_hook::flag::register_usize(signal, shutdown.terminate.clone(), signal as usize)?;
        }
        signal_hook::flag::register_usize(SIGUSR1, shutdown.yield_lock.clone(), SIGUSR1 as usize)?;
        let _ = INSTALLED.set(shutdown.clone());
        Ok(shutdown)
    }

    /// The signal that asked the current work to stop, if any: SIGTERM/SIGINT first.
    pub fn requested(&self) -> Option<i32> {
        self.terminated()
            .or(match self.yield_lock.load(Ordering::SeqCst) {
                0 => None,
                n => Some(n as i32),
            })
    }

    /// SIGTERM or SIGINT, which end the process.
    pub fn terminated(&self) -> Option<i32> {
        match self.terminate.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n as i32),
        }
    }

    /// Forgets a yield request once it has been honoured.
    pub fn clear_yield(&self) {
        self.yield_lock.store(0, Ordering::SeqCst);
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The one deadline of the current stop request: `grace` from the first call.
    pub fn grace_deadline(&self, grace: Duration) -> Instant {
        *self
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| Instant::now() + grace)
    }

    /// `Err(Interrupted)` once a stop was asked for: the check before starting anything new.
    pub fn check(&self) -> Result<(), Error> {
        match self.requested() {
            Some(signal) => Err(interrupted(signal)),
            None => Ok(()),
        }
    }

    /// Waits until SIGTERM/SIGINT (or, with `yields`, also SIGUSR1) or `timeout`; returns
    /// the signal, if any.
    pub fn wait(&self, timeout: Option<Duration>, yields: bool) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let signal = if yields {
                self.requested()
            } else {
                self.terminated()
            };
            if signal.is_some() {
                return signal;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn interrupted(signal: i32) -> Error {
    let name = match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGUSR1 => "a destroy asking for the lock (SIGUSR1)",
        _ => "a signal",
    };
    Error::Interrupted { signal, name }
}
