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
/// Requests refused at the door because the server held too much request
/// data at once (`server.max_inflight_bytes`).
pub const OVERLOADED: &str = "modelgate_overloaded_requests_total";
/// Request data held now, and the bound (`server.max_inflight_bytes`).
pub const INFLIGHT_BYTES: &str = "modelgate_inflight_request_bytes";
/// The bound on [`INFLIGHT_BYTES`].
pub const INFLIGHT_BYTES_LIMIT: &str = "modelgate_inflight_request_bytes_limit";
/// Data-plane connections open now.
pub const OPEN_CONNECTIONS: &str = "modelgate_open_connections";
/// The bound on [`OPEN_CONNECTIONS`] (`server.max_connections`).
pub const OPEN_CONNECTIONS_LIMIT: &str = "modelgate_open_connections_limit";
/// Connections closed by a timeout, by which (`first_bytes`, `idle`).
pub const CONNECTION_TIMEOUTS: &str = "modelgate_connection_timeouts_total";
/// Times an accept loop backed off for lack of file descriptors or memory.
pub const ACCEPT_BACKOFFS: &str = "modelgate_accept_backoffs_total";
/// 1 when the version is ready, 0 otherwise, by model, version and state.
pub const MODEL_STATE: &str = "modelgate_model_state";
/// Time to load a version, by model and version.
pub const MODEL_LOAD_DURATION: &str = "modelgate_model_load_duration_seconds";
/// Device memory held by a version's instances, by model, version and device.
pub const DEVICE_MEMORY: &str = "modelgate_device_memory_bytes";
/// Routed requests, by model, version and outcome (`success`, `error` for the
/// server's fault, `client_error`).
pub const ROUTE_REQUESTS: &str = "modelgate_route_requests_total";
/// End-to-end time of routed requests, by model and version.
pub const ROUTE_DURATION: &str = "modelgate_route_request_duration_seconds";
/// Current route weight in percent, by model and version.
pub const ROUTE_WEIGHT: &str = "modelgate_route_weight";
/// A rollout canary's server faults retried on the baseline, by model, canary
/// version and outcome (`success`, `error`: the baseline failed too,
/// `no_budget`: not retried, the retry budget was spent).
pub const ROUTE_CANARY_RETRIES: &str = "modelgate_route_canary_retries_total";
/// A rollout canary's slow requests hedged on the baseline, by model, canary
/// version and outcome (`baseline_won`: the client got the baseline's answer,
/// `canary_won`: the canary's, `budget_exhausted`: not hedged, the hedge
/// budget was spent).
pub const ROUTE_CANARY_HEDGES: &str = "modelgate_route_canary_hedges_total";
/// Canary requests still running when their rollout rolled the canary back, sent to the
/// baseline too, by model, canary and outcome (`baseline_won`, `canary_won`).
pub const ROUTE_CANARY_RESCUES: &str = "modelgate_route_canary_rescues_total";
/// 1 for the current phase of a rollout, by model, canary version and state.
pub const ROLLOUT_STATE: &str = "modelgate_rollout_state";
/// Canary weight of a rollout's current step, by model and canary version.
pub const ROLLOUT_CANARY_WEIGHT: &str = "modelgate_rollout_canary_weight";
/// SLO checks, by model, canary version and verdict.
pub const ROLLOUT_CHECKS: &str = "modelgate_rollout_checks_total";
/// Rollbacks, by model, canary version and reason (`error_rate`, `latency`, `manual`).
pub const ROLLOUT_ROLLBACKS: &str = "modelgate_rollout_rollbacks_total";
/// Promotions, by model, canary version and how (`automatic`, `manual`).
pub const ROLLOUT_PROMOTIONS: &str = "modelgate_rollout_promotions_total";
/// Shadow copies, by model, shadow version and outcome (`success`, `error`, `skipped`).
pub const SHADOW_REQUESTS: &str = "modelgate_shadow_requests_total";
/// Time of shadow copies, by model and shadow version.
pub const SHADOW_DURATION: &str = "modelgate_shadow_request_duration_seconds";
/// Shadow responses compared with the primary's, by model, primary, shadow
/// and result (`agree`, `disagree`): the agreement rate is agree / all.
pub const SHADOW_COMPARISONS: &str = "modelgate_shadow_comparisons_total";
/// Largest absolute difference between primary and shadow outputs per
/// compared request, by model, primary and shadow.
pub const SHADOW_ABS_DIFF: &str = "modelgate_shadow_max_abs_difference";
/// 1 while the last call to the control plane succeeded, 0 after one failed.
pub const CONTROL_PLANE_CONNECTED: &str = "modelgate_control_plane_connected";
/// The control plane's drift statistic of a feature of a served version.
pub const DRIFT_STATISTIC: &str = "modelgate_drift_statistic";
/// 1 while the control plane says a served version drifted, 0 when it does not.
pub const DRIFT_STATUS: &str = "modelgate_drift_status";
/// The generation of the last desired state applied.
pub const SYNC_APPLIED_GENERATION: &str = "modelgate_sync_applied_generation";
/// Parts of a desired state that did not apply, by reason (`failed_verification`,
/// `download`, `disk`, `load`, `conflict`, `missing`, `unreachable`).
pub const SYNC_FAILURES: &str = "modelgate_sync_failures_total";
/// Bytes of model files downloaded from the control plane.
pub const ARTIFACT_BYTES_DOWNLOADED: &str = "modelgate_artifact_bytes_downloaded_total";
/// Rows the drift profiler added to a window, by model and version.
pub const DRIFT_ROWS: &str = "modelgate_drift_rows_total";
/// Rows of batches the drift profiler had no room for (its queue was full), by model and version.
pub const DRIFT_ROWS_DROPPED: &str = "modelgate_drift_rows_dropped_total";
/// Rows of batches whose tensors did not fit the version's drift schema, by model and version.
pub const DRIFT_ROWS_SKIPPED: &str = "modelgate_drift_rows_skipped_total";
/// Closed drift windows dropped before anyone drained them (`drift.keep_windows`), by model and version.
pub const DRIFT_WINDOWS_DROPPED: &str = "modelgate_drift_windows_dropped_total";
/// Batches a version offers the drift profiler: one in this many (1: all), by model and version.
pub const DRIFT_SAMPLED_ONE_IN: &str = "modelgate_drift_sampled_one_in";
/// Heap bytes of every open and kept drift window.
pub const DRIFT_PROFILE_BYTES: &str = "modelgate_drift_profile_bytes";
/// Tensor bytes of the batches waiting for (or being profiled by) the drift profiler.
pub const DRIFT_QUEUE_BYTES: &str = "modelgate_drift_queue_bytes";
/// Feedback requests, by model and result (`accepted`, `unknown`, `expired`,
/// `duplicate`, `invalid`).
pub const FEEDBACK: &str = "modelgate_feedback_total";
/// Predictions a route's index holds now, by model.
pub const FEEDBACK_INDEX_ENTRIES: &str = "modelgate_feedback_index_entries";
/// Most predictions a route's index holds (`feedback.max_entries`), by model.
pub const FEEDBACK_INDEX_CAPACITY: &str = "modelgate_feedback_index_capacity";
/// Heap bytes of a route's prediction index, by model.
pub const FEEDBACK_INDEX_BYTES: &str = "modelgate_feedback_index_bytes";
/// Predictions never kept because the queue to a route's index was full, by model.
pub const FEEDBACK_INDEX_DROPPED: &str = "modelgate_feedback_index_dropped_total";
/// Predictions pushed out of a route's index by newer ones, by model.
pub const FEEDBACK_INDEX_EVICTED: &str = "modelgate_feedback_index_evicted_total";
/// Predictions of shared feedback routes, by model and result (`shipped` to the control
/// plane, `dropped` because the outbox to it was full).
pub const FEEDBACK_SHIPPED: &str = "modelgate_feedback_shipped_total";
/// Feedback calls to the control plane (lookups, claims) that failed or timed out.
pub const FEEDBACK_CONTROL_PLANE_FAILURES: &str = "modelgate_feedback_control_plane_failures_total";
/// Share of labelled predictions that were right over the feedback window, by model and version.
pub const MODEL_ACCURACY: &str = "modelgate_model_accuracy";
/// Truths received over the feedback window, by model, version and kind (`label`, `value`, `reward`).
pub const MODEL_FEEDBACK_SAMPLES: &str = "modelgate_model_feedback_samples";
/// Precision of one class over the feedback window, by model, version and class.
pub const MODEL_PRECISION: &str = "modelgate_model_precision";
/// Recall of one class over the feedback window, by model, version and class.
pub const MODEL_RECALL: &str = "modelgate_model_recall";
/// Mean absolute error over the feedback window, by model and version.
pub const MODEL_MAE: &str = "modelgate_model_mae";
/// Root mean squared error over the feedback window, by model and version.
pub const MODEL_RMSE: &str = "modelgate_model_rmse";
/// Mean reward over the feedback window, by model and version.
pub const MODEL_MEAN_REWARD: &str = "modelgate_model_mean_reward";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const DIFF_BUCKETS: &[f64] = &[0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0];

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SHADOW_ABS_DIFF.into()), DIFF_BUCKETS))
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
    metrics::describe_counter!(OVERLOADED, "Requests refused because the in-flight request data budget was spent");
    metrics::describe_counter!(CONNECTION_TIMEOUTS, "Connections closed by the first-bytes or idle timeout");
    metrics::describe_counter!(
        ACCEPT_BACKOFFS,
        "Accepts that failed for lack of file descriptors or memory and backed off"
    );
    metrics::describe_gauge!(INFLIGHT_BYTES, metrics::Unit::Bytes, "Request data held by requests in flight");
    metrics::describe_gauge!(INFLIGHT_BYTES_LIMIT, metrics::Unit::Bytes, "Most request data held at once");
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Data-plane connections open");
    metrics::describe_gauge!(OPEN_CONNECTIONS_LIMIT, "Most data-plane connections open at once");
    metrics::describe_gauge!(MODEL_STATE, "1 for the current state of each model version");
    metrics::describe_histogram!(MODEL_LOAD_DURATION, metrics::Unit::Seconds, "Time to load a model version");
    metrics::describe_gauge!(DEVICE_MEMORY, metrics::Unit::Bytes, "Device memory held by a model version");
    metrics::describe_counter!(ROUTE_REQUESTS, "Routed requests by target version and outcome");
    metrics::describe_histogram!(ROUTE_DURATION, metrics::Unit::Seconds, "End-to-end time of routed requests");
    metrics::describe_gauge!(ROUTE_WEIGHT, "Route weight of each target version, in percent");
    metrics::describe_counter!(ROUTE_CANARY_RETRIES, "Canary server faults retried on the baseline, by outcome");
    metrics::describe_counter!(ROUTE_CANARY_HEDGES, "Slow canary requests hedged on the baseline, by outcome");
    metrics::describe_counter!(
        ROUTE_CANARY_RESCUES,
        "Canary requests running at its rollback, sent to the baseline too, by outcome"
    );
    metrics::describe_gauge!(ROLLOUT_STATE, "1 for the current phase of each rollout");
    metrics::describe_gauge!(ROLLOUT_CANARY_WEIGHT, "Canary weight of each rollout, in percent");
    metrics::describe_counter!(ROLLOUT_CHECKS, "Rollout SLO checks by verdict");
    metrics::describe_counter!(ROLLOUT_ROLLBACKS, "Rollouts rolled back, by reason");
    metrics::describe_counter!(ROLLOUT_PROMOTIONS, "Rollouts promoted");
    metrics::describe_gauge!(CONTROL_PLANE_CONNECTED, "1 while the control plane answers, 0 when it does not");
    metrics::describe_gauge!(
        DRIFT_STATISTIC,
        "The control plane's latest drift statistic of a feature of a served version (label stat names it)"
    );
    metrics::describe_gauge!(
        DRIFT_STATUS,
        "1 while the control plane's latest evaluation says a served version drifted (against its reference, or a canary against the stable version)"
    );
    metrics::describe_gauge!(SYNC_APPLIED_GENERATION, "Generation of the last desired state applied");
    metrics::describe_counter!(SYNC_FAILURES, "Parts of a desired state that did not apply, by reason");
    metrics::describe_counter!(
        ARTIFACT_BYTES_DOWNLOADED,
        metrics::Unit::Bytes,
        "Bytes of model files downloaded from the control plane"
    );
    metrics::describe_counter!(SHADOW_REQUESTS, "Shadow copies of routed requests, by outcome");
    metrics::describe_histogram!(SHADOW_DURATION, metrics::Unit::Seconds, "Time of shadow copies");
    metrics::describe_counter!(SHADOW_COMPARISONS, "Shadow responses compared with the primary's");
    metrics::describe_histogram!(SHADOW_ABS_DIFF, "Largest absolute output difference, primary vs shadow");
    describe_drift();
}

