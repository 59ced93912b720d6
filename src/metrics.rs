//! Metric names, label sets and histogram buckets, in one place; and the
//! handles each model version records through.
//!
//! Handles are registered once per version so the request path records with
//! an atomic add, not a registry lookup. Histograms (not summaries) so that
//! p99 can be aggregated across replicas.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by model, version, protocol and outcome.
pub const REQUESTS: &str = "modelgate_requests_total";
/// End-to-end time in the gateway, by model, version and protocol.
pub const REQUEST_DURATION: &str = "modelgate_request_duration_seconds";
/// Time in the queue, by model and version.
pub const QUEUE_DURATION: &str = "modelgate_queue_duration_seconds";
/// Model execution time per batch, by model and version.
pub const COMPUTE_DURATION: &str = "modelgate_compute_duration_seconds";
/// Rows per executed batch, by model and version.
pub const BATCH_SIZE: &str = "modelgate_batch_size";
/// Batches executed, by model, version and why the batch closed.
pub const BATCHES: &str = "modelgate_batches_total";
/// Requests waiting, by model and version.
pub const QUEUE_DEPTH: &str = "modelgate_queue_depth";
/// Requests that left the queue without running, by model, version and reason
/// (`full`, `expired`, `cancelled`).
pub const QUEUE_REJECTIONS: &str = "modelgate_queue_rejections_total";
/// 1 when the version is ready, 0 otherwise, by model, version and state.
pub const MODEL_STATE: &str = "modelgate_model_state";
/// Time to load a version, by model and version.
pub const MODEL_LOAD_DURATION: &str = "modelgate_model_load_duration_seconds";
/// Device memory held by a version's instances, by model, version and device.
pub const DEVICE_MEMORY: &str = "modelgate_device_memory_bytes";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program);
            // our handle then renders only what we record through it.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "Inference requests answered, by outcome");
    metrics::describe_histogram!(REQUEST_DURATION, metrics::Unit::Seconds, "Time from request decode to response");
    metrics::describe_histogram!(QUEUE_DURATION, metrics::Unit::Seconds, "Time requests waited for an instance");
    metrics::describe_histogram!(COMPUTE_DURATION, metrics::Unit::Seconds, "Model execution time per batch");
    metrics::describe_histogram!(BATCH_SIZE, "Rows per executed batch");
    metrics::describe_counter!(BATCHES, "Batches executed, by the reason the batch closed");
    metrics::describe_gauge!(QUEUE_DEPTH, "Requests waiting in the queue");
    metrics::describe_counter!(QUEUE_REJECTIONS, "Requests refused or dropped by the queue");
    metrics::describe_gauge!(MODEL_STATE, "1 for the current state of each model version");
    metrics::describe_histogram!(MODEL_LOAD_DURATION, metrics::Unit::Seconds, "Time to load a model version");
    metrics::describe_gauge!(DEVICE_MEMORY, metrics::Unit::Bytes, "Device memory held by a model version");
}

/// The protocol a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/REST (JSON or binary extension).
    Http,
    /// gRPC.
    Grpc,
}

impl Protocol {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Http => 0,
            Protocol::Grpc => 1,
        }
    }
}

/// Pre-registered handles of one model version.
#[derive(Debug)]
pub struct VersionMetrics {
    model: String,
    version: String,
    success: [Counter; 2],
    duration: [Histogram; 2],
    /// Queue wait per request.
    pub queue_duration: Histogram,
    /// Execution time per batch.
    pub compute_duration: Histogram,
    /// Rows per batch.
    pub batch_size: Histogram,
    /// Requests waiting.
    pub queue_depth: Gauge,
}

impl VersionMetrics {
    /// Registers the handles of `model` version `version`.
    pub fn new(model: &str, version: u64) -> VersionMetrics {
        let (m, v) = (model.to_owned(), version.to_string());
        let success = |p: Protocol| counter!(REQUESTS, "model" => m.clone(), "version" => v.clone(), "protocol" => p.as_str(), "outcome" => "success");
        let duration = |p: Protocol| histogram!(REQUEST_DURATION, "model" => m.clone(), "version" => v.clone(), "protocol" => p.as_str());
        VersionMetrics {
            success: [success(Protocol::Http), success(Protocol::Grpc)],
            duration: [duration(Protocol::Http), duration(Protocol::Grpc)],
            queue_duration: histogram!(QUEUE_DURATION, "model" => m.clone(), "version" => v.clone()),
            compute_duration: histogram!(COMPUTE_DURATION, "model" => m.clone(), "version" => v.clone()),
            batch_size: histogram!(BATCH_SIZE, "model" => m.clone(), "version" => v.clone()),
            queue_depth: gauge!(QUEUE_DEPTH, "model" => m.clone(), "version" => v.clone()),
            model: m,
            version: v,
        }
    }

    /// Records an answered request.
    pub fn request(&self, protocol: Protocol, outcome: Result<(), &'static str>, elapsed: Duration) {
        self.duration[protocol.index()].record(elapsed.as_secs_f64());
        match outcome {
            Ok(()) => self.success[protocol.index()].increment(1),
            Err(outcome) => counter!(
                REQUESTS,
                "model" => self.model.clone(),
                "version" => self.version.clone(),
                "protocol" => protocol.as_str(),
                "outcome" => outcome
            )
            .increment(1),
        }
    }

    /// Counts a batch and why it closed.
    pub fn batch_closed(&self, reason: &'static str) {
        counter!(BATCHES, "model" => self.model.clone(), "version" => self.version.clone(), "reason" => reason)
            .increment(1);
    }

    /// Counts a request the queue refused or dropped.
    pub fn queue_rejection(&self, reason: &'static str) {
        counter!(QUEUE_REJECTIONS, "model" => self.model.clone(), "version" => self.version.clone(), "reason" => reason)
            .increment(1);
    }
}

/// Sets the state gauge of a version: 1 for `state`, 0 for the others.
pub fn model_state(model: &str, version: u64, state: &str) {
    for s in ["READY", "LOADING", "UNAVAILABLE", "UNLOADING"] {
        gauge!(MODEL_STATE, "model" => model.to_owned(), "version" => version.to_string(), "state" => s)
            .set(if s == state { 1.0 } else { 0.0 });
    }
}

/// Records how long a version took to load.
pub fn model_loaded(model: &str, version: u64, elapsed: Duration) {
    histogram!(MODEL_LOAD_DURATION, "model" => model.to_owned(), "version" => version.to_string())
        .record(elapsed.as_secs_f64());
}

/// Records the device memory a version holds.
pub fn device_memory(model: &str, version: u64, device: &str, bytes: u64) {
    gauge!(DEVICE_MEMORY, "model" => model.to_owned(), "version" => version.to_string(), "device" => device.to_owned())
        .set(bytes as f64);
}
