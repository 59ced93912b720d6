//! The README's promises about `config.pbtxt` fields that only show when a
//! model loads and serves, through a real socket: `default_model_filename`,
//! the thread-count `parameters` (and their refusal when unreadable),
//! `model_warmup`, and a reload under traffic that fails no request.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;
mod support_routing;

use common::{TempRepo, TestServer, config_for, example_models, mlp_request};
use serde_json::{Value, json};

/// The mlp example's config under another name, with `extra` fields.
fn mlp_config(name: &str, extra: &str) -> String {
    format!("name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 64\n{extra}\n")
}

fn index_entry(index: &Value, name: &str) -> Value {
    index.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone()
}

/// The 10 scores of a one-row mlp answer.
fn scores(reply: &common::Reply) -> usize {
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    reply.json()["outputs"][0]["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn default_model_filename_names_the_file_a_version_loads() {
    let repo = TempRepo::new();
    let onnx = std::fs::read(example_models().join("mlp/1/model.onnx")).unwrap();
    repo.write("named/1/weights.onnx", &onnx);
    repo.write("named/config.pbtxt", mlp_config("named", "default_model_filename: \"weights.onnx\"").as_bytes());
    // The same layout without the field looks for model.onnx, and says so.
    repo.write("unnamed/1/weights.onnx", &onnx);
    repo.write("unnamed/config.pbtxt", mlp_config("unnamed", "").as_bytes());
    let server = TestServer::start(config_for(repo.path())).await;

    assert_eq!(scores(&server.post_json("/v2/models/named/infer", &mlp_request(1, 3)).await), 10);
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    assert_eq!(index_entry(&index, "named")["state"], "READY");
    let unnamed = index_entry(&index, "unnamed");
    assert_eq!(unnamed["state"], "UNAVAILABLE");
    assert!(unnamed["reason"].as_str().unwrap().contains("model.onnx"), "{unnamed}");
}

/// `parameters` entries of a config, one per (key, value).
fn parameters(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(key, value)| format!("parameters {{ key: \"{key}\" value: {{ string_value: \"{value}\" }} }}\n"))
        .collect()
}

/// Asserts that each (model, key, quoted value) failed to load with a reason naming both.
fn assert_loads_refused(index: &Value, refused: &[(&str, &str, &str)]) {
    for (name, key, value) in refused {
        let entry = index_entry(index, name);
        assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
        let reason = entry["reason"].as_str().unwrap();
        assert!(reason.contains(key) && reason.contains(value), "{reason}");
    }
}

#[tokio::test]
async fn thread_count_parameters_load_when_readable_and_refuse_the_load_when_not() {
    let repo = TempRepo::new();
    let threads =
        |intra: &str, inter: &str| parameters(&[("intra_op_thread_count", intra), ("inter_op_thread_count", inter)]);
    repo.add("mlp", "counted", 1, Some(&mlp_config("counted", &threads("1", "2"))));
    repo.add("mlp", "words", 1, Some(&mlp_config("words", &threads("1", "two"))));
    repo.add("mlp", "huge", 1, Some(&mlp_config("huge", &threads("100000", "0"))));
    let server = TestServer::start(config_for(repo.path())).await;

    assert_eq!(scores(&server.post_json("/v2/models/counted/infer", &mlp_request(1, 5)).await), 10);
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    assert_loads_refused(
        &index,
        &[("words", "inter_op_thread_count", "\"two\""), ("huge", "intra_op_thread_count", "\"100000\"")],
    );
}

#[tokio::test]
async fn yes_no_runtime_parameters_load_when_readable_and_refuse_the_load_when_not() {
    let repo = TempRepo::new();
    let flags = |arena: &str, spinning: &str| parameters(&[("enable_mem_arena", arena), ("allow_spinning", spinning)]);
    repo.add("mlp", "arena", 1, Some(&mlp_config("arena", &flags("1", "false"))));
    repo.add("mlp", "plain", 1, Some(&mlp_config("plain", &flags("0", "true"))));
    repo.add("mlp", "maybe", 1, Some(&mlp_config("maybe", &flags("maybe", "0"))));
    repo.add("mlp", "spinning", 1, Some(&mlp_config("spinning", &flags("true", "yes"))));
    let server = TestServer::start(config_for(repo.path())).await;

    for name in ["arena", "plain"] {
        assert_eq!(scores(&server.post_json(&format!("/v2/models/{name}/infer"), &mlp_request(1, 5)).await), 10);
    }
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    assert_loads_refused(
        &index,
        &[("maybe", "enable_mem_arena", "\"maybe\""), ("spinning", "allow_spinning", "\"yes\"")],
    );
}

#[tokio::test]
async fn a_reload_under_traffic_fails_no_request() {
    let server = std::sync::Arc::new(TestServer::examples_with_model_control().await);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut answered = 0;
                for seed in 0..150 {
                    let reply = server.post_json("/v2/models/mlp/infer", &mlp_request(1, c * 1000 + seed)).await;
                    assert_eq!(scores(&reply), 10, "request {seed} of client {c}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut reloads = 0;
    while !clients.iter().all(|c| c.is_finished()) && reloads < 20 {
        let reply = server.post_json("/v2/repository/models/mlp/load", &json!({})).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        reloads += 1;
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert_eq!(answered, 600);
    assert!(reloads >= 2, "the reloads overlapped the traffic ({reloads})");
}

#[tokio::test]
async fn a_configured_warmup_sample_runs_before_serving_and_its_failure_fails_the_load() {
    let warmup = "model_warmup [ { name: \"zeros\" batch_size: 2 count: 3 inputs { key: \"input\" \
                  value: { data_type: TYPE_FP32 dims: [ 64 ] zero_data: true } } } ]";
    let repo = TempRepo::new();
    let failing = std::fs::read(support_routing::test_model("failing.onnx")).unwrap();
    // failing.onnx loads, then fails every run: the default warm-up only logs that, a configured one fails the load.
    repo.write("unwarmed/1/model.onnx", &failing);
    repo.write("unwarmed/config.pbtxt", mlp_config("unwarmed", "").as_bytes());
    repo.write("warmed/1/model.onnx", &failing);
    repo.write("warmed/config.pbtxt", mlp_config("warmed", warmup).as_bytes());
    repo.add("mlp", "mlp_warmed", 1, Some(&mlp_config("mlp_warmed", warmup)));
    let server = TestServer::start(config_for(repo.path())).await;

    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    assert_eq!(index_entry(&index, "unwarmed")["state"], "READY");
    assert_eq!(index_entry(&index, "mlp_warmed")["state"], "READY");
    assert_eq!(scores(&server.post_json("/v2/models/mlp_warmed/infer", &mlp_request(1, 9)).await), 10);
    let warmed = index_entry(&index, "warmed");
    assert_eq!(warmed["state"], "UNAVAILABLE", "{warmed}");
    assert!(warmed["reason"].as_str().unwrap().contains("sample 'zeros'"), "{warmed}");
}
