//! The one lock under `--root` that every state-changing command holds, and who holds it.
//!
//! The lock is an advisory `flock` on `<root>/.bootstrapper/lock`: the kernel drops it when the
//! holder dies, however it dies, so a killed pod never leaves a stale lock behind. The file's
//! content only says who holds it, for the error a second process prints and for `status`.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};

/// `status` takes the lock shared for an instant to see whether it is held; a state-changing
/// command that meets it retries this long before calling the root locked.
const SHARED_PROBE_PATIENCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since: String,
}

impl Holder {
    fn me(command: &str) -> Self {
        Holder {
            pid: std::process::id(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            command: command.to_string(),
            since: crate::base::clock::now_rfc3339(),
        }
    }

    /// Whether the holder is a `run` (with or without `--hold`), the only command that may be
    /// asked to give the lock up.
    pub fn is_run(&self) -> bool {
        self.command.split_whitespace().next() == Some("run")
    }

    /// Whether this process can signal the holder: another process on this host (in a pod,
    /// `kubectl exec` shares the entrypoint's process namespace and host name).
    pub fn is_reachable(&self) -> bool {
        let me = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.pid != 0 && self.pid != std::process::id() && self.host == me
    }

    fn unknown() -> Self {
        Holder {
            pid: 0,
            host: "unknown".into(),
            command: "unknown".into(),
            since: "unknown".into(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pid == 0 {
            // Not a bootstrapper, or one that died between locking and saying who it is.
            return write!(
                f,
                "a process that left no record of itself in the lock file"
            );
        }
        write!(
            f,
            "pid {} on {}, running `bootstrapper {}` since {}",
            self.pid, self.host, self.command, self.since
        )
    }
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// Takes the lock at once, or fails with [`Error::Locked`] naming the holder.
    pub fn acquire(state_dir: &Path, command: &str) -> Result<Lock> {
        Self::acquire_within(state_dir, command, SHARED_PROBE_PATIENCE, |_, _| true)
    }

    /// Takes the lock, waiting up to `patience` for the holder to let go. While waiting,
    /// `waiting(holder, first)` is called at every poll; it returns false to stop waiting.
    pub fn acquire_within(
        state_dir: &Path,
        command: &str,
        patience: Duration,
        mut waiting: impl FnMut(&Holder, bool) -> bool,
    ) -> Result<Lock> {
        let path = state_dir.join(crate::root::journal::LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open the lock file {}", path.display()), e))?;
        let deadline = Instant::now() + patience;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    // The holder writes its name just after locking; an empty file is a
                    // holder still starting, not a reason to give up.
                    let known = holder.pid != 0;
                    let keep_waiting = !known || waiting(&holder, !told);
                    told |= known;
                    if !keep_waiting || Instant::now() >= deadline {
                        return Err(Error::Locked {
                            root: root_of(state_dir),
                            holder: holder.to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(format!("cannot lock {}", path.display()), e))
                }
            }
        }
        let holder = serde_json::to_vec(&Holder::me(command)).unwrap_or_default();
        // Not synced: the note is for processes that find the lock held, and a crash that
        // could lose it releases the lock too.
        let write = (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(&holder)
        })();
        write.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Clear the holder first: whoever reads the file after we let go must not see us.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Who holds the lock of this state directory right now, if anyone.
pub fn holder(state_dir: &Path) -> Option<Holder> {
    let mut file = File::open(state_dir.join(crate::root::journal::LOCK)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => Some(read_holder(&mut file)),
        Err(TryLockError::Error(_)) => None,
    }
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    serde_json::from_str(&text).unwrap_or_else(|_| Holder::unknown())
}

fn root_of(state_dir: &Path) -> PathBuf {
    state_dir.parent().unwrap_or(state_dir).to_path_buf()
}
