//! BF16 end to end through real ONNX Runtime, as the README promises: in
//! binary form on HTTP (Triton's binary tensor extension) and as raw contents
//! on gRPC, and refused with the reason as JSON. The model (`bf16.onnx` of
//! `tests/models/make_test_models.py`) doubles a BF16 [batch, 4] input.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;
mod support_routing;

use bytes::Bytes;
use common::{TempRepo, TestServer, config_for, grpc_raw_request};
use http::Method;
use serde_json::{Value, json};

/// BF16 is the top half of an FP32: exact for these values.
fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()
}

const INPUT: [f32; 8] = [1.0, -2.5, 3.0, 0.15625, 0.0, -0.5, 96.0, 1.5];

async fn serve() -> (TempRepo, TestServer) {
    let repo = TempRepo::new();
    repo.write("halved/1/model.onnx", &std::fs::read(support_routing::test_model("bf16.onnx")).unwrap());
    repo.write("halved/config.pbtxt", b"name: \"halved\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n");
    let server = TestServer::start(config_for(repo.path())).await;
    (repo, server)
}

#[tokio::test]
async fn bf16_goes_in_and_out_in_binary_over_http() {
    let (_repo, server) = serve().await;
    let data = bf16_bytes(&INPUT);
    let header = json!({
        "inputs": [{ "name": "input", "shape": [2, 4], "datatype": "BF16", "parameters": { "binary_data_size": data.len() } }],
        "outputs": [{ "name": "doubled", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let length = header.len().to_string();
    let body = Bytes::from([header.as_bytes(), &data].concat());
    let reply = server
        .request(Method::POST, "/v2/models/halved/infer", &[("inference-header-content-length", &length)], body)
        .await;
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    let json_length: usize = reply.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&reply.body[..json_length]).unwrap();
    assert_eq!(head["outputs"][0]["datatype"], "BF16", "{head}");
    assert_eq!(head["outputs"][0]["shape"], json!([2, 4]));
    let doubled: Vec<f32> = INPUT.iter().map(|v| v * 2.0).collect();
    assert_eq!(&reply.body[json_length..], bf16_bytes(&doubled).as_slice());
}

#[tokio::test]
async fn bf16_as_json_is_refused_with_the_reason() {
    let (_repo, server) = serve().await;
    let body =
        json!({ "inputs": [{ "name": "input", "shape": [1, 4], "datatype": "BF16", "data": [1.0, 2.0, 3.0, 4.0] }] });
    let reply = server.post_json("/v2/models/halved/infer", &body).await;
    assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains("binary"), "{}", reply.error());
}

#[tokio::test]
async fn bf16_goes_in_and_out_as_raw_contents_over_grpc() {
    let (_repo, server) = serve().await;
    let request = grpc_raw_request("halved", "input", "BF16", &[2, 4], bf16_bytes(&INPUT));
    let reply = server.grpc().await.model_infer(request).await.unwrap().into_inner();
    assert_eq!((reply.outputs[0].datatype.as_str(), reply.outputs[0].shape.as_slice()), ("BF16", &[2i64, 4][..]));
    let doubled: Vec<f32> = INPUT.iter().map(|v| v * 2.0).collect();
    assert_eq!(reply.raw_output_contents[0].as_ref(), bf16_bytes(&doubled).as_slice());
}
