//! The one way the engine runs a child process: logged, in its own process group, its output
//! streamed line by line in bounded memory, and stopped gently when the engine must stop.
//!
//! Stopping follows terraform's rules: exactly one SIGINT to terraform itself (a second one
//! makes it abandon its final state write), then wait; only when the grace period is nearly
//! spent does the whole group get SIGKILL.

mod program;

pub use program::find_program;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::base::log::{ChildLines, Logger};
use crate::base::secrets::Redactor;
use crate::base::signals::Shutdown;

/// A line longer than this is passed on in pieces: terraform can print megabytes on one line.
const MAX_LINE: usize = 64 * 1024;
/// How many of the last lines are kept to explain a failure.
const TAIL_LINES: usize = 40;
/// How often the child is checked on while it runs.
const POLL: Duration = Duration::from_millis(25);
/// How long output pipes may stay open after the child exited (held by its leftovers).
const DRAIN: Duration = Duration::from_secs(2);
/// Lines are logged a batch at a time: once this much was read, or sooner when the pipe has
/// nothing more ready. Line by line, the logging around them would cost more than the lines.
const BATCH_BYTES: usize = 128 * 1024;
/// What a reader takes from the pipe at once, at least.
const READ_BUF: usize = 64 * 1024;
/// What a child's output pipes hold.
const PIPE_BYTES: libc::c_int = 1024 * 1024;

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

/// Lines as read, in the buffer they were read into: no line costs an allocation of its own.
struct Batch {
    bytes: Vec<u8>,
    lines: Vec<Span>,
    stdout: bool,
}

/// A line in a batch (without its line end), or a piece of a long one (`whole` false but for
/// its last piece).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: usize,
    end: usize,
    whole: bool,
}

