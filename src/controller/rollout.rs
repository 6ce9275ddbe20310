//! Rollouts: moving many clusters to the code this controller ships, a few at a time —
//! canaries first, at most `max_parallel` upgrades at once, halting by itself when more than
//! `max_failures` fail — as StackSets move stacks.
//!
//! A rollout is a file, `<root>/rollouts/<id>.json`, holding its settings and every selected
//! cluster's part in it, written crash-safely when the rollout is created and before each
//! upgrade starts. An upgrade is an intent like a tenant's own (a new generation with
//! `code: current`); the part records that generation and the intent's uid before the intent
//! is written, so a controller killed at any point finds on start-up which upgrades it
//! started, which it must still start, and which a tenant's own PUT or DELETE took over:
//! nothing is upgraded twice, nothing skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::controller::cluster::{self, Cluster, Intent, Phase};
use crate::controller::code::{self, CodeChoice};
use crate::controller::reconcile::Reconciler;
use crate::controller::records::{self, Record};
use crate::controller::rollout_plan::{self, Review, Summary};

/// How often the running rollout looks at its clusters.
pub const EVERY: Duration = Duration::from_millis(200);
/// The most upgrades a rollout may run at once, and canaries it may name.
const MAX_PARALLEL: u32 = 1000;

/// Which clusters a rollout takes: the outdated ones that match every field given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Only these cluster ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Only the clusters whose params have these values.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
}

/// `POST /v1/rollouts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostRollout {
    /// Default: every outdated cluster.
    #[serde(default)]
    pub selector: Selector,
    /// How many clusters are upgraded first, alone; the rest start only when all of them
    /// are ready.
    #[serde(default)]
    pub canary: u32,
    /// The most upgrades at once (at least 1).
    pub max_parallel: u32,
    /// More failed upgrades than this halt the rollout.
    #[serde(default)]
    pub max_failures: u32,
    /// Plan every selected cluster first, and wait for `POST /v1/rollouts/{id}/approve`.
    #[serde(default)]
    pub plan_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Running,
    Paused,
    /// More than `max_failures` upgrades failed (or a canary did): nothing new starts until
    /// a resume, which tries the failed clusters again.
    Halted,
    Done,
    Cancelled,
    AwaitingApproval,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Halted => "halted",
            RolloutPhase::Done => "done",
            RolloutPhase::Cancelled => "cancelled",
            RolloutPhase::AwaitingApproval => "awaiting_approval",
        }
    }

    /// Whether the rollout still holds the fleet: no other may start.
    pub fn active(self) -> bool {
        !matches!(self, RolloutPhase::Done | RolloutPhase::Cancelled)
    }
}

/// Where one cluster stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    Waiting,
    Upgrading,
    Upgraded,
    Failed,
    /// The tenant's own PUT or DELETE came while its upgrade ran, and won.
    Superseded,
    /// Not upgraded: deleted, failed or damaged when its turn came.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub state: PartState,
    #[serde(default)]
    pub canary: bool,
    /// The generation and uid of the upgrade's intent, recorded before it is written.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// With `plan_first`: the plan of the image's code asked for, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
}

/// A rollout as it is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub phase: RolloutPhase,
    pub selector: Selector,
    pub canary: u32,
    pub max_parallel: u32,
    pub max_failures: u32,
    pub plan_first: bool,
    /// The code the clusters move to.
    pub target: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub clusters: BTreeMap<String, Part>,
}

/// A rollout as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutDocument {
    pub id: String,
    pub phase: RolloutPhase,
    pub selector: Selector,
    pub canary: u32,
    pub max_parallel: u32,
    pub max_failures: u32,
    pub plan_first: bool,
    pub target: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// How many clusters are in each state (waiting, upgrading, upgraded, failed,
    /// superseded, skipped).
    pub counts: BTreeMap<String, usize>,
    /// The clusters in each state.
    pub clusters: BTreeMap<String, Vec<String>>,
    /// Why a cluster failed or was skipped, by cluster.
    pub notes: BTreeMap<String, String>,
    /// With `plan_first`: what the plans against the image's code found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

