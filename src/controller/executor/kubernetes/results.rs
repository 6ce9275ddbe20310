//! What a Job leaves the controller: the engine's result (its termination message, see
//! `crate::engine::result`), kept as the cluster's `result.json` (see
//! [`crate::controller::job_result`]); and a plan's diff, which `diff --json` prints on its
//! stdout, read from the pod's log and kept as `plan-diff.json`, where the controller looks
//! for the last diff beside the engine's own.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tracing::warn;

use super::{logs, status};
use crate::controller::cluster::{Cluster, Kind};
use crate::controller::executor::Ending;
use crate::controller::job_result::{self, DIFF_FILE};
use crate::engine::diff;

/// Where a plan Job's diff is kept.
pub fn diff_path(cluster: &Cluster) -> std::path::PathBuf {
    cluster.dir.join(DIFF_FILE)
}

/// The diff a `diff --json` printed in `log`: its stdout's pretty JSON, from a line `{` to
/// the next line `}`, among the engine's own log lines (on stderr, interleaved by the
/// kubelet; none of them is a lone brace). The last such document wins.
pub fn diff_in_log(log: &str) -> Option<diff::Document> {
    let lines: Vec<&str> = log.lines().collect();
    let starts = lines.iter().enumerate().filter(|(_, l)| **l == "{");
    let mut found = None;
    for (start, _) in starts {
        let Some(end) = lines[start..].iter().position(|l| *l == "}") else {
            continue;
        };
        let text = lines[start..=start + end].join("\n");
        if let Ok(document) = serde_json::from_str::<diff::Document>(&text) {
            found = Some(document);
        }
    }
    found
}

/// Keeps the diff a plan Job printed, where [`last_diff`] finds it.
pub fn keep_diff(cluster: &Cluster, document: &diff::Document) -> std::io::Result<()> {
    crate::base::json::write(&diff_path(cluster), document, 0o600)
}

/// The newer of the engine's own diff record (an engine on this disk) and the diff a plan
/// Job printed: the executor may have changed between them.
pub fn last_diff(cluster: &Cluster) -> Option<diff::Document> {
    let read = |path: &std::path::Path| {
        crate::base::json::read::<diff::Document>(path)
            .ok()
            .flatten()
    };
    let engine = read(&cluster.journal().diff_record());
    let job = read(&diff_path(cluster));
    match (engine, job) {
        (Some(e), Some(j)) => Some(if j.made_at > e.made_at { j } else { e }),
        (e, j) => e.or(j),
    }
}

/// Records what an ended Job left: an apply's or destroy's result, a plan's diff. A plan
/// whose log holds no diff did not plan, whatever its exit.
pub async fn record(
    pods: &Api<Pod>,
    cluster: &Cluster,
    kind: Kind,
    pod: Option<&Pod>,
    ending: Ending,
) -> Ending {
    match kind {
        Kind::Apply | Kind::Destroy => {
            let message = pod
                .and_then(status::engine_terminated)
                .and_then(|t| t.message.as_deref());
            match job_result::keep(&cluster.dir, message) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(cluster = %cluster.id, "the Job's pod left no result: the document shows the one before")
                }
                Err(e) => warn!(cluster = %cluster.id, "cannot keep the Job's result: {e}"),
            }
            ending
        }
        Kind::Plan if ending == Ending::Succeeded => {
            let Some(name) = pod.and_then(|p| p.metadata.name.as_deref()) else {
                return Ending::failed(
                    "the plan's pod is gone before its diff was read; POST the plan again"
                        .to_string(),
                );
            };
            let log = match logs::plan_log(pods, name).await {
                Ok(log) => log,
                Err(e) => {
                    return Ending::failed(format!(
                        "cannot read the plan's diff from the log of pod {name}: {e}; POST the plan again"
                    ))
                }
            };
            match diff_in_log(&log) {
                Some(document) => match keep_diff(cluster, &document) {
                    Ok(()) => ending,
                    Err(e) => Ending::failed(format!(
                        "cannot write {}: {e}",
                        diff_path(cluster).display()
                    )),
                },
                None => Ending::failed(format!(
                    "the plan's pod {name} ended without printing its diff (`diff --json`) in its log"
                )),
            }
        }
        Kind::Plan => ending,
    }
}

/// Why a rollback (`"code": "previous"`) cannot run as a Job.
pub const ROLLBACK_REFUSAL: &str = "a rollback (\"code\": \"previous\") cannot run under --executor kubernetes: only the local executor keeps the code an upgrade replaced, and every Job runs the code of the Job template's image; to go back, put the old image back in --job-template, restart the controller and upgrade (PUT with \"upgrade\": true, or POST /v1/rollouts)";
/// Why an apply of a reviewed plan (`run --reviewed=ID`) cannot run as a Job.
pub const REVIEWED_REFUSAL: &str = "a reviewed plan (plan_id) cannot be applied under --executor kubernetes: its saved plan files were in the plan Job's pod, which is gone; PUT the same params without plan_id to apply (GET /v1/clusters/{id}/plan still shows what would change), or serve with --executor local";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_is_found_among_the_engines_log_lines() {
        let document = r#"{
  "format": 1,
  "id": "0123456789abcdef",
  "made_at": "2026-01-01T00:00:00Z",
  "code": null,
  "changes": true,
  "steps": []
}"#;
        let log = format!(
            "{{\"level\":\"INFO\",\"source\":\"bootstrapper\",\"message\":\"{{\"}}\nbootstrapper: info: namesvr: $ terraform plan\n[namesvr] {{\n{document}\nbootstrapper: info: done\n"
        );
        let found = diff_in_log(&log).expect("found");
        assert_eq!(found.id, "0123456789abcdef");
        assert!(found.changes);
        assert!(diff_in_log("{\nnot json\n}\n").is_none());
        assert!(diff_in_log("").is_none());
    }
}
