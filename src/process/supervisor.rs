//! Runs a child to its end: spawned in its own process group, its lines handled as they
//! come, stopped when asked, and its pipes drained after it exited.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::handler::{ErrorLines, Handler, StdoutReader};
use super::lines::Batch;
use super::pipes::Pipes;
use super::{Command, Finished};
use crate::base::log::Logger;
use crate::base::secrets::Redactor;
use crate::base::signals::Shutdown;

/// How often the child is checked on while it runs.
const POLL: Duration = Duration::from_millis(25);
/// How long output pipes may stay open after the child exited (held by its leftovers).
const DRAIN: Duration = Duration::from_secs(2);

/// Runs child processes for the engine.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub logger: Logger,
    pub shutdown: Shutdown,
    /// From the moment a stop is asked for until the group is killed.
    pub grace: Duration,
}

/// How a child is stopped.
#[derive(Clone, Copy, Default)]
pub enum Stop<'a> {
    /// With one SIGINT once the [`Shutdown`] asks for a stop. Children running at once share
    /// the deadline of the one request.
    #[default]
    OnShutdown,
    /// With the signal `stop` names, asked on every poll: each new one is sent once, and the
    /// grace period starts with the first. For children that are engines themselves, which
    /// take SIGTERM and SIGUSR1.
    By(&'a dyn Fn() -> Option<Signal>),
}

/// How a child is run, besides its command. By default its stderr and stdout are both
/// logged, and its lines mean nothing in particular.
pub struct Options<'a> {
    /// What the log calls the child when it stops it: a program's name, or "its child …".
    pub name: &'a str,
    /// Keeps stdout whole in [`Finished::stdout`] instead of logging it.
    pub capture_stdout: bool,
    /// Called on every poll while the child runs and once after it exited: for what must
    /// keep up with the child's files as they change.
    pub watch: Option<&'a mut dyn FnMut()>,
    /// Reads stdout line by line as it arrives, before the log does.
    pub stdout_reader: Option<StdoutReader<'a>>,
    /// Handed every line the child prints that the reader left, masked: for output kept
    /// elsewhere too.
    pub on_line: Option<&'a mut dyn FnMut(&str)>,
    /// Tells the lines that report an error, and gathers the first report.
    pub errors: Option<Box<dyn ErrorLines + 'a>>,
    pub stop: Stop<'a>,
    /// What the child is, for the `source` of its lines in the log.
    pub child: crate::base::log::Child,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            name: "its child",
            capture_stdout: false,
            watch: None,
            stdout_reader: None,
            on_line: None,
            errors: None,
            stop: Stop::default(),
            child: Default::default(),
        }
    }
}

impl Supervisor {
    /// Runs `command` to its end. Its stderr (and its stdout, unless captured) is logged line
    /// by line as it arrives, tagged with the command's label.
    pub fn run(&self, command: &Command, options: Options<'_>) -> std::io::Result<Finished> {
        let Options {
            name,
            capture_stdout,
            mut watch,
            stdout_reader,
            on_line,
            errors,
            stop,
            child: kind,
        } = options;
        let mut child = self.spawn(command)?;
        let mut pipes = Pipes::new(&mut child, capture_stdout);
        let mut handler = Handler::new(
            &self.logger,
            &command.label,
            kind,
            errors,
            on_line,
            stdout_reader,
        );
        let mut handle = |batch: &Batch| handler.batch(batch);
        let mut watch = || {
            if let Some(watch) = watch.as_mut() {
                watch();
            }
        };
        let mut run = Running {
            supervisor: self,
            label: &command.label,
            name,
            pid: Pid::from_raw(child.id() as i32),
            redactor: self.logger.redactor().clone(),
            stop,
            sent: None,
            kill_at: None,
        };
        run.wait(&mut pipes, &mut handle, &mut watch)?;
        run.kill_leftovers();
        run.drain(&mut pipes, &mut handle);
        // Reaped only now: see `Running`.
        let status = child.wait()?;
        let (tail, first_error) = handler.finish();
        Ok(Finished {
            status,
            stdout: pipes.captured(),
            tail,
            first_error,
        })
    }

