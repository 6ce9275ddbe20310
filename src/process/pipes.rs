//! A child's two output pipes, read without blocking: one `poll` waits on both (and on the
//! child's exit), and whatever is ready is read, cut into lines and handed on a batch at a
//! time.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use super::lines::{Batch, Splitter};
use crate::base::secrets::Redactor;

/// Lines are logged a batch at a time: once this much was read, or sooner when the pipe has
/// nothing more ready. Line by line, the logging around them would cost more than the lines.
const BATCH_BYTES: usize = 128 * 1024;
/// What a reader takes from the pipe at once, at least.
const READ_BUF: usize = 64 * 1024;
/// What a child's output pipes hold.
const PIPE_BYTES: libc::c_int = 1024 * 1024;

/// A child's stderr and stdout, in that order.
pub(super) struct Pipes([Pipe; 2]);

impl Pipes {
    /// Takes the child's piped stderr and stdout; stdout is kept whole if `capture_stdout`.
    pub(super) fn new(child: &mut Child, capture_stdout: bool) -> Self {
        Pipes([
            Pipe::new(child.stderr.take().expect("piped").into(), false, false),
            Pipe::new(
                child.stdout.take().expect("piped").into(),
                true,
                capture_stdout,
            ),
        ])
    }

    /// Whether either pipe is still open.
    pub(super) fn open(&self) -> bool {
        self.0.iter().any(|p| p.open)
    }

    /// Stops reading the pipes still open: what each holds is its last line.
    pub(super) fn end(&mut self, redactor: &Redactor, handle: &mut dyn FnMut(&Batch)) {
        for pipe in self.0.iter_mut().filter(|p| p.open) {
            pipe.end(redactor, handle);
        }
    }

    /// All the child printed on stdout, when it was captured.
    pub(super) fn captured(self) -> Vec<u8> {
        let [_, stdout] = self.0;
        stdout.captured.unwrap_or_default()
    }

    /// Waits for output on the open pipes until `until` (not at all when one had more ready
    /// when last read), or for the child to exit when `exit` (its pidfd) is given, and reads
    /// each pipe that has some, once. Returns whether the child may have exited.
    pub(super) fn read(
        &mut self,
        exit: Option<&OwnedFd>,
        until: Instant,
        redactor: &Redactor,
        handle: &mut dyn FnMut(&Batch),
    ) -> bool {
        let pipes = &mut self.0;
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
}

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
