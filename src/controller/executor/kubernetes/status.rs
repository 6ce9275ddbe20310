//! How far an operation's Job has come, read from the Job's status and its pod's: still
//! waiting (suspended for Kueue, a pod not scheduled or its image not pulled), running, or
//! ended, and then how, by the engine's exit code and the result it left as its termination
//! message (`--result-file`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use serde::Deserialize;

use super::job::CONTAINER;
use crate::base::error::{exit, FailureKind};
use crate::controller::cluster::Kind;
use crate::controller::executor::Ending;

/// Where an operation's Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not running yet, and why (shown in the cluster's document).
    Waiting(String),
    Running,
    Ended(Ending),
}

/// The part of the engine's result (see `crate::engine::result`) an ending needs.
#[derive(Debug, Default, Deserialize)]
pub struct EngineResult {
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
}

/// The engine's result in a termination message; None when it is not one (the engine
/// was killed before it wrote it, say).
pub fn engine_result(message: Option<&str>) -> Option<EngineResult> {
    serde_json::from_str(message?).ok()
}

/// Where the Job of an operation of `kind` stands, from the Job and its pod, if any. A Job
/// is ended only once it says so: its `Failed` condition comes after its pods are gone, so
/// the next operation of the cluster never runs beside a terminating pod.
pub fn progress(kind: Kind, job: &Job, pod: Option<&Pod>) -> Progress {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let holds = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let terminated = pod.and_then(engine_terminated);
    // The Job and its pods are watched apart: the Job's end may be seen before its pod's,
    // whose exit code and result the ending is made of.
    let pod_end_unseen = pod.is_some() && terminated.is_none();
    if holds("Complete").is_some() {
        if pod_end_unseen {
            return Progress::Waiting("the Job is complete: reading its pod's end".to_string());
        }
        return Progress::Ended(Ending::Succeeded);
    }
    if let Some(failed) = holds("Failed") {
        let reason = failed.reason.as_deref().unwrap_or("");
        if pod_end_unseen && reason != "DeadlineExceeded" {
            return Progress::Waiting("the Job failed: reading its pod's end".to_string());
        }
        if reason == "DeadlineExceeded" {
            return Progress::Ended(Ending::failed(format!(
                "timed out: the Job ran past its activeDeadlineSeconds ({})",
                failed.message.as_deref().unwrap_or("no message")
            )));
        }
        return Progress::Ended(match terminated {
            Some(t) => ending_of(kind, t),
            None => Ending::failed(format!(
                "the Job failed ({reason}: {}) and its pod is gone",
                failed.message.as_deref().unwrap_or("no message")
            )),
        });
    }
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return Progress::Waiting("suspended: waiting for Kueue to admit the Job".to_string());
    }
    let Some(pod) = pod else {
        return Progress::Waiting("no pod yet".to_string());
    };
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Pending") {
        let waiting = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default()
            .iter()
            .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
        let unscheduled = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| c.message.clone().unwrap_or_else(|| "not scheduled".into()));
        return Progress::Waiting(format!(
            "pod pending: {}",
            unscheduled
                .or(waiting)
                .unwrap_or_else(|| "starting".to_string())
        ));
    }
    Progress::Running
}

