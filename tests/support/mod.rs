//! Support for the integration tests: the real `bootstrapper` binary, real
//! terraform and a real PostgreSQL server, each test in its own temp directory.
//!
//! Every test file includes this with `mod support;` and uses only part of it,
//! so unused items are expected in any single test binary.
#![allow(dead_code)]

pub mod controller;
pub mod diamond;
pub mod pod;
pub mod sigint;

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Polling: the only place where tests sleep. Waiting on a condition keeps
// tests fast on a quick machine and correct on a slow one.

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `cond` until it holds; panics naming the caller's line on timeout.
#[track_caller]
pub fn wait_for(cond: impl FnMut() -> bool, timeout: Duration) {
    let caller = std::panic::Location::caller();
    if !poll(cond, timeout) {
        panic!(
            "condition at {caller} still false after {:?}",
            timeout.mul_f64(patience())
        );
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
///
/// `TEST_PATIENCE` (a factor, 1 by default) scales every timeout: mutation testing sets it
/// below 1, since a broken program mostly shows as a condition that never comes, and the
/// timeouts are sized for a slow, shared machine.
pub fn poll(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout.mul_f64(patience());
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn patience() -> f64 {
    static PATIENCE: OnceLock<f64> = OnceLock::new();
    *PATIENCE.get_or_init(|| match std::env::var("TEST_PATIENCE") {
        Ok(text) => match text.parse::<f64>() {
            Ok(factor) if factor > 0.0 && factor.is_finite() => factor,
            _ => panic!("TEST_PATIENCE={text}: a factor above 0, such as 0.25"),
        },
        Err(_) => 1.0,
    })
}

// ---------------------------------------------------------------------------
// Outcome of a finished process, printable in full when an assertion fails.

#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    fn new(status: ExitStatus, stdout: String, stderr: String) -> Self {
        Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
        }
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit code {:?}, signal {:?}", self.code, self.signal)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

// ---------------------------------------------------------------------------
// Sessions: a pod kill takes every process in the container with it, and
// terraform runs in its own process group, so killing one pid or one group
// would not simulate it. Each spawned program leads a new session instead,
// and a kill takes out the whole session.

static SPAWNS: AtomicU32 = AtomicU32::new(0);

/// A program running as the leader of its own session. Output goes to files,
/// not pipes: a pipe nobody drains would block the program, and files keep
/// what a killed program printed.
pub struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

/// Starts `cmd` as a session leader, its output in files under `log_dir`.
pub fn spawn_session(mut cmd: Command, log_dir: &Path) -> Running {
    let n = SPAWNS.fetch_add(1, Ordering::Relaxed);
    let stdout = log_dir.join(format!("spawn-{n}.stdout"));
    let stderr = log_dir.join(format!("spawn-{n}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("create stdout file"))
        .stderr(File::create(&stderr).expect("create stderr file"));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Running {
        child,
        stdout,
        stderr,
        status: None,
    }
}

impl Running {
    /// The pid, which is also the session id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it printed to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `sig` to the leader only, as a container runtime does to pid 1.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// The outcome if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<Outcome> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
            .map(|status| Outcome::new(status, self.stdout(), self.stderr()))
    }

    /// Waits for it to exit; on timeout kills the session and panics with its
    /// output, so a hung program fails the test instead of hanging it.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        if poll(|| self.try_wait().is_some(), timeout) {
            return self.try_wait().expect("exited");
        }
        let pid = self.pid();
        let outcome = self.kill_session();
        panic!("pid {pid} still running after {timeout:?}, killed its session\n{outcome}");
    }

    /// Simulates a pod kill: SIGKILL to every process of the session, then
    /// reaps the leader.
    pub fn kill_session(mut self) -> Outcome {
        kill_session(self.pid());
        self.status = Some(self.child.wait().expect("wait"));
        self.try_wait().expect("reaped")
    }
}

impl Drop for Running {
    // A failing test must not leave terraform and its provisioners running.
    // No panic here: this may run while a test is already unwinding.
    fn drop(&mut self) {
        if self.status.is_none() {
            kill_all(self.pid());
            let _ = self.child.wait();
        }
    }
}

/// SIGKILLs every process of session `sid` and waits until none is left.
#[track_caller]
pub fn kill_session(sid: u32) {
    assert!(
        kill_all(sid),
        "session {sid} still has processes after SIGKILL"
    );
}

/// Zombies count as gone: they hold no files or locks, and only their parent
/// can reap them.
fn kill_all(sid: u32) -> bool {
    poll(
        || {
            let members = session_members(sid);
            for pid in &members {
                // SAFETY: plain syscall; a pid that vanished meanwhile is harmless.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            members.is_empty()
        },
        Duration::from_secs(10),
    )
}

/// Live (non-zombie) processes whose session id is `sid`, from /proc.
pub fn session_members(sid: u32) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &libc::pid_t| {
            // A process may exit between listing and reading: then it is not a member.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name (field 2) may hold spaces and parentheses, so
            // fields are counted after its closing parenthesis: state, ppid,
            // pgrp, session.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let live = !matches!(fields.first(), Some(&"Z") | Some(&"X"));
            live && fields.get(3) == Some(&sid.to_string().as_str())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The real binary, in a temp directory laid out like the pod: `root/` is the
// PVC, next to it the workflow and params files (the mounted ConfigMap) and
// the ledger that the fixtures' provisioners append to.

pub const BIN: &str = env!("CARGO_BIN_EXE_bootstrapper");

pub struct Bootstrapper {
    dir: TempDir,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Default for Bootstrapper {
    fn default() -> Self {
        Self::new()
    }
}

impl Bootstrapper {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bootstrapper-test-")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir(dir.path().join("root")).expect("create root");
        Bootstrapper {
            dir,
            args: Vec::new(),
            env: Vec::new(),
            // Generous: it only bounds a hung run; normal runs take seconds.
            timeout: Duration::from_secs(300),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir().join("ledger")
    }

    pub fn workflow_path(&self) -> PathBuf {
        self.dir().join("workflow.toml")
    }

    pub fn params_path(&self) -> PathBuf {
        self.dir().join("params.json")
    }

    pub fn write_workflow(&self, toml: &str) -> &Self {
        fs::write(self.workflow_path(), toml).expect("write workflow");
        self
    }

    pub fn write_params(&self, params: &Value) -> &Self {
        let text = serde_json::to_string_pretty(params).expect("serialize params");
        fs::write(self.params_path(), text).expect("write params");
        self
    }

    /// A global option, placed before the command (e.g. `--lock-timeout=5s`).
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long `run` waits before it kills the session and fails the test.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The command line `bootstrapper --workflow … --params … --root … [args] <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        // The developer's own BOOTSTRAPPER_* settings must not change a test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .arg("--workflow")
            .arg(self.workflow_path())
            .arg("--params")
            .arg(self.params_path())
            .arg("--root")
            .arg(self.root())
            .args(&self.args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs to completion (bounded by `timeout`).
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.spawn(args).wait(self.timeout)
    }

    /// Starts it as a session leader, for tests that kill or signal it midway.
    pub fn spawn(&self, args: &[&str]) -> Running {
        spawn_session(self.command(args), self.dir())
    }

    /// The ledger lines so far (none before the first provisioner ran).
    pub fn ledger(&self) -> Vec<String> {
        read_lines(&self.ledger_path())
    }
}

/// The lines of a text file; none when it does not exist.
pub fn read_lines(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

// ---------------------------------------------------------------------------
// Real terraform, for tests that inspect or prepare a step directly.

/// The first line of a fake terraform's script (after `#!/bin/sh`): it answers the engine's
/// `terraform version -json` as terraform 1.11 would, and does nothing else for it.
pub const FAKE_VERSION: &str =
    "if [ \"$1\" = version ]; then echo '{\"terraform_version\":\"1.11.4\"}'; exit 0; fi\n";

/// Runs `terraform <args>` in `dir` (from PATH) and waits for it.
pub fn terraform(dir: &Path, args: &[&str]) -> Outcome {
    let out = Command::new("terraform")
        .current_dir(dir)
        .args(args)
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run terraform (is it installed?)");
    Outcome::new(
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Reading terraform states. Addresses look like `terraform_data.a`,
// `terraform_data.b[0]`, `module.m.terraform_data.c["k"]`, sorted.

/// Managed resource instances in a terraform state (format version 4).
pub fn state_resources(state: &Value) -> Vec<String> {
    let mut addresses = Vec::new();
    for resource in state["resources"].as_array().into_iter().flatten() {
        if resource["mode"] != "managed" {
            continue;
        }
        let mut base = String::new();
        if let Some(module) = resource["module"].as_str() {
            base.push_str(module);
            base.push('.');
        }
        base.push_str(&format!(
            "{}.{}",
            resource["type"].as_str().unwrap_or_default(),
            resource["name"].as_str().unwrap_or_default()
        ));
        for instance in resource["instances"].as_array().into_iter().flatten() {
            addresses.push(match &instance["index_key"] {
                Value::Null => base.clone(),
                Value::String(key) => format!("{base}[{key:?}]"),
                key => format!("{base}[{key}]"),
            });
        }
    }
    addresses.sort();
    addresses
}

/// Resources in a local terraform.tfstate; none when the file does not exist.
pub fn local_state_resources(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => state_resources(
            &serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("parse {}: {e}", path.display())),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// The state JSON that terraform's pg backend keeps for `workspace` in
/// `<schema>.states`; `None` when the schema, the table or the row is missing.
pub fn pg_state(conn_str: &str, schema: &str, workspace: &str) -> Option<Value> {
    // Values travel as psql variables (quoted by psql), never spliced into SQL.
    // The table check comes first because selecting from a missing table is an
    // error, and "terraform has not written yet" is a normal answer here.
    let sql = r#"
        SELECT to_regclass(format('%I.states', :'schema')) IS NOT NULL AS present \gset
        \if :present
        SELECT data FROM :"schema".states WHERE name = :'workspace';
        \endif
    "#;
    let text = psql(
        conn_str,
        sql,
        &[("schema", schema), ("workspace", workspace)],
    );
    if text.trim().is_empty() {
        return None;
    }
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse state: {e}\n{text}")))
}

/// Resources in a pg-backend state; none when there is no state yet.
pub fn pg_state_resources(conn_str: &str, schema: &str, workspace: &str) -> Vec<String> {
    pg_state(conn_str, schema, workspace)
        .map(|state| state_resources(&state))
        .unwrap_or_default()
}

/// Runs `sql` (from stdin, so psql expands `vars`) and returns unaligned,
/// tuples-only output. Panics with psql's error on failure.
pub fn psql(conn_str: &str, sql: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conn_str,
    ]);
    for (name, value) in vars {
        cmd.arg("-v").arg(format!("{name}={value}"));
    }
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run psql");
    child
        .stdin
        .take()
        .expect("psql stdin")
        .write_all(sql.as_bytes())
        .expect("write to psql");
    let out = child.wait_with_output().expect("wait for psql");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// PostgreSQL: one server per test binary, started on first use and shared by
// its tests; each test gets a database of its own. The server runs as the
// `postgres` user, since PostgreSQL refuses to run as root.

pub struct Postgres {
    port: u16,
}

static POSTGRES: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The shared server, started on first call.
pub fn postgres() -> &'static Postgres {
    POSTGRES.get_or_init(Postgres::start)
}

/// A new empty database on the shared server, as a conn_str for the pg backend.
pub fn fresh_database() -> String {
    postgres().create_database()
}

impl Postgres {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn conn_str(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn create_database(&self) -> String {
        let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        psql(
            &self.conn_str("postgres"),
            "CREATE DATABASE :\"name\";",
            &[("name", &name)],
        );
        self.conn_str(&name)
    }

    fn start() -> Self {
        let bin = pg_bin_dir();
        // Under /tmp rather than $TMPDIR: the postgres user must be able to
        // reach it, and the unix socket path must stay short (≤ 107 bytes).
        let dir = PathBuf::from(format!("/tmp/bootstrapper-pg-{}", std::process::id()));
        // A leftover of an earlier process that had the same pid.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create postgres dir");
        give_to_postgres(&dir);
        let data = dir.join("data");
        let log = dir.join("server.log");

        // Started before the server so no window exists where the server
        // could outlive this process unwatched.
        start_watchdog(&bin, &data, &dir);

        let init = as_postgres(&bin.join("initdb"), &dir)
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "--username=postgres"])
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );

        // Settings go into the config file, not pg_ctl -o, which is handed to
        // a shell and would need quoting.
        let port = free_port();
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            dir.display()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .expect("configure postgres");

        // -l: the server must never hold this process's stdout/stderr, or
        // cargo test would wait for it. -W: readiness is polled below.
        let started = as_postgres(&bin.join("pg_ctl"), &dir)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-W", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );

        let ready = poll(
            || {
                Command::new(bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                    .arg(port.to_string())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            Duration::from_secs(60),
        );
        assert!(
            ready,
            "postgres not ready on 127.0.0.1:{port}; server log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Postgres { port }
    }
}

/// Statics are never dropped, so a separate process stops the server and
/// removes its directory once this test process is gone, however it ended.
/// It leads its own session so a Ctrl-C to the test's process group does not
/// take it down before it has cleaned up.
// It exits only after this process has, so it can never be our zombie.
#[allow(clippy::zombie_processes)]
fn start_watchdog(bin: &Path, data: &Path, dir: &Path) {
    let script = r#"
        pid=$1 dir=$2; shift 2
        while kill -0 "$pid" 2>/dev/null; do sleep 1; done
        # initdb or pg_ctl may still be writing there if the test died mid-start.
        while [ -e "$dir" ]; do
            "$@" >/dev/null 2>&1
            rm -rf "$dir" 2>/dev/null || sleep 1
        done
    "#;
    let stop = as_postgres(&bin.join("pg_ctl"), dir);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(stop.get_program())
        .args(stop.get_args())
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "stop"])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().expect("start postgres watchdog");
}

/// The directory of PostgreSQL's server programs, preferring version 15.
pub fn pg_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        let preferred = versions.iter().find(|(v, _)| *v == 15).or(versions.last());
        preferred
            .map(|(_, bin)| bin.clone())
            .expect("no /usr/lib/postgresql/*/bin/initdb: install postgresql")
    })
    .clone()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as the postgres user when we are root, as ourselves otherwise.
/// `cwd` must be reachable by that user (it may not enter the test's cwd).
fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

fn give_to_postgres(dir: &Path) {
    if !is_root() {
        return;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(out.status.success(), "no postgres user: install postgresql");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    std::os::unix::fs::chown(dir, Some(id("-u")), Some(id("-g"))).expect("chown to postgres");
}

/// A port that was free a moment ago. Ephemeral ports are handed out in turn,
/// so another process taking it in between is unlikely; the server log says
/// so if it happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

// ---------------------------------------------------------------------------
// The four-step fixture (tests/fixtures/four-step): control-network keeps
// local state on the PVC; network, hosts and system-job keep theirs in the pg
// backend, one schema per step, workspace = params.cluster_id.

pub const FOUR_STEPS: [&str; 4] = ["control-network", "network", "hosts", "system-job"];

/// The value of the sensitive admin_token param in `four_step_params`, for
/// tests asserting that it never shows up in output.
pub const ADMIN_TOKEN: &str = "adm-7c41f0e2-secret";

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/four-step")
}

/// A workflow (TOML) running the fixture's four steps in order, with
/// absolute paths so the file can live anywhere.
pub fn four_step_workflow(fixtures_dir: &Path) -> String {
    let templates = fixtures_dir.join("templates");
    let template = |step: &str| toml_string(&templates.join(format!("{step}.tfvars.tera")));
    let mut toml = format!(
        "[source]\ndir = \"code\"\nimage_dir = {}\n\n\
         [[step]]\nname = \"control-network\"\ndir = \"control-network\"\nvars = {}\n",
        toml_string(fixtures_dir),
        template("control-network"),
    );
    for step in &FOUR_STEPS[1..] {
        // Like workflows/bootstrap.toml: the system jobs use only control-network's outputs,
        // yet run on the hosts.
        let needs = if *step == "system-job" {
            "needs = [\"hosts\"]\n"
        } else {
            ""
        };
        toml.push_str(&format!(
            "\n[[step]]\nname = \"{step}\"\ndir = \"{step}\"\n{needs}\
             workspace = \"{{{{ params.cluster_id }}}}\"\n\
             backend_config = {{ conn_str = \"{{{{ steps.control_network.outputs.conn_str }}}}\", \
             schema_name = \"{step}\" }}\n\
             vars = {}\n",
            template(step)
        ));
    }
    toml
}

/// Params for `four_step_workflow`; tests add sleep_*, destroy_sleep_* or
/// tag_* entries (keys use `_` for `-`, e.g. `sleep_system_job`).
pub fn four_step_params(ledger: &Path, pg_conn_str: &str) -> Value {
    json!({
        "ledger": ledger,
        "pg_conn_str": pg_conn_str,
        "admin_token": ADMIN_TOKEN,
        "cluster_id": "c1",
    })
}

/// A TOML basic string. JSON string escapes are valid TOML escapes.
fn toml_string(path: &Path) -> String {
    serde_json::to_string(&path.to_str().expect("UTF-8 path")).expect("serialize path")
}

// ---------------------------------------------------------------------------
// Terraform behind a wrapper that records every call (its directory, then argv,
// NUL-separated, one call a line) before handing over to the real terraform.

impl Bootstrapper {
    /// Makes `--terraform` the recording wrapper; returns the record's path.
    pub fn record_terraform(&mut self) -> PathBuf {
        let calls = self.dir().join("terraform-calls");
        let wrapper = self.dir().join("bin/terraform");
        // The version check is not a step's command: it is left out of the record.
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = version ] || {{ printf '%s\\0' \"$PWD\" \"$@\"; printf '\\n'; }} >> '{}'\nexec terraform \"$@\"\n",
            calls.display()
        );
        write_script(&wrapper, script);
        self.arg("--terraform").arg(&wrapper);
        calls
    }
}

/// Every terraform call recorded so far: the directory, then argv without the program.
pub fn terraform_calls(record: &Path) -> Vec<Vec<String>> {
    read_lines(record)
        .iter()
        .map(|line| {
            let line = line.strip_suffix('\0').unwrap_or(line);
            line.split('\0').map(str::to_owned).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// What the four-step fixture's steps hold, and what the journal says of them.

/// The resources of a step of the four-step fixture, as the ledger names them.
pub fn four_step_resources(step: &str) -> &'static [&'static str] {
    match step {
        "hosts" => &["client[0]", "client[1]", "first", "slow"],
        _ => &["first", "last", "slow"],
    }
}

/// The state addresses a four-step fixture's step holds once applied, sorted as
/// [`state_resources`] gives them.
pub fn expected_state(step: &str) -> Vec<String> {
    let mut addresses: Vec<String> = four_step_resources(step)
        .iter()
        .map(|r| format!("terraform_data.{r}"))
        .collect();
    addresses.sort();
    addresses
}

/// A step's marker, parsed.
pub fn marker(b: &Bootstrapper, step: &str) -> Value {
    let path = b.root().join(format!(".bootstrapper/steps/{step}/inited"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `status --json`, which must succeed.
pub fn status_json(b: &Bootstrapper) -> Value {
    let outcome = b.run(&["status", "--json"]);
    outcome.assert_success();
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("{e}\n{outcome}"))
}

/// Writes an executable script (a terraform wrapper, a fake tool) at `path`, making its
/// directory if need be.
pub fn write_script(path: &Path, text: impl AsRef<[u8]>) {
    let dir = path.parent().expect("a script's directory");
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(
        path,
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Copies the tree at `from` to `to`, files and folders alike.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}
