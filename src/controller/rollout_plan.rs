//! A rollout's `plan_first`: every selected cluster planned against the image's code (the
//! engine's `diff --code current`, the cluster's own code left in place), the plans gathered
//! into a fleet summary — which clusters would create, update, replace or delete what,
//! grouped by identical change sets — while the rollout waits for `POST …/approve`.
//!
//! Each cluster's part records the plan it asked for (when, and against which generation)
//! before the plan is written, so a controller killed while planning asks again only for
//! the plans it never saw end. A cluster whose intent moved on since its plan is planned
//! again before its upgrade starts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::controller::cluster::{Cluster, Intent};
use crate::controller::plan::{Plan, PlanStatus};
use crate::controller::reconcile::Reconciler;
use crate::controller::records::Record;
use crate::engine::diff::Status;

/// The plan a cluster's part asked for, and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// When the plan was asked for: names it in the cluster's `plan.json`.
    pub requested_at: String,
    /// The intent's generation it plans.
    pub generation: u64,
    /// Once made: what would change, one line per resource (`step: action address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
    /// Once failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Review {
    pub fn done(&self) -> bool {
        self.changes.is_some() || self.error.is_some()
    }
}

/// What the plans of a `plan_first` rollout found, as `GET /v1/rollouts/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// Clusters whose plan ended (made or failed).
    pub planned: usize,
    /// Clusters whose plan is still asked for or running: approval waits for them.
    pub planning: usize,
    /// How many clusters would create, update, replace, delete (…) at least one resource.
    pub clusters_that_would: BTreeMap<String, usize>,
    /// The clusters grouped by identical change sets, the largest group first.
    pub groups: Vec<ChangeGroup>,
}

/// Clusters whose plans found the very same changes (or failed with the same error).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeGroup {
    pub count: usize,
    pub clusters: Vec<String>,
    /// Resources per action (create, update, replace, delete…) in this change set.
    pub actions: BTreeMap<String, usize>,
    /// One line per resource: `step: action address`.
    pub changes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The summary of the reviews in `parts` (by cluster id).
