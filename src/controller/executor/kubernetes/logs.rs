//! A Job's log: its pod's, read through the API (`pods/{name}/log`) while the pod exists, and
//! its tail kept in the cluster's `operation.log` (a plan's `plan.log`) for when it is gone.

use std::pin::Pin;

use futures_util::{AsyncBufReadExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};

use super::job;
use crate::controller::cluster::Kind;

/// The lines a kept log holds at most: the API's answer is the end of it anyway.
pub const TAIL_LINES: usize = 10_000;
/// The bytes a kept log holds at most, whatever its lines' length.
pub const TAIL_BYTES: usize = 2 << 20;
/// The lines a plan's log is read with for its diff, printed at its very end.
const PLAN_LINES: i64 = 1_000_000;

/// Lines as they come; the stream ends with the log (a follow: when the container ends).
pub type Lines = Pin<Box<dyn Stream<Item = String> + Send>>;

/// A log read from where the operation runs.
pub struct LiveLog {
    /// Where from: the pod's name.
    pub pod: String,
    pub lines: Lines,
}

fn params(tail_lines: Option<i64>, follow: bool) -> LogParams {
    LogParams {
        container: Some(job::CONTAINER.to_string()),
        tail_lines,
        follow,
        ..Default::default()
    }
}

/// The end of the pod's log, at most [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes.
pub async fn tail(pods: &Api<Pod>, pod: &str) -> kube::Result<String> {
    let text = pods
        .logs(pod, &params(Some(TAIL_LINES as i64), false))
        .await?;
    Ok(cut_to_tail(text, TAIL_BYTES))
}

/// The pod's whole log as far as a plan's diff needs it: from its end.
pub async fn plan_log(pods: &Api<Pod>, pod: &str) -> kube::Result<String> {
    pods.logs(pod, &params(Some(PLAN_LINES), false)).await
}

/// `text` from the first line that leaves at most `max` bytes.
fn cut_to_tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let from = text.len() - max;
    let start = text[from..].find('\n').map_or(text.len(), |i| from + i + 1);
    text[start..].to_string()
}

/// The log of the cluster's apply or destroy whose pod runs now, if any: its last
/// `tail_lines`, and with `follow` what it writes next, until its container ends.
pub async fn live(
    pods: &Api<Pod>,
    cluster: &str,
    follow: bool,
    tail_lines: usize,
) -> kube::Result<Option<LiveLog>> {
    let selector = format!(
        "{}={},{}={}",
        job::MANAGED_BY.0,
        job::MANAGED_BY.1,
        job::LABEL_CLUSTER,
        cluster
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let running = list
        .items
        .into_iter()
        .filter(|p| {
            let kind = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(job::LABEL_KIND));
            kind.is_some_and(|k| k != Kind::Plan.as_str())
        })
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| p.metadata.creation_timestamp.clone());
    let Some(pod) = running.and_then(|p| p.metadata.name) else {
        return Ok(None);
    };
    let reader = match pods
        .log_stream(&pod, &params(Some(tail_lines as i64), follow))
        .await
    {
        Ok(reader) => reader,
        // Gone between the list and the read: the kept log is the one to read.
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let lines = reader
        .lines()
        .take_while(|line| std::future::ready(line.is_ok()))
        .filter_map(|line| std::future::ready(line.ok()));
    Ok(Some(LiveLog {
        pod,
        lines: Box::pin(lines),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_tail_is_bounded_and_starts_at_a_line() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let tail = cut_to_tail(text.clone(), 100);
        assert!(tail.len() <= 100, "{}", tail.len());
        assert!(tail.starts_with("line "), "{tail}");
        assert!(tail.ends_with("line 999\n"), "{tail}");
        assert_eq!(cut_to_tail(text.clone(), text.len()), text);
    }
}