    fn spawn(&self, command: &Command) -> std::io::Result<Child> {
        let mut cmd = std::process::Command::new(&command.program);
        cmd.args(&command.args)
            .current_dir(&command.cwd)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a terminal's Ctrl-C or a signal to us does not reach it unasked,
            // and the whole group can be killed at the end of the grace period.
            .process_group(0);
        // What a child writes (states, backend settings) can hold secrets, and would be
        // world-readable under the usual umask; the child's files are its owner's only.
        // A stop is one SIGINT, then SIGTERM: started from a shell's background job (which
        // ignores both), a child would inherit them ignored, and a shell cannot even trap a
        // signal ignored at its start. So both are the default again in the child.
        // SAFETY: umask and signal are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        self.logger
            .info(Some(&command.label), &format!("$ {}", command.display()));
        cmd.spawn()
    }
}

/// A child from its start until it is reaped. It is not reaped until the very end: its
/// zombie keeps its pid, and with it the number of its process group, from being handed to
/// an unrelated process while the group may still be signalled.
struct Running<'a> {
    supervisor: &'a Supervisor,
    label: &'a str,
    name: &'a str,
    pid: Pid,
    redactor: Redactor,
    stop: Stop<'a>,
    /// The last signal sent; none until a stop was asked for.
    sent: Option<Signal>,
    /// When its process group is killed if it has not exited by then.
    kill_at: Option<Instant>,
}

impl Running<'_> {
    /// Handles its output until it exited, stopping it when asked.
    fn wait(
        &mut self,
        pipes: &mut Pipes,
        handle: &mut dyn FnMut(&Batch),
        watch: &mut dyn FnMut(),
    ) -> std::io::Result<()> {
        let exit = exit_fd(self.pid);
        let mut next_check = Instant::now();
        loop {
            let exited = pipes.read(exit.as_ref(), next_check, &self.redactor, handle);
            if !exited && Instant::now() < next_check {
                continue;
            }
            next_check = Instant::now() + POLL;
            watch();
            if has_exited(self.pid)? {
                watch();
                return Ok(());
            }
            self.signal();
            if self.kill_at.is_some_and(|at| Instant::now() >= at) {
                self.kill_at = None;
                self.warn(&format!(
                    "grace period over: killing {}'s process group",
                    self.name
                ));
                let _ = killpg(self.pid, Signal::SIGKILL);
            }
        }
    }

    /// Sends the signal a stop asks for, if it was not sent already.
    fn signal(&mut self) {
        let asked = match self.stop {
            Stop::OnShutdown => self.supervisor.shutdown.requested().map(|_| Signal::SIGINT),
            Stop::By(stop) => stop(),
        };
        let Some(signal) = asked.filter(|s| self.sent != Some(*s)) else {
            return;
        };
        if self.sent.is_none() {
            self.kill_at = Some(match self.stop {
                Stop::OnShutdown => self
                    .supervisor
                    .shutdown
                    .grace_deadline(self.supervisor.grace),
                Stop::By(_) => Instant::now() + self.supervisor.grace,
            });
        }
        self.sent = Some(signal);
        self.warn(&format!(
            "stopping: sent {signal} to {} (pid {}); waiting up to {} for it to save its state",
            self.name,
            self.pid,
            crate::base::clock::human(self.supervisor.grace)
        ));
        let _ = kill(self.pid, signal);
    }

    /// A child stopped as asked may have left children of its own running in its group (a
    /// program that cancels its subprocess need not kill that one's children). Nobody waits
    /// for them any more: they must not go on working behind the engine's back, e.g. while
    /// a `destroy` that asked for this stop runs.
    fn kill_leftovers(&self) {
        if self.sent.is_some() && killpg(self.pid, Signal::SIGKILL).is_ok() {
            self.warn(&format!(
                "killed what {} left running in its process group",
                self.name
            ));
        }
    }

    /// The child is gone; its output may still be in the pipes, or held open by leftovers.
    fn drain(&self, pipes: &mut Pipes, handle: &mut dyn FnMut(&Batch)) {
        let mut drain_until = Instant::now() + DRAIN;
        let mut killed = false;
        while pipes.open() {
            if Instant::now() >= drain_until {
                if killed {
                    self.warn(&format!(
                        "processes outside {}'s group hold its output open; leaving them",
                        self.name
                    ));
                    // What they printed last without ending the line is still logged.
                    pipes.end(&self.redactor, handle);
                    break;
                }
                self.warn(&format!(
                    "processes left behind by {} hold its output open; killing them",
                    self.name
                ));
                let _ = killpg(self.pid, Signal::SIGKILL);
                killed = true;
                drain_until = Instant::now() + DRAIN;
            }
            pipes.read(None, drain_until, &self.redactor, handle);
        }
    }

    fn warn(&self, message: &str) {
        self.supervisor.logger.warn(Some(self.label), message);
    }
}

