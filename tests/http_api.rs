//! The HTTP/REST front door through a real socket: every KServe V2 endpoint,
//! Triton's extensions, and every bad input the protocol allows.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;

use bytes::Bytes;
use common::{Reply, TempRepo, TestServer, config_for, mlp_request, serve_example, simple_request};
use http::Method;
use serde_json::{Value, json};

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number") as f32).collect()
}

#[tokio::test]
async fn health_metadata_and_readiness_answer_like_triton() {
    let server = TestServer::examples().await;
    assert_eq!(server.get("/v2/health/live").await.status, 200);
    assert_eq!(server.get("/v2/health/ready").await.status, 200);
    let meta = server.get("/v2").await.json();
    assert_eq!(meta["name"], "modelgate");
    assert_eq!(
        meta["extensions"],
        json!(["binary_tensor_data", "model_configuration", "model_repository", "statistics"])
    );

    let model = server.get("/v2/models/mlp").await.json();
    assert_eq!(model["name"], "mlp");
    assert_eq!(model["versions"], json!(["1"]));
    assert_eq!(model["platform"], "onnxruntime_onnx");
    assert_eq!(model["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 64] }]));
    assert_eq!(model["outputs"], json!([{ "name": "output", "datatype": "FP32", "shape": [-1, 10] }]));
    assert_eq!(server.get("/v2/models/mlp/versions/1").await.json()["name"], "mlp");
    assert_eq!(server.get("/v2/models/mlp/ready").await.status, 200);
    assert_eq!(server.get("/v2/models/mlp/versions/1/ready").await.status, 200);

    server.get("/v2/models/nope").await.expect_error(404, "unknown model 'nope'");
    server.get("/v2/models/mlp/versions/7/ready").await.expect_error(404, "unknown version 7");
    server.get("/v2/models/mlp/versions/x1").await.expect_error(400, "invalid model version");
    server.get("/v2/models/..%2Fetc/ready").await.expect_error(400, "invalid model name");
    server.get("/v2/nothing/here").await.expect_error(404, "no endpoint");
    server.get("/v2/models/mlp/infer").await.expect_error(405, "use POST");
}

#[tokio::test]
async fn strict_readiness_waits_for_every_model() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, None).write("broken/1/model.onnx", b"not an onnx file");
    let mut config = config_for(repo.path());
    config.repository.strict_readiness = true;
    let server = TestServer::start(config).await;
    assert_eq!(server.get("/v2/health/ready").await.status, 503, "a failed model keeps a strict server unready");
    assert_eq!(server.get("/v2/models/mlp/ready").await.status, 200, "the other models serve");
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    let broken = index.as_array().unwrap().iter().find(|r| r["name"] == "broken").unwrap().clone();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(broken["reason"].as_str().unwrap().contains("model load failed"), "{broken}");
    let reply = server.post_json("/v2/models/broken/infer", &mlp_request(1, 0)).await;
    reply.expect_error(503, "no ready version");
    assert!(!reply.error().contains(repo.path().to_str().unwrap()), "errors never show host paths: {}", reply.error());
    assert!(!broken["reason"].as_str().unwrap().contains(repo.path().to_str().unwrap()));
}