impl Batch {
    /// The whole batch as text, when it is valid UTF-8: lines and pieces end between
    /// characters, so each of them then is too, and one check serves them all.
    fn valid(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    fn text<'a>(&'a self, valid: Option<&'a str>, span: &Span) -> Cow<'a, str> {
        match valid {
            Some(all) => Cow::Borrowed(&all[span.start..span.end]),
            None => String::from_utf8_lossy(&self.bytes[span.start..span.end]),
        }
    }

    /// Whether no line of it needs masking: one search over the batch, since most hold no
    /// secret. Pieces of long lines are masked one by one, as their ends count.
    fn clean(&self, valid: Option<&str>, redactor: &Redactor) -> bool {
        self.lines.iter().all(|span| span.whole)
            && valid.is_some_and(|all| matches!(redactor.mask(all), Cow::Borrowed(_)))
    }
}

/// Reads a child's stdout lines (unmasked) before the log does: returns true for a line it
/// took care of, false for one to be logged as it is. What it logs itself goes through the
/// [`ChildLines`] it is given (flushed first, for anything else), to keep the order.
pub type StdoutReader<'a> = &'a mut dyn FnMut(&str, bool, &mut ChildLines) -> bool;

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
            None,
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
            None,
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
            Some(line),
            None,
        )
    }

    fn supervise(
        &self,
        command: &Command,
        capture_stdout: bool,
        watch: &mut dyn FnMut(),
        stopping: Stopping<'_>,
        mut on_line: Option<&mut dyn FnMut(&str)>,
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

        let redactor = self.logger.redactor().clone();
        let mut pipes = [
            Pipe::new(child.stderr.take().expect("piped").into(), false, false),
            Pipe::new(
                child.stdout.take().expect("piped").into(),
                true,
                capture_stdout,
            ),
        ];

        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut first_error = FirstError::default();
        let mut interrupted = false;
        let mut sent: Option<Signal> = None;
        let mut kill_at: Option<Instant> = None;
        let mut sink = ChildLines::new(&command.label);
        let mut last = VecDeque::with_capacity(TAIL_LINES);
        let mut handle = |batch: &Batch| {
            let valid = batch.valid();
            // The log masks what it writes; a line is masked on its own only where
            // `mask_each_line` says so and the batch holds something to mask, and where it is
            // kept. Asked once per batch, at its first line the reader leaves to the log.
            let mut as_read = None;
            for (at, span) in batch.lines.iter().enumerate() {
                let text = batch.text(valid, span);
                if let (true, Some(reader)) = (batch.stdout, stdout_reader.as_mut()) {
                    if reader(&text, span.whole, &mut sink) {
                        continue;
                    }
                }
                let as_read = *as_read.get_or_insert_with(|| {
                    !crate::base::log::mask_each_line(&redactor) || batch.clean(valid, &redactor)
                });
                let line = if as_read {
                    text
                } else {
                    Cow::Owned(redactor.mask(&text).into_owned())
                };
                let error = is_error_line(&line);
                if error {
                    sink.flush();
                    self.logger.child_error(&command.label, &line);
                } else {
                    sink.line(&line);
                }
                if first_error.wants(error) {
                    first_error.feed(&redactor.mask(&line), error);
                }
                if let Some(on_line) = on_line.as_mut() {
                    on_line(&redactor.mask(&line));
                }
                if last.len() == TAIL_LINES {
                    last.pop_front();
                }
                last.push_back(at);
            }
            // Only the batch's last lines can be in the tail, which is masked at the end.
            for at in last.drain(..) {
                let text = batch.text(valid, &batch.lines[at]);
                // The line leaving the tail makes room for the new one, without allocating.
                let mut kept = if tail.len() == TAIL_LINES {
                    tail.pop_front().unwrap_or_default()
                } else {
                    String::new()
                };
                kept.clear();
                kept.push_str(&text);
                tail.push_back(kept);
            }
            // A batch ends when the pipe has nothing more ready: show it now.
            sink.flush();
            crate::base::log::flush();
        };

        // The child is not reaped until the very end: its zombie keeps its pid, and with it
        // the number of its process group, from being handed to an unrelated process while
        // the group may still be signalled below.
        let exit = exit_fd(pid);
        let mut next_check = Instant::now();
        loop {
            let exited = read_pipes(
                &mut pipes,
                exit.as_ref(),
                next_check,
                &redactor,
                &mut handle,
            );
            if !exited && Instant::now() < next_check {
                continue;
            }
            next_check = Instant::now() + POLL;
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
                        crate::base::clock::human(self.grace)
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
        let mut drain_until = Instant::now() + DRAIN;
        let mut killed = false;
        while pipes.iter().any(|p| p.open) {
            if Instant::now() >= drain_until {
                if killed {
                    self.logger.warn(
                        Some(&command.label),
                        "processes outside terraform's group hold its output open; leaving them",
                    );
                    // What they printed last without ending the line is still logged.
                    for pipe in pipes.iter_mut().filter(|p| p.open) {
                        pipe.end(&redactor, &mut handle);
                    }
                    break;
                }
                self.logger.warn(
                    Some(&command.label),
                    "processes left behind by terraform hold its output open; killing them",
                );
                let _ = killpg(pid, Signal::SIGKILL);
                killed = true;
                drain_until = Instant::now() + DRAIN;
            }
            read_pipes(&mut pipes, None, drain_until, &redactor, &mut handle);
        }
        let status = child.wait()?;
        let [_, stdout] = pipes;
        Ok(Finished {
            status,
            stdout: stdout.captured.unwrap_or_default(),
            tail: tail
                .into_iter()
                .map(|line| redactor.mask(&line).into_owned())
                .collect(),
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
    // Most lines tell at their first byte after spaces: neither `E` nor a box or other
    // character outside ASCII.
    match line.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'E' | 0x80..) => unboxed(line).trim_start().starts_with("Error:"),
        _ => false,
    }
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

    /// Whether it takes a line that opens an error diagnostic or not.
    fn wants(&self, error: bool) -> bool {
        !self.done && (self.open || error)
    }

    /// Takes a line, and whether it opens an error diagnostic.
    fn feed(&mut self, line: &str, error: bool) {
        if !self.wants(error) {
            return;
        }
        let text = unboxed(line);
        if !self.open {
            self.open = true;
            self.lines.push(text.trim().to_string());
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

/// A batch's buffers, to be filled again.
type Spare = (Vec<u8>, Vec<Span>);

/// One of a child's output pipes, read without blocking.
struct Pipe {
    fd: OwnedFd,
    stdout: bool,
    splitter: Splitter,
    /// All that was read, when the output is kept instead of logged.
    captured: Option<Vec<u8>>,
    open: bool,
    /// The last read stopped with more ready.
    more: bool,
}

impl Pipe {
    fn new(fd: OwnedFd, stdout: bool, capture: bool) -> Self {
        // SAFETY: plain fcntl calls on a descriptor we own, touching no memory. A pipe that
        // holds more lets the child print on while the log is written; the kernel may refuse
        // and the default is good enough.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
        }
        Pipe {
            fd,
            stdout,
            splitter: Splitter::default(),
            captured: capture.then(Vec::new),
            open: true,
            more: false,
        }
    }

    /// Reads what the pipe holds now, up to about a batch, and hands the lines it completes
    /// to `handle`.
    fn read(&mut self, redactor: &Redactor, handle: &mut dyn FnMut(&Batch)) {
        let mut eof = false;
        let mut read = 0;
        self.more = false;
        loop {
            let buffer = match &mut self.captured {
                Some(captured) => captured,
                None => &mut self.splitter.bytes,
            };
            match fill(&self.fd, buffer) {
                Ok((0, _)) => eof = true,
                Ok((n, filled)) => {
                    read += n;
                    // A child printing without pause must not keep the runner from its
                    // other duties.
                    self.more = read >= BATCH_BYTES;
                    // Less than there was room for: the pipe is empty, no need to ask.
                    if !self.more && filled {
                        continue;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => eof = true,
            }
            break;
        }
        if eof {
            self.end(redactor, handle);
        } else {
            self.pass_on(redactor, false, handle);
        }
    }

    /// Stops reading: what is left is the last line.
    fn end(&mut self, redactor: &Redactor, handle: &mut dyn FnMut(&Batch)) {
        self.open = false;
        self.pass_on(redactor, true, handle);
    }

    /// Hands the lines read so far to `handle`, and the last one too at the `end`.
    fn pass_on(&mut self, redactor: &Redactor, end: bool, handle: &mut dyn FnMut(&Batch)) {
        if self.captured.is_some() {
            return;
        }
        self.splitter.cut(redactor, end);
        if let Some(batch) = self.splitter.take(self.stdout) {
            handle(&batch);
            self.splitter.spare = Some((batch.bytes, batch.lines));
        }
    }
}

/// Waits for output on the open `pipes` until `until` (not at all when one had more ready
/// when last read), or for the child to exit when `exit` (its pidfd) is given, and reads
/// each pipe that has some, once. Returns whether the child may have exited.
fn read_pipes(
    pipes: &mut [Pipe; 2],
    exit: Option<&OwnedFd>,
    until: Instant,
    redactor: &Redactor,
    handle: &mut dyn FnMut(&Batch),
) -> bool {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .filter(|p| p.open)
        .map(|p| p.fd.as_raw_fd())
        .chain(exit.map(|fd| fd.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let wait = match pipes.iter().any(|p| p.open && p.more) {
        true => Duration::ZERO,
        false => until.saturating_duration_since(Instant::now()),
    };
    if fds.is_empty() {
        thread::sleep(wait);
        return false;
    }
    // Rounded up: a wait of less than a millisecond must not be none.
    let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a live array of as many pollfd as passed.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if ready <= 0 {
        return false;
    }
    let woke = |raw: libc::c_int| fds.iter().any(|f| f.fd == raw && f.revents != 0);
    for pipe in pipes.iter_mut() {
        if pipe.open && woke(pipe.fd.as_raw_fd()) {
            pipe.read(redactor, handle);
        }
    }
    exit.is_some_and(|fd| woke(fd.as_raw_fd()))
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

/// Reads what `pipe` holds, up to the room `bytes` has (at least [`READ_BUF`]), after what
/// `bytes` holds. Returns how much, and whether that filled the room.
fn fill(pipe: &OwnedFd, bytes: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    bytes.reserve(READ_BUF);
    let len = bytes.len();
    let room = bytes.capacity() - len;
    loop {
        // SAFETY: the kernel writes at most `room` bytes into the spare capacity, and only
        // the `read` bytes it wrote are then counted in.
        let read =
            unsafe { libc::read(pipe.as_raw_fd(), bytes.as_mut_ptr().add(len).cast(), room) };
        if read >= 0 {
            // SAFETY: see above.
            unsafe { bytes.set_len(len + read as usize) };
            return Ok((read as usize, read as usize == room));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A stream cut into lines in the buffer it is read into, and a line longer than
/// [`MAX_LINE`] into pieces, each cut where it splits neither a UTF-8 character nor a secret
/// (each piece is masked on its own).
#[derive(Default)]
struct Splitter {
    bytes: Vec<u8>,
    lines: Vec<Span>,
    /// The buffers of the last batch, handed back to be filled again.
    spare: Option<Spare>,
    /// Where the line not ended yet starts: everything before it is in `lines`.
    start: usize,
    /// How far from there the bytes hold no line end: a line that comes slowly is not
    /// searched again from its start at each read.
    scanned: usize,
}

impl Splitter {
    /// Cuts what was read into lines; at the end of the stream, what is left is the last.
    fn cut(&mut self, redactor: &Redactor, eof: bool) {
        let mut from = self.scanned.max(self.start);
        while let Some(at) = memchr::memchr(b'\n', &self.bytes[from..]) {
            let end = from + at;
            // The line's length is its text's: a `\r` before its end does not count.
            let text_end = self.bytes[self.start..end]
                .iter()
                .rposition(|&b| b != b'\r')
                .map_or(self.start, |last| self.start + last + 1);
            self.pieces(redactor, text_end);
            self.push_span(self.start, text_end, true);
            self.start = end + 1;
            from = self.start;
        }
        self.scanned = self.bytes.len();
        // A line with no end in sight yet goes out in pieces as it comes; its last byte is
        // held back, as it may be the `\r` of a line end still to come.
        self.pieces(redactor, self.bytes.len().saturating_sub(1));
        if eof && self.start < self.bytes.len() {
            self.push_span(self.start, self.bytes.len(), false);
            self.start = self.bytes.len();
        }
    }

    /// Cuts pieces off the line up to `end` while more than [`MAX_LINE`] of it is left.
    fn pieces(&mut self, redactor: &Redactor, end: usize) {
        while end.saturating_sub(self.start) > MAX_LINE {
            let window = &self.bytes[self.start..self.start + MAX_LINE];
            let cut = redactor.safe_cut(&window[..char_boundary(window)]);
            self.push_span(self.start, self.start + cut, false);
            self.start += cut;
        }
    }

    fn push_span(&mut self, start: usize, mut end: usize, whole: bool) {
        while end > start && self.bytes[end - 1] == b'\r' {
            end -= 1;
        }
        self.lines.push(Span { start, end, whole });
    }

    /// The lines cut so far as a batch, with what follows them kept to go on with.
    fn take(&mut self, stdout: bool) -> Option<Batch> {
        if self.lines.is_empty() {
            return None;
        }
        let (mut bytes, mut lines) = self.spare.take().unwrap_or_default();
        bytes.clear();
        lines.clear();
        bytes.extend_from_slice(&self.bytes[self.start..]);
        self.bytes.truncate(self.start);
        self.scanned -= self.start;
        self.start = 0;
        Some(Batch {
            bytes: std::mem::replace(&mut self.bytes, bytes),
            lines: std::mem::replace(&mut self.lines, lines),
            stdout,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a splitter makes of `data` read `chunk` bytes at a time: each line or piece,
    /// and whether it is whole.
    fn split(data: &[u8], chunk: usize, redactor: &Redactor) -> Vec<(String, bool)> {
        let mut splitter = Splitter::default();
        let mut out = Vec::new();
        let mut take = |splitter: &mut Splitter| {
            if let Some(batch) = splitter.take(true) {
                let valid = batch.valid();
                for span in &batch.lines {
                    out.push((batch.text(valid, span).into_owned(), span.whole));
                }
                splitter.spare = Some((batch.bytes, batch.lines));
            }
        };
        for (n, piece) in data.chunks(chunk).enumerate() {
            splitter.bytes.extend_from_slice(piece);
            splitter.cut(redactor, false);
            if n % 3 == 0 {
                take(&mut splitter);
            }
        }
        splitter.cut(redactor, true);
        take(&mut splitter);
        out
    }

    #[test]
    fn lines_are_cut_the_same_however_they_are_read() {
        let data = b"one\r\ntwo\n\nthree\r\r\nlast without end";
        let want = vec![
            ("one".to_string(), true),
            ("two".to_string(), true),
            (String::new(), true),
            ("three".to_string(), true),
            ("last without end".to_string(), false),
        ];
        for chunk in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                split(data, chunk, &Redactor::default()),
                want,
                "read {chunk} at a time"
            );
        }
    }

    #[test]
    fn long_lines_come_in_bounded_pieces() {
        let data = vec![b'x'; MAX_LINE * 2 + 10];
        for chunk in [1000, MAX_LINE, 3 * MAX_LINE] {
            let sizes: Vec<(usize, bool)> = split(&data, chunk, &Redactor::default())
                .iter()
                .map(|(text, whole)| (text.len(), *whole))
                .collect();
            assert_eq!(sizes, [(MAX_LINE, false), (MAX_LINE, false), (10, false)]);
        }
        // As long as the limit, a line is whole, whatever ends it.
        for end in [&b"\n"[..], b"\r\n"] {
            let mut data = vec![b'y'; MAX_LINE];
            data.extend_from_slice(end);
            // Read with the line end cut in two as well.
            for chunk in [1000, MAX_LINE + 1] {
                let got = split(&data, chunk, &Redactor::default());
                assert_eq!(got.len(), 1, "{end:?} read {chunk} at a time");
                assert!(got[0].1);
            }
        }
    }

    #[test]
    fn long_lines_are_cut_between_characters_and_outside_secrets() {
        let mut data = "x".repeat(MAX_LINE - 1).into_bytes();
        data.extend("€€ end\nnext\n".as_bytes());
        for chunk in [100, 5000, MAX_LINE + 100] {
            let got = split(&data, chunk, &Redactor::default());
            assert_eq!(got.len(), 3, "{chunk}");
            assert_eq!(got[0], ("x".repeat(MAX_LINE - 1), false));
            assert_eq!(got[1], ("€€ end".to_string(), true));
            assert_eq!(got[2], ("next".to_string(), true));
        }

        let redactor = Redactor::default();
        redactor.add("s3cr3t-value");
        let mut data = "y".repeat(MAX_LINE - 5).into_bytes();
        data.extend(b"s3cr3t-value tail\n");
        let got = split(&data, 4096, &redactor);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LINE - 5);
        assert_eq!(got[1], ("s3cr3t-value tail".to_string(), true));
        assert_eq!(redactor.mask(&got[1].0), "******** tail");
    }

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

    #[test]
    fn a_callers_own_subscriber_gets_every_line_masked() {
        let redactor = Redactor::default();
        redactor.add("s3cr3t-value-xyz");
        let kept = Kept::default();
        let writer = {
            let kept = kept.clone();
            move || kept.clone()
        };
        let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
        let finished = tracing::subscriber::with_default(subscriber, || {
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
            supervisor.run(&command, false).unwrap()
        });
        let written = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
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
            first.feed(line, is_error_line(line));
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
