//! The one way the engine runs a child process: logged, in its own process group, its output
//! streamed line by line in bounded memory, and stopped gently when the engine must stop.
//!
//! Stopping follows terraform's rules: exactly one SIGINT to terraform itself (a second one
//! makes it abandon its final state write), then wait; only when the grace period is nearly
//! spent does the whole group get SIGKILL.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::log::Logger;
use crate::secrets::Redactor;
use crate::signals::Shutdown;

/// A line longer than this is passed on in pieces: terraform can print megabytes on one line.
const MAX_LINE: usize = 64 * 1024;
/// How many of the last lines are kept to explain a failure.
const TAIL_LINES: usize = 40;
/// How often the child is checked on while it runs.
const POLL: Duration = Duration::from_millis(25);
/// How long output pipes may stay open after the child exited (held by its leftovers).
const DRAIN: Duration = Duration::from_secs(2);
/// Batches of lines in flight between the pipe readers and the logger. Bounded, so that a
/// child printing faster than the log can be written waits on its pipe instead of filling our
/// memory (at most this many batches of about [`BATCH_BYTES`] plus one piece each).
const QUEUE: usize = 8;
/// A reader hands over what it has read once a batch holds this much, or sooner when the pipe
/// has nothing more ready: one hand-over per line would cost more than the line itself.
const BATCH_BYTES: usize = 32 * 1024;
/// What a reader takes from the pipe at once.
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// The step whose output this is, for tagging its lines.
    pub label: String,
}

impl Command {
    pub fn display(&self) -> String {
        let mut text = self.program.display().to_string();
        for arg in &self.args {
            text.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            {
                text.push_str(&format!("{arg:?}"));
            } else {
                text.push_str(arg);
            }
        }
        text
    }
}

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The child's whole stdout, when it was captured instead of streamed.
    pub stdout: Vec<u8>,
    /// The last lines it printed, masked, to explain a failure.
    pub tail: Vec<String>,
    /// Whether the engine had to signal it to stop.
    pub interrupted: bool,
    /// Terraform's first `Error:` diagnostic, summary and detail, masked.
    pub first_error: Option<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// How it exited: `exit code 1`, `killed by signal 9`.
    pub fn exit(&self) -> String {
        match (
            self.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&self.status),
        ) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown exit".to_string(),
        }
    }

    /// A one-line reason for a failure: terraform's first `Error:` line if it printed one.
    pub fn reason(&self) -> String {
        let code = self.exit();
        let detail = self.first_error.as_deref().or_else(|| {
            self.tail
                .iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
        });
        match detail {
            Some(detail) => format!("{code}: {detail}"),
            None => code,
        }
    }
}

/// Runs child processes for the engine.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub logger: Logger,
    pub shutdown: Shutdown,
    /// From the moment a stop is asked for until the group is killed.
    pub grace: Duration,
}

enum Event {
    /// Lines of one stream, in order.
    Lines {
        lines: Vec<Line>,
        stdout: bool,
    },
    Closed,
}

/// A line, or a piece of a long one (`whole` false but for its last piece).
struct Line {
    text: String,
    whole: bool,
}

/// Reads a child's stdout lines (unmasked) before the log does: returns true for a line it
/// took care of, false for one to be logged as it is.
pub type StdoutReader<'a> = &'a mut dyn FnMut(&str, bool) -> bool;

/// How a supervised child is asked to stop: the signal to send it now, if any, and when its
/// process group is killed if it has not exited by then.
struct Stopping<'a> {
    signal: &'a dyn Fn() -> Option<Signal>,
    deadline: &'a dyn Fn() -> Instant,
}

impl Supervisor {
    /// Runs `command` to its end. Its stderr (and its stdout, unless `capture_stdout`) is
    /// logged line by line as it arrives, tagged with the command's label.
    pub fn run(&self, command: &Command, capture_stdout: bool) -> std::io::Result<Finished> {
        self.run_watching(command, capture_stdout, &mut || {})
    }