impl Rollout {
    fn document(&self) -> RolloutDocument {
        let mut counts = BTreeMap::new();
        let mut clusters: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut notes = BTreeMap::new();
        for (id, part) in &self.clusters {
            let state = state_name(part.state);
            *counts.entry(state.clone()).or_insert(0) += 1;
            clusters.entry(state).or_default().push(id.clone());
            if let Some(note) = &part.note {
                notes.insert(id.clone(), note.clone());
            }
        }
        RolloutDocument {
            id: self.id.clone(),
            phase: self.phase,
            selector: self.selector.clone(),
            canary: self.canary,
            max_parallel: self.max_parallel,
            max_failures: self.max_failures,
            plan_first: self.plan_first,
            target: self.target.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            counts,
            clusters,
            notes,
            summary: self.plan_first.then(|| {
                rollout_plan::summary(self.clusters.iter().map(|(id, p)| (id, p.review.as_ref())))
            }),
        }
    }

    fn count(&self, state: PartState) -> usize {
        self.clusters.values().filter(|p| p.state == state).count()
    }

    fn write(&mut self, root: &Path) -> std::io::Result<()> {
        self.updated_at = crate::base::clock::now_rfc3339();
        let dir = rollouts_dir(root);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            crate::base::durable::sync_dir(root)?;
        }
        crate::base::json::write(&path(root, &self.id), self, 0o600)
    }
}

fn state_name(state: PartState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn rollouts_dir(root: &Path) -> PathBuf {
    root.join("rollouts")
}

fn path(root: &Path, id: &str) -> PathBuf {
    rollouts_dir(root).join(format!("{id}.json"))
}

/// Every rollout on record; one that cannot be read is logged and left out.
fn all(root: &Path) -> Vec<Rollout> {
    let Ok(entries) = std::fs::read_dir(rollouts_dir(root)) else {
        return Vec::new();
    };
    let mut rollouts = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match crate::base::json::read::<Rollout>(&path) {
            Ok(Some(rollout)) => rollouts.push(rollout),
            Ok(None) => {}
            Err(e) => warn!("cannot read the rollout {}: {e:?}", path.display()),
        }
    }
    rollouts.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    rollouts
}

/// Why a rollout request is refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    NotFound(String),
    /// The rollout's phase (or another rollout) does not allow it now.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

fn read(root: &Path, id: &str) -> Result<Rollout, RolloutError> {
    let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
    let not_found = || RolloutError::NotFound(format!("no rollout `{id}`"));
    if !valid {
        return Err(not_found());
    }
    match crate::base::json::read::<Rollout>(&path(root, id)) {
        Ok(Some(rollout)) => Ok(rollout),
        Ok(None) => Err(not_found()),
        Err(e) => Err(RolloutError::Internal(format!(
            "cannot read the rollout `{id}`: {e:?}"
        ))),
    }
}

/// The document of the rollout `id`.
pub fn get(root: &Path, id: &str) -> Result<RolloutDocument, RolloutError> {
    read(root, id).map(|r| r.document())
}

