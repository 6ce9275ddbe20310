//! The controller (`bootstrapper serve`) under test: started on a free loopback port over the
//! tenant fixture, with a PostgreSQL database as its backend, and driven by a real HTTP
//! client. The fixture's provisioners write a ledger whose lines carry a time, the cluster
//! and the operation (the engine process that ran terraform).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{wait_for, Bootstrapper, Running};

pub const TOKEN: &str = "tok-3f9a2c71e8d04b56";

pub fn tenant_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tenant")
}

/// The fixture's workflow, its relative paths made absolute so it can live anywhere.
pub fn tenant_workflow() -> String {
    let dir = tenant_fixture_dir();
    let text = fs::read_to_string(dir.join("workflow.toml")).expect("read tenant workflow");
    let quoted = |p: &Path| serde_json::to_string(p.to_str().expect("UTF-8")).expect("quote");
    text.replace(
        "image_dir = \".\"",
        &format!("image_dir = {}", quoted(&dir)),
    )
    .replace(
        "\"templates/",
        &format!("\"{}/", dir.join("templates").display()),
    )
}

/// A controller's test bed: the temp directory (root, ledger, tokens) and the database.
pub struct Bed {
    pub b: Bootstrapper,
    pub pg: String,
}

impl Bed {
    pub fn new() -> Self {
        Self::with_workflow(&tenant_workflow())
    }

    /// A bed whose tenant workflow is `toml` (the fixture's, changed by the test).
    pub fn with_workflow(toml: &str) -> Self {
        let bed = Self::bare(toml);
        bed.prepare_backend();
        bed
    }

    /// A bed whose database is empty: the first operations set the backend up themselves,
    /// side by side, and meet each other's races there.
    pub fn bare(toml: &str) -> Self {
        let b = Bootstrapper::new();
        b.write_workflow(toml);
        fs::write(b.dir().join("tokens"), format!("# test\n{TOKEN}\n")).expect("tokens");
        Bed {
            b,
            pg: super::fresh_database(),
        }
    }

    /// Terraform's pg backend creates its schema on the first `init`, and first inits running
    /// side by side race on it (a duplicate key error). The backend is set up once, before
    /// any tenant, as an operator would.
    fn prepare_backend(&self) {
        for step in ["namesvr", "broker"] {
            let dir = self.b.dir().join("backend-setup").join(step);
            fs::create_dir_all(&dir).expect("create setup dir");
            fs::copy(
                tenant_fixture_dir().join(step).join("main.tf"),
                dir.join("main.tf"),
            )
            .expect("copy module");
            super::terraform(
                &dir,
                &[
                    "init",
                    "-input=false",
                    &format!("-backend-config=conn_str={}", self.pg),
                    &format!("-backend-config=schema_name={step}"),
                ],
            )
            .assert_success();
        }
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.b.dir().join("tokens")
    }

    /// Starts `serve` with `args` after the command (and the tokens file, unless `args` ask
    /// for `--insecure-no-auth`), the backend and ledger in its environment, and `env` on
    /// top; returns once it listens.
    pub fn start(&self, args: &[&str], env: &[(&str, &str)]) -> Controller {
        let tokens = self.tokens_path();
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        if !args.contains(&"--insecure-no-auth") {
            all.extend(["--tokens", tokens.to_str().expect("UTF-8")]);
        }
        all.extend_from_slice(args);
        let mut cmd = self.b.command(&all);
        cmd.env("TF_VAR_pg_conn_str", &self.pg)
            .env("TF_VAR_ledger", self.b.ledger_path())
            .env("TF_VAR_sleep_seconds", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let running = super::spawn_session(cmd, self.b.dir());
        let address = listening_address(&running, Duration::from_secs(30));
        Controller {
            running: Some(running),
            base: format!("http://{address}"),
            // A connection per request: the server closes one after refusing a request whose
            // body it did not read (a 405, a 413), and a pooled connection reused at that moment
            // fails a request that never reached it.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .max_idle_connections(0)
                .max_idle_connections_per_host(0)
                .build()
                .into(),
        }
    }

    /// The ledger, parsed.
    pub fn ledger(&self) -> Vec<Entry> {
        self.b.ledger().iter().map(|l| Entry::parse(l)).collect()
    }

    /// Where the controller keeps cluster `id`.
    pub fn cluster_dir(&self, id: &str) -> PathBuf {
        self.b.root().join("clusters").join(id)
    }

    /// The resources the ledger says cluster `id` created, in order.
    pub fn creates(&self, id: &str) -> Vec<String> {
        self.ledger()
            .into_iter()
            .filter(|e| e.cluster == id && e.event == "create")
            .map(|e| e.resource)
            .collect()
    }

    /// Every resource in the states of `clusters`, as (cluster, `step:address`).
    pub fn states_of(&self, clusters: &[String]) -> BTreeSet<(String, String)> {
        clusters
            .iter()
            .flat_map(|id| {
                self.state_resources(id)
                    .into_iter()
                    .map(move |r| (id.clone(), r))
            })
            .collect()
    }

    /// The resources in the state of `cluster`'s workspace, for both steps.
    pub fn state_resources(&self, cluster: &str) -> Vec<String> {
        let mut all = Vec::new();
        for step in ["namesvr", "broker"] {
            for r in super::pg_state_resources(&self.pg, step, cluster) {
                all.push(format!("{step}:{r}"));
            }
        }
        all
    }
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

/// One ledger line: `<ns> <event> <cluster> <resource> <operation pid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ns: u128,
    pub event: String,
    pub cluster: String,
    pub resource: String,
    pub op: u32,
}

impl Entry {
    fn parse(line: &str) -> Self {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "ledger line {line:?}");
        Entry {
            ns: f[0].parse().expect("time"),
            event: f[1].to_string(),
            cluster: f[2].to_string(),
            resource: f[3].to_string(),
            op: f[4].parse().expect("pid"),
        }
    }
}

