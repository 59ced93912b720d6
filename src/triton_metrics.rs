//! Triton's `nv_inference_*` metrics, so that dashboards and autoscalers
//! written for Triton (Grafana boards, KEDA and HPA rules on
//! `nv_inference_pending_request_count`) work against the gateway unchanged.
//!
//! They are rendered when `/metrics` is scraped, from the statistics every
//! version already keeps for Triton's statistics extension: the request path
//! pays nothing for them. Names, types, units (cumulative microseconds) and
//! the `model` / `version` labels are Triton's; failures carry no `reason`
//! label (newer Triton releases add one) rather than a reason the gateway
//! does not track.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::repository::ModelVersion;

/// The microseconds of a `(count, ns)` statistic.
fn micros((_, ns): (u64, u64)) -> u64 {
    ns / 1_000
}

/// Each family: name, type, help, and its value for a version.
type Family = (&'static str, &'static str, &'static str, fn(&ModelVersion) -> u64);

#[rustfmt::skip]
const FAMILIES: &[Family] = &[
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
        |v| v.stats.success.get().0),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes",
        |v| v.stats.fail.get().0),
    ("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n)",
        |v| v.stats.inference_count()),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (a batch counts once)",
        |v| v.stats.execution_count()),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution per-model",
        |v| v.queue_depth() as u64),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
        |v| micros(v.stats.success.get())),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
        |v| micros(v.stats.queue.get())),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds",
        |v| micros(v.stats.compute.get().input)),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds",
        |v| micros(v.stats.compute.get().infer)),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds",
        |v| micros(v.stats.compute.get().output)),
];

/// Appends the `nv_inference_*` families for `versions` in Prometheus text.
pub fn render(versions: &[Arc<ModelVersion>], out: &mut String) {
    if versions.is_empty() {
        return;
    }
    for &(name, kind, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for version in versions {
            // Model names are validated identifiers ([A-Za-z0-9._-]): nothing to escape.
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                version.name,
                version.version,
                value(version)
            );
        }
    }
}
