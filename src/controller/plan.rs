//! Plans and drift: a cluster's `diff` (the engine's own, an operation like any other) and
//! what the controller keeps of it.
//!
//! `plan.json` is the cluster's latest plan: asked for (`pending`), `running`, then
//! `succeeded` with the engine's per-step changes, or `failed`. It names the engine's diff
//! (`id`), so that a PUT with that `plan_id` applies exactly it (`run --reviewed=ID`), and
//! holds what the plan was made against: a digest of its params (never their values), the
//! intent's generation and the last outcome. A PUT is refused (409) when any of them moved on.
//!
//! `drift.json` is what the last plan with the intent's own params found on a ready cluster:
//! a drift check (`serve --drift-interval`) or a tenant's plan. It reports; nothing corrects.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::base::json;
use crate::controller::cluster::{Cluster, Drift, DriftedResource, Intent, Outcome};
use crate::engine::diff::{self, Status};
use crate::terraform::plan::Changes;

/// Plans hold the names of what would change, and a digest of params: owner-only.
const FILE_MODE: u32 = 0o600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    /// Asked for; runs when the cluster has no other operation.
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The cluster's latest plan, as `GET /v1/clusters/{id}/plan` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub status: PlanStatus,
    /// The engine's diff id: a PUT with `"plan_id"` applies exactly this plan.
    pub id: Option<String>,
    pub requested_at: String,
    /// When the engine made it.
    pub made_at: Option<String>,
    /// Whether it was made with the intent's params (false: a preview of other params).
    pub stored_params: bool,
    /// The params it was made with, secrets masked.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// The code's identity (a commit id, or a content hash of a copy).
    pub code: Option<String>,
    /// A check of drift (`serve --drift-interval`), not a tenant's request.
    pub drift_check: bool,
    /// Made against the image's code (`diff --code current`) for a rollout's review, not the
    /// cluster's own: it says nothing of drift, and no PUT applies it by id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code_current: bool,
    /// Whether an apply would change anything.
    pub changes: Option<bool>,
    /// Per step, in the workflow's order: `status` (changes, no_changes, not_known, failed,
    /// not_planned), `waits_for`, `reason` and `changes` (counts, resources, drift, outputs).
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<PlanStep>,
    pub error: Option<String>,
    /// The intent's generation and the last outcome's end when the plan started: a PUT with
    /// its id is refused once either moved on.
    pub generation: u64,
    pub outcome_finished_at: Option<String>,
    /// Never answered (see [`Plan::answer`]): a digest of a short secret could be guessed.
    #[schema(ignore)]
    params_digest: String,
    #[schema(ignore)]
    salt: String,
}

/// One step of a plan: the engine's, without where its saved plan lies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanStep {
    pub step: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

impl Plan {
    /// A plan asked for now, with `params` (`stored`: the intent's own).
    pub fn requested(
        cluster: &Cluster,
        params: &Map<String, Value>,
        stored: bool,
        drift_check: bool,
        workflow: &crate::workflow::file::Workflow,
    ) -> Plan {
        let salt = crate::controller::records::new_uid();
        Plan {
            status: PlanStatus::Pending,
            id: None,
            requested_at: crate::base::clock::now_rfc3339(),
            made_at: None,
            stored_params: stored,
            params: masked(cluster, workflow, params),
            code: None,
            drift_check,
            code_current: false,
            changes: None,
            steps: Vec::new(),
            error: None,
            generation: 0,
            outcome_finished_at: None,
            params_digest: params_digest(&salt, params),
            salt,
        }
    }

    /// The same plan, to be made against the image's code when `current`.
    pub fn against_current_code(mut self, current: bool) -> Plan {
        self.code_current = current;
        self
    }

    /// The same plan, asked for at `at`.
    pub fn asked_at(mut self, at: String) -> Plan {
        self.requested_at = at;
        self
    }

    pub fn read(cluster: &Cluster) -> Result<Option<Plan>, String> {
        match json::read(&cluster.plan_path()) {
            Ok(plan) => Ok(plan),
            Err(json::ReadError::Io(e)) => Err(format!("plan.json cannot be read: {e}")),
            Err(json::ReadError::Corrupt(e)) => Err(format!(
                "plan.json is not a valid record ({e}); POST a plan again"
            )),
        }
    }

    pub fn write(&self, cluster: &Cluster) -> std::io::Result<()> {
        json::write(&cluster.plan_path(), self, FILE_MODE)
    }

    /// The plan as the API answers it: without its digest and salt.
    pub fn answer(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("a plan serializes");
        if let Value::Object(map) = &mut value {
            map.remove("params_digest");
            map.remove("salt");
        }
        value
    }