/// How often each (cluster, resource) had `event`.
pub fn counts(ledger: &[Entry], event: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for e in ledger.iter().filter(|e| e.event == event) {
        *counts
            .entry((e.cluster.clone(), e.resource.clone()))
            .or_insert(0) += 1;
    }
    counts
}

/// The time span of each operation (pid) on each cluster, from its ledger lines.
pub fn operations(ledger: &[Entry]) -> BTreeMap<(String, u32), (u128, u128)> {
    let mut spans: BTreeMap<(String, u32), (u128, u128)> = BTreeMap::new();
    for e in ledger {
        let span = spans
            .entry((e.cluster.clone(), e.op))
            .or_insert((e.ns, e.ns));
        span.0 = span.0.min(e.ns);
        span.1 = span.1.max(e.ns);
    }
    spans
}

/// Panics if two operations on one cluster overlap in time; returns how many were seen.
#[track_caller]
pub fn assert_one_operation_per_cluster(ledger: &[Entry]) -> usize {
    let spans = operations(ledger);
    let mut by_cluster: BTreeMap<&str, Vec<(u128, u128, u32)>> = BTreeMap::new();
    for ((cluster, op), (start, end)) in &spans {
        by_cluster
            .entry(cluster)
            .or_default()
            .push((*start, *end, *op));
    }
    for (cluster, mut ops) in by_cluster {
        ops.sort();
        for pair in ops.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "cluster {cluster}: operations {} and {} overlap ({pair:?})",
                pair[0].2,
                pair[1].2
            );
        }
    }
    spans.len()
}

/// The most operations (on any clusters) whose ledger spans overlap at one moment.
pub fn max_parallel(ledger: &[Entry]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for (start, end) in operations(ledger).values() {
        events.push((*start, 1));
        events.push((*end, -1));
    }
    // At equal times an end comes first: touching spans do not overlap.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

/// An answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub struct Controller {
    pub running: Option<Running>,
    pub base: String,
    agent: ureq::Agent,
}

impl Controller {
    pub fn running(&mut self) -> &mut Running {
        self.running.as_mut().expect("running")
    }

    pub fn stderr(&self) -> String {
        self.running
            .as_ref()
            .map(Running::stderr)
            .unwrap_or_default()
    }

    /// Any request; `token` None sends no Authorization header.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        auth: Option<&str>,
    ) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let request = request
            .header("Content-Type", "application/json")
            .body(body.unwrap_or_default())
            .expect("request");
        let mut response = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .expect("read body");
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    fn authorized(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Reply {
        self.request(method, path, body, Some(&format!("Bearer {TOKEN}")))
    }

    pub fn put(&self, id: &str, params: &Value) -> Reply {
        let body = serde_json::to_vec(&json!({ "params": params })).expect("json");
        self.authorized("PUT", &format!("/v1/clusters/{id}"), Some(body))
    }

    pub fn delete(&self, id: &str) -> Reply {
        self.authorized("DELETE", &format!("/v1/clusters/{id}"), None)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.authorized("GET", path, None)
    }

    pub fn cluster(&self, id: &str) -> Value {
        let reply = self.get(&format!("/v1/clusters/{id}"));
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    pub fn phase(&self, id: &str) -> String {
        self.cluster(id)["phase"].as_str().unwrap_or("").to_string()
    }

    /// Waits until every one of `ids` is in `phase`; a `failed` one fails the test at once.
    #[track_caller]
    pub fn wait_phase(&self, ids: &[String], phase: &str, timeout: Duration) {
        let caller = std::panic::Location::caller();
        let done = super::poll(
            || {
                let list = self.get("/v1/clusters").body;
                let docs = list["clusters"].as_array().cloned().unwrap_or_default();
                if let Some(failed) = docs.iter().find(|d| d["phase"] == "failed") {
                    let id = failed["id"].as_str().unwrap_or_default();
                    let log = self.get(&format!("/v1/clusters/{id}/log")).body;
                    let lines = log["lines"].as_array().cloned().unwrap_or_default();
                    let lines: Vec<&str> = lines.iter().filter_map(|l| l.as_str()).collect();
                    panic!(
                        "at {caller}: a cluster failed: {failed:#}\n--- its log ---\n{}",
                        lines.join("\n")
                    );
                }
                ids.iter().all(|id| {
                    docs.iter()
                        .any(|d| d["id"] == id.as_str() && d["phase"] == phase)
                })
            },
            timeout,
        );
        if !done {
            let list = self.get("/v1/clusters").body;
            panic!("at {caller}: not all {phase} after {timeout:?}: {list:#}");
        }
    }

    /// A metric's value from /metrics (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.request("GET", "/metrics", None, None).text;
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }
}

/// The address a starting `serve` says it listens on; a start that fails fails the test
/// with its stderr.
pub fn listening_address(serve: &Running, timeout: Duration) -> String {
    let mut address = None;
    wait_for(
        || {
            let stderr = serve.stderr();
            address = stderr
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .map(str::to_owned);
            address.is_some() || stderr.contains("error")
        },
        timeout,
    );
    address.unwrap_or_else(|| panic!("serve did not start:\n{}", serve.stderr()))
}

/// A one-cluster list, for the calls that take several.
pub fn one(id: &str) -> [String; 1] {
    [id.to_string()]
}