pub fn summary<'a>(parts: impl Iterator<Item = (&'a String, Option<&'a Review>)>) -> Summary {
    let mut planned = 0;
    let mut planning = 0;
    let mut would: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: BTreeMap<(Vec<String>, Option<String>), Vec<String>> = BTreeMap::new();
    for (id, review) in parts {
        let Some(review) = review.filter(|r| r.done()) else {
            planning += 1;
            continue;
        };
        planned += 1;
        let changes = review.changes.clone().unwrap_or_default();
        let mut actions: Vec<String> = changes.iter().filter_map(|c| action_of(c)).collect();
        actions.sort();
        actions.dedup();
        for action in actions {
            *would.entry(action).or_insert(0) += 1;
        }
        groups
            .entry((changes, review.error.clone()))
            .or_default()
            .push(id.clone());
    }
    let mut groups: Vec<ChangeGroup> = groups
        .into_iter()
        .map(|((changes, error), clusters)| {
            let mut actions = BTreeMap::new();
            for action in changes.iter().filter_map(|c| action_of(c)) {
                *actions.entry(action).or_insert(0) += 1;
            }
            ChangeGroup {
                count: clusters.len(),
                clusters,
                actions,
                changes,
                error,
            }
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    Summary {
        planned,
        planning,
        clusters_that_would: would,
        groups,
    }
}

/// The action of a change line `step: action address`.
fn action_of(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(": ")?;
    let action = rest.split_whitespace().next()?;
    ["create", "update", "replace", "delete", "read", "forget"]
        .contains(&action)
        .then(|| action.to_owned())
}

/// Asks for a plan of `cluster` against the image's code; the review to record in its part
/// before the plan is written (see [`write_request`]).
pub fn request(intent: &Intent) -> Review {
    Review {
        requested_at: crate::base::clock::now_rfc3339(),
        generation: intent.generation,
        changes: None,
        error: None,
    }
}

/// Writes the plan `review` asked for, and has it run.
pub fn write_request(
    reconciler: &Reconciler,
    cluster: &Cluster,
    intent: &Intent,
    review: &Review,
) -> std::io::Result<()> {
    let plan = Plan::requested(
        cluster,
        &intent.params,
        true,
        false,
        &reconciler.config.workflow,
    )
    .against_current_code(true)
    .asked_at(review.requested_at.clone());
    plan.write(cluster)?;
    reconciler.enqueue(&cluster.id);
    info!(cluster = %cluster.id, "plan against the current code asked for, for a rollout");
    Ok(())
}

/// Follows the review of `id`: records its plan once ended, asks for it (again) when it is
/// not in `plan.json` any more, waits while a tenant's own plan runs first. Returns whether
/// the review is done.
pub fn follow(reconciler: &Reconciler, root: &Path, id: &str, review: &mut Option<Review>) -> bool {
    if review.as_ref().is_some_and(Review::done) {
        return true;
    }
    let cluster = Cluster::new(root, id);
    let record = Record::read(&cluster);
    let Some(intent) = record.intent().cloned() else {
        // Purged, or damaged: nothing to plan, and its turn skips it.
        *review = Some(Review {
            requested_at: crate::base::clock::now_rfc3339(),
            generation: 0,
            changes: None,
            error: Some("its intent cannot be read, or it was purged".to_string()),
        });
        return true;
    };
    let plan = Plan::read(&cluster).ok().flatten();
    if let (Some(wanted), Some(plan)) = (review.as_mut(), plan.as_ref()) {
        if plan.requested_at == wanted.requested_at && plan.code_current {
            match plan.status {
                PlanStatus::Succeeded => {
                    wanted.changes = Some(change_lines(plan));
                    return true;
                }
                PlanStatus::Failed => {
                    wanted.error = Some(plan.error.clone().unwrap_or_default());
                    return true;
                }
                PlanStatus::Pending | PlanStatus::Running => return false,
            }
        }
    }
    // A tenant's plan asked for or running goes first; ours is asked for after it.
    if plan
        .as_ref()
        .is_some_and(|p| matches!(p.status, PlanStatus::Pending | PlanStatus::Running))
    {
        return false;
    }
    // Never asked for, or replaced by a tenant's plan before it ended: asked for now.
    let asked = request(&intent);
    *review = Some(asked.clone());
    // A crash before the caller records the review leaves this plan unclaimed: it runs,
    // then is asked for again, and nothing is lost.
    if let Err(e) = write_request(reconciler, &cluster, &intent, &asked) {
        warn!(cluster = %id, "cannot ask for the rollout's plan, asked again soon: {e}");
    }
    false
}

/// What a succeeded plan would change, one line per resource or step not known yet.
fn change_lines(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    for step in &plan.steps {
        match step.status {
            Status::NotKnown => lines.push(format!("{}: not known", step.step)),
            Status::Failed | Status::NotPlanned => {
                lines.push(format!("{}: not planned", step.step))
            }
            Status::Changes | Status::NoChanges => {}
        }
        if let Some(changes) = &step.changes {
            for r in &changes.resources {
                lines.push(format!(
                    "{}: {} {}",
                    step.step,
                    r.action.as_str(),
                    r.address
                ));
            }
        }
    }
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(changes: &[&str], error: Option<&str>) -> Option<Review> {
        Some(Review {
            requested_at: String::new(),
            generation: 1,
            changes: error
                .is_none()
                .then(|| changes.iter().map(|c| c.to_string()).collect()),
            error: error.map(str::to_owned),
        })
    }

    #[test]
    fn identical_change_sets_are_grouped_and_clusters_counted_per_action() {
        let parts: Vec<(String, Option<Review>)> = vec![
            ("a".into(), review(&["s: create x", "s: update y"], None)),
            ("b".into(), review(&["s: create x", "s: update y"], None)),
            ("c".into(), review(&["s: delete z"], None)),
            ("d".into(), review(&[], Some("boom"))),
            ("e".into(), None),
        ];
        let s = summary(parts.iter().map(|(id, r)| (id, r.as_ref())));
        assert_eq!((s.planned, s.planning), (4, 1));
        let would: Vec<(&str, usize)> = s
            .clusters_that_would
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(would, [("create", 2), ("delete", 1), ("update", 2)]);
        assert_eq!(s.groups[0].clusters, ["a", "b"]);
        assert_eq!(s.groups[0].actions.get("create"), Some(&1));
        assert_eq!(s.groups.len(), 3);
        assert!(s
            .groups
            .iter()
            .any(|g| g.error.as_deref() == Some("boom") && g.clusters == ["d"]));
    }
}
