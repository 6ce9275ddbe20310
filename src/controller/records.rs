//! A cluster's records as they are on disk, damaged or not, and the in-memory index of the
//! documents the API lists.
//!
//! Every cluster on record is shown, whatever state its files are in: an intent that cannot be
//! read makes the cluster `damaged` (which file, and why) until a PUT or DELETE replaces it;
//! an outcome that cannot be read is taken as "not settled", reported, and the operation runs
//! again to write a good one.
//!
//! The index holds each cluster's document as it was when its records last changed. Only an
//! operation changes a cluster's journal, so a cluster with no operation running is listed
//! from the index; one that runs is read again from its files (at most `concurrency` of them).
//! Whoever writes a record (the API its intent, the reconciler its outcome) refreshes the
//! index after the write; the index is rebuilt from disk at start-up.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::base::json;
use crate::controller::cluster::{Cluster, Damage, Document, Intent, Kind, Outcome, Phase};
use crate::workflow::file::Workflow;

/// A cluster's intent and outcome as read from disk.
#[derive(Debug, Clone)]
pub struct Record {
    pub intent: Result<Option<Intent>, Damage>,
    pub outcome: Result<Option<Outcome>, Damage>,
}

impl Record {
    pub fn read(cluster: &Cluster) -> Record {
        Record {
            intent: read(&cluster.intent_path()),
            outcome: read(&cluster.outcome_path()),
        }
    }

    /// The intent, when it can be read.
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref().ok().and_then(Option::as_ref)
    }

    /// The outcome; a damaged one counts as none (nothing is settled).
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref().ok().and_then(Option::as_ref)
    }

    /// The damage to report: the intent's first, then the outcome's.
    pub fn damage(&self) -> Option<&Damage> {
        self.intent.as_ref().err().or(self.outcome.as_ref().err())
    }

    /// The highest generation the records name.
    pub fn generation(&self) -> u64 {
        let intent = self.intent().map_or(0, |i| i.generation);
        let outcome = self.outcome().map_or(0, |o| o.generation);
        intent.max(outcome)
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Damage> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match json::read(path) {
        Ok(value) => Ok(value),
        Err(json::ReadError::Corrupt(e)) => Err(Damage {
            file,
            error: format!(
                "not a valid record ({}); a PUT or DELETE replaces it",
                unquoted(&e.to_string())
            ),
        }),
        Err(json::ReadError::Io(e)) => Err(Damage {
            file,
            error: format!("cannot be read: {e}"),
        }),
    }
}