    /// Whether it was made with exactly `params`.
    pub fn made_with(&self, params: &Map<String, Value>) -> bool {
        params_digest(&self.salt, params) == self.params_digest
    }

    /// The plan once it starts: against this intent and outcome.
    pub fn started(mut self, intent: &Intent, outcome: Option<&Outcome>) -> Plan {
        self.status = PlanStatus::Running;
        self.generation = intent.generation;
        self.outcome_finished_at = outcome.map(|o| o.finished_at.clone());
        self
    }

    /// The plan once the engine's `diff` wrote `document`.
    pub fn succeeded(mut self, document: diff::Document) -> Plan {
        self.status = PlanStatus::Succeeded;
        self.id = Some(document.id);
        self.made_at = Some(document.made_at);
        self.code = document.code;
        self.changes = Some(document.changes);
        self.steps = document
            .steps
            .into_iter()
            .map(|s| PlanStep {
                step: s.step,
                status: s.status,
                waits_for: s.waits_for,
                reason: s.reason,
                changes: s.changes,
            })
            .collect();
        self
    }

    pub fn failed(mut self, error: String) -> Plan {
        self.status = PlanStatus::Failed;
        self.error = Some(error);
        self
    }

    /// Why a PUT of `params` over `intent` (with `outcome`) may not apply this plan as
    /// `plan_id`; None when it may.
    pub fn refusal(
        &self,
        plan_id: &str,
        params: &Map<String, Value>,
        intent: Option<&Intent>,
        outcome: Option<&Outcome>,
    ) -> Option<String> {
        let again = "POST /v1/clusters/{id}/plan again, review it, and PUT with its id";
        if self.id.as_deref() != Some(plan_id) {
            return Some(match &self.id {
                Some(latest) => format!(
                    "plan {plan_id:?} is not the cluster's latest plan ({latest}, made at {}); {again}",
                    self.made_at.as_deref().unwrap_or("?")
                ),
                None => format!(
                    "plan {plan_id:?} is not the cluster's latest plan (that one is {}); {again}",
                    serde_json::to_value(self.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            });
        }
        if self.status != PlanStatus::Succeeded {
            return Some(format!("plan {plan_id:?} did not succeed; {again}"));
        }
        if self.code_current {
            return Some(format!(
                "plan {plan_id:?} was made against the image's code for a rollout, not the cluster's: PUT with \"upgrade\": true to move the cluster to that code; {again}"
            ));
        }
        if !self.made_with(params) {
            return Some(format!(
                "the params differ from those plan {plan_id:?} was made with; PUT those very params, or plan these"
            ));
        }
        let Some(intent) = intent else {
            return Some(format!("the cluster's intent cannot be read; {again}"));
        };
        if intent.generation != self.generation {
            return Some(format!(
                "the cluster's intent moved on since plan {plan_id:?} (generation {} then, {} now); {again}",
                self.generation, intent.generation
            ));
        }
        let finished = outcome.map(|o| o.finished_at.clone());
        if finished != self.outcome_finished_at {
            return Some(format!(
                "an operation ended on the cluster since plan {plan_id:?} (at {}); {again}",
                finished.as_deref().unwrap_or("?")
            ));
        }
        let open: Vec<String> = self
            .steps
            .iter()
            .filter(|s| !matches!(s.status, Status::Changes | Status::NoChanges))
            .map(|s| s.step.clone())
            .collect();
        if !open.is_empty() {
            return Some(format!(
                "plan {plan_id:?} did not plan step(s) {} (not known until earlier steps are applied): it cannot be applied exactly; PUT without plan_id",
                open.join(", ")
            ));
        }
        None
    }
}

/// What a succeeded plan made with the intent's params says of drift.
pub fn drift_of(plan: &Plan) -> Drift {
    let mut resources = Vec::new();
    for step in &plan.steps {
        let Some(changes) = &step.changes else {
            continue;
        };
        for (list, outside) in [(&changes.resources, false), (&changes.drift, true)] {
            for r in list {
                resources.push(DriftedResource {
                    step: step.step.clone(),
                    address: r.address.clone(),
                    action: r.action.as_str().to_string(),
                    outside,
                });
            }
        }
    }
    Drift {
        checked_at: plan
            .made_at
            .clone()
            .unwrap_or_else(crate::base::clock::now_rfc3339),
        drifted: plan.changes.unwrap_or(false),
        resources,
        plan_id: plan.id.clone(),
        error: None,
    }
}

/// A failed check: what was known before stays.
pub fn drift_failed(cluster: &Cluster, error: String) -> Drift {
    let before = Drift::read(cluster);
    Drift {
        checked_at: crate::base::clock::now_rfc3339(),
        drifted: before.as_ref().is_some_and(|d| d.drifted),
        resources: before.map(|d| d.resources).unwrap_or_default(),
        plan_id: None,
        error: Some(error),
    }
}

/// The params with their secrets masked, as the document shows them.
fn masked(
    cluster: &Cluster,
    workflow: &crate::workflow::file::Workflow,
    params: &Map<String, Value>,
) -> Map<String, Value> {
    let redactor = cluster.loaded(workflow, params).redactor;
    let mut value = Value::Object(params.clone());
    redactor.mask_json(&mut value);
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A salted digest of `params`, whatever order their keys were given in.
fn params_digest(salt: &str, params: &Map<String, Value>) -> String {
    let canonical = canonical(&Value::Object(params.clone()));
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&canonical).expect("JSON serializes"));
    crate::workflow::render::hex(&h.finalize())
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::cluster::{Ended, Kind};

    fn params(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn plan(made_with: &Map<String, Value>) -> Plan {
        Plan {
            status: PlanStatus::Succeeded,
            id: Some("0123456789abcdef".to_string()),
            requested_at: String::new(),
            made_at: Some("then".to_string()),
            stored_params: true,
            params: Map::new(),
            code: None,
            drift_check: false,
            code_current: false,
            changes: Some(true),
            steps: vec![PlanStep {
                step: "a".to_string(),
                status: Status::Changes,
                waits_for: Vec::new(),
                reason: None,
                changes: None,
            }],
            error: None,
            generation: 3,
            outcome_finished_at: Some("t1".to_string()),
            params_digest: params_digest("salt", made_with),
            salt: "salt".to_string(),
        }
    }

    #[test]
    fn a_plan_is_applied_only_as_it_was_made() {
        let p = params(r#"{"n": 1}"#);
        let intent = Intent {
            generation: 3,
            present: true,
            params: p.clone(),
            created_at: String::new(),
            updated_at: String::new(),
            uid: "u".to_string(),
            plan_id: None,
            code: None,
        };
        let outcome = Outcome {
            generation: 3,
            kind: Kind::Apply,
            result: Ended::Succeeded,
            error: None,
            started_at: String::new(),
            finished_at: "t1".to_string(),
            intent_uid: "u".to_string(),
        };
        let id = "0123456789abcdef";
        let good = plan(&p);
        assert_eq!(good.refusal(id, &p, Some(&intent), Some(&outcome)), None);
        let refused = |plan: &Plan,
                       id: &str,
                       params: &Map<String, Value>,
                       intent: &Intent,
                       outcome: &Outcome| {
            plan.refusal(id, params, Some(intent), Some(outcome))
                .unwrap_or_default()
        };
        assert!(refused(&good, "fedcba9876543210", &p, &intent, &outcome)
            .contains("not the cluster's latest"));
        assert!(
            refused(&good, id, &params(r#"{"n": 2}"#), &intent, &outcome).contains("params differ")
        );
        let moved = Intent {
            generation: 4,
            ..intent.clone()
        };
        assert!(refused(&good, id, &p, &moved, &outcome).contains("generation 3 then, 4 now"));
        let later = Outcome {
            finished_at: "t2".to_string(),
            ..outcome.clone()
        };
        assert!(refused(&good, id, &p, &intent, &later).contains("an operation ended"));
        let failed = Plan {
            status: PlanStatus::Failed,
            ..good.clone()
        };
        assert!(refused(&failed, id, &p, &intent, &outcome).contains("did not succeed"));
        let mut partial = good.clone();
        partial.steps[0].status = Status::NotKnown;
        assert!(refused(&partial, id, &p, &intent, &outcome).contains("did not plan step(s) a"));
        // What the API answers holds neither the digest nor its salt.
        let answer = good.answer();
        assert!(answer.get("params_digest").is_none() && answer.get("salt").is_none());
    }

    #[test]
    fn the_params_digest_ignores_key_order_and_tells_values_apart() {
        let a: Map<String, Value> =
            serde_json::from_str(r#"{"a": 1, "b": {"x": 1, "y": [2, 3]}}"#).unwrap();
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"b": {"y": [2, 3], "x": 1}, "a": 1}"#).unwrap();
        let c: Map<String, Value> =
            serde_json::from_str(r#"{"b": {"y": [3, 2], "x": 1}, "a": 1}"#).unwrap();
        assert_eq!(params_digest("s", &a), params_digest("s", &b));
        assert_ne!(params_digest("s", &a), params_digest("s", &c));
        assert_ne!(params_digest("s", &a), params_digest("t", &a));
    }
}
