//! A stand-in for the Kubernetes API server, for the `kubernetes` executor: no kube-apiserver
//! can be installed here. It speaks the subset the executor uses — Jobs, pods, pods/log and
//! Secrets: create, get, list by label, replace, delete (always with foreground propagation)
//! — over plain HTTP on loopback, and a fake kubelet runs each Job's pod as a local process of
//! the real binary: the container's args with its mount paths moved into a directory of the
//! pod's own (the params Secret written where it is mounted, an empty root), the container's
//! env over the environment given here (envFrom's stand-in), SIGTERM then SIGKILL after the
//! pod's grace on deletion, and the exit code and termination message into the pod's and the
//! Job's status by the Job's rules (backoffLimit 0, podFailurePolicy FailJob on exit 2 and
//! Ignore on a `DisruptionTarget` condition, podReplacementPolicy). Changes of Jobs and pods
//! are watched with resource versions ([`watch`]); [`faults`] are injected on request.
//! With a capacity, a pod beyond it stays Pending ("Too many pods") until a slot frees, first
//! come first started; which node a pod lands on is not modelled.
//! A pod's log answers `tailLines`, `limitBytes` and `follow=true` (streamed as the process
//! writes it); a pod gone has none.
//! Not simulated: scheduling, activeDeadlineSeconds, TTL.

mod faults;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::BIN;

const PARAMS_DIR: &str = "/etc/bootstrapper/params";
const ROOT: &str = "/project";
const RESULT_FILE: &str = "/dev/termination-log";

struct Process {
    child: Child,
    cluster: String,
    dir: PathBuf,
    terminated_at: Option<Instant>,
    grace: Duration,
}