/// A fresh intent uid: 64 random bits, in hex.
pub fn new_uid() -> String {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Unique enough within one root: the time to the nanosecond and this process.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (nanos ^ u64::from(std::process::id()).rotate_left(40)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The params of the cluster's last operation (its `params.json`), for a cluster whose intent
/// cannot be read; at least its id.
pub fn last_params(cluster: &Cluster) -> Map<String, Value> {
    let mut params: Map<String, Value> = json::read(&cluster.params_path())
        .ok()
        .flatten()
        .unwrap_or_default();
    params
        .entry("cluster_id")
        .or_insert_with(|| Value::String(cluster.id.clone()));
    params
}

/// Which directory `dir` is (device and inode), to tell it from one created again at its path.
pub fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Removes everything in the cluster's directory but its intent (and an intent being
/// written), then the directory itself if that leaves it empty: for an operation whose
/// directory was removed under it, all the rest is what it wrote afterwards.
pub fn clear_debris(cluster: &Cluster) {
    let Ok(entries) = std::fs::read_dir(&cluster.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "intent.json" || name.starts_with(".intent.json") {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(cluster = %cluster.id, "cannot remove {}: {e}", path.display());
        }
    }
    // Fails, as it should, when an intent is there.
    let _ = std::fs::remove_dir(&cluster.dir);
}

/// A parser's message without what it quotes: the value it stumbled on may be a secret, and
/// the record it came from is too damaged to say which values are.
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"' | '`', false) => {
                quoted = true;
                out.push_str("\"…\"");
            }
            ('"' | '`', true) => quoted = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// The document of a cluster on record, whatever state its records are in.
pub fn document(
    cluster: &Cluster,
    workflow: &Workflow,
    record: &Record,
    running: Option<Kind>,
) -> Document {
    if let Some(intent) = record.intent() {
        let mut document = cluster.document(workflow, intent, running);
        document.damage = record.damage().cloned();
        return document;
    }
    // The intent is lost: shown with what the other records still say.
    let outcome = record.outcome();
    let stand_in = Intent {
        generation: record.generation(),
        present: outcome.is_none_or(|o| o.kind == Kind::Apply),
        params: last_params(cluster),
        created_at: String::new(),
        updated_at: String::new(),
        uid: String::new(),
        plan_id: None,
        code: None,
    };
    let mut document = cluster.document(workflow, &stand_in, running);
    document.phase = Phase::Damaged;
    document.damage = Some(record.damage().cloned().unwrap_or_else(|| Damage {
        file: "intent.json".to_string(),
        error: "missing; a PUT or DELETE replaces it".to_string(),
    }));
    document
}

/// The phase of a cluster, from its records and what runs on it.
pub fn phase(record: &Record, running: Option<Kind>) -> Phase {
    match record.intent() {
        Some(intent) => Phase::of(intent, record.outcome(), running),
        None => Phase::Damaged,
    }
}

struct Entry {
    record: Record,
    document: Arc<Document>,
    /// When the cluster was found destroyed: its outcome's modification time.
    destroyed_at: Option<SystemTime>,
}

/// The documents of every cluster on record, by id.
#[derive(Default)]
pub struct Index {
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Held from reading a cluster's records to keeping them: two refreshes of one cluster
    /// never keep the older read last.
    refreshing: std::sync::Mutex<()>,
    /// The highest generation ever seen of each id in this process, even if its directory is
    /// gone since: a new intent starts above it.
    seen: RwLock<HashMap<String, u64>>,
}

impl Index {
    /// Reads `cluster`'s records again and keeps its document; forgets it when it is no
    /// longer on record. Returns the document, if on record.
    pub fn refresh(&self, cluster: &Cluster, workflow: &Workflow) -> Option<Arc<Document>> {
        let _refreshing = self.refreshing.lock().expect("index lock");
        if !cluster.on_record() {
            self.remove(&cluster.id);
            return None;
        }
        let record = Record::read(cluster);
        let document = Arc::new(document(cluster, workflow, &record, None));
        let destroyed_at = (document.phase == Phase::Destroyed)
            .then(|| std::fs::metadata(cluster.outcome_path()).and_then(|m| m.modified()))
            .and_then(Result::ok);
        let generation = record.generation();
        let mut seen = self.seen.write().expect("index lock");
        let highest = seen.entry(cluster.id.clone()).or_default();
        *highest = (*highest).max(generation);
        drop(seen);
        self.entries.write().expect("index lock").insert(
            cluster.id.clone(),
            Entry {
                record,
                document: document.clone(),
                destroyed_at,
            },
        );
        Some(document)
    }

    pub fn remove(&self, id: &str) {
        self.entries.write().expect("index lock").remove(id);
    }

    /// Forgets `id` altogether, generations too: its directory was purged, and a new cluster
    /// of that id starts afresh (its new uid keeps it apart from anything before).
    pub fn purge(&self, id: &str) {
        let _refreshing = self.refreshing.lock().expect("index lock");
        self.remove(id);
        self.seen.write().expect("index lock").remove(id);
    }

    /// The highest generation seen of `id`, on record or not.
    pub fn seen(&self, id: &str) -> u64 {
        let seen = self.seen.read().expect("index lock");
        seen.get(id).copied().unwrap_or(0)
    }

    /// The ids of the clusters in `phase`, as last recorded.
    pub fn ids(&self, phase: Phase) -> Vec<String> {
        let entries = self.entries.read().expect("index lock");
        entries
            .iter()
            .filter(|(_, e)| e.document.phase == phase)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many clusters the last drift check found drifted.
    pub fn drifted(&self) -> usize {
        let entries = self.entries.read().expect("index lock");
        entries
            .values()
            .filter(|e| e.document.drift.as_ref().is_some_and(|d| d.drifted))
            .count()
    }

    /// How many clusters run each code identity (`unknown`: none recorded).
    pub fn codes(&self) -> BTreeMap<String, usize> {
        let entries = self.entries.read().expect("index lock");
        let mut codes = BTreeMap::new();
        for entry in entries.values() {
            let code = entry.document.code.applied.clone();
            *codes
                .entry(code.unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        }
        codes
    }

    /// How many clusters have a record that cannot be read.
    pub fn damaged(&self) -> usize {
        let entries = self.entries.read().expect("index lock");
        entries
            .values()
            .filter(|e| e.record.damage().is_some())
            .count()
    }

    /// The documents to list: those in `phase` if given, with `running` (what runs now, by
    /// cluster) read again from their files.
    pub fn list(
        &self,
        root: &Path,
        workflow: &Workflow,
        phase: Option<Phase>,
        running: &HashMap<String, Kind>,
    ) -> Vec<Arc<Document>> {
        let mut shown = Vec::new();
        let mut live = Vec::new();
        {
            let entries = self.entries.read().expect("index lock");
            for (id, entry) in entries.iter() {
                let now = running.get(id).copied();
                let current = match now {
                    None => entry.document.phase,
                    Some(_) => self::phase(&entry.record, now),
                };
                if phase.is_some_and(|p| p != current) {
                    continue;
                }
                match now {
                    None => shown.push(entry.document.clone()),
                    Some(kind) => {
                        live.push((shown.len(), id.clone(), kind));
                        shown.push(entry.document.clone());
                    }
                }
            }
        }
        // Read outside the lock: the journal of a running operation changes as it goes.
        for (at, id, kind) in live {
            let cluster = Cluster::new(root, &id);
            let record = Record::read(&cluster);
            shown[at] = Arc::new(document(&cluster, workflow, &record, Some(kind)));
        }
        shown
    }

    /// The ids of clusters destroyed before `before`.
    pub fn destroyed_before(&self, before: SystemTime) -> Vec<String> {
        let entries = self.entries.read().expect("index lock");
        entries
            .iter()
            .filter(|(_, e)| e.destroyed_at.is_some_and(|t| t < before))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// At most this much of a log's end is read, whatever its lines.
const MAX_TAIL_BYTES: u64 = 16 * 1024 * 1024;

/// The last `max_lines` lines of the file at `path` (none when it does not exist), read from
/// its end: a long log costs what is answered, not its size.
pub fn tail(path: &Path, max_lines: usize) -> std::io::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = file.seek(SeekFrom::End(0))?;
    let floor = size.saturating_sub(MAX_TAIL_BYTES);
    let mut start = size;
    let mut buffer: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 * 1024;
    // Back a chunk at a time until the part read holds one line more than is answered (its
    // first line may be cut), or the file's start (or the byte limit) is reached.
    while start > floor {
        let from = start.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buffer);
        buffer = chunk;
        start = from;
        let body = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        if memchr::memchr_iter(b'\n', body).count() > max_lines {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buffer);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // Cut by where reading began, unless a newline was just before it.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(max_lines);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_damaged_records_message_quotes_no_value() {
        let e = serde_json::from_str::<u64>(r#""hunter2-secret""#).unwrap_err();
        let shown = super::unquoted(&e.to_string());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("line 1 column"), "{shown}");
    }

    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_whatever_the_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert!(tail(&path, 3).unwrap().is_empty());
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        for n in [1, 3, 10_000, 49_999, 50_000, 60_000] {
            let got = tail(&path, n).unwrap();
            let want: Vec<String> = (0..50_000)
                .skip(50_000usize.saturating_sub(n))
                .map(|i| format!("line {i}"))
                .collect();
            assert_eq!(got, want, "{n}");
        }
        std::fs::write(&path, "a\nb").unwrap();
        assert_eq!(tail(&path, 1).unwrap(), ["b"]);
        assert_eq!(tail(&path, 5).unwrap(), ["a", "b"]);
    }
}