    /// [`Supervisor::run`], calling `watch` on every poll while the child runs and once after
    /// it exited: for what must keep up with the child's files as they change.
    pub fn run_watching(
        &self,
        command: &Command,
        capture_stdout: bool,
        watch: &mut dyn FnMut(),
    ) -> std::io::Result<Finished> {
        let shutdown = self.shutdown.clone();
        let stop = move || shutdown.requested().map(|_| Signal::SIGINT);
        // Terraforms of steps running at once share the deadline of the one stop request.
        let deadline = || self.shutdown.grace_deadline(self.grace);
        self.supervise(
            command,
            capture_stdout,
            watch,
            Stopping {
                signal: &stop,
                deadline: &deadline,
            },
            &mut |_| {},
            None,
        )
    }

    /// [`Supervisor::run_watching`], with the child's stdout handed to `reader` line by line
    /// as it arrives (for terraform's `-json` stream); stderr is logged as always.
    pub fn run_reading(
        &self,
        command: &Command,
        watch: &mut dyn FnMut(),
        reader: StdoutReader<'_>,
    ) -> std::io::Result<Finished> {
        let shutdown = self.shutdown.clone();
        let stop = move || shutdown.requested().map(|_| Signal::SIGINT);
        let deadline = || self.shutdown.grace_deadline(self.grace);
        self.supervise(
            command,
            false,
            watch,
            Stopping {
                signal: &stop,
                deadline: &deadline,
            },
            &mut |_| {},
            Some(reader),
        )
    }

    /// Runs a child that is stopped with a signal of the caller's choosing instead of the
    /// engine's SIGINT: `stop` is asked on every poll, each new signal it names is sent once,
    /// and the grace period starts with the first. Every masked line the child prints is
    /// also handed to `line`. For children that are engines themselves, which take SIGTERM
    /// and SIGUSR1, and whose output is kept per operation.
    pub fn run_stopped_by(
        &self,
        command: &Command,
        stop: &dyn Fn() -> Option<Signal>,
        line: &mut dyn FnMut(&str),
    ) -> std::io::Result<Finished> {
        let deadline = || Instant::now() + self.grace;
        self.supervise(
            command,
            false,
            &mut || {},
            Stopping {
                signal: stop,
                deadline: &deadline,
            },
            line,
            None,
        )
    }

