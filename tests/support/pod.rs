//! The pod without a container runtime: `unshare --pid --fork --mount-proc tini -- bootstrapper
//! …` puts the binary under tini as PID 1 of a new PID namespace (when PID 1 exits, the kernel
//! kills everything left in it, as a container's end does), and `nsenter -t <tini> -p -m
//! bootstrapper …` is `kubectl exec`.

use std::fs;
use std::process::Command;
use std::time::Duration;

use super::{poll, spawn_session, wait_for, Bootstrapper, Outcome, Running, BIN};

/// A running pod: the `unshare` process outside the namespace, and tini (PID 1) inside.
pub struct Pod {
    pub unshare: Running,
    /// Tini's pid as seen from outside the namespace.
    pub tini: u32,
}

impl Pod {
    /// Starts `bootstrapper <args>` as the pod's entrypoint, under tini.
    pub fn start(b: &Bootstrapper, args: &[&str]) -> Pod {
        let unshare = spawn_session(
            wrap(
                b.command(args),
                "unshare",
                &["--pid", "--fork", "--mount-proc", "tini", "--"],
            ),
            b.dir(),
        );
        let parent = unshare.pid();
        let mut tini = None;
        wait_for(
            || {
                tini = children(parent)
                    .into_iter()
                    .find(|pid| comm(*pid).as_deref() == Some("tini"));
                tini.is_some()
            },
            Duration::from_secs(10),
        );
        Pod {
            unshare,
            tini: tini.expect("found"),
        }
    }

    /// `kubectl exec`: `bootstrapper <args>` in the pod's PID and mount namespaces, as the
    /// leader of its own session outside (nsenter waits for it and exits as it does).
    pub fn exec(&self, b: &Bootstrapper, args: &[&str]) -> Running {
        let target = self.tini.to_string();
        spawn_session(
            wrap(
                b.command(args),
                "nsenter",
                &["-t", target.as_str(), "-p", "-m", "--"],
            ),
            b.dir(),
        )
    }

    /// What the kubelet does to stop the pod: SIGTERM to the container's PID 1.
    pub fn terminate(&self) {
        // SAFETY: plain syscall on tini, whose parent (unshare) we have not reaped yet.
        let rc = unsafe { libc::kill(self.tini as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({}, SIGTERM) failed", self.tini);
    }

    /// The entrypoint's log so far.
    pub fn stderr(&self) -> String {
        self.unshare.stderr()
    }

    /// Waits for the pod to end; its outcome is tini's, which is the entrypoint's.
    pub fn wait(self, timeout: Duration) -> Outcome {
        self.unshare.wait(timeout)
    }

    /// The pid namespace of the pod, as `/proc/<pid>/ns/pid` reads it.
    pub fn namespace(&self) -> String {
        namespace_of(self.tini).expect("tini's pid namespace")
    }

    /// Every process in the pod (outside pids), with its state letter (`Z` for a zombie).
    pub fn processes(&self) -> Vec<(u32, char)> {
        let ns = self.namespace();
        all_pids()
            .into_iter()
            .filter(|pid| namespace_of(*pid).as_deref() == Some(ns.as_str()))
            .filter_map(|pid| Some((pid, state(pid)?)))
            .collect()
    }

    /// The outside pid of the pod's process whose pid inside the pod is `inner`.
    pub fn outside_pid(&self, inner: u32) -> Option<u32> {
        let ns = self.namespace();
        all_pids().into_iter().find(|pid| {
            namespace_of(*pid).as_deref() == Some(ns.as_str())
                && status_field(*pid, "NSpid")
                    .and_then(|f| f.split_whitespace().last().map(str::to_owned))
                    == Some(inner.to_string())
        })
    }
}

/// `program [prefix…] <cmd's program> <cmd's args>`, with `cmd`'s environment.
fn wrap(cmd: Command, program: &str, prefix: &[&str]) -> Command {
    let mut wrapped = Command::new(program);
    wrapped.args(prefix).arg(BIN).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn namespace_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.display().to_string())
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// The state letter of `pid`: `R`, `S`, `Z`…; none once it is gone (reaped).
pub fn state(pid: u32) -> Option<char> {
    status_field(pid, "State")?.chars().next()
}

/// The parent of `pid`, as seen from outside any namespace.
pub fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid")?.parse().ok()
}

fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| parent(*p) == Some(pid))
        .collect()
}

/// Polls until the process `pid` no longer exists, not even as a zombie.
pub fn gone(pid: u32, timeout: Duration) -> bool {
    poll(|| state(pid).is_none(), timeout)
}
