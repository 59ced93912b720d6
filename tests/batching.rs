//! Dynamic batching through real sockets: many concurrent requests become few
//! executions, each client gets exactly its own answer, and the queue's limits,
//! deadlines and cancellations behave as documented.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TempRepo, TestServer, config_for, mlp_request};
use serde_json::{Value, json};

fn rows(value: &Value) -> Vec<f32> {
    value["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

const BATCHED_MLP: &str = "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 2000 }\ninstance_group [ { count: 2 kind: KIND_CPU } ]";
const BATCHED_SIMPLE: &str = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }";

/// 10,000 requests from 64 concurrent clients, each with distinct inputs:
/// every response matches unbatched execution of the same input, none is
/// lost or duplicated, and the batcher really did batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_each_get_their_own_answer() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, Some(BATCHED_MLP)).add("mlp", "mlp_single", 1, Some("max_batch_size: 64")).add(
        "simple",
        "simple",
        1,
        Some(BATCHED_SIMPLE),
    );
    let server = Arc::new(TestServer::start(config_for(repo.path())).await);

    // References from unbatched execution (no dynamic batching: one request per execution).
    const DISTINCT_MLP_INPUTS: u32 = 50;
    let mut reference = Vec::new();
    for seed in 0..DISTINCT_MLP_INPUTS {
        let out = server.post_json("/v2/models/mlp_single/infer", &mlp_request(1, seed)).await.json();
        reference.push(rows(&out));
    }
    let reference = Arc::new(reference);

    const CLIENTS: usize = 64;
    const REQUESTS: usize = 10_000;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (server, reference) = (server.clone(), reference.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut mismatches = 0usize;
            for n in (client..REQUESTS).step_by(CLIENTS) {
                let id = format!("req-{n}");
                if n % 2 == 0 {
                    // simple: exact integer arithmetic on inputs unique to this request.
                    let a: [i32; 16] = std::array::from_fn(|i| (n * 16 + i) as i32);
                    let b: [i32; 16] = std::array::from_fn(|i| (n as i32) - i as i32);
                    let mut body = common::simple_request(&a, &b);
                    body["id"] = json!(id);
                    let out = server.post_json("/v2/models/simple/infer", &body).await.json();
                    let sum: Vec<i64> =
                        out["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                    let expected: Vec<i64> = (0..16).map(|i| (a[i] + b[i]) as i64).collect();
                    mismatches += usize::from(sum != expected);
                    ids.push(out["id"].as_str().unwrap().to_owned());
                } else {
                    let seed = (n as u32) % DISTINCT_MLP_INPUTS;
                    let mut body = mlp_request(1, seed);
                    body["id"] = json!(id);
                    let out = server.post_json("/v2/models/mlp/infer", &body).await.json();
                    let got = rows(&out);
                    let want = &reference[seed as usize];
                    let close = got.len() == want.len()
                        && got.iter().zip(want).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()));
                    mismatches += usize::from(!close);
                    ids.push(out["id"].as_str().unwrap().to_owned());
                }
            }
            (ids, mismatches)
        }));
    }
    let mut ids = Vec::new();
    let mut mismatches = 0;
    for task in tasks {
        let (mut i, m) = task.await.unwrap();
        ids.append(&mut i);
        mismatches += m;
    }
    assert_eq!(mismatches, 0, "every response equals unbatched execution");
    assert_eq!(ids.len(), REQUESTS, "no request lost");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), REQUESTS, "no response duplicated");
    let expected: HashSet<String> = (0..REQUESTS).map(|n| format!("req-{n}")).collect();
    assert_eq!(distinct, expected.iter().collect(), "each client got its own ids back");

    for model in ["mlp", "simple"] {
        let v = server.gateway.repository.resolve(model, None).unwrap();
        let (rows, executions) = (v.stats.inference_count(), v.stats.execution_count());
        assert_eq!(rows, (REQUESTS / 2) as u64);
        assert!(executions < rows, "{model}: {executions} executions for {rows} rows: no batching happened");
    }
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_a_departed_client_frees_its_slot() {
    let repo = TempRepo::new();
    // A 10 s batching delay keeps requests queued; two fit.
    repo.add(
        "mlp",
        "mlp",
        1,
        Some("max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 10000000 default_queue_policy { max_queue_size: 2 } }"),
    );
    let server = Arc::new(TestServer::start(config_for(repo.path())).await);
    let version = server.gateway.repository.resolve("mlp", None).unwrap();
    let first = {
        let server = server.clone();
        tokio::spawn(async move { server.post_json("/v2/models/mlp/infer", &mlp_request(1, 1)).await })
    };
    let second = {
        let server = server.clone();
        tokio::spawn(async move { server.post_json("/v2/models/mlp/infer", &mlp_request(1, 2)).await })
    };
    common::eventually("two queued requests", || version.queue_depth() == 2).await;

    let started = Instant::now();
    let refused = server.post_json("/v2/models/mlp/infer", &mlp_request(1, 3)).await;
    refused.expect_error(503, "exceeds maximum queue size");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after waiting");

    // The second client goes away: the gateway notices (its connection closes, the request's
    // answer has nobody to go to) and its slot is freed. Without disconnect detection the depth
    // stays at 2 and this waits in vain.
    second.abort();
    let _ = second.await;
    common::eventually("the departed client's slot to be freed", || version.queue_depth() == 1).await;
    let third = {
        let server = server.clone();
        tokio::spawn(async move { server.post_json("/v2/models/mlp/infer", &mlp_request(1, 4)).await })
    };
    // Back to 2 only once the third request is queued (a refused one never counts).
    common::eventually("the third request queued in the freed slot", || version.queue_depth() == 2).await;
    assert!(!third.is_finished(), "the third request waits in the queue");
    server.post_json("/v2/models/mlp/infer", &mlp_request(1, 5)).await.expect_error(503, "exceeds maximum queue size");
    first.abort();
    third.abort();
}

