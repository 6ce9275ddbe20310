//! One tenant's cluster as the controller keeps it: its intent (present with these params,
//! or absent), the outcome of the last operation, and the document the API answers with,
//! read from those files and from the cluster's own journal.
//!
//! Layout: `<root>/clusters/<id>/{intent.json,outcome.json,params.json,operation.log}`, and
//! the engine's own root (code, `.bootstrapper/` journal and lock) in its `engine/`: apart,
//! so that neither's clean-up of torn temp files can touch the other's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::base::durable;
use crate::base::error::Problems;
use crate::base::json;
use crate::base::secrets::Redactor;
use crate::root::journal::{Journal, STATE_DIR};
use crate::workflow::file::Workflow;
use crate::workflow::load::Loaded;

/// Intent and params hold secrets: owner-only.
const FILE_MODE: u32 = 0o600;
/// The engine's root, in the cluster's directory.
pub const ENGINE_DIR: &str = "engine";
/// The files the controller keeps in a cluster's directory (and their temp files beside);
/// the paths below name each.
pub const CONTROLLER_FILES: [&str; 12] = [
    "intent.json",
    "outcome.json",
    "params.json",
    "operation.log",
    "plan.json",
    "plan-params.json",
    "plan-request.json",
    "plan.log",
    "drift.json",
    "waiting.json",
    crate::controller::job_result::RESULT_FILE,
    crate::controller::job_result::DIFF_FILE,
];
/// A cluster id is a DNS-1123 label, kept short enough to be part of other resources' names.
pub const MAX_ID_LEN: usize = 40;

/// What the tenant asked for, written before the request is answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Raised on every change, so an outcome says which intent it achieved.
    pub generation: u64,
    pub present: bool,
    pub params: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Drawn when the cluster is created (or its damaged intent replaced), so an outcome
    /// names the intent it belongs to, not only a generation (see [`Outcome::settles`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The plan (`POST /v1/clusters/{id}/plan`) to apply exactly, with `run --reviewed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// Other code to move the cluster to before it applies: an upgrade or a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::controller::code::CodeChoice>,
}

/// What an operation kind does to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Apply,
    Destroy,
    /// A `diff`: what an apply would change; it changes nothing.
    Plan,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Apply => "apply",
            Kind::Destroy => "destroy",
            Kind::Plan => "plan",
        }
    }

    /// The operation that makes a cluster match its intent.
    pub fn for_intent(intent: &Intent) -> Kind {
        if intent.present {
            Kind::Apply
        } else {
            Kind::Destroy
        }
    }
}

/// How the last finished operation ended. An interrupted one leaves no outcome: it is
/// simply not done, and runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ended {
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub generation: u64,
    pub kind: Kind,
    pub result: Ended,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    /// The `uid` of the intent the operation was started for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent_uid: String,
}

impl Outcome {
    /// Whether this outcome settles `intent`: the same generation, the operation it needs,
    /// and an end (a failure is an end too, until the next request).
    // A generation alone cannot tell two intents apart: a cluster's directory removed while an
    // operation runs lets the next PUT start again from nothing, and the old operation's end
    // would then settle the new intent. The uid, drawn afresh for every intent that is not a
    // change of the one before, can: an outcome of another intent settles nothing.
    pub fn settles(&self, intent: &Intent) -> bool {
        self.generation == intent.generation
            && self.kind == Kind::for_intent(intent)
            && self.intent_uid == intent.uid
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Applying,
    Ready,
    Failed,
    Destroying,
    Destroyed,
    /// A record of the cluster cannot be read: `damage` says which and why. A PUT or DELETE
    /// replaces it.
    Damaged,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Applying,
        Phase::Ready,
        Phase::Failed,
        Phase::Destroying,
        Phase::Destroyed,
        Phase::Damaged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Applying => "applying",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
            Phase::Destroying => "destroying",
            Phase::Destroyed => "destroyed",
            Phase::Damaged => "damaged",
        }
    }

    /// Where a cluster stands, from its intent, its last outcome and what runs now.
    pub fn of(intent: &Intent, outcome: Option<&Outcome>, running: Option<Kind>) -> Phase {
        match running {
            Some(Kind::Apply) => return Phase::Applying,
            Some(Kind::Destroy) => return Phase::Destroying,
            // A plan changes nothing: the cluster stands where its last apply or destroy left it.
            Some(Kind::Plan) | None => {}
        }
        match outcome.filter(|o| o.settles(intent)) {
            Some(o) if o.result == Ended::Failed => Phase::Failed,
            Some(_) if intent.present => Phase::Ready,
            Some(_) => Phase::Destroyed,
            None => Phase::Pending,
        }
    }
}