    fn supervise(
        &self,
        command: &Command,
        capture_stdout: bool,
        watch: &mut dyn FnMut(),
        stopping: Stopping<'_>,
        on_line: &mut dyn FnMut(&str),
        mut stdout_reader: Option<StdoutReader<'_>>,
    ) -> std::io::Result<Finished> {
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
        // Terraform writes states and backend settings, which hold secrets, under the
        // usual umask world-readable; the child's files are its owner's only.
        // SAFETY: umask is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        self.logger
            .info(Some(&command.label), &format!("$ {}", command.display()));
        let mut child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);

        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stderr = child.stderr.take().expect("piped");
        let redactor = self.logger.redactor().clone();
        let err_reader = spawn_reader(stderr, false, tx.clone(), redactor.clone());
        let stdout = child.stdout.take().expect("piped");
        let (out_reader, captured) = if capture_stdout {
            let handle = thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = BufReader::new(stdout).read_to_end(&mut bytes);
                bytes
            });
            (None, Some(handle))
        } else {
            (Some(spawn_reader(stdout, true, tx.clone(), redactor)), None)
        };
        drop(tx);

        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut first_error = FirstError::default();
        let mut open = if capture_stdout { 1 } else { 2 };
        let mut interrupted = false;
        let mut sent: Option<Signal> = None;
        let mut kill_at: Option<Instant> = None;
        let mut handle_event = |event: Event, open: &mut usize| match event {
            Event::Lines { lines, stdout } => {
                for Line { text, whole } in lines {
                    if let (true, Some(reader)) = (stdout, stdout_reader.as_mut()) {
                        if reader(&text, whole) {
                            continue;
                        }
                    }
                    let masked = self.logger.redactor().mask(&text);
                    if is_error_line(&masked) {
                        self.logger.child_error(&command.label, &masked);
                    } else {
                        self.logger.child_line(&command.label, &masked);
                    }
                    first_error.feed(&masked);
                    on_line(&masked);
                    // The line leaving the tail makes room for the new one, without allocating.
                    let mut kept = if tail.len() == TAIL_LINES {
                        tail.pop_front().unwrap_or_default()
                    } else {
                        String::new()
                    };
                    kept.clear();
                    kept.push_str(&masked);
                    tail.push_back(kept);
                }
                // A batch ends when its reader has nothing more ready: show it now.
                crate::log::flush();
            }
            Event::Closed => *open -= 1,
        };

        // The child is not reaped until the very end: its zombie keeps its pid, and with it
        // the number of its process group, from being handed to an unrelated process while
        // the group may still be signalled below.
        loop {
            match rx.recv_timeout(POLL) {
                Ok(event) => handle_event(event, &mut open),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
            watch();
            if has_exited(pid)? {
                watch();
                break;
            }
            if let Some(signal) = (stopping.signal)().filter(|s| sent != Some(*s)) {
                if !interrupted {
                    kill_at = Some((stopping.deadline)());
                }
                interrupted = true;
                sent = Some(signal);
                let whom = match signal {
                    Signal::SIGINT => "terraform",
                    _ => "its child",
                };
                self.logger.warn(
                    Some(&command.label),
                    &format!(
                        "stopping: sent {signal} to {whom} (pid {pid}); waiting up to {} for it to save its state",
                        crate::clock::human(self.grace)
                    ),
                );
                let _ = kill(pid, signal);
            }
            if kill_at.is_some_and(|at| Instant::now() >= at) {
                kill_at = None;
                self.logger.warn(
                    Some(&command.label),
                    "grace period over: killing terraform's process group",
                );
                let _ = killpg(pid, Signal::SIGKILL);
            }
        }

        // Terraform stopped as asked, and the step with it; a provisioner it cancelled may
        // have left children running in its group (terraform kills only the provisioner's own
        // process). Nobody waits for them any more: they must not go on working behind the
        // engine's back, e.g. while a `destroy` that asked for this stop runs.
        if interrupted && killpg(pid, Signal::SIGKILL).is_ok() {
            self.logger.warn(
                Some(&command.label),
                "killed what terraform left running in its process group",
            );
        }

        // The child is gone; its output may still be in the pipes, or held open by leftovers.
        let drain_until = Instant::now() + DRAIN;
        while open > 0 {
            let left = drain_until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(event) => handle_event(event, &mut open),
                Err(_) => {
                    self.logger.warn(
                        Some(&command.label),
                        "processes left behind by terraform hold its output open; killing them",
                    );
                    let _ = killpg(pid, Signal::SIGKILL);
                    while let Ok(event) = rx.recv() {
                        handle_event(event, &mut open);
                    }
                    break;
                }
            }
        }
        let status = child.wait()?;
        let _ = err_reader.join();
        if let Some(reader) = out_reader {
            let _ = reader.join();
        }
        let stdout = captured
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Finished {
            status,
            stdout,
            tail: tail.into_iter().collect(),
            interrupted,
            first_error: first_error.finish(),
        })
    }
}

/// A line of terraform's diagnostics with its box drawing (printed in colour mode) taken off.
fn unboxed(line: &str) -> &str {
    let line = line.trim_end();
    match line.strip_prefix(['│', '╷', '╵']) {
        Some(rest) => rest.strip_prefix(' ').unwrap_or(rest),
        None => line,
    }
}

/// Whether terraform opens an error diagnostic with this line.
pub fn is_error_line(line: &str) -> bool {
    unboxed(line).trim_start().starts_with("Error:")
}