#[tokio::test]
async fn json_inference_computes_the_models_outputs() {
    let server = TestServer::examples().await;
    let a: [i32; 16] = std::array::from_fn(|i| i as i32 * 3);
    let b: [i32; 16] = std::array::from_fn(|i| 100 - i as i32);
    let mut body = simple_request(&a, &b);
    body["id"] = json!("req-42");
    let reply = server.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    let out = reply.json();
    assert_eq!(out["model_name"], "simple");
    assert_eq!(out["model_version"], "1");
    assert_eq!(out["id"], "req-42");
    let outputs = out["outputs"].as_array().unwrap();
    let sum: Vec<i64> = outputs[0]["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let diff: Vec<i64> = outputs[1]["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(outputs[0]["name"], "OUTPUT0");
    assert_eq!(outputs[0]["shape"], json!([1, 16]));
    assert_eq!(sum, (0..16).map(|i| (a[i] + b[i]) as i64).collect::<Vec<_>>());
    assert_eq!(diff, (0..16).map(|i| (a[i] - b[i]) as i64).collect::<Vec<_>>());

    // Rows of a batch give the same results as the rows sent alone.
    let batch = server.post_json("/v2/models/mlp/infer", &mlp_request(3, 7)).await.json();
    let batched = floats(&batch["outputs"][0]["data"]);
    assert_eq!(batch["outputs"][0]["shape"], json!([3, 10]));
    let rows = mlp_request(3, 7)["inputs"][0]["data"].as_array().unwrap().clone();
    for r in 0..3 {
        let single = json!({ "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[r * 64..(r + 1) * 64] }] });
        let out = server.post_json("/v2/models/mlp/infer", &single).await.json();
        let got = floats(&out["outputs"][0]["data"]);
        for (x, y) in got.iter().zip(&batched[r * 10..(r + 1) * 10]) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "row {r}: {x} vs {y}");
        }
    }
    // Nested data arrays are accepted as well as flat ones.
    let nested = json!({ "inputs": [
        { "name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [a] },
        { "name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [b] },
    ]});
    let reply = server.post_json("/v2/models/simple/infer", &nested).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let out = reply.json();
    let sum: Vec<i64> = out["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(sum, (0..16).map(|i| (a[i] + b[i]) as i64).collect::<Vec<_>>(), "nested data decodes as flat data");
}

/// Builds a binary-extension body: JSON header then raw bytes.
fn binary_body(header: &Value, binary: &[&[u8]]) -> (Bytes, String) {
    let json = serde_json::to_vec(header).unwrap();
    let length = json.len().to_string();
    let mut body = json;
    for part in binary {
        body.extend_from_slice(part);
    }
    (Bytes::from(body), length)
}

fn split_binary(reply: &Reply) -> (Value, &[u8]) {
    let length: usize = reply.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    (serde_json::from_slice(&reply.body[..length]).unwrap(), &reply.body[length..])
}

#[tokio::test]
async fn binary_tensors_travel_both_ways() {
    let server = TestServer::examples().await;
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = vec![5; 16];
    let header = json!({
        "inputs": [
            { "name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": { "binary_data_size": 64 } },
            { "name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": { "binary_data_size": 64 } },
        ],
        "outputs": [ { "name": "OUTPUT1", "parameters": { "binary_data": true } }, { "name": "OUTPUT0" } ],
    });
    let (body, length) = binary_body(&header, &[bytemuck::cast_slice(&a), bytemuck::cast_slice(&b)]);
    let reply = server
        .request(Method::POST, "/v2/models/simple/infer", &[("inference-header-content-length", &length)], body)
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/octet-stream");
    let (json, binary) = split_binary(&reply);
    let outputs = json["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "OUTPUT1", "outputs come back in the order requested");
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 64);
    let diff: Vec<i32> = bytemuck::pod_collect_to_vec(binary);
    assert_eq!(diff, (0..16).map(|i| i - 5).collect::<Vec<_>>());
    assert!(outputs[1].get("parameters").is_none(), "a JSON output carries no parameters");
    assert_eq!(outputs[1]["data"][3], 8);

    // `binary_data_output` asks for every output in binary; FP16 travels only that way.
    let halves: Vec<u16> = [1.0f32, -2.5, 0.0, 65504.0].iter().map(|&f| half::f16::from_f32(f).to_bits()).collect();
    let (body, length) = identity_binary_body(
        identity_inputs(&halves),
        json!({ "outputs": [{ "name": "OUT_FP16" }, { "name": "OUT_BYTES" }], "parameters": { "binary_data_output": true } }),
    );
    let reply = server
        .request(Method::POST, "/v2/models/identity/infer", &[("inference-header-content-length", &length)], body)
        .await;
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    let (json, binary) = split_binary(&reply);
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(&binary[..8], bytemuck::cast_slice::<u16, u8>(&halves));
    let strings = &binary[8..];
    assert_eq!(strings, bytes_tensor(&["a", "", "é", "\t"]).as_slice());
}

#[tokio::test]
async fn bool_inputs_reach_the_model_as_sent_and_any_nonzero_byte_is_true() {
    let server = TestServer::examples().await;
    // 0/1 bytes go to ONNX Runtime as they are; any other byte is true (a copy).
    for (sent, expected) in
        [([1u8, 0, 1, 0], json!([true, false, true, false])), ([2, 0, 255, 1], json!([true, false, true, true]))]
    {
        let mut inputs = identity_inputs(&[0; 4]);
        inputs[0].2 = sent.to_vec(); // IN_BOOL
        let (body, length) = identity_binary_body(inputs, json!({ "outputs": [{ "name": "OUT_BOOL" }] }));
        let reply = server
            .request(Method::POST, "/v2/models/identity/infer", &[("inference-header-content-length", &length)], body)
            .await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["outputs"][0]["data"], expected, "sent {sent:?}");
    }
}

fn bytes_tensor(items: &[&str]) -> Vec<u8> {
    let mut out = vec![];
    for s in items {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// All 13 inputs of the `identity` example, 4 elements each, in binary form.
fn identity_inputs(halves: &[u16]) -> Vec<(String, &'static str, Vec<u8>)> {
    let n = 4;
    let fixed = |size: usize| vec![1u8; n * size];
    vec![
        ("IN_BOOL".into(), "BOOL", vec![1, 0, 1, 0]),
        ("IN_INT8".into(), "INT8", fixed(1)),
        ("IN_INT16".into(), "INT16", fixed(2)),
        ("IN_INT32".into(), "INT32", fixed(4)),
        ("IN_INT64".into(), "INT64", fixed(8)),
        ("IN_UINT8".into(), "UINT8", fixed(1)),
        ("IN_UINT16".into(), "UINT16", fixed(2)),
        ("IN_UINT32".into(), "UINT32", fixed(4)),
        ("IN_UINT64".into(), "UINT64", fixed(8)),
        ("IN_FP16".into(), "FP16", bytemuck::cast_slice(halves).to_vec()),
        ("IN_FP32".into(), "FP32", fixed(4)),
        ("IN_FP64".into(), "FP64", fixed(8)),
        ("IN_BYTES".into(), "BYTES", bytes_tensor(&["a", "", "é", "\t"])),
    ]
}

/// One binary request of `inputs` (shape [1, 4] each), with `extra`'s keys
/// (outputs, parameters) in its JSON header.
fn identity_binary_body(inputs: Vec<(String, &'static str, Vec<u8>)>, extra: Value) -> (Bytes, String) {
    let mut header = extra;
    header["inputs"] = inputs
        .iter()
        .map(|(name, dtype, bytes)| {
            json!({ "name": name, "shape": [1, 4], "datatype": dtype, "parameters": { "binary_data_size": bytes.len() } })
        })
        .collect();
    let parts: Vec<&[u8]> = inputs.iter().map(|(_, _, bytes)| bytes.as_slice()).collect();
    binary_body(&header, &parts)
}

#[tokio::test]
async fn every_malformed_infer_request_gets_a_clear_400() {
    let server = TestServer::examples().await;
    let good = simple_request(&[1; 16], &[2; 16]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(&|v| v["inputs"][0]["data"] = json!([1, 2, 3])), "'data' holds 3 elements, the shape needs 16"),
        (with(&|v| v["inputs"][0]["shape"] = json!([1, -16])), "negative dimension"),
        (with(&|v| v["inputs"][0]["shape"] = json!([4294967296u64, 4294967296u64, 16])), "too many elements"),
        (
            with(&|v| {
                v["inputs"][0]["shape"] = json!([2, 16]);
                v["inputs"][0]["data"] = json!(vec![1; 32]);
            }),
            "disagree on the batch size",
        ),
        (
            with(&|v| {
                v["inputs"][0]["shape"] = json!([1, 8]);
                v["inputs"][0]["data"] = json!(vec![1; 8]);
            }),
            "unexpected shape [1, 8]",
        ),
        (with(&|v| v["inputs"][0]["shape"] = json!([16])), "unexpected shape [16]"),
        (with(&|v| v["inputs"][0]["datatype"] = json!("FP32")), "datatype is FP32, but the model expects INT32"),
        (with(&|v| v["inputs"][0]["datatype"] = json!("FP99")), "unknown datatype 'FP99'"),
        (with(&|v| v["inputs"][0]["data"][0] = json!(1.5)), "expected an integer"),
        (with(&|v| v["inputs"][0]["data"][0] = json!(3_000_000_000u64)), "out of range for INT32"),
        (with(&|v| v["inputs"][0]["data"][0] = json!("x")), "found a string"),
        (with(&|v| v["inputs"].as_array_mut().unwrap().truncate(1)), "missing 'INPUT1'"),
        (with(&|v| v["inputs"][1]["name"] = json!("INPUT0")), "appears more than once"),
        (with(&|v| v["inputs"][1]["name"] = json!("INPUT9")), "unexpected input 'INPUT9'"),
        (with(&|v| v["outputs"] = json!([{ "name": "NOPE" }])), "unexpected output 'NOPE'"),
        (with(&|v| v["outputs"] = json!([{ "name": "OUTPUT0" }, { "name": "OUTPUT0" }])), "requested more than once"),
        (
            with(&|v| {
                v["inputs"][0]["shape"] = json!([9, 16]);
                v["inputs"][0]["data"] = json!(vec![1; 144]);
            }),
            "max_batch_size 8",
        ),
        (with(&|v| v["parameters"] = json!({ "sequence_id": 4 })), "sequence batching is not supported"),
        (
            with(&|v| v["inputs"][0]["parameters"] = json!({ "binary_data_size": 64 })),
            "both 'data' and binary_data_size",
        ),
        (json!({ "inputs": "no" }), "malformed inference request"),
        (json!([1, 2]), "malformed inference request"),
    ];
    for (body, expected) in cases {
        let reply = server.post_json("/v2/models/simple/infer", &body).await;
        reply.expect_error(400, expected);
    }
    let raw = |body: &'static [u8], headers: &[(&str, &str)]| {
        let server = &server;
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            server.request(Method::POST, "/v2/models/simple/infer", &h, Bytes::from_static(body)).await
        }
    };
    raw(b"{\"inputs\": [", &[]).await.expect_error(400, "malformed inference request");
    raw(b"{}", &[("inference-header-content-length", "abc")]).await.expect_error(400, "non-negative integer");
    raw(b"{}", &[("inference-header-content-length", "-1")]).await.expect_error(400, "non-negative integer");
    raw(b"{}", &[("inference-header-content-length", "99")]).await.expect_error(400, "exceeds the body length");
    raw(b"{\"inputs\":[]}xyz", &[("inference-header-content-length", "13")])
        .await
        .expect_error(400, "unexpected additional input data");
    raw(b"{}", &[("content-encoding", "br")]).await.expect_error(400, "unsupported Content-Encoding");
    raw(b"\xff\xfe", &[]).await.expect_error(400, "malformed");

    // Unknown models and versions are 404, before the body is looked at.
    server.post_json("/v2/models/nope/infer", &good).await.expect_error(404, "unknown model 'nope'");
    server.post_json("/v2/models/simple/versions/3/infer", &good).await.expect_error(404, "unknown version 3");
    // Nothing of this disturbed the server.
    assert_eq!(server.post_json("/v2/models/simple/infer", &good).await.status, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let (_repo, server) = serve_example("mlp", |c| c.server.max_request_bytes = 64 << 10).await;
    let big = server.post_json("/v2/models/mlp/infer", &mlp_request(64, 1)).await;
    big.expect_error(413, "exceeds the limit of 65536 bytes");
    // JSON whose decoded tensor would exceed the limit is refused before allocation.
    let shape_bomb =
        json!({ "inputs": [{ "name": "input", "shape": [1, 100000000], "datatype": "FP32", "data": [] }] });
    server.post_json("/v2/models/mlp/infer", &shape_bomb).await.expect_error(413, "exceed the request limit");
    // A gzip body is measured after decompression.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![b' '; 1 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    let reply = server.request(Method::POST, "/v2/models/mlp/infer", &[("content-encoding", "gzip")], bomb).await;
    reply.expect_error(413, "decompressed request body exceeds");
    assert_eq!(server.post_json("/v2/models/mlp/infer", &mlp_request(1, 1)).await.status, 200);
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_its_connection_closed() {
    use tokio::io::AsyncReadExt;
    let (_repo, server) = serve_example("mlp", |c| c.server.body_idle_timeout_secs = 1).await;

    // Headers promise 1,000 bytes; 10 arrive, then nothing.
    let mut socket = server.stalled_upload("/v2/models/mlp/infer", 1000, r#"{"inputs":"#).await;
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    // The server answers and closes: read_to_end returns (bounded by the test's own limit).
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_end(&mut reply))
        .await
        .expect("the server neither answered nor closed a stalled request")
        .unwrap();
    let waited = started.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#"{"error":"the request body stalled"#), "{reply}");
    assert!(waited >= std::time::Duration::from_millis(900), "answered after {waited:?}, before the timeout");

    // Other clients were served meanwhile and still are.
    assert_eq!(server.post_json("/v2/models/mlp/infer", &mlp_request(1, 1)).await.status, 200);
}

#[tokio::test]
async fn request_data_held_at_once_is_bounded_and_given_back_when_a_client_leaves() {
    let (_repo, server) = serve_example("mlp", |c| {
        c.server.max_request_bytes = 64 << 10;
        c.server.max_inflight_bytes = 100 << 10;
    })
    .await;
    // A request of 45-64 KiB: one fits next to the upload below, two do not.
    let rows = (1..).find(|&r| serde_json::to_vec(&mlp_request(r, 1)).unwrap().len() >= 45 << 10).unwrap();
    let large = mlp_request(rows, 1);
    assert!(serde_json::to_vec(&large).unwrap().len() < 64 << 10);

    // An upload that declares 60,000 bytes and sends 10 holds all 60,000.
    let upload = server.stalled_upload("/v2/models/mlp/infer", 60_000, r#"{"inputs":"#).await;
    common::eventually("the upload holds its declared bytes", || server.gateway.inflight.held() == 60_000).await;

    let refused = server.post_json("/v2/models/mlp/infer", &large).await;
    refused.expect_error(429, "retry later");
    // Small requests still fit and are served.
    assert_eq!(server.post_json("/v2/models/mlp/infer", &mlp_request(1, 1)).await.status, 200);

    // The client gives up: its bytes come back, and the large request is served.
    drop(upload);
    common::eventually("the departed upload gives its bytes back", || server.gateway.inflight.held() == 0).await;
    assert_eq!(server.post_json("/v2/models/mlp/infer", &large).await.status, 200);
    assert_eq!(server.gateway.inflight.held(), 0, "a served request gives its bytes back");
}

#[tokio::test]
async fn past_max_connections_a_new_client_waits_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_repo, server) = serve_example("simple", |c| c.server.max_connections = 2).await;
    let live = |mut socket: tokio::net::TcpStream| async move {
        socket.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        let mut reply = [0u8; 12];
        socket.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"HTTP/1.1 200");
        socket
    };
    let first = live(tokio::net::TcpStream::connect(server.http).await.unwrap()).await;
    let _second = live(tokio::net::TcpStream::connect(server.http).await.unwrap()).await;

    // The kernel completes the third connect; the server takes it only when a slot frees.
    let third = tokio::spawn(live(tokio::net::TcpStream::connect(server.http).await.unwrap()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served while two were open");
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("the waiting client was never served")
        .unwrap();
}

#[tokio::test]
async fn compressed_requests_and_responses_work() {
    let server = TestServer::examples().await;
    let body = serde_json::to_vec(&mlp_request(2, 3)).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &body).unwrap();
    let gz = encoder.finish().unwrap();
    let reply = server
        .request(Method::POST, "/v2/models/mlp/infer", &[("content-encoding", "gzip"), ("accept-encoding", "gzip")], gz)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&reply.body[..]), &mut decoded).unwrap();
    let json: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(json["outputs"][0]["shape"], json!([2, 10]));

    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut zlib, &body).unwrap();
    let reply = server
        .request(Method::POST, "/v2/models/mlp/infer", &[("content-encoding", "deflate")], zlib.finish().unwrap())
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // The same request, plain: a deflated body decodes to the same inputs and answers alike.
    let plain = server.post_json("/v2/models/mlp/infer", &mlp_request(2, 3)).await.json();
    assert_eq!(reply.json()["outputs"], plain["outputs"]);
    assert_eq!(json["outputs"], plain["outputs"], "the gzip answer is the plain answer");
}

#[tokio::test]
async fn model_config_is_shaped_as_perf_analyzer_reads_it() {
    let server = TestServer::examples().await;
    let config = server.get("/v2/models/simple/config").await.json();
    assert_eq!(config["name"], "simple");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["backend"], "onnxruntime");
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(config["input"][0]["name"], "INPUT0");
    assert_eq!(config["input"][0]["data_type"], "TYPE_INT32");
    assert_eq!(config["input"][0]["dims"], json!([16]));
    assert!(config["input"][0]["dims"][0].is_number(), "int64 dims are JSON numbers");
    assert!(config["dynamic_batching"].is_object());
    assert_eq!(config["model_transaction_policy"]["decoupled"], false);
    assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(config["version_policy"], json!({ "latest": { "num_versions": 1 } }));
    // Completed from the model itself: the identity model has no config.pbtxt.
    let identity = server.get("/v2/models/identity/config").await.json();
    assert_eq!(identity["max_batch_size"], 8, "batchable models get the default max_batch_size");
    assert_eq!(identity["input"].as_array().unwrap().len(), 13);
    assert!(identity["dynamic_batching"].is_object());
    server.get("/v2/models/nope/config").await.expect_error(404, "unknown model");
}