/// A descriptor that becomes readable when the process `pid` exits, so that its exit is
/// seen at once rather than at the next check; `None` where the kernel has none (before
/// Linux 5.3), and the checks every [`POLL`] see it.
fn exit_fd(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a descriptor the kernel just opened for us, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Whether the child `pid` has exited, without reaping it.
fn has_exited(pid: Pid) -> std::io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our own child; WNOWAIT leaves it waitable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid.as_raw() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc == -1 {
        let err = std::io::Error::last_os_error();
        return match err.kind() {
            std::io::ErrorKind::Interrupted => Ok(false),
            _ => Err(err),
        };
    }
    // With WNOHANG and nothing to report, waitid leaves si_pid zero.
    // SAFETY: si_pid is the field waitid fills in for every outcome.
    Ok(unsafe { info.si_pid() } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a subscriber of a caller's own writes, kept.
    #[derive(Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with a subscriber of its own; returns what `f` returned and what was logged.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let kept = Kept::default();
        let writer = {
            let kept = kept.clone();
            move || kept.clone()
        };
        let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let log = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        (result, log)
    }

    /// An error report is one line that starts with `Error:`.
    #[derive(Default)]
    struct FirstLine(Option<String>);

    impl ErrorLines for FirstLine {
        fn opens(&self, line: &str) -> bool {
            line.starts_with("Error:")
        }

        fn wants(&self, opens: bool) -> bool {
            opens && self.0.is_none()
        }

        fn feed(&mut self, line: &str, _: bool) {
            self.0 = Some(line.to_string());
        }

        fn first(&mut self) -> Option<String> {
            self.0.take()
        }
    }

    #[test]
    fn a_callers_own_subscriber_gets_every_line_masked() {
        let redactor = Redactor::default();
        redactor.add("s3cr3t-value-xyz");
        let (finished, written) = logged(|| {
            let supervisor = Supervisor {
                logger: Logger::new(crate::base::log::Format::Text, redactor.clone()),
                shutdown: Shutdown::default(),
                grace: Duration::from_secs(5),
            };
            let command = Command {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    "echo out $S; echo \"Error: $S\" >&2; exit 1".into(),
                ],
                cwd: ".".into(),
                env: vec![("S".into(), "s3cr3t-value-xyz".into())],
                label: "t".into(),
            };
            let options = Options {
                errors: Some(Box::new(FirstLine::default())),
                ..Options::default()
            };
            supervisor.run(&command, options).unwrap()
        });
        assert!(written.contains("out ********"), "{written}");
        assert!(written.contains("Error: ********"), "{written}");
        assert!(!written.contains("s3cr3t"), "{written}");
        assert!(
            !finished.reason().contains("s3cr3t"),
            "{}",
            finished.reason()
        );
        assert!(finished.tail.iter().all(|l| !l.contains("s3cr3t")));
    }

    #[test]
    fn an_exited_child_is_seen_but_left_to_reap() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_exited(pid).unwrap() {
            assert!(Instant::now() < deadline, "child never exited");
            std::thread::sleep(POLL);
        }
        // Still a zombie holding its pid, so its group number cannot be reused yet.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert_eq!(stat.rsplit_once(") ").unwrap().1.chars().next(), Some('Z'));
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    /// Runs `script` under `sh` in `dir`, stopped by `stop`; returns how it ended and the log.
    fn run_logged(
        dir: &std::path::Path,
        script: &str,
        capture_stdout: bool,
        stop: Stop<'_>,
    ) -> (Finished, String) {
        logged(|| {
            let supervisor = Supervisor {
                logger: Logger::new(crate::base::log::Format::Text, Redactor::default()),
                shutdown: Shutdown::default(),
                grace: Duration::from_secs(30),
            };
            let command = Command {
                program: "sh".into(),
                args: vec!["-c".into(), script.into()],
                cwd: dir.into(),
                env: vec![],
                label: "t".into(),
            };
            let options = Options {
                capture_stdout,
                stop,
                ..Options::default()
            };
            supervisor.run(&command, options).unwrap()
        })
    }

    /// Whether process `pid` is gone: reaped, or a zombie that nobody reaps.
    fn gone(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ").unwrap().1.starts_with('Z')
        })
    }

    #[test]
    fn a_child_that_ends_on_its_own_is_read_to_the_end_and_nothing_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // What it started in the background prints its line after the child exited, well
        // within the time the pipes are drained.
        let script = "seq 1 30000; (sleep 0.2; echo late) &";
        let (finished, log) = run_logged(dir.path(), script, true, Stop::default());
        assert!(finished.success(), "{log}");
        let stdout = String::from_utf8(finished.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 30001, "{log}");
        assert!(stdout.ends_with("\n30000\nlate\n"), "{log}");
        assert!(!log.contains("kill"), "nothing was left to kill: {log}");
        assert!(!log.contains("hold its output open"), "{log}");
    }

    #[test]
    fn leftovers_that_hold_the_output_open_are_killed_after_the_drain_window() {
        let dir = tempfile::tempdir().unwrap();
        // The background sleep keeps the child's stdout open after the child exits.
        let script = "sleep 60 & echo started";
        let started = Instant::now();
        let (finished, log) = run_logged(dir.path(), script, true, Stop::default());
        assert!(finished.success(), "{log}");
        assert_eq!(String::from_utf8(finished.stdout).unwrap(), "started\n");
        assert!(started.elapsed() >= DRAIN, "{log}");
        assert!(
            log.contains("processes left behind by its child hold its output open; killing them"),
            "{log}"
        );
        // Killed, they let go of the pipes: nothing outside the group is left holding them.
        assert!(!log.contains("outside"), "{log}");
    }

    #[test]
    fn a_stopped_child_gets_one_signal_the_grace_period_and_its_leftovers_killed() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("leftover");
        // The leftover ignores SIGINT (a background job of a script does) and holds no pipe.
        let script = "trap 'exit 7' INT; sleep 60 >/dev/null 2>&1 & echo $! >leftover.tmp; \
                      mv leftover.tmp leftover; while :; do sleep 0.1; done";
        let stop = || ready.exists().then_some(Signal::SIGINT);
        let (finished, log) = run_logged(dir.path(), script, false, Stop::By(&stop));
        let leftover = std::fs::read_to_string(&ready).unwrap();
        let leftover = leftover.trim();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(leftover) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let survived = !gone(leftover);
        if survived {
            let _ = kill(Pid::from_raw(leftover.parse().unwrap()), Signal::SIGKILL);
        }
        assert_eq!(
            finished.status.code(),
            Some(7),
            "it exits on its own well within the grace period: {log}"
        );
        assert_eq!(log.matches("stopping: sent SIGINT").count(), 1, "{log}");
        assert!(!log.contains("grace period over"), "{log}");
        assert!(!survived, "its leftover was still running: {log}");
        assert!(log.contains("killed what its child left running"), "{log}");
    }
}
