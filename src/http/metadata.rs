//! JSON bodies of the non-inference endpoints, shaped as Triton returns them:
//! server and model metadata, model config (proto field names, defaults
//! printed, int64 as numbers), statistics, and the repository index.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::gateway::{EXTENSIONS, SERVER_NAME};
use crate::repository::{IndexEntry, ModelVersion};

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

fn duration((count, ns): (u64, u64)) -> Value {
    json!({ "count": count, "ns": ns })
}

/// `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub fn statistics(versions: &[Arc<ModelVersion>]) -> Value {
    let stats: Vec<Value> = versions
        .iter()
        .map(|v| {
            let s = &v.stats;
            let compute = s.compute.get();
            let batches: Vec<Value> = s
                .batch_stats()
                .map(|(size, b)| {
                    let compute = b.compute.get();
                    json!({
                        "batch_size": size,
                        "compute_input": duration(compute.input),
                        "compute_infer": duration(compute.infer),
                        "compute_output": duration(compute.output),
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
                    "success": duration(s.success.get()),
                    "fail": duration(s.fail.get()),
                    "queue": duration(s.queue.get()),
                    "compute_input": duration(compute.input),
                    "compute_infer": duration(compute.infer),
                    "compute_output": duration(compute.output),
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
