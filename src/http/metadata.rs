//! JSON bodies of the non-inference endpoints, shaped as Triton returns them:
//! server and model metadata, model config (proto field names, defaults
//! printed, int64 as numbers), statistics, and the repository index.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::gateway::{EXTENSIONS, SERVER_NAME};
use crate::repository::model_config::{InstanceKind, VersionPolicy};
use crate::repository::{IndexEntry, ModelConfig, ModelVersion};
use crate::stats::StatDuration;

/// `GET /v2`.
pub fn server_metadata() -> Value {
    json!({ "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS })
}

/// `GET /v2/models/{m}[/versions/{v}]`.
pub fn model_metadata(name: &str, version: &ModelVersion, versions: &[u64]) -> Value {
    let io = &version.io;
    let tensors = |specs: &[crate::tensor::IoSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "datatype": s.dtype.v2_name(), "shape": io.full_shape(s) }))
            .collect()
    };
    json!({
        "name": name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": version.config.platform,
        "inputs": tensors(&io.inputs),
        "outputs": tensors(&io.outputs),
    })
}

/// `GET /v2/models/{m}/config`: the `ModelConfig` message in Triton's JSON.
pub fn model_config(config: &ModelConfig) -> Value {
    let version_policy = match &config.version_policy {
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific(v) => json!({ "specific": { "versions": v } }),
    };
    let inputs: Vec<Value> = config
        .inputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "data_type": s.dtype.config_name(), "format": "FORMAT_NONE", "dims": s.dims,
                "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
                "is_non_linear_format_io": false,
            })
        })
        .collect();
    let outputs: Vec<Value> = config
        .outputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "data_type": s.dtype.config_name(), "dims": s.dims, "label_filename": "",
                "is_shape_tensor": false, "is_non_linear_format_io": false,
            })
        })
        .collect();
    let groups: Vec<Value> = config
        .instance_groups
        .iter()
        .map(|g| {
            json!({
                "name": g.name, "kind": g.kind.name(), "count": g.count,
                "gpus": if g.kind == InstanceKind::Gpu && g.gpus.is_empty() { vec![0] } else { g.gpus.clone() },
                "secondary_devices": [], "profile": [], "passive": false, "host_policy": "",
            })
        })
        .collect();
    let parameters: serde_json::Map<String, Value> =
        config.parameters.iter().map(|(k, v)| (k.clone(), json!({ "string_value": v }))).collect();
    let mut body = json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "runtime": "",
        "version_policy": version_policy,
        "max_batch_size": config.max_batch_size,
        "input": inputs,
        "output": outputs,
        "batch_input": [],
        "batch_output": [],
        "optimization": { "priority": "PRIORITY_DEFAULT", "input_pinned_memory": { "enable": true },
                          "output_pinned_memory": { "enable": true }, "gather_kernel_buffer_threshold": 0,
                          "eager_batching": false },
        "instance_group": groups,
        "default_model_filename": config.default_model_filename,
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": parameters,
        "model_warmup": [],
        // perf_analyzer reads `decoupled` whenever its parent is present.
        "model_transaction_policy": { "decoupled": false },
    });
    if let Some(b) = &config.dynamic_batching {
        body["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "preserve_ordering": b.preserve_ordering,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": b.default_timeout_microseconds,
                "allow_timeout_override": b.allow_timeout_override,
                "max_queue_size": b.max_queue_size,
            },
            "priority_queue_policy": {},
        });
    }
    body
}

fn duration(d: &StatDuration) -> Value {
    let (count, ns) = d.get();
    json!({ "count": count, "ns": ns })
}

/// `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub fn statistics(versions: &[Arc<ModelVersion>]) -> Value {
    let stats: Vec<Value> = versions
        .iter()
        .map(|v| {
            let s = &v.stats;
            let batches: Vec<Value> = s
                .batch_stats()
                .map(|(size, b)| {
                    json!({
                        "batch_size": size,
                        "compute_input": duration(&b.compute_input),
                        "compute_infer": duration(&b.compute_infer),
                        "compute_output": duration(&b.compute_output),
                    })
                })
                .collect();
            json!({
                "name": v.name,
                "version": v.version.to_string(),
                "last_inference": s.last_inference_ms(),
                "inference_count": s.inference_count(),
                "execution_count": s.execution_count(),
                "inference_stats": {
                    "success": duration(&s.success),
                    "fail": duration(&s.fail),
                    "queue": duration(&s.queue),
                    "compute_input": duration(&s.compute_input),
                    "compute_infer": duration(&s.compute_infer),
                    "compute_output": duration(&s.compute_output),
                    "cache_hit": { "count": 0, "ns": 0 },
                    "cache_miss": { "count": 0, "ns": 0 },
                },
                "response_stats": {},
                "batch_stats": batches,
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": stats })
}

/// `POST /v2/repository/index`.
pub fn repository_index(rows: &[IndexEntry]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let mut row = json!({ "name": r.name });
                if let Some(v) = r.version {
                    row["version"] = json!(v.to_string());
                }
                if let Some(state) = r.state {
                    row["state"] = json!(state);
                    row["reason"] = json!(r.reason);
                }
                row
            })
            .collect(),
    )
}
