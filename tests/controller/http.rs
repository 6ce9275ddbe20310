//! The controller's HTTP layer under hostile clients, over raw sockets: slow heads and bodies,
//! idle connections, more connections than allowed, a stop with requests half sent, and
//! requests hyper itself refuses. The timeouts and the limit are set through the environment
//! (`BOOTSTRAPPER_*`) so that a controller without them starts all the same and fails here on
//! what it does, not on its command line.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

/// What a test allows beyond a timeout for the controller to act on it.
const SLACK: Duration = Duration::from_secs(3);

fn address(base: &str) -> String {
    base.strip_prefix("http://").expect("http URL").to_string()
}

fn connect(base: &str) -> TcpStream {
    TcpStream::connect(address(base)).expect("connect")
}

/// An answer read off a raw socket: status, head (lower-cased), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }

    /// The body is an error as the API writes them.
    #[track_caller]
    fn assert_json_error(&self) {
        assert!(
            self.head.contains("content-type: application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{self:?}"
        );
        assert_eq!(body["problems"], json!([]), "{self:?}");
    }
}

/// Reads one answer within `timeout`: an error if the connection closes or nothing whole
/// comes in time.
fn read_answer(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<Raw> {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let too_late = || std::io::Error::new(ErrorKind::TimedOut, "no whole answer in time");
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(too_late)?;
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match stream.read(&mut chunk)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => bytes.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    while bytes.len() < head_end + length {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(too_late)?;
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match stream.read(&mut chunk)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(Raw {
        status,
        head,
        body: String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned(),
    })
}

/// Whether the peer closes `stream` within `timeout` (what it sends meanwhile is skipped).
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

/// A whole GET on a new connection; None when the connection fails or closes unanswered.
fn get(base: &str, path: &str, token: Option<&str>) -> Option<Raw> {
    let mut stream = TcpStream::connect(address(base)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_answer(&mut stream, Duration::from_secs(30)).ok()
}

fn metric(base: &str, name_and_labels: &str) -> f64 {
    let text = get(base, "/metrics", None).expect("metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("metric value"))
}

fn refused(base: &str, reason: &str) -> f64 {
    metric(
        base,
        &format!("bootstrapper_http_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// How many log lines name `word`.
fn lines_with(stderr: &str, word: &str) -> usize {
    stderr.lines().filter(|l| l.contains(word)).count()
}

// ---------------------------------------------------------------------------

#[test]
fn two_hundred_slow_heads_are_cut_off_after_the_header_timeout() {
    let bed = Bed::new();
    let timeout = Duration::from_secs(1);
    let c = bed.start(
        &[],
        &[
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "1s"),
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "60s"),
        ],
    );
    let started = Instant::now();
    let mut slow: Vec<(TcpStream, Option<Duration>)> = (0..200)
        .map(|_| {
            let mut s = connect(&c.base);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                .expect("write");
            s.set_nonblocking(true).expect("nonblocking");
            (s, None)
        })
        .collect();
    // A byte at a time on every connection, as a slowloris client does, until each is closed.
    let mut chunk = [0u8; 1024];
    while slow.iter().any(|(_, closed)| closed.is_none()) && started.elapsed() < timeout * 8 {
        for (s, closed) in slow.iter_mut().filter(|(_, closed)| closed.is_none()) {
            let wrote = s.write(b"a");
            let gone = match s.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => panic!(
                    "a slow head was answered: {}",
                    String::from_utf8_lossy(&chunk[..n])
                ),
                Err(e) if e.kind() == ErrorKind::WouldBlock => wrote.is_err(),
                Err(_) => true,
            };
            if gone {
                *closed = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let open = slow.iter().filter(|(_, closed)| closed.is_none()).count();
    assert_eq!(
        open,
        0,
        "{open} slow heads still open after {:?}",
        timeout * 8
    );
    for (_, closed) in &slow {
        let closed = closed.unwrap();
        assert!(
            closed >= timeout - Duration::from_millis(100) && closed <= timeout + SLACK,
            "closed after {closed:?}"
        );
    }
    assert_eq!(get(&c.base, "/healthz", None).map(|a| a.status), Some(200));
    assert_eq!(refused(&c.base, "header_timeout"), 200.0);
    assert!(
        lines_with(&c.stderr(), "header_timeout") <= 1,
        "{}",
        c.stderr()
    );
}

#[test]
fn a_body_that_never_ends_is_answered_408_and_the_connection_closed() {
    let bed = Bed::new();
    let c = bed.start(&[], &[("BOOTSTRAPPER_BODY_TIMEOUT", "1s")]);
    let mut s = connect(&c.base);
    let head = format!(
        "PUT /v1/clusters/b1 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"params\": "
    );
    let sent = Instant::now();
    s.write_all(head.as_bytes()).expect("write");
    let answer = read_answer(&mut s, Duration::from_secs(1) + SLACK)
        .expect("an answer within the body timeout");
    assert!(sent.elapsed() >= Duration::from_millis(900), "{answer:?}");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.head.contains("connection: close"), "{answer:?}");
    answer.assert_json_error();
    assert!(answer.body.contains("--body-timeout"), "{answer:?}");
    assert!(closed_within(&mut s, SLACK));
    // Nothing was recorded.
    let after = get(&c.base, "/v1/clusters/b1", Some(TOKEN)).expect("answer");
    assert_eq!(after.status, 404, "{after:?}");
    assert_eq!(refused(&c.base, "body_timeout"), 1.0);
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let bed = Bed::new();
    let c = bed.start(
        &[],
        &[
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "1s"),
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "30s"),
        ],
    );
    let mut s = connect(&c.base);
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("write");
        let answer = read_answer(&mut s, SLACK).expect("answer");
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let idle = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(1) + SLACK),
        "an idle connection stayed open"
    );
    assert!(idle.elapsed() >= Duration::from_millis(900));
}

#[test]
fn connections_beyond_the_limit_are_refused_and_served_again_once_others_close() {
    let bed = Bed::new();
    let c = bed.start(
        &[],
        &[
            ("BOOTSTRAPPER_MAX_CONNECTIONS", "5"),
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "60s"),
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "60s"),
        ],
    );
    let held: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = connect(&c.base);
            s.write_all(b"GET /healthz HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    for _ in 0..20 {
        let mut extra = connect(&c.base);
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
        // Answered 503 and closed, or closed: never served, never left waiting.
        match read_answer(&mut extra, SLACK) {
            Ok(answer) => {
                assert_eq!(answer.status, 503, "{answer:?}");
                answer.assert_json_error();
                assert!(answer.head.contains("connection: close"), "{answer:?}");
            }
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ),
                "a connection beyond the limit was left waiting: {e}"
            ),
        }
    }
    drop(held);
    wait_for(
        || get(&c.base, "/healthz", None).is_some_and(|a| a.status == 200),
        Duration::from_secs(10),
    );
    // At least those 20: a /healthz above may have come before a held connection was let go.
    assert!(refused(&c.base, "connection_limit") >= 20.0);
    assert!(
        lines_with(&c.stderr(), "connection_limit") <= 1,
        "{}",
        c.stderr()
    );
}