#[tokio::test]
async fn statistics_count_requests_rows_and_executions() {
    let server = TestServer::examples().await;
    for rows in [1, 2, 3] {
        assert_eq!(server.post_json("/v2/models/mlp/infer", &mlp_request(rows, rows as u32)).await.status, 200);
    }
    let bad = server.post_json("/v2/models/mlp/infer", &json!({ "inputs": [] })).await;
    assert_eq!(bad.status, 400);
    let stats = server.get("/v2/models/mlp/stats").await.json();
    let s = &stats["model_stats"][0];
    assert_eq!(s["name"], "mlp");
    assert_eq!(s["version"], "1");
    assert_eq!(s["inference_stats"]["success"]["count"], 3);
    assert_eq!(s["inference_stats"]["fail"]["count"], 1, "a request that reached the model and failed validation");
    assert_eq!(s["inference_count"], 6);
    assert_eq!(s["execution_count"], 3);
    assert!(s["inference_stats"]["compute_infer"]["ns"].as_u64().unwrap() > 0);
    assert!(s["last_inference"].as_u64().unwrap() > 1_600_000_000_000);
    let sizes: Vec<u64> =
        s["batch_stats"].as_array().unwrap().iter().map(|b| b["batch_size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![1, 2, 3]);
    let all = server.get("/v2/models/stats").await.json();
    assert!(all["model_stats"].as_array().unwrap().len() >= 3);
    assert_eq!(server.get("/v2/models/mlp/versions/1/stats").await.json()["model_stats"][0]["inference_count"], 6);
    server.get("/v2/models/nope/stats").await.expect_error(404, "unknown model");
}

#[tokio::test]
async fn repository_index_load_and_unload_follow_tritons_api() {
    let repo = TempRepo::new();
    repo.add("simple", "simple", 1, None).add("mlp", "mlp", 1, None);
    let mut config = config_for(repo.path());
    config.repository.model_control = true;
    let server = TestServer::start(config).await;
    let index = server.post_json("/v2/repository/index", &json!({})).await.json();
    assert_eq!(
        index,
        json!([
            { "name": "mlp", "version": "1", "state": "READY", "reason": "" },
            { "name": "simple", "version": "1", "state": "READY", "reason": "" },
        ])
    );
    let good = simple_request(&[1; 16], &[1; 16]);
    assert_eq!(server.post_json("/v2/repository/models/simple/unload", &json!({})).await.status, 200);
    server.post_json("/v2/models/simple/infer", &good).await.expect_error(503, "unloaded");
    assert_eq!(server.get("/v2/models/simple/ready").await.status, 503);
    let ready_only = server.post_json("/v2/repository/index", &json!({ "ready": true })).await.json();
    assert_eq!(ready_only.as_array().unwrap().len(), 1);

    // A new version appears on reload; the version policy (latest 1) serves it.
    repo.add("simple", "simple", 2, None);
    assert_eq!(server.post_json("/v2/repository/models/simple/load", &json!({})).await.status, 200);
    let out = server.post_json("/v2/models/simple/infer", &good).await.json();
    assert_eq!(out["model_version"], "2");

    server
        .post_json("/v2/repository/models/ghost/load", &json!({}))
        .await
        .expect_error(404, "not in the model repository");
    server
        .post_json("/v2/repository/models/simple/load", &json!({ "parameters": { "file:1/model.onnx": "AAAA" } }))
        .await
        .expect_error(400, "not accepted");
    server
        .post_json("/v2/repository/models/..%2F..%2Fetc/load", &json!({}))
        .await
        .expect_error(400, "invalid model name");

    // A reload that fails keeps the serving version.
    repo.write("simple/2/model.onnx", b"garbage");
    server
        .post_json("/v2/repository/models/simple/load", &json!({}))
        .await
        .expect_error(400, "failed to load 'simple'");
    assert_eq!(server.post_json("/v2/models/simple/infer", &good).await.json()["model_version"], "2");
}

#[tokio::test]
async fn model_control_can_be_disabled() {
    let mut config = config_for(&common::example_models());
    config.repository.model_control = false;
    config.repository.load_models = Some(vec!["simple".into()]);
    let server = TestServer::start(config).await;
    server.post_json("/v2/repository/models/simple/unload", &json!({})).await.expect_error(400, "not allowed");
    server.get("/v2/models/mlp").await.expect_error(404, "unknown model");
}

#[tokio::test]
async fn a_client_flooding_reset_streams_is_sent_goaway_and_others_are_unaffected() {
    let server = TestServer::examples().await;
    let socket = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let (mut client, connection) = h2::client::handshake(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    // HTTP/2 rapid reset: open a stream, cancel it at once, again and again.
    let mut refused = None;
    for _ in 0..10_000 {
        client = match client.ready().await {
            Ok(ready) => ready,
            Err(e) => {
                refused = Some(e);
                break;
            }
        };
        let request = http::Request::post("/v2/models/mlp/infer").body(()).unwrap();
        match client.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), connection)
        .await
        .expect("the server kept the flooding connection open")
        .unwrap();
    // The client may see the GOAWAY, or only the closed socket if it was still
    // writing when the server closed it. (With h2's reset limits turned off,
    // as tonic's server leaves them, the connection stays open and this fails.)
    let errors = [refused, ended.err()];
    let reasons: Vec<_> = errors.iter().flatten().map(|e| (e.reason(), e.is_io())).collect();
    assert!(
        reasons.iter().any(|&(reason, io)| reason == Some(h2::Reason::ENHANCE_YOUR_CALM) || io),
        "the connection did not end in GOAWAY or a closed socket: {errors:?}"
    );
    // Other connections are served as before.
    assert_eq!(server.post_json("/v2/models/mlp/infer", &mlp_request(1, 1)).await.status, 200);
}

#[tokio::test]
async fn rest_and_grpc_share_each_port_and_http2_works() {
    let server = TestServer::examples().await;
    // REST over HTTP/2 with prior knowledge (h2c), on the gRPC port.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let uri = format!("http://{}/v2/health/ready", server.grpc);
    let response = client.get(uri.parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    // gRPC on the HTTP port.
    let mut grpc = server.grpc_at(server.http).await;
    let live = grpc.server_live(modelgate::proto::inference::ServerLiveRequest {}).await.unwrap();
    assert!(live.into_inner().live);
}

#[tokio::test]
async fn metrics_are_exported_in_prometheus_text() {
    let server = TestServer::examples().await;
    assert_eq!(server.post_json("/v2/models/simple/infer", &simple_request(&[0; 16], &[0; 16])).await.status, 200);
    let text = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        text.contains("modelgate_requests_total{model=\"simple\",version=\"1\",protocol=\"http\",outcome=\"success\"}"),
        "{text}"
    );
    assert!(text.contains("modelgate_request_duration_seconds_bucket"), "latency is a histogram");
    assert!(text.contains("modelgate_compute_duration_seconds_bucket"));
    assert!(text.contains("modelgate_model_state{model=\"simple\",version=\"1\",state=\"READY\"} 1"));
    // The door's gauges are process-wide and other tests in this binary run servers with other
    // limits at the same time: their presence and form are checked here, not their values.
    for family in [
        "modelgate_inflight_request_bytes_limit",
        "modelgate_inflight_request_bytes",
        "modelgate_open_connections_limit",
        "modelgate_open_connections",
    ] {
        let value = text.lines().find_map(|l| l.strip_prefix(family).and_then(|v| v.strip_prefix(' ')));
        assert!(value.is_some_and(|v| v.parse::<f64>().is_ok()), "{family} is exported as a number: {text}");
    }
    // Triton's names, for dashboards and autoscalers written for Triton.
    assert!(text.contains("# TYPE nv_inference_request_success counter"), "{text}");
    assert!(text.contains("nv_inference_request_success{model=\"simple\",version=\"1\"} 1"), "{text}");
    assert!(text.contains("nv_inference_exec_count{model=\"simple\",version=\"1\"} 1"));
    assert!(text.contains("nv_inference_pending_request_count{model=\"mlp\",version=\"1\"} 0"));
    assert!(text.contains("nv_inference_compute_infer_duration_us{model=\"simple\",version=\"1\"} "));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let repo = TempRepo::new();
    // A long batching delay keeps the request in the queue while shutdown starts.
    repo.add("mlp", "mlp", 1, Some("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }"));
    let server = TestServer::start(config_for(repo.path())).await;
    let url = server.url("/v2/models/mlp/infer");
    let body = serde_json::to_vec(&mlp_request(1, 9)).unwrap();
    let request = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>();
        let req = http::Request::post(url).body(http_body_util::Full::new(Bytes::from(body))).unwrap();
        client.request(req).await.map(|r| r.status())
    });
    let gateway = server.gateway.clone();
    common::eventually("the request to be queued", || {
        gateway.repository.resolve("mlp", None).map(|v| v.queue_depth() == 1).unwrap_or(false)
    })
    .await;
    server.stop().await;
    assert_eq!(request.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn a_raw_binary_request_is_the_single_input_and_gets_binary_outputs() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, None).add("simple", "simple", 1, None);
    let server = TestServer::start(config_for(repo.path())).await;
    let input: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let raw = Bytes::copy_from_slice(bytemuck::cast_slice(&input));
    let reply =
        server.request(Method::POST, "/v2/models/mlp/infer", &[("inference-header-content-length", "0")], raw).await;
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    let (json, binary) = split_binary(&reply);
    assert_eq!(json["outputs"][0]["shape"], json!([1, 10]));
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(binary);
    let expected = server
        .post_json(
            "/v2/models/mlp/infer",
            &json!({ "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "data": input }] }),
        )
        .await
        .json();
    assert_eq!(got, floats(&expected["outputs"][0]["data"]));
    // A model with two inputs cannot take a raw request; a short body does not fit the shape.
    server
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("inference-header-content-length", "0")],
            Bytes::from(vec![0u8; 64]),
        )
        .await
        .expect_error(400, "exactly one input");
    server
        .request(
            Method::POST,
            "/v2/models/mlp/infer",
            &[("inference-header-content-length", "0")],
            Bytes::from(vec![0u8; 10]),
        )
        .await
        .expect_error(400, "needs 256 bytes, got 10");
}
