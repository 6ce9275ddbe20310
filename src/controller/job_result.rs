//! The result of a cluster's last apply or destroy as a Job of the `kubernetes` executor
//! left it (the engine's `--result-file`, its container's termination message), kept in the
//! cluster's directory as `result.json`: the engine's journal stays in the Job's emptyDir, so
//! the cluster's document reads its steps, outputs and code from here. Apart from the executor, so
//! that the document can read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The engine's last result of an apply or destroy, in the cluster's directory.
pub const RESULT_FILE: &str = "result.json";
/// The diff a plan Job printed, in the cluster's directory.
pub const DIFF_FILE: &str = "plan-diff.json";
/// Results name resources and hold outputs: owner-only.
const FILE_MODE: u32 = 0o600;

/// One step as the engine's result gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptStep {
    pub name: String,
    pub state: String,
    pub attempts: u32,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The part of the engine's result the cluster's document shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub steps: Vec<KeptStep>,
    #[serde(default)]
    pub outputs: Map<String, Value>,
    #[serde(default)]
    pub outputs_left_out: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// The identity of the code the engine ran: the cluster's `code.applied`.
    #[serde(default)]
    pub code: Option<String>,
}

/// The result kept in the cluster directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(RESULT_FILE)
}

/// The result a Job of the cluster left, if one was kept.
pub fn read(dir: &Path) -> Option<Kept> {
    crate::base::json::read(&path(dir)).ok().flatten()
}

/// Keeps the engine's result from a termination message, for the cluster's document; a
/// message that is no result (the engine killed before it wrote one), or one without steps
/// (it could not load the workflow), keeps the one before, as a local engine's journal would
/// still say it.
pub fn keep(dir: &Path, message: Option<&str>) -> std::io::Result<bool> {
    let kept = message.and_then(|m| serde_json::from_str::<Kept>(m).ok());
    let Some(mut kept) = kept.filter(|k| !k.steps.is_empty()) else {
        return Ok(false);
    };
    // An engine that stopped before it put any code in place left the code as it was.
    if kept.code.is_none() {
        kept.code = read(dir).and_then(|k| k.code);
    }
    crate::base::json::write(&path(dir), &kept, FILE_MODE)?;
    Ok(true)
}

/// Forgets a kept result: an engine whose journal is on this disk says it again.
pub fn forget(dir: &Path) {
    let _ = std::fs::remove_file(path(dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_kept_and_a_message_that_is_none_keeps_the_one_before() {
        let dir = std::env::temp_dir().join(format!("results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let message = r#"{"exit_code":0,"error":null,"failure":null,"steps":[{"name":"top","state":"done","attempts":1}],"outputs":{"top":{"a":1}},"outputs_left_out":["top.big"],"note":"left out","code":"sha256:ab"}"#;
        assert!(keep(&dir, Some(message)).unwrap());
        assert!(!keep(&dir, Some("killed")).unwrap());
        assert!(!keep(&dir, None).unwrap());
        let unloaded =
            r#"{"exit_code":2,"error":"bad params","failure":null,"steps":[],"outputs":{}}"#;
        assert!(!keep(&dir, Some(unloaded)).unwrap());
        let kept = read(&dir).unwrap();
        assert_eq!(kept.steps[0].state, "done");
        assert_eq!(kept.outputs["top"]["a"], 1);
        assert_eq!(kept.outputs_left_out, ["top.big"]);
        assert_eq!(kept.code.as_deref(), Some("sha256:ab"));
        let codeless = r#"{"exit_code":1,"steps":[{"name":"top","state":"pending","attempts":0}]}"#;
        assert!(keep(&dir, Some(codeless)).unwrap());
        let kept = read(&dir).unwrap();
        assert_eq!(kept.steps[0].state, "pending");
        assert_eq!(kept.code.as_deref(), Some("sha256:ab"));
        forget(&dir);
        assert!(read(&dir).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
