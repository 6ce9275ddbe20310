//! SIGTERM and SIGINT, turned into a flag the engine checks between and during commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::Error;

/// Whether, and by which signal, the engine has been asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    signal: Arc<AtomicUsize>,
}

impl Shutdown {
    /// Routes SIGTERM and SIGINT to the flag, replacing their default (die at once), so the
    /// engine can stop terraform gracefully first.
    pub fn install() -> std::io::Result<Self> {
        let shutdown = Shutdown::default();
        for signal in [SIGTERM, SIGINT] {
            signal_hook::flag::register_usize(signal, shutdown.signal.clone(), signal as usize)?;
        }
        Ok(shutdown)
    }

    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n as i32),
        }
    }

    /// `Err(Interrupted)` once a stop was asked for: the check before starting anything new.
    pub fn check(&self) -> Result<(), Error> {
        match self.requested() {
            Some(signal) => Err(interrupted(signal)),
            None => Ok(()),
        }
    }

    /// Waits until a stop is asked for or `timeout` passes; returns the signal, if any.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(signal) = self.requested() {
                return Some(signal);
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
        _ => "a signal",
    };
    Error::Interrupted { signal, name }
}