/// Collects terraform's first error diagnostic: the `Error:` summary, then its detail (the
/// unindented paragraphs after the indented source context), up to the next diagnostic.
#[derive(Default)]
struct FirstError {
    lines: Vec<String>,
    open: bool,
    done: bool,
}

impl FirstError {
    /// More than this is not a reason any more, it is a log.
    const MAX_CHARS: usize = 600;

    fn feed(&mut self, line: &str) {
        if self.done {
            return;
        }
        let text = unboxed(line);
        if !self.open {
            if is_error_line(text) {
                self.open = true;
                self.lines.push(text.trim().to_string());
            }
            return;
        }
        let diagnostic_ends = text.starts_with("Error:")
            || text.starts_with("Warning:")
            || line.trim_start().starts_with('╵');
        if diagnostic_ends {
            self.done = true;
        } else if !text.is_empty() && !text.starts_with(char::is_whitespace) {
            self.lines.push(text.trim().to_string());
        }
        if self.lines.iter().map(String::len).sum::<usize>() > Self::MAX_CHARS {
            self.done = true;
        }
    }

    fn finish(self) -> Option<String> {
        let (summary, detail) = self.lines.split_first()?;
        let mut text = summary.clone();
        if !detail.is_empty() {
            text.push_str(": ");
            text.push_str(&detail.join(" "));
        }
        if text.len() > Self::MAX_CHARS {
            let mut end = Self::MAX_CHARS;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        Some(text)
    }
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

fn spawn_reader(
    stream: impl Read + Send + 'static,
    stdout: bool,
    tx: mpsc::SyncSender<Event>,
    redactor: Redactor,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(READ_BUF, stream);
        let mut pieces = Pieces::default();
        let mut lines = Vec::new();
        let mut bytes = 0;
        loop {
            let piece = pieces.next(&mut reader, &redactor);
            let done = piece.is_none();
            if let Some(piece) = piece {
                let whole = piece.ends_with(b"\n");
                let mut text = String::from_utf8(piece)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                text.truncate(text.trim_end_matches(['\n', '\r']).len());
                bytes += text.len() + 1;
                lines.push(Line { text, whole });
            }
            let ready = done || bytes >= BATCH_BYTES || reader.buffer().is_empty();
            if ready && !lines.is_empty() {
                let batch = Event::Lines {
                    lines: std::mem::take(&mut lines),
                    stdout,
                };
                if tx.send(batch).is_err() {
                    break;
                }
                bytes = 0;
            }
            if done {
                break;
            }
        }
        let _ = tx.send(Event::Closed);
    })
}

/// A stream cut into lines, and a line longer than [`MAX_LINE`] into pieces, each cut where
/// it splits neither a UTF-8 character nor a secret (each piece is masked on its own).
#[derive(Default)]
struct Pieces {
    /// What was read past the last cut, the start of the next piece.
    carry: Vec<u8>,
    done: bool,
}

impl Pieces {
    fn next(&mut self, reader: &mut impl BufRead, redactor: &Redactor) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut line = std::mem::take(&mut self.carry);
        match read_line_bounded(reader, &mut line) {
            Ok(0) | Err(_) => {
                self.done = true;
                return (!line.is_empty()).then_some(line);
            }
            Ok(_) => {}
        }
        if line.ends_with(b"\n") {
            return Some(line);
        }
        let at_char = char_boundary(&line);
        let cut = redactor.safe_cut(&line[..at_char]);
        self.carry = line.split_off(cut);
        Some(line)
    }
}

/// The end of the last whole UTF-8 character of `bytes` (a character cut short at the end
/// is left out); never 0, so that invalid bytes still make progress.
fn char_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let width = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if width > back && back < len {
            len - back
        } else {
            len
        };
    }
    len
}