/// `serve` started as [`Bed::start`] does, under an open-file limit of `files` (soft and
/// hard); returns it and its base URL.
fn start_with_open_files(bed: &Bed, files: u32, env: &[(&str, &str)]) -> (Running, String) {
    let tokens = bed.tokens_path();
    let inner = bed.b.command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        tokens.to_str().unwrap(),
        "--concurrency",
        "1",
    ]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$@\""))
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("TF_VAR_pg_conn_str", &bed.pg)
        .env("TF_VAR_ledger", bed.b.ledger_path())
        .env("TF_VAR_sleep_seconds", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let running = spawn_session(cmd, bed.b.dir());
    let mut base = None;
    wait_for(
        || {
            let stderr = running.stderr();
            base = stderr
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .map(str::to_owned);
            base.is_some() || stderr.contains("error")
        },
        Duration::from_secs(30),
    );
    let base = base.unwrap_or_else(|| panic!("serve did not start:\n{}", running.stderr()));
    (running, base)
}

fn put(base: &str, id: &str, params: Value) -> Raw {
    let body = json!({ "params": params }).to_string();
    let mut s = connect(base);
    let request = format!(
        "PUT /v1/clusters/{id} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    read_answer(&mut s, Duration::from_secs(30)).expect("answer")
}

#[test]
fn with_every_connection_taken_under_a_low_open_file_limit_an_operation_still_runs() {
    let bed = Bed::new();
    let (running, base) = start_with_open_files(
        &bed,
        256,
        &[
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "120s"),
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "120s"),
        ],
    );
    // One operation at a time: `late` starts when `early` ends, while the connections are held.
    let reply = put(
        &base,
        "early",
        json!({ "namesvr_count": 1, "sleep_seconds": 5 }),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let reply = put(&base, "late", json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_for(
        || {
            bed.ledger()
                .iter()
                .any(|e| e.cluster == "early" && e.event == "start")
        },
        Duration::from_secs(60),
    );
    let held: Vec<TcpStream> = (0..400).map(|_| connect(&base)).collect();
    let created = |id: &str| {
        bed.ledger()
            .iter()
            .any(|e| e.cluster == id && e.event == "create" && e.resource == "broker")
    };
    assert!(
        poll(|| created("late"), Duration::from_secs(90)),
        "the operation did not run while the connections were held:\n{}",
        running.stderr()
    );
    drop(held);
    for id in ["early", "late"] {
        let mut phase = String::new();
        let ready = poll(
            || {
                let doc = get(&base, &format!("/v1/clusters/{id}"), Some(TOKEN));
                phase = doc.map_or(String::new(), |d| d.json()["phase"].to_string());
                phase == "\"ready\""
            },
            Duration::from_secs(60),
        );
        assert!(ready, "{id} is {phase}:\n{}", running.stderr());
    }
    assert!(refused(&base, "connection_limit") > 0.0);
    assert!(
        !running.stderr().contains("Too many open files"),
        "{}",
        running.stderr()
    );
}

/// Sets the soft limit on open files of process `pid`, keeping its hard limit.
fn set_open_files(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a process we started; the structs outlive the calls.
    let got = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn an_operation_that_finds_no_free_file_is_tried_again_later_not_failed() {
    let bed = Bed::new();
    let c = bed.start(&["--concurrency", "1"], &[]);
    let pid = c.running.as_ref().unwrap().pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count() as u64;
    // Room for a request and the records it writes, not for a child's pipes.
    set_open_files(pid, open + 4);
    let reply = c.put("x1", &json!({ "namesvr_count": 1 }));
    assert_eq!(reply.status, 202, "{reply:?}");
    let postponed = r#"bootstrapper_operations_total{kind="apply",result="postponed"}"#;
    let failed = r#"bootstrapper_operations_total{kind="apply",result="failed"}"#;
    wait_for(
        || c.metric(postponed) >= 1.0 || c.metric(failed) >= 1.0,
        Duration::from_secs(30),
    );
    assert_eq!(c.metric(failed), 0.0, "{}", c.stderr());
    set_open_files(pid, 4096);
    c.wait_phase(&["x1".to_string()], "ready", Duration::from_secs(120));
    assert!(
        c.cluster("x1")["last_error"].is_null(),
        "{:#}",
        c.cluster("x1")
    );
}

#[test]
fn sigterm_with_requests_half_sent_exits_within_the_grace_period() {
    let bed = Bed::new();
    let mut c = bed.start(
        &["--grace", "2s"],
        &[
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "60s"),
            ("BOOTSTRAPPER_BODY_TIMEOUT", "60s"),
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "60s"),
        ],
    );
    let mut half_head = connect(&c.base);
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Half: ")
        .expect("write");
    let mut half_body = connect(&c.base);
    half_body
        .write_all(
            format!(
                "PUT /v1/clusters/h1 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"par"
            )
            .as_bytes(),
        )
        .expect("write");
    let mut idle = connect(&c.base);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("write");
    // Connections are taken in order: once the last is answered, all three are open.
    assert_eq!(read_answer(&mut idle, SLACK).expect("answer").status, 200);
    let signalled = Instant::now();
    c.running().signal(libc::SIGTERM);
    let outcome = c
        .running
        .take()
        .unwrap()
        .wait(Duration::from_secs(2) + SLACK * 2);
    outcome.assert_code(143);
    assert!(
        signalled.elapsed() <= Duration::from_secs(2) + SLACK,
        "exited after {:?}",
        signalled.elapsed()
    );
}

