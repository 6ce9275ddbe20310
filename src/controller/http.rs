//! The controller's HTTP/1 connections, served by hyper with the API's router as the service.
//! No client may hold the controller open or starve the operations of open files:
//!
//! - a request's line and headers must arrive within the header timeout, counted from the
//!   connection's opening or from the first byte of a later request; its body within the body
//!   timeout of its head (else 408, and the connection is closed);
//! - a connection waits at most the idle timeout for its next request, and for its client to
//!   read more of an answer;
//! - at most [`allowed_connections`] are open at once, a number that leaves open files for the
//!   operations; one more is answered 503 and closed at once;
//! - hyper's own answers to requests it cannot read (400, 414, 431) are JSON errors like every
//!   other answer;
//! - a stop closes idle connections at once and every other within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::{debug, warn};

use crate::controller::api::ErrorBody;
use crate::controller::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client may take, and how many may be connected at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a request's line and headers.
    pub header_timeout: Duration,
    /// For a request's body, from its head.
    pub body_timeout: Duration,
    /// For the next request on an open connection.
    pub idle_timeout: Duration,
    /// None: as many as the open-file limit leaves room for, up to [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<u32>,
}

/// The largest request line and headers read; hyper answers 431 beyond (and 414 for a URI over
/// 64 KiB). Also the most a connection buffers.
const MAX_HEAD: usize = 128 * 1024;
/// Connections allowed when the open-file limit allows more.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// Open files kept for the runtime, the listener, the log, the lock and the records.
const RESERVED_FILES: u64 = 64;
/// Open files kept per operation: its output pipes and log, and those a spawn needs a moment.
const FILES_PER_OPERATION: u64 = 16;

/// How many connections may be open at once: `--max-connections`, or by default as many as the
/// open-file limit (raised to its hard limit first) leaves room for after a reserve for
/// `concurrency` operations, each connection counted twice since its request may read a
/// record while it is open.
pub fn allowed_connections(limits: &Limits, concurrency: usize) -> (usize, u64) {
    let files = raise_open_files();
    let reserve = RESERVED_FILES + FILES_PER_OPERATION * concurrency as u64;
    let room = (files.saturating_sub(reserve) / 2).max(1);
    let allowed = match limits.max_connections {
        None => room.min(DEFAULT_MAX_CONNECTIONS),
        Some(asked) if u64::from(asked) <= room => asked.into(),
        Some(asked) => {
            warn!(
                "--max-connections {asked} would leave too few open files for the operations (the limit is {files}); allowing {room}: raise the open-file limit (ulimit -n, or the container runtime's) to allow more"
            );
            room
        }
    };
    (usize::try_from(allowed).unwrap_or(usize::MAX), files)
}

/// Raises the soft limit on open files to the hard one; returns the soft limit now in force.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    // An unlimited hard limit is refused as a soft one: the kernel caps open files anyway.
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Serves `router` on `listener` until `stop` completes, then stops accepting, closes idle
/// connections, and waits up to `grace` for the others. Returns when the stop began.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    allowed: usize,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> std::time::Instant {
    let permits = Arc::new(Semaphore::new(allowed));
    let (closing, closed) = watch::channel(false);
    let mut builder = http1::Builder::new();
    // Hyper's header timer runs from the moment it waits for a head, the wait between
    // requests included; ours tell the two apart.
    builder.max_buf_size(MAX_HEAD).header_read_timeout(None);
    let mut warned: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    after_accept_error(&e, &mut warned).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Refused before anything is read: this costs one write and a close.
            let _ = stream.try_write(&BUSY);
            metrics.refused(
                "connection_limit",
                "a connection: as many as allowed are open (--max-connections)",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            permit,
            builder.clone(),
            router.clone(),
            limits,
            metrics.clone(),
            closed.clone(),
        ));
    }
    let stopping = std::time::Instant::now();
    drop(listener);
    closing.send_replace(true);
    let all = u32::try_from(allowed).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        let open = allowed.saturating_sub(permits.available_permits());
        warn!("{open} connection(s) still open after the grace period; closing them");
    }
    stopping
}

/// A failed accept: a connection gone before it was taken is nothing; anything else (out of
/// open files, of memory) is waited out a moment rather than retried in a busy loop.
async fn after_accept_error(e: &io::Error, warned: &mut Option<Instant>) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) {
        return;
    }
    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
        warn!("cannot accept a connection: {e}; trying again");
        *warned = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The answer to a connection beyond the limit.
static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    answer_bytes(
        "HTTP/1.1 503 Service Unavailable",
        "as many connections as allowed are open; try again shortly",
        &["retry-after: 1"],
    )
});