/// Whether `id` is a DNS-1123 label of at most [`MAX_ID_LEN`] characters.
pub fn check_id(id: &str) -> std::result::Result<(), String> {
    let valid_chars = id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if id.is_empty() || id.len() > MAX_ID_LEN || !valid_chars {
        return Err(format!(
            "cluster id {id:?} must be 1 to {MAX_ID_LEN} lowercase letters, digits and '-'"
        ));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(format!(
            "cluster id {id:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Where the controller keeps one cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: String,
    pub dir: PathBuf,
}

impl Cluster {
    pub fn new(root: &Path, id: &str) -> Self {
        Cluster {
            id: id.to_string(),
            dir: clusters_dir(root).join(id),
        }
    }

    pub fn intent_path(&self) -> PathBuf {
        self.dir.join("intent.json")
    }

    pub fn outcome_path(&self) -> PathBuf {
        self.dir.join("outcome.json")
    }

    pub fn params_path(&self) -> PathBuf {
        self.dir.join("params.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("operation.log")
    }

    /// The last plan's result (see [`crate::controller::plan`]).
    pub fn plan_path(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    /// The params a plan runs with: the intent's, or those a preview asked for.
    /// The params of a preview, as asked for; copied to [`Self::plan_params_path`] when the
    /// plan starts.
    pub fn plan_request_path(&self) -> PathBuf {
        self.dir.join("plan-request.json")
    }

    pub fn plan_params_path(&self) -> PathBuf {
        self.dir.join("plan-params.json")
    }

    /// A plan's output: apart from the apply's and destroy's, which it must not replace.
    pub fn plan_log_path(&self) -> PathBuf {
        self.dir.join("plan.log")
    }

    pub fn drift_path(&self) -> PathBuf {
        self.dir.join("drift.json")
    }

    pub fn waiting_path(&self) -> PathBuf {
        self.dir.join("waiting.json")
    }

    /// Says why the operation the cluster needs has not started (`None`: it has).
    pub fn set_waiting(&self, why: Option<&str>) -> std::io::Result<()> {
        match why {
            Some(why) => write_json(&self.waiting_path(), &why),
            None => durable::remove(&self.waiting_path()),
        }
    }

    /// The root of the cluster's engine: `engine/`, or, for a cluster an older version left
    /// with its engine in the cluster's directory itself and not moved yet (see
    /// [`crate::controller::layout`]), that directory.
    pub fn engine_root(&self) -> PathBuf {
        if self.dir.join(STATE_DIR).is_dir() {
            self.dir.clone()
        } else {
            self.dir.join(ENGINE_DIR)
        }
    }

    pub fn journal(&self) -> Journal {
        Journal::at(&self.engine_root())
    }

    /// Whether the cluster is on record: any of its records, or the engine's journal, is
    /// there. One whose intent is lost is on record still, and shown as damaged.
    pub fn on_record(&self) -> bool {
        [self.intent_path(), self.outcome_path(), self.params_path()]
            .iter()
            .any(|p| p.symlink_metadata().is_ok())
            || self.journal().dir().exists()
    }

    pub fn intent(&self) -> std::io::Result<Option<Intent>> {
        read_json(&self.intent_path())
    }

    pub fn outcome(&self) -> std::io::Result<Option<Outcome>> {
        read_json(&self.outcome_path())
    }

    pub fn write_intent(&self, intent: &Intent) -> std::io::Result<()> {
        let clusters = self.dir.parent().expect("under clusters/");
        let created = !self.dir.is_dir();
        let written = (|| {
            if created {
                std::fs::create_dir_all(&self.dir)?;
                durable::sync_dir(clusters)?;
            }
            write_json(&self.intent_path(), intent)
        })();
        if written.is_err() && created {
            // A refused request leaves nothing behind (the disk full, say): an empty directory
            // would be a cluster id taken by nothing.
            if std::fs::remove_dir(&self.dir).is_ok() {
                let _ = durable::sync_dir(clusters);
            }
        }
        written
    }

    pub fn write_outcome(&self, outcome: &Outcome) -> std::io::Result<()> {
        write_json(&self.outcome_path(), outcome)
    }

    /// The params file the engine reads, from the intent it is to achieve.
    pub fn write_params(&self, params: &Map<String, Value>) -> std::io::Result<()> {
        write_json(&self.params_path(), params)
    }

    /// The workflow with this cluster's params, as the engine sees it.
    pub fn loaded(&self, workflow: &Workflow, params: &Map<String, Value>) -> Loaded {
        loaded(workflow, params)
    }
}

/// A workflow with `params` and the controller's environment, ready to check or render.
pub fn loaded(workflow: &Workflow, params: &Map<String, Value>) -> Loaded {
    let params = Value::Object(params.clone());
    let env: Vec<(String, String)> = std::env::vars().collect();
    let redactor = Redactor::from_inputs(&params, &env);
    Loaded {
        workflow: workflow.clone(),
        params,
        env,
        redactor,
    }
}

/// Checks a request's params against the tenant workflow with the engine's own checks (every
/// template renders, with placeholders for outputs not known yet; every rendered tfvars file
/// parses and fits its module's variables, their types and simple validations), and that
/// some template reads each param, before anything is kept.
pub fn check_params(
    workflow: &Workflow,
    params: &Map<String, Value>,
) -> std::result::Result<(), Problems> {
    let params = Value::Object(params.clone());
    let env: Vec<(String, String)> = std::env::vars().collect();
    // A param no template reads is a typo, or meant for another workflow; `cluster_id` is
    // the controller's own.
    let renderer = crate::workflow::render::Renderer::new(workflow, &params, &env);
    let mut problems = crate::workflow::reads::unread(&renderer, &params, &["cluster_id"]);
    if let Err(p) = crate::workflow::load::check_inputs(workflow.clone(), params, env, None) {
        problems.extend(p);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A step as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepDocument {
    pub name: String,
    /// pending, running, done, failed, changed or destroyed
    pub state: String,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
}

/// A cluster as the API shows it, secrets masked.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Document {
    pub id: String,
    pub phase: Phase,
    /// Raised by every request that changed the intent.
    pub generation: u64,
    /// Whether the cluster is meant to exist.
    pub present: bool,
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub steps: Vec<StepDocument>,
    /// The steps' non-sensitive outputs, by step and output name.
    #[schema(value_type = Object)]
    pub outputs: Map<String, Value>,
    /// `<step>.<output>` of each output a Job's result had no room for (`--executor
    /// kubernetes`), with the engine's note on where to read them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs_left_out: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs_note: Option<String>,
    pub last_error: Option<String>,
    /// How the last finished operation ended.
    pub last_operation: Option<Outcome>,
    /// Why the operation the cluster needs has not started, while it waits: a Job refused
    /// by a ResourceQuota, with the API's message (kubernetes executor).
    pub waiting: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The record that cannot be read, if any.
    pub damage: Option<Damage>,
    /// What the last drift check found (`serve --drift-interval`).
    pub drift: Option<Drift>,
    /// Which code the cluster runs, and whether it is the current.
    pub code: crate::controller::code::CodeDocument,
}

/// A resource that would change, as a drift record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriftedResource {
    pub step: String,
    pub address: String,
    /// create, update, replace or delete (to bring it back to the code), or, with
    /// `outside: true`, what changed outside terraform.
    pub action: String,
    #[serde(default)]
    pub outside: bool,
}

/// What the last drift check of a cluster found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Drift {
    pub checked_at: String,
    /// Whether an apply would change anything now.
    pub drifted: bool,
    pub resources: Vec<DriftedResource>,
    /// The plan that found it: a PUT of the same params with this `plan_id` corrects it.
    pub plan_id: Option<String>,
    /// Why the last check failed, if it did (`drifted` and `resources` are then the check's
    /// before).
    pub error: Option<String>,
}

impl Drift {
    pub fn read(cluster: &Cluster) -> Option<Drift> {
        json::read(&cluster.drift_path()).ok().flatten()
    }

    pub fn write(&self, cluster: &Cluster) -> std::io::Result<()> {
        write_json(&cluster.drift_path(), self)
    }
}

/// A record of a cluster that cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Damage {
    /// The file, relative to the cluster's directory: `intent.json` or `outcome.json`.
    pub file: String,
    pub error: String,
}

impl Cluster {
    /// The document of a cluster whose intent is `intent`, with what runs on it now.
    pub fn document(
        &self,
        workflow: &Workflow,
        intent: &Intent,
        running: Option<Kind>,
    ) -> Document {
        let loaded = self.loaded(workflow, &intent.params);
        let outcome = self.outcome().unwrap_or_else(|e| {
            tracing::warn!(cluster = %self.id, "{e}");
            None
        });
        let phase = Phase::of(intent, outcome.as_ref(), running);
        let mut last_error = outcome
            .as_ref()
            .filter(|o| o.settles(intent) && running.is_none())
            .and_then(|o| o.error.clone());
        let mut steps = Vec::new();
        let mut outputs = Map::new();
        match crate::engine::status::collect(&loaded, &self.engine_root()) {
            Ok(report) => {
                for row in report.steps {
                    steps.push(StepDocument {
                        state: serde_json::to_value(row.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        name: row.step,
                        attempts: row.attempts,
                        started_at: row.started_at,
                        finished_at: row.finished_at,
                        last_error: row.last_error,
                    });
                }
            }
            Err(e) => last_error = last_error.or(Some(e.to_string())),
        }
        let journal = self.journal();
        for step in &workflow.steps {
            if let Ok(Some(marker)) = journal.marker(&step.name) {
                let shown: Map<String, Value> = marker
                    .outputs
                    .into_iter()
                    .filter(|(name, _)| !marker.sensitive.contains(name))
                    .collect();
                outputs.insert(step.name.clone(), Value::Object(shown));
            }
        }
        // A Job's journal stays in its pod: its result says what the journal would.
        let kept = crate::controller::job_result::read(&self.dir);
        let (mut outputs_left_out, mut outputs_note) = (Vec::new(), None);
        if let Some(kept) = kept {
            steps = kept
                .steps
                .into_iter()
                .map(|s| StepDocument {
                    name: s.name,
                    state: s.state,
                    attempts: s.attempts,
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    last_error: s.last_error,
                })
                .collect();
            outputs = kept.outputs;
            outputs_left_out = kept.outputs_left_out;
            outputs_note = kept.note;
        }
        let mut document = Document {
            id: self.id.clone(),
            phase,
            generation: intent.generation,
            present: intent.present,
            params: intent.params.clone(),
            steps,
            outputs,
            outputs_left_out,
            outputs_note,
            last_error,
            last_operation: outcome,
            waiting: json::read(&self.waiting_path()).ok().flatten(),
            created_at: intent.created_at.clone(),
            updated_at: intent.updated_at.clone(),
            damage: None,
            drift: Drift::read(self),
            code: crate::controller::code::document(&self.journal(), &self.dir),
        };
        mask_document(&loaded.redactor, &mut document);
        document
    }
}

/// Masks the document's params and each step's outputs by their structure (a value under a
/// secret-sounding name, a value equal to a secret: [`Redactor::mask_json`]), and every secret
/// the cluster's params and the environment hold in its texts.
fn mask_document(redactor: &Redactor, document: &mut Document) {
    let mut params = Value::Object(std::mem::take(&mut document.params));
    redactor.mask_json(&mut params);
    if let Value::Object(params) = params {
        document.params = params;
    }
    // By step: a step's name is no output's, and says nothing of its values.
    for outputs in document.outputs.values_mut() {
        redactor.mask_json(outputs);
    }
    let mask = |text: &mut Option<String>| {
        if let Some(t) = text {
            *t = redactor.mask(t).into_owned();
        }
    };
    mask(&mut document.last_error);
    for step in &mut document.steps {
        mask(&mut step.last_error);
    }
    if let Some(op) = &mut document.last_operation {
        mask(&mut op.error);
    }
}

pub fn clusters_dir(root: &Path) -> PathBuf {
    root.join("clusters")
}

/// Every cluster id on record under the root (see [`Cluster::on_record`]), sorted.
pub fn list(root: &Path) -> std::io::Result<Vec<String>> {
    let mut ids = Vec::new();
    let entries = match std::fs::read_dir(clusters_dir(root)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if check_id(&name).is_ok() && Cluster::new(root, &name).on_record() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    json::read(path).map_err(|e| match e {
        json::ReadError::Io(e) => e,
        json::ReadError::Corrupt(e) => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        ),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    json::write(path, value, FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(generation: u64, present: bool) -> Intent {
        Intent {
            generation,
            present,
            params: Map::new(),
            created_at: String::new(),
            updated_at: String::new(),
            uid: String::new(),
            plan_id: None,
            code: None,
        }
    }

    fn outcome(generation: u64, kind: Kind, result: Ended) -> Outcome {
        Outcome {
            generation,
            kind,
            result,
            error: None,
            started_at: String::new(),
            finished_at: String::new(),
            intent_uid: String::new(),
        }
    }

    #[test]
    fn ids_are_short_dns_labels() {
        for good in ["a", "c1", "tenant-42", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(check_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "..",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_phase_follows_intent_outcome_and_what_runs() {
        let ok = Ended::Succeeded;
        assert_eq!(Phase::of(&intent(1, true), None, None), Phase::Pending);
        let applied = outcome(1, Kind::Apply, ok);
        assert_eq!(
            Phase::of(&intent(1, true), Some(&applied), None),
            Phase::Ready
        );
        // New params: the old outcome no longer settles it.
        assert_eq!(
            Phase::of(&intent(2, true), Some(&applied), None),
            Phase::Pending
        );
        assert_eq!(
            Phase::of(&intent(2, false), Some(&applied), Some(Kind::Apply)),
            Phase::Applying
        );
        let destroyed = outcome(2, Kind::Destroy, ok);
        assert_eq!(
            Phase::of(&intent(2, false), Some(&destroyed), None),
            Phase::Destroyed
        );
        let failed = outcome(3, Kind::Apply, Ended::Failed);
        assert_eq!(
            Phase::of(&intent(3, true), Some(&failed), None),
            Phase::Failed
        );
        // The same generation of another intent (the cluster created again meanwhile).
        let mut other = intent(3, true);
        other.uid = "b2".to_string();
        assert_eq!(Phase::of(&other, Some(&failed), None), Phase::Pending);
    }
}
