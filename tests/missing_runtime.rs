//! Without ONNX Runtime the gateway still starts, serves what it can, and says
//! how to get the runtime. (Its own test binary: the runtime is opened once
//! per process.)

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;

use common::{TestServer, config_for, example_models, mlp_request};

#[tokio::test]
async fn a_missing_onnx_runtime_is_reported_with_instructions_not_a_panic() {
    let mut config = config_for(&example_models());
    config.onnxruntime.library = Some("/nonexistent/libonnxruntime.so".into());
    let server = TestServer::start(config).await;
    assert_eq!(server.get("/v2/health/live").await.status, 200);
    let reply = server.post_json("/v2/models/mlp/infer", &mlp_request(1, 0)).await;
    reply.expect_error(503, "scripts/setup.sh");
    let index = server.post_json("/v2/repository/index", &serde_json::json!({})).await.json();
    let mlp = index.as_array().unwrap().iter().find(|r| r["name"] == "mlp").unwrap().clone();
    assert_eq!(mlp["state"], "UNAVAILABLE");
    assert!(mlp["reason"].as_str().unwrap().contains("ORT_DYLIB_PATH"), "{mlp}");
}
