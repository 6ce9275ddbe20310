//! Which code each cluster runs: the identity of the tenant code this controller ships
//! (computed once at start-up, as the engine computes it when it copies the code), against
//! the identity each cluster's journal recorded when its code was put in place (or, under the
//! `kubernetes` executor, its last Job's result gave).

use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::root::journal::Journal;
use crate::workflow::file::Workflow;

static CURRENT: OnceLock<Option<String>> = OnceLock::new();

/// Which code an apply moves the cluster to before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeChoice {
    /// The code this controller ships (an upgrade).
    Current,
    /// The code the cluster's last upgrade replaced (a rollback).
    Previous,
}

impl CodeChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeChoice::Current => "current",
            CodeChoice::Previous => "previous",
        }
    }
}

/// Computes the identity of the code this controller ships; the first call's answer stays.
pub fn compute_current(workflow: &Workflow) -> Option<String> {
    CURRENT
        .get_or_init(|| {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let params = Value::Object(Map::new());
            let renderer = crate::workflow::render::Renderer::new(workflow, &params, &env);
            let source = match renderer.render_source() {
                Ok(source) => source,
                Err(e) => {
                    tracing::warn!("the tenant code's identity is unknown, so no cluster shows as outdated: its source does not render without params ({e})");
                    return None;
                }
            };
            match crate::root::source::identity(&source) {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::warn!("cannot read the tenant code in the image, so no cluster shows as outdated: {e}");
                    None
                }
            }
        })
        .clone()
}

/// The identity of the code this controller ships, once computed.
pub fn current() -> Option<String> {
    CURRENT.get().cloned().flatten()
}

/// Which code a cluster runs, as its document shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CodeDocument {
    /// The identity of the code in the cluster's root (none before its first apply).
    pub applied: Option<String>,
    /// The identity of the code this controller ships.
    pub current: Option<String>,
    /// Whether the cluster runs other code than the current: a PUT with `"upgrade": true`,
    /// or a rollout, moves it.
    pub outdated: bool,
    /// The code its last upgrade replaced, kept for `"code": "previous"`.
    pub previous: Option<String>,
}

/// Which code a cluster runs: as its engine's `journal` records it, or, when its engines run
/// in Jobs (their journal in the pod), as the last Job's result in its directory `dir` says.
pub fn document(journal: &Journal, dir: &Path) -> CodeDocument {
    let applied = crate::root::source::applied(journal)
        .and_then(|r| r.identity)
        .or_else(|| crate::controller::job_result::read(dir).and_then(|k| k.code));
    let current = current();
    let outdated = matches!((&applied, &current), (Some(a), Some(c)) if a != c);
    CodeDocument {
        applied,
        current,
        outdated,
        previous: crate::root::source::previous_record(journal).and_then(|r| r.identity),
    }
}
