//! Triton's `nv_inference_*` metrics, so that dashboards and autoscalers
//! written for Triton (Grafana boards, KEDA and HPA rules on
//! `nv_inference_pending_request_count`) work against the gateway unchanged.
//!
//! They are rendered when `/metrics` is scraped, from the statistics every
//! version already keeps for Triton's statistics extension: the request path
//! pays nothing for them. Names, types, units (cumulative microseconds) and
//! the `model` / `version` labels are Triton's; failures carry no `reason`
//! label, as before Triton 2.40, rather than a reason the gateway cannot tell.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::repository::ModelVersion;
use crate::stats::StatDuration;

/// One metric: name, type, help, and its value for a version.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ModelVersion) -> u64,
}

fn micros(d: &StatDuration) -> u64 {
    d.get().1 / 1_000
}

const FAMILIES: &[Family] = &[
    Family {
        name: "nv_inference_request_success",
        kind: "counter",
        help: "Number of successful inference requests, all batch sizes",
        value: |v| v.stats.success.get().0,
    },
    Family {
        name: "nv_inference_request_failure",
        kind: "counter",
        help: "Number of failed inference requests, all batch sizes",
        value: |v| v.stats.fail.get().0,
    },
    Family {
        name: "nv_inference_count",
        kind: "counter",
        help: "Number of inferences performed (a batch of n counts n)",
        value: |v| v.stats.inference_count(),
    },
    Family {
        name: "nv_inference_exec_count",
        kind: "counter",
        help: "Number of model executions performed (a batch counts once)",
        value: |v| v.stats.execution_count(),
    },
    Family {
        name: "nv_inference_pending_request_count",
        kind: "gauge",
        help: "Instantaneous number of pending requests awaiting execution per-model",
        value: |v| v.queue_depth() as u64,
    },
    Family {
        name: "nv_inference_request_duration_us",
        kind: "counter",
        help: "Cumulative inference request duration in microseconds",
        value: |v| micros(&v.stats.success),
    },
    Family {
        name: "nv_inference_queue_duration_us",
        kind: "counter",
        help: "Cumulative inference queuing duration in microseconds",
        value: |v| micros(&v.stats.queue),
    },
    Family {
        name: "nv_inference_compute_input_duration_us",
        kind: "counter",
        help: "Cumulative compute input duration in microseconds",
        value: |v| micros(&v.stats.compute_input),
    },
    Family {
        name: "nv_inference_compute_infer_duration_us",
        kind: "counter",
        help: "Cumulative compute inference duration in microseconds",
        value: |v| micros(&v.stats.compute_infer),
    },
    Family {
        name: "nv_inference_compute_output_duration_us",
        kind: "counter",
        help: "Cumulative inference compute output duration in microseconds",
        value: |v| micros(&v.stats.compute_output),
    },
];

/// Appends the `nv_inference_*` families for `versions` in Prometheus text.
pub fn render(versions: &[Arc<ModelVersion>], out: &mut String) {
    if versions.is_empty() {
        return;
    }
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for version in versions {
            // Model names are validated identifiers ([A-Za-z0-9._-]): nothing to escape.
            let _ = writeln!(
                out,
                "{}{{model=\"{}\",version=\"{}\"}} {}",
                family.name,
                version.name,
                version.version,
                (family.value)(version)
            );
        }
    }
}