/// Records a new rollout over the outdated clusters the selector takes; must be called with
/// the intent writes' lock held.
pub fn create(reconciler: &Reconciler, post: PostRollout) -> Result<RolloutDocument, RolloutError> {
    let bad = |m: String| Err(RolloutError::Bad(m));
    if post.max_parallel == 0 || post.max_parallel > MAX_PARALLEL {
        return bad(format!(
            "max_parallel is {}; it is 1 to {MAX_PARALLEL}",
            post.max_parallel
        ));
    }
    if post.canary > MAX_PARALLEL {
        return bad(format!(
            "canary is {}; it is at most {MAX_PARALLEL}",
            post.canary
        ));
    }
    if let Some(ids) = &post.selector.ids {
        if ids.is_empty() {
            return bad("selector.ids is empty; leave it out to take every cluster".to_string());
        }
        if let Some(e) = ids.iter().find_map(|id| cluster::check_id(id).err()) {
            return bad(format!("selector.ids: {e}"));
        }
    }
    let Some(target) = code::current() else {
        return Err(RolloutError::Conflict(
            "the tenant code's identity is unknown (see the controller's start-up log): there is nothing to roll out".to_string(),
        ));
    };
    let root = &reconciler.config.root;
    if let Some(active) = all(root).into_iter().find(|r| r.phase.active()) {
        return Err(RolloutError::Conflict(format!(
            "rollout `{}` is {}: at most one rollout runs at a time; wait for it, or DELETE /v1/rollouts/{} to cancel it",
            active.id,
            active.phase.as_str(),
            active.id
        )));
    }
    let mut clusters = BTreeMap::new();
    for id in cluster::list(root).map_err(|e| RolloutError::Internal(e.to_string()))? {
        if post
            .selector
            .ids
            .as_ref()
            .is_some_and(|ids| !ids.contains(&id))
        {
            continue;
        }
        let cluster = Cluster::new(root, &id);
        let Some(intent) = Record::read(&cluster).intent().cloned() else {
            continue;
        };
        let matches = post
            .selector
            .params
            .iter()
            .all(|(k, v)| intent.params.get(k) == Some(v));
        if !intent.present || !matches || !code::document(&cluster.journal(), &cluster.dir).outdated
        {
            continue;
        }
        let canary = (clusters.len() as u32) < post.canary;
        clusters.insert(
            id,
            Part {
                state: PartState::Waiting,
                canary,
                generation: 0,
                uid: String::new(),
                note: None,
                review: None,
            },
        );
    }
    let now = crate::base::clock::now_rfc3339();
    let mut rollout = Rollout {
        id: records::new_uid(),
        // Its plans are asked for by the first step.
        phase: if post.plan_first {
            RolloutPhase::AwaitingApproval
        } else {
            RolloutPhase::Running
        },
        selector: post.selector,
        canary: post.canary,
        max_parallel: post.max_parallel,
        max_failures: post.max_failures,
        plan_first: post.plan_first,
        target: Some(target),
        created_at: now.clone(),
        updated_at: now,
        clusters,
    };
    rollout
        .write(root)
        .map_err(|e| RolloutError::Internal(format!("cannot record the rollout: {e}")))?;
    info!(rollout = %rollout.id, "rollout created over {} outdated cluster(s)", rollout.clusters.len());
    Ok(rollout.document())
}

/// A move asked of a rollout.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Pause,
    Resume,
    Approve,
    Cancel,
}

/// Pauses, resumes, approves or cancels the rollout `id`; must be called with the intent
/// writes' lock held.
pub fn change(
    reconciler: &Reconciler,
    id: &str,
    action: Action,
) -> Result<RolloutDocument, RolloutError> {
    let root = &reconciler.config.root;
    let mut rollout = read(root, id)?;
    let phase = rollout.phase;
    let refuse = |what: &str| {
        Err(RolloutError::Conflict(format!(
            "rollout `{id}` is {}: it cannot be {what}",
            phase.as_str()
        )))
    };
    match (action, phase) {
        (Action::Pause, RolloutPhase::Running) => rollout.phase = RolloutPhase::Paused,
        (Action::Pause, _) => return refuse("paused"),
        (Action::Resume, RolloutPhase::Paused) => rollout.phase = RolloutPhase::Running,
        (Action::Resume, RolloutPhase::Halted) => {
            // The failed clusters are tried again: their tenants fixed or rolled them back.
            for part in rollout.clusters.values_mut() {
                if part.state == PartState::Failed {
                    part.state = PartState::Waiting;
                    part.note = None;
                }
            }
            rollout.phase = RolloutPhase::Running;
        }
        (Action::Resume, _) => return refuse("resumed"),
        (Action::Approve, RolloutPhase::AwaitingApproval) => {
            let planning = rollout
                .clusters
                .values()
                .filter(|p| p.state == PartState::Waiting)
                .filter(|p| !p.review.as_ref().is_some_and(Review::done))
                .count();
            if planning > 0 {
                return Err(RolloutError::Conflict(format!(
                    "rollout `{id}` still plans {planning} cluster(s): approve it once its summary shows none planning"
                )));
            }
            rollout.phase = RolloutPhase::Running
        }
        (Action::Approve, _) => return refuse("approved (only a rollout awaiting approval is)"),
        (Action::Cancel, p) if p.active() => rollout.phase = RolloutPhase::Cancelled,
        (Action::Cancel, _) => return refuse("cancelled"),
    }
    rollout
        .write(root)
        .map_err(|e| RolloutError::Internal(format!("cannot record the rollout: {e}")))?;
    info!(rollout = %id, "rollout {}", rollout.phase.as_str());
    set_metrics(reconciler, &rollout);
    Ok(rollout.document())
}