#[derive(Default)]
struct State {
    rv: u64,
    jobs: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    processes: HashMap<String, Process>,
    /// Every Job created, by name, in order.
    created: Vec<String>,
    /// The most pods with a live process at once, by cluster.
    most_at_once: BTreeMap<String, usize>,
    requests: usize,
    /// Job creates still to refuse with 403, as a ResourceQuota would.
    refuse_creates: usize,
    /// Start two pods for each Job, as the Job controller may ("at least once").
    two_pods: bool,
    /// Leave each new pod Pending, unschedulable.
    unschedulable: bool,
    /// How many pods may run at once (all nodes' slots); None: no limit.
    capacity: Option<usize>,
    /// Pods Pending for a slot, with their Job's name, oldest first.
    queued: VecDeque<(String, String)>,
    /// The most pods with a live process at once, all clusters together.
    most_live: usize,
    history: watch::History,
    /// Jobs and pods changed since the last [`watch::record`], by resource and name.
    changed: BTreeSet<(&'static str, String)>,
    faults: faults::Faults,
}

pub struct FakeKube {
    pub port: u16,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeKube {
    /// Starts the server and its kubelet; pods' processes get `env` (and the container's).
    pub fn start(dir: &Path, env: Vec<(String, String)>) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let pods_dir = dir.join("pods");
        fs::create_dir_all(&pods_dir).unwrap();
        {
            let state = state.clone();
            let pods_dir = pods_dir.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    let pods_dir = pods_dir.clone();
                    std::thread::spawn(move || serve_connection(stream, &state, &pods_dir));
                }
            });
        }
        {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    kubelet(&state, &pods_dir, &env);
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        FakeKube {
            port,
            dir: dir.to_path_buf(),
            state,
            stop,
        }
    }

    /// A kubeconfig naming this server, with `namespace` as the default.
    pub fn kubeconfig(&self, namespace: &str) -> PathBuf {
        let path = self.dir.join("kubeconfig");
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    pub fn jobs_created(&self) -> Vec<String> {
        self.state.lock().unwrap().created.clone()
    }

    pub fn job(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().jobs.get(name).cloned()
    }

    pub fn secret(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().secrets.get(name).cloned()
    }

    pub fn most_pods_at_once(&self, cluster: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.most_at_once.get(cluster).copied().unwrap_or(0)
    }

    pub fn live_pods(&self) -> usize {
        self.state.lock().unwrap().processes.len()
    }

    /// The Jobs whose pod has a live process, by name.
    pub fn running_jobs(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let names = state.processes.keys().filter_map(|pod| {
            state.pods.get(pod)?["metadata"]["labels"]["job-name"]
                .as_str()
                .map(str::to_string)
        });
        names.collect()
    }

    /// The most pods that any one cluster had with a live process at once.
    pub fn most_pods_of_one_cluster(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.most_at_once.values().copied().max().unwrap_or(0)
    }

    /// The most pods with a live process at once, all clusters together.
    pub fn most_live_pods(&self) -> usize {
        self.state.lock().unwrap().most_live
    }

    /// From now on at most `slots` pods run at once; the others wait Pending for a slot.
    pub fn limit_pods(&self, slots: usize) {
        self.state.lock().unwrap().capacity = Some(slots);
    }

    /// Pods Pending for a free slot.
    pub fn queued_pods(&self) -> usize {
        self.state.lock().unwrap().queued.len()
    }

    /// The next `n` Job creates are refused as over quota (403).
    pub fn refuse_job_creates(&self, n: usize) {
        self.state.lock().unwrap().refuse_creates = n;
    }

    /// From now on pods stay Pending: no node fits them.
    pub fn make_pods_unschedulable(&self) {
        self.state.lock().unwrap().unschedulable = true;
    }

    /// From now on each Job gets two pods at once.
    pub fn start_two_pods_per_job(&self) {
        self.state.lock().unwrap().two_pods = true;
    }

    /// A Job made by someone else, which no pod runs (it is suspended).
    pub fn put_foreign_job(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.changed.insert(("jobs", name.to_string()));
        state.jobs.insert(
            name.to_string(),
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": name, "labels": {"app": "other"}, "resourceVersion": "1"},
                   "spec": {"suspend": true, "template": {"spec": {"containers": []}}},
                   "status": {}}),
        );
        watch::record(&mut state);
    }

    /// Deletes a Job as `kubectl delete job` would (its pods get SIGTERM first).
    pub fn delete_job(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        let job = state.jobs.get_mut(name).expect("the Job exists");
        job["metadata"]["deletionTimestamp"] = json!(now());
        state.changed.insert(("jobs", name.to_string()));
        watch::record(&mut state);
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().unwrap();
        state.history.drop_all();
        for (_, mut p) in state.processes.drain() {
            unsafe { libc::kill(-(p.child.id() as i32), libc::SIGKILL) };
            let _ = p.child.wait();
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let (k, v) = pair.split_once('=').unwrap();
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn serve_connection(stream: TcpStream, state: &Mutex<State>, pods_dir: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: HashMap<String, String> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let fault = faults::take(&mut state.lock().unwrap());
        match fault {
            Some(faults::Fault::Hang) => return faults::hold(reader),
            Some(faults::Fault::Fail(code)) => {
                let (_, value) = status(code, "InternalError", "the server is failing, as asked");
                let text = value.to_string();
                let reply = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            None => {}
        }
        if query.get("watch").map(String::as_str) == Some("true") {
            state.lock().unwrap().requests += 1;
            let resource = path.rsplit('/').next().unwrap_or("");
            return watch::serve(stream, state, resource, &query);
        }
        let (code, content_type, text) = match handle(state, pods_dir, &method, path, &query, &body)
        {
            Answer::Json(code, value) => (code, "application/json", value.to_string()),
            Answer::Text(text) => (200, "text/plain", text),
            Answer::Follow { pod, start } => {
                if follow_log(&mut stream, state, pods_dir, &pod, start).is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

enum Answer {
    Json(u16, Value),
    Text(String),
    /// A pod's log from byte `start`, streamed as the pod writes it until its process ends.
    Follow {
        pod: String,
        start: usize,
    },
}

/// `pods/NAME/log`: the pod's output, its `tailLines` last lines, at most `limitBytes`;
/// with `follow=true` streamed on. A pod that is gone has no log (404).
fn pod_log(state: &State, pods_dir: &Path, pod: &str, query: &HashMap<String, String>) -> Answer {
    if !state.pods.contains_key(pod) {
        let (c, v) = status(404, "NotFound", &format!("pods \"{pod}\" not found"));
        return Answer::Json(c, v);
    }
    let text = fs::read_to_string(pods_dir.join(pod).join("log")).unwrap_or_default();
    let mut start = 0;
    if let Some(n) = query.get("tailLines").map(|n| n.parse::<usize>().unwrap()) {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let skip = lines.len().saturating_sub(n);
        start = lines[..skip].iter().map(|l| l.len()).sum();
    }
    if query.get("follow").map(String::as_str) == Some("true") {
        return Answer::Follow {
            pod: pod.to_string(),
            start,
        };
    }
    let mut text = text[start..].to_string();
    if let Some(limit) = query.get("limitBytes").map(|n| n.parse::<usize>().unwrap()) {
        text.truncate(limit);
    }
    Answer::Text(text)
}

/// Streams a pod's log, chunked, from `start` on as its process writes it, and ends it once
/// the process has ended and all it wrote is sent.
fn follow_log(
    stream: &mut TcpStream,
    state: &Mutex<State>,
    pods_dir: &Path,
    pod: &str,
    start: usize,
) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 X\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut file = fs::File::open(pods_dir.join(pod).join("log"))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start as u64))?;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        // Whether it had ended is looked at before the read: what it wrote before is read.
        let ended = !state.lock().unwrap().processes.contains_key(pod);
        let n = file.read(&mut buffer)?;
        if n > 0 {
            stream.write_all(format!("{n:x}\r\n").as_bytes())?;
            stream.write_all(&buffer[..n])?;
            stream.write_all(b"\r\n")?;
            continue;
        }
        if ended {
            return stream.write_all(b"0\r\n\r\n");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn handle(
    state: &Mutex<State>,
    pods_dir: &Path,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Answer {
    let mut state = state.lock().unwrap();
    let answer = handle_locked(&mut state, pods_dir, method, path, query, body);
    // Reads change nothing; under a load they are most requests, and a record compares
    // every Job and pod.
    if method != "GET" {
        if let Some(written) = written(path, body) {
            state.changed.insert(written);
        }
        watch::record(&mut state);
    }
    answer
}

/// The Job or pod a write request names (in its path, or a create's body).
fn written(path: &str, body: &[u8]) -> Option<(&'static str, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", "namespaces", _ns, rest @ ..] => rest,
        ["apis", "batch", "v1", "namespaces", _ns, rest @ ..] => rest,
        _ => return None,
    };
    let resource = match *rest.first()? {
        "jobs" => "jobs",
        "pods" => "pods",
        _ => return None,
    };
    let name = match rest.get(1) {
        Some(name) => name.to_string(),
        None => serde_json::from_slice::<Value>(body).ok()?["metadata"]["name"]
            .as_str()?
            .to_string(),
    };
    Some((resource, name))
}

fn handle_locked(
    state: &mut State,
    pods_dir: &Path,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    state.requests += 1;
    // /api/v1/namespaces/NS/KIND[/NAME[/log]] or /apis/batch/v1/namespaces/NS/jobs[/NAME]
    let rest = match segments.as_slice() {
        ["api", "v1", "namespaces", _ns, rest @ ..] => rest,
        ["apis", "batch", "v1", "namespaces", _ns, rest @ ..] => rest,
        _ => {
            let (c, v) = status(404, "NotFound", "no such path");
            return Answer::Json(c, v);
        }
    };
    let (kind, api_version, list_kind) = match rest[0] {
        "jobs" => ("Job", "batch/v1", "JobList"),
        "pods" => ("Pod", "v1", "PodList"),
        "secrets" => ("Secret", "v1", "SecretList"),
        _ => {
            let (c, v) = status(404, "NotFound", "no such resource");
            return Answer::Json(c, v);
        }
    };
    if rest.len() == 3 && rest[0] == "pods" && rest[2] == "log" {
        return pod_log(state, pods_dir, rest[1], query);
    }
    state.rv += 1;
    let rv = state.rv;
    let State {
        jobs,
        pods,
        secrets,
        created,
        refuse_creates,
        ..
    } = state;
    if method == "POST" && kind == "Job" && *refuse_creates > 0 {
        *refuse_creates -= 1;
        let (c, v) = status(
            403,
            "Forbidden",
            "jobs is forbidden: exceeded quota: tenant-jobs, requested: count/jobs.batch=1",
        );
        return Answer::Json(c, v);
    }
    let store = match rest[0] {
        "jobs" => jobs,
        "pods" => pods,
        _ => secrets,
    };
    let answer = |(c, v): (u16, Value)| Answer::Json(c, v);
    match (method, rest.get(1)) {
        ("GET", None) => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let fields = query.get("fieldSelector").cloned().unwrap_or_default();
            let named = fields.strip_prefix("metadata.name=");
            let items: Vec<Value> = store
                .values()
                .filter(|o| matches(o, &selector))
                .filter(|o| named.is_none_or(|n| o["metadata"]["name"].as_str() == Some(n)))
                .cloned()
                .collect();
            Answer::Json(
                200,
                json!({"apiVersion": api_version, "kind": list_kind,
                       "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name)) => match store.get(*name) {
            Some(o) => Answer::Json(200, o.clone()),
            None => answer(status(404, "NotFound", &format!("{name} not found"))),
        },
        ("POST", None) => {
            let mut object: Value = serde_json::from_slice(body).unwrap();
            if let Err(why) = schema_check(kind, &object) {
                return answer(status(422, "Invalid", &why));
            }
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            if store.contains_key(&name) {
                return answer(status(
                    409,
                    "AlreadyExists",
                    &format!("{name} already exists"),
                ));
            }
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(kind);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            object["metadata"]["uid"] = json!(format!("uid-{rv}"));
            object["metadata"]["creationTimestamp"] = json!(now());
            if kind == "Job" {
                object["status"] = json!({});
                created.push(name.clone());
            }
            store.insert(name, object.clone());
            Answer::Json(201, object)
        }
        ("PUT", Some(name)) => {
            let mut object: Value = serde_json::from_slice(body).unwrap();
            if let Err(why) = schema_check(kind, &object) {
                return answer(status(422, "Invalid", &why));
            }
            let Some(existing) = store.get(*name) else {
                return answer(status(404, "NotFound", &format!("{name} not found")));
            };
            if object["metadata"]["resourceVersion"] != existing["metadata"]["resourceVersion"] {
                return answer(status(409, "Conflict", "the object has been modified"));
            }
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(kind);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            store.insert(name.to_string(), object.clone());
            Answer::Json(200, object)
        }
        ("DELETE", Some(name)) => match store.get_mut(*name) {
            Some(object) => {
                // Foreground: the object stays, marked, until its pods are gone.
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
                let object = object.clone();
                if kind == "Secret" {
                    store.remove(*name);
                }
                Answer::Json(200, object)
            }
            None => answer(status(404, "NotFound", &format!("{name} not found"))),
        },
        _ => answer(status(405, "MethodNotAllowed", method)),
    }
}

/// Every object the executor sends is read strictly into k8s-openapi's type of its kind (the
/// Kubernetes schema): a field unknown to the schema, or of the wrong type, is refused as the
/// real API server refuses it under strict field validation.
fn schema_check(kind: &str, object: &Value) -> Result<(), String> {
    use bootstrapper::base::strict::from_value;
    use k8s_openapi::api::{batch::v1::Job, core::v1::Secret};
    let checked = match kind {
        "Job" => from_value::<Job>(object.clone()).map(drop),
        "Secret" => from_value::<Secret>(object.clone()).map(drop),
        other => Err(format!("the fake API server does not take {other} objects")),
    };
    checked.map_err(|why| {
        eprintln!("fake API server: a {kind} refused: {why}");
        format!("{kind} is invalid: {why}")
    })
}

/// One turn of the kubelet and the Job controller.
fn kubelet(state: &Mutex<State>, pods_dir: &Path, env: &[(String, String)]) {
    let mut state = state.lock().unwrap();
    let state = &mut *state;
    // Start a pod for each Job that has none, unless suspended or being deleted. A pod
    // being deleted counts until it has stopped only under podReplacementPolicy Failed; a
    // pod failed by a disruption the Job's podFailurePolicy ignores does not count.
    let names: Vec<String> = state.jobs.keys().cloned().collect();
    // Once per turn, not once per Job: a load keeps thousands of both.
    let with_pods: BTreeSet<String> = state
        .pods
        .values()
        .filter_map(|p| {
            let name = p["metadata"]["labels"]["job-name"].as_str()?;
            let job = state.jobs.get(name)?;
            let replace_when_failed = job["spec"]["podReplacementPolicy"] == json!("Failed");
            let failed = p["status"]["phase"] == json!("Failed");
            let terminating = !p["metadata"]["deletionTimestamp"].is_null();
            let counts = if failed {
                !ignores_disruption(job, p)
            } else {
                !terminating || replace_when_failed
            };
            counts.then(|| name.to_string())
        })
        .collect();
    for name in &names {
        if with_pods.contains(name) {
            continue;
        }
        let job = state.jobs[name].clone();
        let concluded = job["status"]["conditions"].is_array();
        if concluded
            || job["spec"]["suspend"] == json!(true)
            || !job["metadata"]["deletionTimestamp"].is_null()
        {
            continue;
        }
        start_pod(state, pods_dir, env, name, &job);
        if state.two_pods {
            start_pod(state, pods_dir, env, name, &job);
        }
    }
    // Processes that ended: their status, and their Job's.
    let ended: Vec<String> = state
        .processes
        .iter_mut()
        .filter_map(|(pod, p)| p.child.try_wait().ok().flatten().map(|_| pod.clone()))
        .collect();
    for pod_name in ended {
        let mut p = state.processes.remove(&pod_name).unwrap();
        let code = p.child.wait().unwrap().code().unwrap_or(137);
        let mut message = fs::read_to_string(p.dir.join("termination-log")).unwrap_or_default();
        message.truncate(4096);
        let Some(pod) = state.pods.get_mut(&pod_name) else {
            continue;
        };
        state.changed.insert(("pods", pod_name.clone()));
        let conditions = pod["status"]["conditions"].clone();
        pod["status"] = json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{"name": "engine", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": code, "message": message,
                "reason": if code == 0 { "Completed" } else { "Error" }}}}],
        });
        if conditions.is_array() {
            pod["status"]["conditions"] = conditions;
        }
        let pod = pod.clone();
        let job_name = pod["metadata"]["labels"]["job-name"]
            .as_str()
            .unwrap()
            .to_string();
        state.changed.insert(("jobs", job_name.clone()));
        if let Some(job) = state.jobs.get_mut(&job_name) {
            let ignored = code != 0 && ignores_disruption(job, &pod);
            if job["metadata"]["deletionTimestamp"].is_null() && !ignored {
                job["status"] = if code == 0 {
                    json!({"succeeded": 1, "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True"},
                        {"type": "Complete", "status": "True"}]})
                } else {
                    let reason = if code == 2 {
                        "PodFailurePolicy"
                    } else {
                        "BackoffLimitExceeded"
                    };
                    json!({"failed": 1, "conditions": [
                        {"type": "FailureTarget", "status": "True", "reason": reason},
                        {"type": "Failed", "status": "True", "reason": reason, "message": "m"}]})
                };
            }
        }
    }
    // Pods waiting for a slot, as slots free.
    while state.capacity.is_some_and(|c| state.processes.len() < c) {
        let Some((pod_name, job_name)) = state.queued.pop_front() else {
            break;
        };
        let job = state.jobs.get(&job_name).cloned();
        match job {
            Some(job) if state.pods.contains_key(&pod_name) => {
                launch(state, pods_dir, env, &pod_name, &job_name, &job)
            }
            // Its Job was deleted meanwhile, and the pod with it.
            _ => {}
        }
    }
    // Jobs being deleted: SIGTERM their pods' processes, SIGKILL after the grace, then
    // remove the pods, then the Job.
    for name in &names {
        let Some(job) = state.jobs.get(name) else {
            continue;
        };
        if job["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let pods: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, p)| matches(p, &format!("job-name={name}")))
            .map(|(n, _)| n.clone())
            .collect();
        for pod in &pods {
            match state.processes.get_mut(pod) {
                Some(p) => match p.terminated_at {
                    None => {
                        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
                        p.terminated_at = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > p.grace => {
                        unsafe { libc::kill(-(p.child.id() as i32), libc::SIGKILL) };
                    }
                    Some(_) => {}
                },
                None => {
                    state.pods.remove(pod);
                    state.changed.insert(("pods", pod.clone()));
                }
            }
        }
        if pods.is_empty() {
            state.jobs.remove(name);
            state.changed.insert(("jobs", name.clone()));
        }
    }
    // Evicted pods: SIGKILL after their grace.
    for p in state.processes.values() {
        if p.terminated_at.is_some_and(|at| at.elapsed() > p.grace) {
            unsafe { libc::kill(-(p.child.id() as i32), libc::SIGKILL) };
        }
    }
    let mut live: BTreeMap<String, usize> = BTreeMap::new();
    for p in state.processes.values() {
        *live.entry(p.cluster.clone()).or_default() += 1;
    }
    state.most_live = state.most_live.max(state.processes.len());
    for (cluster, n) in live {
        let most = state.most_at_once.entry(cluster).or_default();
        *most = (*most).max(n);
    }
    watch::record(state);
}

/// Whether pod `pod` of `job` failed by a disruption (eviction, preemption, a node drain)
/// that the Job's podFailurePolicy ignores: not counted, the pod is replaced.
fn ignores_disruption(job: &Value, pod: &Value) -> bool {
    let disrupted = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True");
    disrupted
        && job["spec"]["podFailurePolicy"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["action"] == "Ignore"
                    && rule["onPodConditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "DisruptionTarget")
            })
}

fn start_pod(
    state: &mut State,
    pods_dir: &Path,
    env: &[(String, String)],
    job_name: &str,
    job: &Value,
) {
    let template = &job["spec"]["template"];
    let pod_name = format!("{job_name}-{}", state.rv);
    state.rv += 1;
    let full = state
        .capacity
        .is_some_and(|c| state.processes.len() >= c || !state.queued.is_empty());
    if state.unschedulable || full {
        let message = if full {
            state
                .queued
                .push_back((pod_name.clone(), job_name.to_string()));
            "0/50 nodes are available: 50 Too many pods (no free pod slot)."
        } else {
            "0/3 nodes are available: 3 Insufficient memory."
        };
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert("job-name".into(), json!(job_name));
        state.changed.insert(("pods", pod_name.clone()));
        state.pods.insert(
            pod_name.clone(),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod_name, "labels": labels, "creationTimestamp": now()},
                   "spec": {"containers": [{"name": "engine"}]},
                   "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                      "status": "False", "reason": "Unschedulable",
                      "message": message}]}}),
        );
        return;
    }
    launch(state, pods_dir, env, &pod_name, job_name, job);
}

