//! The controller's Prometheus metrics: operations by kind and result, operations running,
//! the queue's length, and how long operations take.

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

pub struct Metrics {
    registry: Registry,
    pub operations: Family<Operation, Counter>,
    pub running: Gauge,
    pub queued: Gauge,
    pub durations: Family<Kind, Histogram>,
    pub damaged: Gauge,
}

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
            "Finished operations, by kind (apply, destroy) and result (succeeded, failed, interrupted, postponed)",
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
        let damaged = Gauge::default();
        registry.register(
            "clusters_damaged",
            "Clusters with a record that cannot be read (GET /v1/clusters?phase=damaged, and `damage` in each document)",
            damaged.clone(),
        );
        Metrics {
            registry,
            damaged,
            operations,
            running,
            queued,
            durations,
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

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