fn set_metrics(reconciler: &Reconciler, rollout: &Rollout) {
    reconciler.metrics.set_rollout(
        rollout.phase.as_str(),
        rollout.count(PartState::Upgraded),
        rollout.count(PartState::Failed),
        remaining(rollout),
    );
}

fn remaining(rollout: &Rollout) -> usize {
    rollout.count(PartState::Waiting) + rollout.count(PartState::Upgrading)
}

/// Moves every active rollout on (there is at most one); must be called with the intent
/// writes' lock held. Called every [`EVERY`] from start-up on, so a rollout a killed
/// controller left resumes.
pub fn step_all(reconciler: &Reconciler) {
    let root = reconciler.config.root.clone();
    for mut rollout in all(&root).into_iter().filter(|r| r.phase.active()) {
        step(reconciler, &root, &mut rollout);
    }
}

/// Follows the upgrades under way, then starts what the rollout's settings allow.
fn step(reconciler: &Reconciler, root: &Path, rollout: &mut Rollout) {
    let before = rollout.clone();
    let ids: Vec<String> = rollout.clusters.keys().cloned().collect();
    for id in &ids {
        let part = rollout.clusters.get_mut(id).expect("listed");
        if part.state == PartState::Upgrading {
            follow(reconciler, root, id, part);
        }
    }
    if rollout.phase == RolloutPhase::AwaitingApproval {
        for id in &ids {
            let part = rollout.clusters.get_mut(id).expect("listed");
            if part.state == PartState::Waiting {
                rollout_plan::follow(reconciler, root, id, &mut part.review);
            }
        }
    }
    if rollout.phase == RolloutPhase::Running {
        let failed = rollout.count(PartState::Failed);
        let canary_failed = rollout
            .clusters
            .values()
            .any(|p| p.canary && p.state == PartState::Failed);
        if failed > rollout.max_failures as usize || canary_failed {
            warn!(rollout = %rollout.id, "{failed} upgrade(s) failed, more than max_failures {} allows (or a canary did): halted; roll back or fix them, then POST /v1/rollouts/{}/resume", rollout.max_failures, rollout.id);
            rollout.phase = RolloutPhase::Halted;
        } else {
            start_next(reconciler, root, rollout);
            if remaining(rollout) == 0 {
                info!(rollout = %rollout.id, "rollout done");
                rollout.phase = RolloutPhase::Done;
            }
        }
    }
    if *rollout != before {
        if let Err(e) = rollout.write(root) {
            warn!(rollout = %rollout.id, "cannot record the rollout, looked at again soon: {e}");
        }
    }
    set_metrics(reconciler, rollout);
}

/// How the upgrade of `id` stands: still under way, ended, or taken over by its tenant.
fn follow(reconciler: &Reconciler, root: &Path, id: &str, part: &mut Part) {
    let cluster = Cluster::new(root, id);
    let record = Record::read(&cluster);
    let Some(intent) = record.intent() else {
        part.state = PartState::Superseded;
        part.note = Some("its intent cannot be read, or it was purged".to_string());
        return;
    };
    if intent.uid != part.uid || intent.generation > part.generation || !intent.present {
        part.state = PartState::Superseded;
        part.note = Some("the tenant's own PUT or DELETE came first".to_string());
        return;
    }
    if intent.generation < part.generation {
        // Killed between recording the part and writing the intent: written now.
        let upgrade = upgrade_intent(intent);
        if let Err(e) = write_upgrade(reconciler, &cluster, &upgrade) {
            warn!(cluster = %id, "cannot write the upgrade's intent, tried again soon: {e}");
        }
        return;
    }
    let running = reconciler.running(id);
    match Phase::of(intent, record.outcome(), running) {
        Phase::Ready => {
            part.state = PartState::Upgraded;
        }
        Phase::Failed => {
            part.state = PartState::Failed;
            part.note = record
                .outcome()
                .and_then(|o| o.error.clone())
                .or(Some("the upgrade failed".to_string()));
        }
        _ => {}
    }
}

