//! TorchScript models served through real sockets: over HTTP and gRPC with
//! outputs equal to libtorch's own, next to the ONNX copy of the same model,
//! batched, and placed (or refused) by instance group.
//!
//! References are computed at test time by running the model file straight
//! through libtorch (`tch`'s `CModule::forward_ts`, none of the gateway's
//! binding, batching or codecs), so the tests check the model as it is rather
//! than numbers that could go stale, and need nothing beyond the libtorch the
//! `torch` feature builds against (`scripts/setup.sh --torch`).
#![cfg(feature = "torch")]
// Helpers outside `#[test]` functions too: a panic is the failure report (see clippy.toml).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{TestServer, config_for, example_models as repo_models, grpc_raw_request};
use modelgate_backend_torch::tch;
use serde_json::json;

// === harness (the shared one in tests/common, plus FP32 helpers) ===

/// Serves only `models` of `repository`.
async fn start(repository: &Path, models: &[&str]) -> TestServer {
    let mut config = config_for(repository);
    config.repository.load_models = Some(models.iter().map(|m| m.to_string()).collect());
    TestServer::start(config).await
}

/// One FP32 `[rows, 64]` input over V2 JSON; the first output's values and shape.
async fn infer_http(server: &TestServer, model: &str, input: &str, rows: usize, x: &[f32]) -> (Vec<f32>, Vec<i64>) {
    let body = json!({ "inputs": [{ "name": input, "datatype": "FP32", "shape": [rows, 64], "data": x }] });
    let reply = server.post_json(&format!("/v2/models/{model}/infer"), &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let reply = reply.json();
    let output = &reply["outputs"][0];
    assert_eq!(output["datatype"], "FP32", "{reply}");
    let values = output["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let shape = output["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
    (values, shape)
}

/// The same over gRPC with `raw_input_contents`.
async fn infer_grpc(server: &TestServer, model: &str, input: &str, rows: usize, x: &[f32]) -> (Vec<f32>, Vec<i64>) {
    let request = grpc_raw_request(model, input, "FP32", &[rows as i64, 64], le_bytes(x));
    let reply = server.grpc().await.model_infer(request).await.unwrap().into_inner();
    assert_eq!(reply.outputs[0].datatype, "FP32");
    (from_le_bytes(&reply.raw_output_contents[0]), reply.outputs[0].shape.clone())
}

async fn text(server: &TestServer, path: &str) -> String {
    String::from_utf8(server.get(path).await.body.to_vec()).unwrap()
}

// === references from libtorch itself ===

/// Features of `mlp_torch`'s input rows.
const FEATURES: usize = 64;

/// Input and libtorch's output of one batch.
struct Reference {
    input: Vec<f32>,
    output: Vec<f32>,
    output_shape: Vec<i64>,
}

/// Runs `model` through libtorch directly for each batch size, on one intra-op
/// thread (the gateway's default, so that both sides sum in the same order).
fn torch_reference(model: &Path, batches: &[usize]) -> BTreeMap<usize, Reference> {
    let model = model.to_path_buf();
    let batches = batches.to_vec();
    // A thread of its own: libtorch's intra-op thread count is set per thread.
    std::thread::spawn(move || {
        tch::set_num_threads(1);
        let mut module = tch::CModule::load(&model).unwrap();
        module.set_eval();
        let _no_grad = tch::no_grad_guard();
        batches
            .into_iter()
            .map(|rows| {
                let input = seeded_rows(rows);
                let x = tch::Tensor::from_slice(&input).view([rows as i64, FEATURES as i64]);
                let y = module.forward_ts(&[x]).unwrap();
                let output_shape = y.size();
                let output = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
                (rows, Reference { input, output, output_shape })
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// `rows` input rows of standard-normal values, different for each batch size
/// (seeded with it): not a pattern a broken split could match.
fn seeded_rows(rows: usize) -> Vec<f32> {
    modelgate_sketch::testing::normal(rows as u64, rows * FEATURES, 0.0, 1.0).into_iter().map(|v| v as f32).collect()
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_torch_answers_http_and_grpc_exactly_as_torch_does_for_batches_1_7_and_64() {
    let references = torch_reference(&repo_models().join("mlp_torch/1/model.pt"), &[1, 7, 64]);
    let server = start(&repo_models(), &["mlp_torch"]).await;
    for (rows, reference) in &references {
        assert_eq!(reference.output_shape, vec![*rows as i64, 10]);
        let (http, shape) = infer_http(&server, "mlp_torch", "INPUT__0", *rows, &reference.input).await;
        assert_eq!(shape, reference.output_shape);
        assert_eq!(http, reference.output, "HTTP, batch {rows}: max |diff| {}", max_abs_diff(&http, &reference.output));
        let (grpc, shape) = infer_grpc(&server, "mlp_torch", "INPUT__0", *rows, &reference.input).await;
        assert_eq!(shape, reference.output_shape);
        assert_eq!(grpc, reference.output, "gRPC, batch {rows}: max |diff| {}", max_abs_diff(&grpc, &reference.output));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_and_torchscript_copies_of_one_model_serve_side_by_side_with_matching_outputs() {
    let server = start(&repo_models(), &["mlp", "mlp_torch"]).await;
    let index = server.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(index.status, 200);
    let index = index.json();
    for model in ["mlp", "mlp_torch"] {
        let row = index.as_array().unwrap().iter().find(|r| r["name"] == model).unwrap();
        assert_eq!(row["state"], "READY", "{index}");
    }
    let config = server.get("/v2/models/mlp_torch/config").await.json();
    assert_eq!((config["platform"].as_str(), config["backend"].as_str()), (Some("pytorch_libtorch"), Some("pytorch")));
    let metadata = server.get("/v2/models/mlp_torch").await.json();
    assert_eq!(metadata["inputs"][0], json!({ "name": "INPUT__0", "datatype": "FP32", "shape": [-1, 64] }));

    let x: Vec<f32> = (0..7 * 64).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let (onnx, onnx_shape) = infer_http(&server, "mlp", "input", 7, &x).await;
    let (torch, torch_shape) = infer_grpc(&server, "mlp_torch", "INPUT__0", 7, &x).await;
    assert_eq!(onnx_shape, torch_shape);
    // Same weights, two runtimes: equal up to float rounding.
    let worst = max_abs_diff(&onnx, &torch);
    assert!(worst < 1e-5, "max |onnx - torch| = {worst}");
    assert!(onnx.iter().any(|v| v.abs() > 1e-3), "a model that outputs zeros would match trivially");

    let metrics = text(&server, "/metrics").await;
    for model in ["mlp", "mlp_torch"] {
        assert!(metrics.contains(&format!("modelgate_requests_total{{model=\"{model}\"")), "{model} missing");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_mlp_torch_are_batched_and_each_gets_its_own_rows() {
    let references = torch_reference(&repo_models().join("mlp_torch/1/model.pt"), &[64]);
    let reference = &references[&64];
    // Batches close at the preferred size, never on the clock (the 60 s delay only bounds a
    // broken run): 48 concurrent requests make exactly six batches of eight on any machine.
    let repository = tempfile::tempdir().unwrap();
    let version = repository.path().join("mlp_torch/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(repo_models().join("mlp_torch/1/model.pt"), version.join("model.pt")).unwrap();
    let config = std::fs::read_to_string(repo_models().join("mlp_torch/config.pbtxt")).unwrap().replace(
        "dynamic_batching { }",
        "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 60000000 }",
    );
    assert!(config.contains("preferred_batch_size"), "the example's batching stanza changed: {config}");
    std::fs::write(repository.path().join("mlp_torch/config.pbtxt"), config).unwrap();
    let server = Arc::new(start(repository.path(), &["mlp_torch"]).await);
    let requests = 48;
    let tasks: Vec<_> = (0..requests)
        .map(|row| {
            let server = server.clone();
            let x = reference.input[row * 64..(row + 1) * 64].to_vec();
            tokio::spawn(async move {
                // Half over each protocol: they share one queue.
                if row % 2 == 0 {
                    infer_http(&server, "mlp_torch", "INPUT__0", 1, &x).await
                } else {
                    infer_grpc(&server, "mlp_torch", "INPUT__0", 1, &x).await
                }
            })
        })
        .collect();
    for (row, task) in tasks.into_iter().enumerate() {
        let (y, shape) = task.await.unwrap();
        assert_eq!(shape, vec![1, 10]);
        // A row may run in a batch of another size than in torch's run of 64,
        // which may change the order of float sums: equal up to rounding.
        let expected = &reference.output[row * 10..(row + 1) * 10];
        assert!(max_abs_diff(&y, expected) < 1e-5, "row {row}: {y:?} vs {expected:?}");
    }
    let stats = server.get("/v2/models/mlp_torch/stats").await.json();
    let stats = &stats["model_stats"][0];
    let inferences = stats["inference_count"].as_u64().unwrap();
    let executions = stats["execution_count"].as_u64().unwrap();
    assert_eq!(inferences, requests as u64, "{stats}");
    assert_eq!(executions, 6, "48 rows in batches of the preferred 8: {stats}");
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

/// A repository with copies of `mlp` (ONNX, `onnx_gpu`) and `mlp_torch`
/// (`torch_gpu`) whose only instance asks for GPU `gpu`.
fn repository_on_gpu(gpu: u32, allow_cpu_fallback: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fallback = if allow_cpu_fallback {
        "parameters { key: \"allow_cpu_fallback\" value: { string_value: \"true\" } }\n"
    } else {
        ""
    };
    let group = format!("instance_group [ {{ count: 1 kind: KIND_GPU gpus: [ {gpu} ] }} ]\n");
    for (model, file, header) in [
        ("onnx_gpu", "mlp/1/model.onnx", "platform: \"onnxruntime_onnx\"\nmax_batch_size: 64\n"),
        (
            "torch_gpu",
            "mlp_torch/1/model.pt",
            "platform: \"pytorch_libtorch\"\nmax_batch_size: 64\n\
             input [ { name: \"INPUT__0\" data_type: TYPE_FP32 dims: [ 64 ] } ]\n\
             output [ { name: \"OUTPUT__0\" data_type: TYPE_FP32 dims: [ 10 ] } ]\n",
        ),
    ] {
        let version = dir.path().join(model).join("1");
        std::fs::create_dir_all(&version).unwrap();
        let source = repo_models().join(file);
        std::fs::copy(&source, version.join(source.file_name().unwrap())).unwrap();
        std::fs::write(dir.path().join(model).join("config.pbtxt"), format!("{header}{group}{fallback}")).unwrap();
    }
    dir
}

/// A GPU number no machine here has.
const MISSING_GPU: u32 = 63;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_cannot_be_had_fails_the_load_with_the_reason_instead_of_running_on_the_cpu() {
    let repository = repository_on_gpu(MISSING_GPU, false);
    let server = start(repository.path(), &["onnx_gpu", "torch_gpu"]).await;
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    for model in ["onnx_gpu", "torch_gpu"] {
        let row = index.as_array().unwrap().iter().find(|r| r["name"] == model).unwrap();
        assert_eq!(row["state"], "UNAVAILABLE", "{index}");
        // The reason depends on the build (`cuda` feature or not) and the machine; with
        // onnxruntime-gpu on a GPU machine, ONNX Runtime itself reports the bad ordinal.
        let reason = row["reason"].as_str().unwrap();
        assert!(reason.to_lowercase().contains("cuda"), "{model}: {reason}");
    }
    let torch = index.as_array().unwrap().iter().find(|r| r["name"] == "torch_gpu").unwrap();
    assert!(torch["reason"].as_str().unwrap().starts_with("device cuda:63 unavailable: "), "{index}");
    let body =
        json!({ "inputs": [{ "name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": vec![0.0f32; 64] }] });
    let reply = server.post_json("/v2/models/torch_gpu/infer", &body).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_allows_cpu_fallback_serves_on_the_cpu_when_the_gpu_is_missing() {
    let repository = repository_on_gpu(MISSING_GPU, true);
    let server = start(repository.path(), &["onnx_gpu", "torch_gpu"]).await;
    let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let (onnx, _) = infer_http(&server, "onnx_gpu", "input", 1, &x).await;
    let (torch, _) = infer_http(&server, "torch_gpu", "INPUT__0", 1, &x).await;
    assert!(max_abs_diff(&onnx, &torch) < 1e-5);
    server.stop().await;
}

/// Run on a machine with a GPU (README, GPU): `cargo test --workspace --features torch,cuda -- --ignored gpu_`.
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a CUDA GPU and a CUDA libtorch (README, GPU)"]
    async fn gpu_torch_on_cuda_0_matches_torch_and_reports_its_device_memory() {
        let references = torch_reference(&repo_models().join("mlp_torch/1/model.pt"), &[1, 7, 64]);
        let repository = repository_on_gpu(0, false);
        let server = start(repository.path(), &["torch_gpu"]).await;
        for (rows, reference) in &references {
            let (y, shape) = infer_grpc(&server, "torch_gpu", "INPUT__0", *rows, &reference.input).await;
            assert_eq!(shape, reference.output_shape);
            // cuBLAS sums in another order than the CPU (libtorch keeps TF32 off for matmuls).
            let worst = max_abs_diff(&y, &reference.output);
            assert!(worst < 1e-4, "batch {rows}: max |gpu - torch cpu| = {worst}");
        }
        let metrics = text(&server, "/metrics").await;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("modelgate_device_memory_bytes{") && l.contains("model=\"torch_gpu\""))
            .unwrap_or_else(|| panic!("no device memory metric:\n{metrics}"));
        assert!(line.contains("device=\"cuda:0\""), "{line}");
        // The mlp's weights: (64x256 + 256) + (256x256 + 256) + (256x10 + 10) floats.
        assert!(
            line.ends_with(&format!(" {}", ((64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)) * 4)),
            "{line}"
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a CUDA GPU and onnxruntime-gpu in ORT_DYLIB_PATH (README, GPU)"]
    async fn gpu_onnx_on_cuda_0_matches_torch() {
        let references = torch_reference(&repo_models().join("mlp_torch/1/model.pt"), &[1, 7, 64]);
        let repository = repository_on_gpu(0, false);
        let server = start(repository.path(), &["onnx_gpu"]).await;
        let index = server.post_json("/v2/repository/index", &json!({})).await.json();
        assert_eq!(index[0]["state"], "READY", "{index}");
        for (rows, reference) in &references {
            let (y, shape) = infer_http(&server, "onnx_gpu", "input", *rows, &reference.input).await;
            assert_eq!(shape, reference.output_shape);
            // ONNX Runtime's CUDA EP allows TF32 matmuls by default (10-bit mantissa).
            let worst = max_abs_diff(&y, &reference.output);
            assert!(worst < 1e-2, "batch {rows}: max |gpu - torch cpu| = {worst}");
        }
        server.stop().await;
    }
}