fn describe_drift() {
    metrics::describe_counter!(DRIFT_ROWS, "Rows profiled for drift");
    metrics::describe_counter!(
        DRIFT_ROWS_DROPPED,
        "Rows not profiled for drift: the profiler's queue was full (drift.queue batches or drift.queue_bytes bytes)"
    );
    metrics::describe_counter!(DRIFT_ROWS_SKIPPED, "Rows not profiled for drift: the batch did not fit the schema");
    metrics::describe_counter!(DRIFT_WINDOWS_DROPPED, "Closed drift windows dropped before they were drained");
    metrics::describe_gauge!(DRIFT_PROFILE_BYTES, metrics::Unit::Bytes, "Heap bytes of open and kept drift windows");
    metrics::describe_gauge!(
        DRIFT_QUEUE_BYTES,
        metrics::Unit::Bytes,
        "Tensor bytes of batches queued for the drift profiler (at most drift.queue_bytes)"
    );
    metrics::describe_gauge!(
        DRIFT_SAMPLED_ONE_IN,
        "Batches offered to the drift profiler: one in this many (above drift.max_rows_per_second)"
    );
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

    /// Counters of batches run, one per reason a batch closes, in the
    /// order given (the batcher indexes them by its own reason type).
    pub fn batch_counters<const N: usize>(&self, reasons: [&'static str; N]) -> [Counter; N] {
        reasons.map(|reason| {
            counter!(BATCHES, "model" => self.model.clone(), "version" => self.version.clone(), "reason" => reason)
        })
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

/// Records how close the door is to its limits: request data held and
/// open connections, each beside its bound.
pub fn door(inflight_bytes: usize, max_inflight_bytes: usize, open_connections: usize, max_connections: usize) {
    gauge!(INFLIGHT_BYTES).set(inflight_bytes as f64);
    gauge!(INFLIGHT_BYTES_LIMIT).set(max_inflight_bytes as f64);
    gauge!(OPEN_CONNECTIONS).set(open_connections as f64);
    gauge!(OPEN_CONNECTIONS_LIMIT).set(max_connections as f64);
}

/// Counts a connection closed by a timeout (`first_bytes` or `idle`).
pub fn connection_timed_out(which: &'static str) {
    counter!(CONNECTION_TIMEOUTS, "timeout" => which).increment(1);
}

/// Counts an accept that failed for lack of resources and backed off.
pub fn accept_backoff() {
    counter!(ACCEPT_BACKOFFS).increment(1);
}

/// Counts a request refused for the in-flight byte budget.
pub fn overloaded() {
    counter!(OVERLOADED).increment(1);
}

/// Records the device memory a version holds.
pub fn device_memory(model: &str, version: u64, device: &str, bytes: u64) {
    gauge!(DEVICE_MEMORY, "model" => model.to_owned(), "version" => version.to_string(), "device" => device.to_owned())
        .set(bytes as f64);
}

/// Pre-registered handles of one version behind a route.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Answered.
    pub success: Counter,
    /// Failed through the server's fault.
    pub error: Counter,
    /// Refused as the client's mistake.
    pub client_error: Counter,
    /// End-to-end time.
    pub duration: Histogram,
    /// Current weight.
    pub weight: Gauge,
}

impl RouteMetrics {
    /// Registers the handles of `model` version `version`.
    pub fn new(model: &str, version: u64) -> RouteMetrics {
        let (m, v) = (model.to_owned(), version.to_string());
        let requests = |outcome: &'static str| counter!(ROUTE_REQUESTS, "model" => m.clone(), "version" => v.clone(), "outcome" => outcome);
        RouteMetrics {
            success: requests("success"),
            error: requests("error"),
            client_error: requests("client_error"),
            duration: histogram!(ROUTE_DURATION, "model" => m.clone(), "version" => v.clone()),
            weight: gauge!(ROUTE_WEIGHT, "model" => m.clone(), "version" => v.clone()),
        }
    }
}

/// Pre-registered handles of one shadow target.
#[derive(Debug)]
pub struct ShadowMetrics {
    /// Copies answered.
    pub success: Counter,
    /// Copies that failed.
    pub error: Counter,
    /// Copies not sent: too many in flight.
    pub skipped: Counter,
    /// Time of copies.
    pub duration: Histogram,
    /// Comparison handles per primary version the copies are compared with.
    comparisons: Vec<ComparisonMetrics>,
    model: String,
    shadow: String,
}

/// The comparison handles of one (primary, shadow) pair.
#[derive(Debug)]
struct ComparisonMetrics {
    primary: u64,
    agree: Counter,
    disagree: Counter,
    max_abs_diff: Histogram,
}

impl ComparisonMetrics {
    fn new(model: &str, shadow: &str, primary: u64) -> ComparisonMetrics {
        let (m, s, p) = (model.to_owned(), shadow.to_owned(), primary.to_string());
        let result = |r: &'static str| counter!(SHADOW_COMPARISONS, "model" => m.clone(), "primary" => p.clone(), "shadow" => s.clone(), "result" => r);
        ComparisonMetrics {
            primary,
            agree: result("agree"),
            disagree: result("disagree"),
            max_abs_diff: histogram!(SHADOW_ABS_DIFF, "model" => m.clone(), "primary" => p.clone(), "shadow" => s.clone()),
        }
    }
}

impl ShadowMetrics {
    /// Registers the handles of shadow `version` of `model`, compared with
    /// the route's `primaries`.
    pub fn new(model: &str, version: u64, primaries: &[u64]) -> ShadowMetrics {
        let (m, v) = (model.to_owned(), version.to_string());
        let requests = |outcome: &'static str| counter!(SHADOW_REQUESTS, "model" => m.clone(), "version" => v.clone(), "outcome" => outcome);
        ShadowMetrics {
            success: requests("success"),
            error: requests("error"),
            skipped: requests("skipped"),
            duration: histogram!(SHADOW_DURATION, "model" => m.clone(), "version" => v.clone()),
            comparisons: primaries.iter().map(|&p| ComparisonMetrics::new(&m, &v, p)).collect(),
            model: m,
            shadow: v,
        }
    }

    /// Records one comparison with the primary `primary`.
    pub fn comparison(&self, primary: u64, agree: bool, max_abs_diff: Option<f64>) {
        let registered;
        let handles = match self.comparisons.iter().find(|c| c.primary == primary) {
            Some(handles) => handles,
            // Every primary is a target of the route this shadow was built
            // with; registering here only guards against a future caller.
            None => {
                registered = ComparisonMetrics::new(&self.model, &self.shadow, primary);
                &registered
            }
        };
        if agree {
            handles.agree.increment(1)
        } else {
            handles.disagree.increment(1)
        }
        if let Some(diff) = max_abs_diff {
            handles.max_abs_diff.record(diff);
        }
    }
}

/// Sets the state gauge of a rollout: 1 for `state`, 0 for the others.
pub fn rollout_state(model: &str, canary: u64, state: &str, canary_weight: u32) {
    for s in ["progressing", "paused", "succeeded", "failed"] {
        gauge!(ROLLOUT_STATE, "model" => model.to_owned(), "canary" => canary.to_string(), "state" => s)
            .set(if s == state { 1.0 } else { 0.0 });
    }
    gauge!(ROLLOUT_CANARY_WEIGHT, "model" => model.to_owned(), "canary" => canary.to_string())
        .set(f64::from(canary_weight));
}

/// Counts one SLO check of a rollout.
pub fn rollout_check(model: &str, canary: u64, verdict: &'static str) {
    counter!(ROLLOUT_CHECKS, "model" => model.to_owned(), "canary" => canary.to_string(), "verdict" => verdict)
        .increment(1);
}

/// Counts one retry of a canary's fault on the baseline (rare: a failing
/// canary is rolled back within a few requests, so no handle is kept).
pub fn canary_retry(model: &str, canary: u64, outcome: &'static str) {
    counter!(ROUTE_CANARY_RETRIES, "model" => model.to_owned(), "canary" => canary.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts one hedge of a slow canary request on the baseline (rare, like
/// retries: a slow canary is rolled back within a few requests).
pub fn canary_hedge(model: &str, canary: u64, outcome: &'static str) {
    counter!(ROUTE_CANARY_HEDGES, "model" => model.to_owned(), "canary" => canary.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts one rescue of a canary request on the baseline at its rollback
/// (at most the canary's requests in flight then).
pub fn canary_rescue(model: &str, canary: u64, outcome: &'static str) {
    counter!(ROUTE_CANARY_RESCUES, "model" => model.to_owned(), "canary" => canary.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts a rollback.
pub fn rollout_rollback(model: &str, canary: u64, reason: &'static str) {
    counter!(ROLLOUT_ROLLBACKS, "model" => model.to_owned(), "canary" => canary.to_string(), "reason" => reason)
        .increment(1);
}

/// Counts a promotion.
pub fn rollout_promotion(model: &str, canary: u64, how: &'static str) {
    counter!(ROLLOUT_PROMOTIONS, "model" => model.to_owned(), "canary" => canary.to_string(), "how" => how)
        .increment(1);
}

/// Whether the control plane answered the last call.
pub fn control_plane_connected(connected: bool) {
    gauge!(CONTROL_PLANE_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// A served version's drift status and its features' statistics, as the control plane
/// evaluated them.
pub fn drift(model: &str, version: u64, drifted: bool, features: &[(&str, &'static str, f64)]) {
    gauge!(DRIFT_STATUS, "model" => model.to_owned(), "version" => version.to_string()).set(if drifted {
        1.0
    } else {
        0.0
    });
    for (feature, stat, value) in features {
        gauge!(DRIFT_STATISTIC, "model" => model.to_owned(), "version" => version.to_string(),
            "feature" => (*feature).to_owned(), "stat" => *stat)
        .set(*value);
    }
}

/// The generation of the desired state just applied.
pub fn sync_applied_generation(generation: i64) {
    gauge!(SYNC_APPLIED_GENERATION).set(generation as f64);
}

/// Counts a part of a desired state that did not apply.
pub fn sync_failure(reason: &'static str) {
    counter!(SYNC_FAILURES, "reason" => reason).increment(1);
}

/// Counts downloaded model bytes.
pub fn artifact_bytes_downloaded(bytes: u64) {
    if bytes > 0 {
        counter!(ARTIFACT_BYTES_DOWNLOADED).increment(bytes);
    }
}

// === drift profiler ===

fn version_labels(model: &str, version: u64) -> [(&'static str, String); 2] {
    [("model", model.to_owned()), ("version", version.to_string())]
}

/// [`DRIFT_ROWS`] of one version.
pub fn drift_rows(model: &str, version: u64) -> Counter {
    counter!(DRIFT_ROWS, &version_labels(model, version))
}

/// [`DRIFT_ROWS_DROPPED`] of one version.
pub fn drift_rows_dropped(model: &str, version: u64) -> Counter {
    counter!(DRIFT_ROWS_DROPPED, &version_labels(model, version))
}

/// [`DRIFT_ROWS_SKIPPED`] of one version.
pub fn drift_rows_skipped(model: &str, version: u64) -> Counter {
    counter!(DRIFT_ROWS_SKIPPED, &version_labels(model, version))
}

/// [`DRIFT_WINDOWS_DROPPED`] of one version.
pub fn drift_windows_dropped(model: &str, version: u64) -> Counter {
    counter!(DRIFT_WINDOWS_DROPPED, &version_labels(model, version))
}

/// [`DRIFT_SAMPLED_ONE_IN`] of one version.
pub fn drift_sampled_one_in(model: &str, version: u64) -> Gauge {
    gauge!(DRIFT_SAMPLED_ONE_IN, &version_labels(model, version))
}

/// Sets [`DRIFT_PROFILE_BYTES`].
pub fn drift_profile_bytes(bytes: usize) {
    gauge!(DRIFT_PROFILE_BYTES).set(bytes as f64);
}

/// Sets [`DRIFT_QUEUE_BYTES`].
pub fn drift_queue_bytes(bytes: usize) {
    gauge!(DRIFT_QUEUE_BYTES).set(bytes as f64);
}

/// Counts one feedback request's result for `model`.
pub fn feedback(model: &str, result: &'static str) {
    counter!(FEEDBACK, "model" => model.to_owned(), "result" => result).increment(1);
}

/// Publishes a route's prediction index size (at scrape time).
pub fn feedback_index(model: &str, entries: usize, capacity: usize, bytes: usize, evicted: u64, dropped: u64) {
    counter!(FEEDBACK_INDEX_DROPPED, "model" => model.to_owned()).absolute(dropped);
    gauge!(FEEDBACK_INDEX_ENTRIES, "model" => model.to_owned()).set(entries as f64);
    gauge!(FEEDBACK_INDEX_CAPACITY, "model" => model.to_owned()).set(capacity as f64);
    gauge!(FEEDBACK_INDEX_BYTES, "model" => model.to_owned()).set(bytes as f64);
    counter!(FEEDBACK_INDEX_EVICTED, "model" => model.to_owned()).absolute(evicted);
}

/// Publishes a shared route's outbox counts (at scrape time).
pub fn feedback_shipped(model: &str, shipped: u64, dropped: u64) {
    counter!(FEEDBACK_SHIPPED, "model" => model.to_owned(), "result" => "shipped").absolute(shipped);
    counter!(FEEDBACK_SHIPPED, "model" => model.to_owned(), "result" => "dropped").absolute(dropped);
}

/// Counts a feedback call to the control plane that failed.
pub fn feedback_fleet_failure() {
    counter!(FEEDBACK_CONTROL_PLANE_FAILURES).increment(1);
}

/// The quality figures of one version over the feedback window, as
/// [`model_quality`] publishes them.
#[derive(Clone, Debug, Default)]
pub struct QualityFigures {
    /// Labels, values and rewards received.
    pub samples: [(&'static str, u64); 3],
    /// Accuracy.
    pub accuracy: Option<f64>,
    /// (class, precision, recall).
    pub classes: Vec<(u32, Option<f64>, Option<f64>)>,
    /// Mean absolute error.
    pub mae: Option<f64>,
    /// Root mean squared error.
    pub rmse: Option<f64>,
    /// Mean reward.
    pub mean_reward: Option<f64>,
}

/// Publishes one version's quality (at scrape time). A figure without
/// samples in the window is NaN, never 0: every comparison with NaN is
/// false, so an accuracy alert does not fire on a quiet window.
pub fn model_quality(model: &str, version: u64, figures: &QualityFigures) {
    let (m, v) = (model.to_owned(), version.to_string());
    for (kind, n) in figures.samples {
        gauge!(MODEL_FEEDBACK_SAMPLES, "model" => m.clone(), "version" => v.clone(), "kind" => kind).set(n as f64);
    }
    let set = |name: &'static str, value: Option<f64>| {
        let g = gauge!(name, "model" => m.clone(), "version" => v.clone());
        match value {
            Some(x) => g.set(x),
            None => g.set(f64::NAN),
        }
    };
    set(MODEL_ACCURACY, figures.accuracy);
    set(MODEL_MAE, figures.mae);
    set(MODEL_RMSE, figures.rmse);
    set(MODEL_MEAN_REWARD, figures.mean_reward);
    for (class, precision, recall) in &figures.classes {
        let c = class.to_string();
        gauge!(MODEL_PRECISION, "model" => m.clone(), "version" => v.clone(), "class" => c.clone())
            .set(precision.unwrap_or(f64::NAN));
        gauge!(MODEL_RECALL, "model" => m.clone(), "version" => v.clone(), "class" => c)
            .set(recall.unwrap_or(f64::NAN));
    }
}