/// A whole answer with a JSON error body, after which the connection is closed.
fn answer_bytes(status_line: &str, error: &str, headers: &[&str]) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        error: error.to_string(),
        problems: Vec::new(),
    })
    .expect("an error body serializes");
    let mut head = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend(body);
    bytes
}

async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    builder: http1::Builder,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut closing: watch::Receiver<bool>,
) {
    let _permit = permit;
    metrics.connections.inc();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Timed::new(stream, activity.clone(), limits));
    let service = {
        let activity = activity.clone();
        let metrics = metrics.clone();
        hyper::service::service_fn(move |request| {
            answer(
                request,
                router.clone(),
                activity.clone(),
                limits.body_timeout,
                metrics.clone(),
            )
        })
    };
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let stop = async move {
        // Closed, or the server gone: either way, a stop.
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        () = stop => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    match activity.timed_out() {
        Some(Timeout::Head) => metrics.refused(
            "header_timeout",
            "a connection whose request line and headers did not arrive in time (--header-timeout)",
        ),
        Some(Timeout::Idle) => debug!("closed an idle connection"),
        Some(Timeout::Stalled) => metrics.refused(
            "write_timeout",
            "a connection whose client stopped reading its answer (--idle-timeout)",
        ),
        None => {
            if let Err(e) = ended {
                debug!("a connection ended: {e}");
            }
        }
    }
    metrics.connections.dec();
}

/// One request through the router, its body bounded in time, the connection closed after an
/// answer that leaves the body unread.
async fn answer(
    request: Request<Incoming>,
    mut router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
) -> Result<Response<Answer>, Infallible> {
    let busy = Busy::new(activity);
    let late = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + body_timeout;
    let request = request.map(|body| Timely {
        body,
        deadline,
        timer: None,
        late: late.clone(),
    });
    let Ok(mut response) = router.call(request).await;
    if late.load(Ordering::Relaxed) {
        metrics.refused(
            "body_timeout",
            "a request whose body did not arrive in time (--body-timeout)",
        );
        let error = ErrorBody {
            error: format!(
                "the request's body did not arrive within {}s of its headers (--body-timeout); send it whole",
                body_timeout.as_secs_f64()
            ),
            problems: Vec::new(),
        };
        response = (StatusCode::REQUEST_TIMEOUT, axum::Json(error)).into_response();
    }
    if matches!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response.map(|body| Answer { body, _busy: busy }))
}

/// A request's body that fails once its deadline passed.
struct Timely {
    body: Incoming,
    deadline: Instant,
    /// Made at the first wait: most requests have their body at once, or none.
    timer: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
}