#[tokio::test]
async fn a_request_past_its_deadline_is_dropped_before_execution() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, Some("max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 5000000 }"));
    let server = TestServer::start(config_for(repo.path())).await;
    let mut body = mlp_request(1, 1);
    body["parameters"] = json!({ "timeout": 100_000 });
    let started = Instant::now();
    server.post_json("/v2/models/mlp/infer", &body).await.expect_error(504, "timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The header form, in milliseconds.
    let reply = server
        .request(
            http::Method::POST,
            "/v2/models/mlp/infer",
            &[("x-request-timeout-ms", "50")],
            serde_json::to_vec(&mlp_request(1, 2)).unwrap(),
        )
        .await;
    reply.expect_error(504, "timeout");
    let version = server.gateway.repository.resolve("mlp", None).unwrap();
    common::eventually("the expired requests to leave the queue", || version.queue_depth() == 0).await;
    assert_eq!(version.stats.execution_count(), 0, "expired requests never reach the model");
}

#[tokio::test]
async fn a_model_default_timeout_applies_and_requests_may_only_shorten_it() {
    let repo = TempRepo::new();
    repo.add(
        "mlp",
        "mlp",
        1,
        Some("max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 5000000 default_queue_policy { default_timeout_microseconds: 200000 allow_timeout_override: true } }"),
    );
    let server = TestServer::start(config_for(repo.path())).await;
    let mut body = mlp_request(1, 1);
    body["parameters"] = json!({ "timeout": 60_000_000 });
    let started = Instant::now();
    server.post_json("/v2/models/mlp/infer", &body).await.expect_error(504, "timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "a request cannot lengthen the model's timeout");
}

/// All 13 inputs of the identity example with `n` elements each; BYTES gets `text`.
fn identity_request(n: usize, text: &[u8]) -> (Bytes, String) {
    let mut inputs = Vec::new();
    let mut binary = Vec::new();
    for &(name, dtype, size) in common::IDENTITY_FIXED_INPUTS {
        inputs.push(
            json!({ "name": name, "shape": [1, n], "datatype": dtype, "parameters": { "binary_data_size": n * size } }),
        );
        binary.extend(std::iter::repeat_n(if name == "IN_BOOL" { 1u8 } else { n as u8 }, n * size));
    }
    let mut strings = Vec::new();
    for _ in 0..n {
        strings.extend_from_slice(&(text.len() as u32).to_le_bytes());
        strings.extend_from_slice(text);
    }
    inputs.push(json!({ "name": "IN_BYTES", "shape": [1, n], "datatype": "BYTES", "parameters": { "binary_data_size": strings.len() } }));
    binary.extend_from_slice(&strings);
    let header =
        serde_json::to_vec(&json!({ "inputs": inputs, "outputs": [{ "name": "OUT_INT32" }, { "name": "OUT_BYTES" }] }))
            .unwrap();
    let length = header.len().to_string();
    let mut body = header;
    body.extend_from_slice(&binary);
    (Bytes::from(body), length)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_runtime_refuses_fails_alone_and_different_shapes_never_mix() {
    let repo = TempRepo::new();
    // A batch closes when three rows of one shape wait (the preferred size), never on the clock:
    // the 60 s delay only bounds a broken run, so a slow machine cannot split a batch.
    repo.add(
        "identity",
        "identity",
        1,
        Some(
            "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [3] max_queue_delay_microseconds: 60000000 }",
        ),
    );
    let server = Arc::new(TestServer::start(config_for(repo.path())).await);
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            // Two widths (never batched together); request 3 carries bytes that are not UTF-8,
            // which ONNX string tensors refuse only at execution.
            let n = if i % 2 == 0 { 3 } else { 5 };
            let text: &[u8] = if i == 3 { b"\xff\xfe" } else { b"ok" };
            let (body, length) = identity_request(n, text);
            let reply = server
                .request(
                    http::Method::POST,
                    "/v2/models/identity/infer",
                    &[("inference-header-content-length", &length)],
                    body,
                )
                .await;
            (i, n, reply)
        }));
    }
    for task in tasks {
        let (i, n, reply) = task.await.unwrap();
        if i == 3 {
            reply.expect_error(400, "not UTF-8");
            continue;
        }
        assert_eq!(reply.status, 200, "request {i}: {:?}", String::from_utf8_lossy(&reply.body));
        let json = reply.json();
        assert_eq!(json["outputs"][0]["shape"], json!([1, n]), "request {i} got rows of another shape");
        assert_eq!(json["outputs"][0]["data"], json!(vec![i32::from_le_bytes([n as u8; 4]); n]));
        assert_eq!(json["outputs"][1]["data"], json!(vec!["ok"; n]));
    }
    let version = server.gateway.repository.resolve("identity", None).unwrap();
    // One batch per width; the failing batch is retried request by request and
    // only its two good members count as executions.
    assert_eq!(version.stats.execution_count(), 3, "requests of one width were batched together");
}