/// Runs pod `pod_name` of Job `job_name`: its process, and its status Running.
fn launch(
    state: &mut State,
    pods_dir: &Path,
    env: &[(String, String)],
    pod_name: &str,
    job_name: &str,
    job: &Value,
) {
    let template = &job["spec"]["template"];
    let dir = pods_dir.join(pod_name);
    fs::create_dir_all(dir.join("root")).unwrap();
    fs::create_dir_all(dir.join("params")).unwrap();
    let spec = &template["spec"];
    // The params Secret, written where the pod mounts it.
    for volume in spec["volumes"].as_array().unwrap() {
        let Some(secret) = volume["secret"].as_object() else {
            continue;
        };
        let data = &state.secrets[secret["secretName"].as_str().unwrap()]["data"];
        for item in secret["items"].as_array().unwrap() {
            let encoded = data[item["key"].as_str().unwrap()].as_str().unwrap();
            let bytes = base64_decode(encoded);
            fs::write(
                dir.join("params").join(item["path"].as_str().unwrap()),
                bytes,
            )
            .unwrap();
        }
    }
    let container = &spec["containers"][0];
    let moved = |arg: &str| {
        arg.replace(PARAMS_DIR, dir.join("params").to_str().unwrap())
            .replace(RESULT_FILE, dir.join("termination-log").to_str().unwrap())
            .replace(ROOT, dir.join("root").to_str().unwrap())
    };
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| moved(a.as_str().unwrap()))
        .collect();
    let log = fs::File::create(dir.join("log")).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(&args)
        .current_dir(dir.join("root"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    if let Ok(home) = std::env::var("HOME") {
        command.env("HOME", home);
    }
    for e in container["env"].as_array().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            command.env(e["name"].as_str().unwrap(), v);
        }
    }
    let child = command.spawn().expect("start the pod's process");
    let labels = template["metadata"]["labels"].clone();
    let mut labels = labels.as_object().cloned().unwrap_or_default();
    labels.insert("job-name".into(), json!(job_name));
    let cluster = labels["bootstrapper/cluster"]
        .as_str()
        .unwrap_or("")
        .to_string();
    state.changed.insert(("pods", pod_name.to_string()));
    state.pods.insert(
        pod_name.to_string(),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "labels": labels, "creationTimestamp": now(),
                            "resourceVersion": state.rv.to_string()},
               "spec": {"containers": [{"name": "engine"}]},
               "status": {"phase": "Running", "containerStatuses": [{"name": "engine", "image": "i",
                  "imageID": "", "ready": true, "restartCount": 0,
                  "state": {"running": {"startedAt": now()}}}]}}),
    );
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    state.processes.insert(
        pod_name.to_string(),
        Process {
            child,
            cluster,
            dir,
            terminated_at: None,
            grace,
        },
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for b in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == b).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}