#[test]
fn a_413_says_connection_close_and_closes_it() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let mut s = connect(&c.base);
    let head = format!(
        "PUT /v1/clusters/big HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("write");
    // More than the 1 MiB allowed, written aside: the controller stops reading at the limit.
    let mut writer = s.try_clone().expect("clone");
    writer.set_write_timeout(Some(SLACK)).expect("timeout");
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&vec![b' '; 1200 * 1024]);
    });
    let answer = read_answer(&mut s, SLACK * 3).expect("answer");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.head.contains("connection: close"), "{answer:?}");
    answer.assert_json_error();
    // The reason, not the status line again.
    let error = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!error.starts_with("413"), "{error}");
    assert!(closed_within(&mut s, SLACK), "the connection stayed open");
    sender.join().expect("sender");
}

#[test]
fn requests_hyper_cannot_read_get_json_errors() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: test\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut big_headers = "GET /healthz HTTP/1.1\r\nHost: test\r\n".to_string();
    for i in 0..200 {
        big_headers.push_str(&format!("X-Pad-{i}: {}\r\n", "b".repeat(1000)));
    }
    big_headers.push_str("\r\n");
    let cases = [
        (
            "a malformed request line",
            "GARBAGE\r\n\r\n".to_string(),
            400,
        ),
        (
            "a bad header",
            "GET / HTTP/1.1\r\nHo st: x\r\n\r\n".to_string(),
            400,
        ),
        ("a URI over 64 KiB", long_uri, 414),
        ("200 KB of headers", big_headers, 431),
    ];
    for (what, request, status) in cases {
        let mut s = connect(&c.base);
        s.set_write_timeout(Some(SLACK)).expect("timeout");
        // The controller may stop reading before the end.
        let _ = s.write_all(request.as_bytes());
        let answer =
            read_answer(&mut s, SLACK).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        answer.assert_json_error();
        assert!(
            closed_within(&mut s, SLACK),
            "{what}: the connection stayed open"
        );
    }
    assert_eq!(get(&c.base, "/healthz", None).map(|a| a.status), Some(200));
}