/// `[models.<name>]` in the gateway's config wins over the model's
/// config.pbtxt: batch size, batcher settings and instances, or no batcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_config_sets_a_models_batching_and_instances_over_its_file() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, Some(BATCHED_MLP)).add("mlp", "unbatched", 1, Some(BATCHED_MLP));
    let mut config = config_for(repo.path());
    let overrides = "max_batch_size = 16\ninstances = 3\n\
                     dynamic_batching = { preferred_batch_size = [4], max_queue_delay_microseconds = 5000000 }";
    config.models.insert("mlp".into(), toml::from_str(overrides).unwrap());
    config.models.insert("unbatched".into(), toml::from_str("dynamic_batching = false").unwrap());
    config.validate().unwrap();
    let server = Arc::new(TestServer::start(config).await);

    let mlp = server.get("/v2/models/mlp/config").await.json();
    assert_eq!(mlp["max_batch_size"], 16);
    assert_eq!(mlp["dynamic_batching"]["preferred_batch_size"], json!([4]));
    assert_eq!(mlp["instance_group"][0]["count"], 3);
    let unbatched = server.get("/v2/models/unbatched/config").await.json();
    assert!(unbatched.get("dynamic_batching").is_none(), "{unbatched}");
    assert_eq!(unbatched["instance_group"][0]["count"], 2, "the file's instances where the config is silent");

    // Four requests at once make one batch of the preferred size, long before the 5 s delay.
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move { server.post_json("/v2/models/mlp/infer", &mlp_request(1, i)).await.status })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(4), "waited {:?} for the delay", started.elapsed());
    let stats = &server.get("/v2/models/mlp/stats").await.json()["model_stats"][0];
    assert_eq!((stats["inference_count"].as_u64(), stats["execution_count"].as_u64()), (Some(4), Some(1)));
}