impl http_body::Body for Timely {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        this.late.store(true, Ordering::Relaxed);
        Poll::Ready(Some(
            Err("the request's body did not arrive in time".into()),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body; the connection counts as busy until it is sent.
struct Answer {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a connection is waiting for, and since when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// A request's line and headers.
    Head(Instant),
    /// Requests are being answered: their bodies have their own deadline.
    Busy(usize),
    /// The next request.
    Idle(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Head,
    Idle,
    /// The client read nothing of an answer.
    Stalled,
}

impl Timeout {
    fn what(self) -> &'static str {
        match self {
            Timeout::Head => "the request's line and headers did not arrive in time",
            Timeout::Idle => "no request came while the connection was idle",
            Timeout::Stalled => "the client stopped reading its answer",
        }
    }
}

/// A connection's phase, shared by its socket and its requests.
struct Activity(Mutex<State>);

struct State {
    phase: Phase,
    /// The task waiting to read, woken when the phase's deadline changes.
    reader: Option<Waker>,
    timed_out: Option<Timeout>,
}

impl Activity {
    fn new() -> Self {
        Activity(Mutex::new(State {
            phase: Phase::Head(Instant::now()),
            reader: None,
            timed_out: None,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("connection state lock")
    }

    /// Bytes came: when idle, a new request's head has begun.
    fn arrived(&self) {
        let mut state = self.state();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// The deadline of what is awaited now, if any; `reader` is woken when it changes.
    fn deadline(&self, limits: &Limits, reader: &Waker) -> Option<(Instant, Timeout)> {
        let mut state = self.state();
        if !state.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            state.reader = Some(reader.clone());
        }
        match state.phase {
            Phase::Head(since) => Some((since + limits.header_timeout, Timeout::Head)),
            Phase::Idle(since) => Some((since + limits.idle_timeout, Timeout::Idle)),
            Phase::Busy(_) => None,
        }
    }

    fn busy(&self) -> bool {
        matches!(self.state().phase, Phase::Busy(_))
    }

    fn timed_out(&self) -> Option<Timeout> {
        self.state().timed_out
    }
}

/// A request being answered, from its head to the end of its answer.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.state();
            state.phase = match state.phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            };
        }
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.phase = match state.phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        // A read pending while busy has no timer: it must look again.
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// A connection's socket: a read waiting past the phase's deadline fails (hyper then closes
/// the connection), and hyper's own error answers are rewritten as JSON.
struct Timed {
    stream: TcpStream,
    activity: Arc<Activity>,
    limits: Limits,
    timer: Option<(Pin<Box<Sleep>>, Instant)>,
    /// Since when a write waits for the client to read.
    stall: Option<Pin<Box<Sleep>>>,
    /// A rewritten answer not yet written whole.
    rewritten: Vec<u8>,
}

impl Timed {
    fn new(stream: TcpStream, activity: Arc<Activity>, limits: Limits) -> Self {
        Timed {
            stream,
            activity,
            limits,
            timer: None,
            stall: None,
            rewritten: Vec::new(),
        }
    }

    /// Called when a read would wait: fails it once the deadline of the phase passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((deadline, timeout)) = self.activity.deadline(&self.limits, cx.waker()) else {
            return Poll::Pending;
        };
        let (timer, armed) = self
            .timer
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep_until(deadline)), deadline));
        if *armed != deadline {
            timer.as_mut().reset(deadline);
            *armed = deadline;
        }
        ready!(timer.as_mut().poll(cx));
        self.activity.state().timed_out = Some(timeout);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, timeout.what())))
    }

    /// A write to the socket; one that waits fails once the client has read nothing for the
    /// idle timeout (else a client that never reads would hold its connection for good).
    fn write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Poll::Ready(written) = Pin::new(&mut self.stream).poll_write(cx, buf) {
            self.stall = None;
            return Poll::Ready(written);
        }
        let idle = self.limits.idle_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(stall.as_mut().poll(cx));
        self.activity.state().timed_out = Some(Timeout::Stalled);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            Timeout::Stalled.what(),
        )))
    }

    fn drain_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.rewritten.is_empty() {
            let rewritten = std::mem::take(&mut self.rewritten);
            let written = self.write(cx, &rewritten);
            self.rewritten = rewritten;
            let n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.rewritten.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.expired(cx),
            failed => failed,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain_rewritten(cx))?;
        // Hyper answers a request it cannot read by itself, never while one is answered.
        if !this.activity.busy() {
            if let Some(json) = as_json(buf) {
                this.rewritten = json;
                if let Poll::Ready(Err(e)) = this.drain_rewritten(cx) {
                    return Poll::Ready(Err(e));
                }
                // Taken whole; what is left of it goes out with the flush.
                return Poll::Ready(Ok(buf.len()));
            }
        }
        this.write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Hyper's own answer to a request it could not read (a head with no body), as the same
/// status with a JSON error; None for anything else.
fn as_json(written: &[u8]) -> Option<Vec<u8>> {
    let head_end = find(written, b"\r\n\r\n")?;
    if head_end + 4 != written.len() {
        return None;
    }
    let line_end = find(written, b"\r\n")?;
    let status_line = std::str::from_utf8(&written[..line_end]).ok()?;
    let mut words = status_line.splitn(3, ' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = StatusCode::from_bytes(words.next()?.as_bytes()).ok()?;
    let headers = written[line_end..head_end + 2].to_ascii_lowercase();
    find(&headers, b"\r\ncontent-length: 0\r\n")?;
    let error = match status {
        StatusCode::BAD_REQUEST => {
            "the request is not valid HTTP/1.1: its request line or a header is malformed"
        }
        StatusCode::URI_TOO_LONG => "the request's path and query are longer than 65,534 bytes",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's line and headers are larger than 128 KiB, or more than 100 headers"
        }
        _ => return None,
    };
    Some(answer_bytes(status_line, error, &[]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_own_error_heads_are_rewritten() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 15:00:00 GMT\r\n\r\n";
        let json = String::from_utf8(as_json(own).expect("rewritten")).unwrap();
        assert!(json.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(json.contains("connection: close\r\n"), "{json}");
        let body: serde_json::Value =
            serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("128 KiB"),
            "{body}"
        );
        assert_eq!(body["problems"], serde_json::json!([]));
        // An answer with a body, a part of one, or another status is left alone.
        assert!(as_json(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n").is_none());
        assert!(as_json(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(as_json(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(as_json(b"0\r\n\r\n").is_none());
    }
}
