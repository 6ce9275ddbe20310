//! The controller's Prometheus metrics: operations by kind and result, operations running,
//! the queue's length, and how long operations take; connections open, and what the HTTP
//! layer refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub kind: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Checked {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refused {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub operations: Family<Operation, Counter>,
    pub running: Gauge,
    pub queued: Gauge,
    pub durations: Family<Kind, Histogram>,
    pub refusals: Family<Refused, Counter>,
    pub connections: Gauge,
    /// A flood of refusals is counted, not logged line by line: when each reason was last
    /// logged, and how many came since.
    refusals_logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
    pub damaged: Gauge,
    pub drifted: Gauge,
    pub drift_checks: Family<Checked, Counter>,
    pub codes: Family<Code, Gauge>,
    pub rollout_phase: Family<RolloutLabel, Gauge>,
    pub rollout_clusters: Family<RolloutLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabel {
    pub state: String,
}

/// How often a reason's refusals are summed up in the log, at most.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(60);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bootstrapper");
        let operations = Family::<Operation, Counter>::default();
        registry.register(
            "operations",
            "Finished operations, by kind (apply, destroy, plan) and result (succeeded, failed, interrupted, postponed)",
            operations.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "operations_running",
            "Operations running now",
            running.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "queue_length",
            "Clusters waiting for an operation",
            queued.clone(),
        );
        // From a quarter second (nothing to do) to about an hour (a large apply).
        let durations = Family::<Kind, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 15))
        });
        registry.register(
            "operation_duration_seconds",
            "How long operations took, by kind",
            durations.clone(),
        );
        let refusals = Family::<Refused, Counter>::default();
        registry.register(
            "http_refused",
            "Requests and connections refused, by reason (unauthorized, connection_limit, header_timeout, body_timeout, write_timeout)",
            refusals.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "http_connections",
            "Client connections open now",
            connections.clone(),
        );
        let damaged = Gauge::default();
        registry.register(
            "clusters_damaged",
            "Clusters with a record that cannot be read (GET /v1/clusters?phase=damaged, and `damage` in each document)",
            damaged.clone(),
        );
        let drifted = Gauge::default();
        registry.register(
            "clusters_drifted",
            "Clusters whose last drift check found that an apply would change something (GET /v1/clusters?drifted=true)",
            drifted.clone(),
        );
        let drift_checks = Family::<Checked, Counter>::default();
        registry.register(
            "drift_checks",
            "Drift checks (plans of a ready cluster's own params), by result (clean, drifted, failed)",
            drift_checks.clone(),
        );
        let codes = Family::<Code, Gauge>::default();
        registry.register(
            "clusters_by_code",
            "Clusters by the identity of the code they run (`unknown`: none yet)",
            codes.clone(),
        );
        let rollout_phase = Family::<RolloutLabel, Gauge>::default();
        registry.register(
            "rollout_phase",
            "1 for the phase of the last rollout looked at (running, paused, halted, done, cancelled, awaiting_approval), 0 for the others",
            rollout_phase.clone(),
        );
        let rollout_clusters = Family::<RolloutLabel, Gauge>::default();
        registry.register(
            "rollout_clusters",
            "Clusters of the last rollout looked at, by state (upgraded, failed, remaining)",
            rollout_clusters.clone(),
        );
        Metrics {
            rollout_phase,
            rollout_clusters,
            codes,
            registry,
            damaged,
            drifted,
            drift_checks,
            operations,
            running,
            queued,
            durations,
            refusals,
            connections,
            refusals_logged: Default::default(),
        }
    }

    pub fn finished(&self, kind: &str, result: &str, seconds: f64) {
        self.operations
            .get_or_create(&Operation {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .observe(seconds);
    }

    pub fn drift_checked(&self, result: &str) {
        self.drift_checks
            .get_or_create(&Checked {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a refusal; the first of each `reason` is logged, later ones summed up at most
    /// once a minute: a client knocking in a loop must not fill the log.
    pub fn refused(&self, reason: &'static str, what: &str) {
        self.refusals
            .get_or_create(&Refused {
                reason: reason.to_string(),
            })
            .inc();
        let mut logged = self.refusals_logged.lock().expect("refusals lock");
        let now = Instant::now();
        match logged.get_mut(reason) {
            None => {
                logged.insert(reason, (now, 0));
                tracing::warn!(
                    reason,
                    "refused {what}; further refusals are counted in bootstrapper_http_refused_total and summed up here at most once a minute"
                );
            }
            Some((last, since)) => {
                *since += 1;
                if now.duration_since(*last) >= REFUSALS_LOGGED_EVERY {
                    tracing::warn!(
                        reason,
                        count = *since,
                        "refused {since} more ({reason}) since the last report",
                        since = *since
                    );
                    *last = now;
                    *since = 0;
                }
            }
        }
    }

    /// The clusters per code identity, replacing the counts before.
    pub fn set_codes(&self, codes: &std::collections::BTreeMap<String, usize>) {
        self.codes.clear();
        for (code, count) in codes {
            self.codes
                .get_or_create(&Code { code: code.clone() })
                .set(*count as i64);
        }
    }

    /// The phase and counts of the rollout looked at last.
    pub fn set_rollout(&self, phase: &str, upgraded: usize, failed: usize, remaining: usize) {
        for known in [
            "running",
            "paused",
            "halted",
            "done",
            "cancelled",
            "awaiting_approval",
        ] {
            let label = RolloutLabel {
                state: known.to_string(),
            };
            self.rollout_phase
                .get_or_create(&label)
                .set(i64::from(known == phase));
        }
        for (state, count) in [
            ("upgraded", upgraded),
            ("failed", failed),
            ("remaining", remaining),
        ] {
            let label = RolloutLabel {
                state: state.to_string(),
            };
            self.rollout_clusters
                .get_or_create(&label)
                .set(count as i64);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
