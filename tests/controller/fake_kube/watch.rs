//! Watches of Jobs and pods, as the API server streams them: every change of a Job or a pod
//! gets the next resource version and an event (ADDED, MODIFIED, DELETED with the object);
//! `watch=true&resourceVersion=N` streams, as newline-delimited JSON in HTTP chunks, every
//! event after N that the labelSelector and `metadata.name` fieldSelector match, then each
//! new one, until `timeoutSeconds`. Without N (or with 0) the objects there now come first
//! as ADDED. Events are kept only so far back: a watch from before them is answered with an
//! ERROR event holding a 410 Status, as for an expired resourceVersion (or, on request, with
//! an HTTP 410 answer, as some servers do).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::State;

/// How many events are kept: a watch from further back gets 410 Gone.
const KEPT: usize = 20_000;

struct Event {
    rv: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
pub(super) struct History {
    events: VecDeque<Event>,
    /// Events up to this version are no longer kept.
    expired: u64,
    /// Each Job's and pod's last recorded version, by resource and name.
    seen: BTreeMap<(&'static str, String), Value>,
    /// Raised to close every open watch mid-stream.
    generation: u64,
    pub(super) dropped: usize,
    pub(super) gone: usize,
    pub(super) watches: usize,
    /// Refuse an expired version with the watch's HTTP answer (410), not an ERROR event.
    pub(super) gone_by_status: bool,
    changed: Arc<Condvar>,
}

impl History {
    /// Forgets every event so far: a watch from an earlier version gets 410 Gone.
    pub(super) fn expire(&mut self, rv: u64) {
        self.events.clear();
        self.expired = rv;
    }

    /// Closes every open watch in the middle of an event.
    pub(super) fn drop_all(&mut self) {
        self.generation += 1;
        self.changed.notify_all();
    }
}

/// Gives every Job and pod changed since the last call (in `state.changed`) a new resource
/// version and an event. Only those are compared: under a load a record of every object at
/// each change would cost the square of their number.
pub(super) fn record(state: &mut State) {
    let mut changes = Vec::new();
    for (resource, name) in std::mem::take(&mut state.changed) {
        let store = if resource == "jobs" {
            &state.jobs
        } else {
            &state.pods
        };
        match (
            store.get(&name),
            state.history.seen.get(&(resource, name.clone())),
        ) {
            (Some(object), Some(seen)) if seen == object => {}
            (Some(_), Some(_)) => changes.push((resource, name, "MODIFIED")),
            (Some(_), None) => changes.push((resource, name, "ADDED")),
            (None, Some(_)) => changes.push((resource, name, "DELETED")),
            (None, None) => {}
        }
    }
    if changes.is_empty() {
        return;
    }
    for (resource, name, kind) in changes {
        state.rv += 1;
        let rv = state.rv;
        let store = if resource == "jobs" {
            &mut state.jobs
        } else {
            &mut state.pods
        };
        let key = (resource, name.clone());
        let object = match store.get_mut(&name) {
            Some(object) => {
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                state.history.seen.insert(key, object.clone());
                object.clone()
            }
            None => {
                let mut object = state.history.seen.remove(&key).expect("seen before");
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                object
            }
        };
        let history = &mut state.history;
        history.events.push_back(Event {
            rv,
            resource,
            kind,
            object,
        });
        while history.events.len() > KEPT {
            let event = history.events.pop_front().expect("not empty");
            history.expired = event.rv;
        }
    }
    state.history.changed.notify_all();
}

fn selected(object: &Value, labels: &str, fields: &str) -> bool {
    super::matches(object, labels)
        && fields.split(',').filter(|s| !s.is_empty()).all(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(k, "metadata.name", "the only field selector served");
            object["metadata"]["name"].as_str() == Some(v)
        })
}

fn chunk(event: &Value) -> String {
    let line = format!("{event}\n");
    format!("{:x}\r\n{line}\r\n", line.len())
}

/// Streams the watch the request asks for on `stream`, then closes it.
pub(super) fn serve(
    mut stream: TcpStream,
    shared: &Mutex<State>,
    resource: &str,
    query: &std::collections::HashMap<String, String>,
) {
    let resource: &'static str = match resource {
        "jobs" => "jobs",
        "pods" => "pods",
        other => panic!("no watch of {other} is served"),
    };
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let from: Option<u64> = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut state = shared.lock().unwrap();
    state.history.watches += 1;
    let generation = state.history.generation;
    let mut out = String::new();
    let mut last = match from {
        Some(n) if n < state.history.expired => {
            state.history.gone += 1;
            let by_status = state.history.gone_by_status;
            drop(state);
            let gone = json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {n}")});
            let answer = if by_status {
                let text = gone.to_string();
                format!(
                    "HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
            } else {
                let event = json!({"type": "ERROR", "object": gone});
                format!("{head}{}0\r\n\r\n", chunk(&event))
            };
            let _ = stream.write_all(answer.as_bytes());
            return;
        }
        Some(n) => n,
        None => {
            let store = if resource == "jobs" {
                &state.jobs
            } else {
                &state.pods
            };
            for object in store.values().filter(|o| selected(o, &labels, &fields)) {
                out.push_str(&chunk(&json!({"type": "ADDED", "object": object})));
            }
            state.rv
        }
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    loop {
        if state.history.generation != generation {
            state.history.dropped += 1;
            drop(state);
            // Half an event, then the connection closes.
            let _ = stream.write_all(format!("{out}40\r\n{{\"type\":").as_bytes());
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let from = last;
        // Events are in version order: start after the last one sent, not from the oldest.
        let start = state.history.events.partition_point(|e| e.rv <= from);
        for event in state.history.events.range(start..) {
            last = event.rv;
            if event.resource == resource && selected(&event.object, &labels, &fields) {
                out.push_str(&chunk(&json!({"type": event.kind, "object": event.object})));
            }
        }
        last = last.max(state.rv);
        let now = Instant::now();
        if now >= deadline {
            drop(state);
            let _ = stream.write_all(format!("{out}0\r\n\r\n").as_bytes());
            return;
        }
        if !out.is_empty() {
            drop(state);
            if stream.write_all(out.as_bytes()).is_err() {
                return;
            }
            out.clear();
            state = shared.lock().unwrap();
        }
        let changed = state.history.changed.clone();
        state = changed
            .wait_timeout(state, (deadline - now).min(Duration::from_secs(1)))
            .unwrap()
            .0;
    }
}