/// How the engine's container ended, if it has.
pub fn engine_terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_deref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The ending of an operation whose engine exited as `terminated` says, as the local
/// executor maps an engine's exit.
pub fn ending_of(kind: Kind, terminated: &ContainerStateTerminated) -> Ending {
    let result = engine_result(terminated.message.as_deref());
    match terminated.exit_code {
        exit::OK => Ending::Succeeded,
        // A diff's "there are changes" is a plan made.
        exit::CHANGES if kind == Kind::Plan && result.is_some() => Ending::Succeeded,
        exit::LOCKED => Ending::Later,
        code if code > 128 => Ending::Interrupted,
        code => {
            let result = result.unwrap_or_default();
            Ending::Failed {
                exit_code: Some(code),
                failure: result.failure,
                error: result.error.unwrap_or_else(|| {
                    format!(
                        "the engine exited with {code} ({}) and left no result",
                        terminated.reason.as_deref().unwrap_or("no reason given")
                    )
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value, suspend: bool) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "bs-a-apply-1-1"},
            "spec": {"suspend": suspend, "template": {"spec": {"containers": []}}},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn exited(code: i32, message: Option<&str>) -> Pod {
        pod(
            json!({"phase": if code == 0 {"Succeeded"} else {"Failed"}, "containerStatuses": [{
                "name": "engine", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "message": message, "reason": "Error"}},
            }]}),
        )
    }

    fn failed(reason: &str) -> serde_json::Value {
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": "m"}]})
    }

    #[test]
    fn a_job_ends_only_when_its_condition_says_so() {
        // The pod has exited, but the Job has not concluded: its pod may still be terminating.
        let running = job(json!({"active": 1}), false);
        assert_eq!(
            progress(Kind::Apply, &running, Some(&exited(1, None))),
            Progress::Running
        );
        let complete = job(
            json!({"conditions": [{"type": "Complete", "status": "True"}]}),
            false,
        );
        assert_eq!(
            progress(Kind::Apply, &complete, None),
            Progress::Ended(Ending::Succeeded)
        );
    }

    #[test]
    fn a_failure_carries_the_engines_result() {
        let message = r#"{"exit_code":1,"error":"step `top` failed: boom","failure":"resource","steps":[],"outputs":{}}"#;
        assert_eq!(
            progress(
                Kind::Apply,
                &job(failed("PodFailurePolicy"), false),
                Some(&exited(1, Some(message)))
            ),
            Progress::Ended(Ending::Failed {
                exit_code: Some(1),
                failure: Some(FailureKind::Resource),
                error: "step `top` failed: boom".into(),
            })
        );
        assert_eq!(
            progress(
                Kind::Apply,
                &job(failed("BackoffLimitExceeded"), false),
                Some(&exited(137, None))
            ),
            Progress::Ended(Ending::Interrupted)
        );
        assert_eq!(
            progress(
                Kind::Apply,
                &job(failed("BackoffLimitExceeded"), false),
                Some(&exited(3, None))
            ),
            Progress::Ended(Ending::Later)
        );
        let Progress::Ended(Ending::Failed { error, .. }) =
            progress(Kind::Apply, &job(failed("DeadlineExceeded"), false), None)
        else {
            panic!()
        };
        assert!(error.starts_with("timed out"), "{error}");
        let Progress::Ended(Ending::Failed { error, .. }) =
            progress(Kind::Apply, &job(failed("PodFailurePolicy"), false), None)
        else {
            panic!()
        };
        assert!(error.contains("pod is gone"), "{error}");
    }

    #[test]
    fn a_plan_with_changes_succeeds() {
        let message = r#"{"exit_code":2,"error":null,"failure":null}"#;
        assert_eq!(
            progress(
                Kind::Plan,
                &job(failed("BackoffLimitExceeded"), false),
                Some(&exited(2, Some(message)))
            ),
            Progress::Ended(Ending::Succeeded)
        );
    }

    #[test]
    fn a_jobs_end_seen_before_its_pods_waits_for_the_pods() {
        let running = pod(json!({"phase": "Running"}));
        let complete = job(
            json!({"conditions": [{"type": "Complete", "status": "True"}]}),
            false,
        );
        assert!(matches!(
            progress(Kind::Apply, &complete, Some(&running)),
            Progress::Waiting(_)
        ));
        // A plan with changes exits 2, which the pod failure policy fails the Job on.
        let failed = job(failed("PodFailurePolicy"), false);
        assert!(matches!(
            progress(Kind::Plan, &failed, Some(&running)),
            Progress::Waiting(_)
        ));
        let message = r#"{"exit_code":2,"error":null,"failure":null}"#;
        assert_eq!(
            progress(Kind::Plan, &failed, Some(&exited(2, Some(message)))),
            Progress::Ended(Ending::Succeeded)
        );
    }

    #[test]
    fn waiting_says_for_what() {
        assert_eq!(
            progress(Kind::Apply, &job(json!({}), true), None),
            Progress::Waiting("suspended: waiting for Kueue to admit the Job".into())
        );
        let unscheduled = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available: insufficient cpu"}
        ]}));
        assert_eq!(
            progress(Kind::Apply, &job(json!({}), false), Some(&unscheduled)),
            Progress::Waiting("pod pending: 0/3 nodes are available: insufficient cpu".into())
        );
    }
}