/// Reads up to a newline or [`MAX_LINE`] bytes, whichever comes first.
fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = MAX_LINE - line.len();
        let window = &available[..available.len().min(room)];
        let (used, done) = match memchr::memchr(b'\n', window) {
            Some(i) => (i + 1, true),
            None => (window.len(), line.len() + window.len() >= MAX_LINE),
        };
        line.extend_from_slice(&window[..used]);
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_come_in_bounded_pieces() {
        let data = vec![b'x'; MAX_LINE * 2 + 10];
        let mut reader = BufReader::new(&data[..]);
        let mut sizes = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = read_line_bounded(&mut reader, &mut line).unwrap();
            if n == 0 {
                break;
            }
            sizes.push(line.len());
        }
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 10]);
    }

    fn pieces(data: &[u8], redactor: &Redactor) -> Vec<Vec<u8>> {
        let mut reader = BufReader::new(data);
        let mut pieces = Pieces::default();
        std::iter::from_fn(|| pieces.next(&mut reader, redactor)).collect()
    }

    #[test]
    fn long_lines_are_cut_between_characters_and_outside_secrets() {
        let mut data = "x".repeat(MAX_LINE - 1).into_bytes();
        data.extend("€€ end\nnext\n".as_bytes());
        let got = pieces(&data, &Redactor::default());
        let text: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8(p.clone()).expect("whole characters"))
            .collect();
        assert_eq!(
            text.len(),
            3,
            "{:?}",
            text.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(text[0].len(), MAX_LINE - 1);
        assert_eq!(text[1], "€€ end\n");
        assert_eq!(text[2], "next\n");

        let redactor = Redactor::default();
        redactor.add("s3cr3t-value");
        let mut data = "y".repeat(MAX_LINE - 5).into_bytes();
        data.extend(b"s3cr3t-value tail\n");
        let got = pieces(&data, &redactor);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE - 5);
        assert_eq!(got[1], b"s3cr3t-value tail\n");
        assert_eq!(
            redactor.mask(std::str::from_utf8(&got[1]).unwrap()),
            "******** tail\n"
        );
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
            thread::sleep(POLL);
        }
        // Still a zombie holding its pid, so its group number cannot be reused yet.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert_eq!(stat.rsplit_once(") ").unwrap().1.chars().next(), Some('Z'));
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    fn first_error(lines: &[&str]) -> Option<String> {
        let mut first = FirstError::default();
        for line in lines {
            first.feed(line);
        }
        first.finish()
    }

    #[test]
    fn the_reason_is_terraforms_first_error_with_its_detail() {
        let boxed = [
            "Initializing the backend...",
            "╷",
            "│ Error: Backend initialization required",
            "│ ",
            "│   on main.tf line 3:",
            "│    3:   backend \"pg\" {}",
            "│ ",
            "│ Reason: the backend changed.",
            "│ Run terraform init.",
            "╵",
            "╷",
            "│ Error: a second one",
            "╵",
        ];
        let finished = Finished {
            status: std::process::Command::new("false").status().unwrap(),
            stdout: vec![],
            tail: vec!["╵".into()],
            interrupted: false,
            first_error: first_error(&boxed),
        };
        assert_eq!(
            finished.reason(),
            "exit code 1: Error: Backend initialization required: Reason: the backend changed. Run terraform init."
        );
        let plain = [
            "terraform_data.a (local-exec): boom",
            "",
            "Error: local-exec provisioner error",
            "",
            "  with terraform_data.a,",
            "  on main.tf line 2, in resource \"terraform_data\" \"a\":",
            "   2:   provisioner \"local-exec\" {",
            "",
            "Error running command 'exit 3': exit status 3. Output: boom",
            "",
        ];
        assert_eq!(
            first_error(&plain).unwrap(),
            "Error: local-exec provisioner error: Error running command 'exit 3': exit status 3. Output: boom"
        );
        assert_eq!(first_error(&["usage: terraform ...", "  -flag"]), None);
    }
}