/// Starts upgrades while the settings allow: canaries alone first.
fn start_next(reconciler: &Reconciler, root: &Path, rollout: &mut Rollout) {
    let canaries_left = rollout
        .clusters
        .values()
        .any(|p| p.canary && matches!(p.state, PartState::Waiting | PartState::Upgrading));
    let mut running = rollout.count(PartState::Upgrading);
    let ids: Vec<String> = rollout.clusters.keys().cloned().collect();
    for id in ids {
        if running >= rollout.max_parallel as usize {
            break;
        }
        let part = rollout.clusters.get(&id).expect("listed").clone();
        if part.state != PartState::Waiting || (canaries_left && !part.canary) {
            continue;
        }
        let cluster = Cluster::new(root, &id);
        let record = Record::read(&cluster);
        let skip = |rollout: &mut Rollout, state: PartState, note: &str| {
            let part = rollout.clusters.get_mut(&id).expect("listed");
            part.state = state;
            part.note = Some(note.to_string());
        };
        let Some(intent) = record.intent().cloned() else {
            skip(rollout, PartState::Skipped, "its intent cannot be read");
            continue;
        };
        if !intent.present {
            skip(rollout, PartState::Skipped, "deleted by its tenant");
            continue;
        }
        if !code::document(&cluster.journal(), &cluster.dir).outdated {
            skip(rollout, PartState::Upgraded, "already on the current code");
            continue;
        }
        match Phase::of(&intent, record.outcome(), reconciler.running(&id)) {
            Phase::Ready => {}
            // The tenant's own operation first; looked at again next time.
            Phase::Pending | Phase::Applying => continue,
            _ => {
                skip(rollout, PartState::Skipped, "not ready when its turn came");
                continue;
            }
        }
        // Planned against an older intent: planned again, then upgraded.
        if rollout.plan_first {
            let part = rollout.clusters.get_mut(&id).expect("listed");
            if part
                .review
                .as_ref()
                .is_some_and(|r| r.done() && r.generation != intent.generation)
            {
                part.review = None;
            }
            if !rollout_plan::follow(reconciler, root, &id, &mut part.review) {
                continue;
            }
        }
        let upgrade = upgrade_intent(&intent);
        {
            let part = rollout.clusters.get_mut(&id).expect("listed");
            part.state = PartState::Upgrading;
            part.generation = upgrade.generation;
            part.uid = upgrade.uid.clone();
            part.note = None;
        }
        // The part first: a crash after it finds the upgrade started, or about to be.
        if let Err(e) = rollout.write(root) {
            warn!(rollout = %rollout.id, "cannot record the rollout, nothing started: {e}");
            let part = rollout.clusters.get_mut(&id).expect("listed");
            part.state = PartState::Waiting;
            return;
        }
        if let Err(e) = write_upgrade(reconciler, &cluster, &upgrade) {
            warn!(cluster = %id, "cannot write the upgrade's intent, tried again soon: {e}");
        }
        running += 1;
    }
}

/// The intent that upgrades a cluster whose intent is `intent`.
fn upgrade_intent(intent: &Intent) -> Intent {
    Intent {
        generation: intent.generation + 1,
        updated_at: crate::base::clock::now_rfc3339(),
        plan_id: None,
        code: Some(CodeChoice::Current),
        ..intent.clone()
    }
}

fn write_upgrade(
    reconciler: &Reconciler,
    cluster: &Cluster,
    intent: &Intent,
) -> std::io::Result<()> {
    cluster.write_intent(intent)?;
    reconciler.refresh(&cluster.id);
    reconciler.enqueue(&cluster.id);
    info!(cluster = %cluster.id, generation = intent.generation, "intent: upgrade to the current code");
    Ok(())
}