#[test]
fn refused_requests_are_counted_not_logged_one_by_one() {
    let bed = Bed::new();
    let c = bed.start(&[], &[]);
    for i in 0..100 {
        let token = (i % 2 == 0).then_some("wrong-token");
        let answer = get(&c.base, "/v1/clusters", token).expect("answer");
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    assert_eq!(refused(&c.base, "unauthorized"), 100.0);
    let stderr = c.stderr();
    assert!(lines_with(&stderr, "refused") <= 1, "{stderr}");
}

#[test]
fn a_client_that_stops_reading_its_answers_is_disconnected() {
    let bed = Bed::new();
    let c = bed.start(
        &[],
        &[
            ("BOOTSTRAPPER_IDLE_TIMEOUT", "1s"),
            ("BOOTSTRAPPER_HEADER_TIMEOUT", "30s"),
        ],
    );
    // Requests for the largest open answer, all sent at once and none of the answers read,
    // until the socket buffers between them are full.
    let mut s = connect(&c.base);
    // A small receive buffer, set by hand so the kernel does not grow it: otherwise loopback
    // buffers of tens of MiB can hold every answer, and nothing ever stalls.
    let size: libc::c_int = 16 * 1024;
    // SAFETY: a valid socket, and an option value of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of_val(&size) as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt: {}", std::io::Error::last_os_error());
    let requests = 2000;
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n";
    s.write_all(&request.repeat(requests)).expect("write");
    let open = "bootstrapper_http_connections";
    // Counted first (with the request that reads the metric), so that the wait below is for
    // its end, not for the moment before it is accepted.
    wait_for(|| metric(&c.base, open) == 2.0, SLACK);
    // The request that reads the metric is the one connection left.
    wait_for(
        || metric(&c.base, open) == 1.0,
        Duration::from_secs(1) + SLACK * 2,
    );
    let mut answers = Vec::new();
    s.set_read_timeout(Some(SLACK)).expect("timeout");
    let _ = s.read_to_end(&mut answers);
    let answered = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answered < requests, "all {answered} answered");
    assert_eq!(refused(&c.base, "write_timeout"), 1.0);
}
