//! The `modelgate registry` client against a real control plane: push
//! uploads only missing blobs, pull verifies every file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Backend, Server, TOKEN};
use modelgate_registry::api::auth::Token;
use modelgate_registry::client::{Client, ClientError, PushOptions};

fn blob_count(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir().join("blobs/sha256")).unwrap().count()
}

#[tokio::test]
async fn push_uploads_only_missing_blobs_and_pull_verifies_every_file() {
    let server = Server::start(Backend::Sqlite).await;
    let client = Client::new(&server.addr.to_string(), Token::new(TOKEN).unwrap());
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("1")).unwrap();
    std::fs::write(src.path().join("1/model.onnx"), b"onnx weights").unwrap();
    std::fs::write(src.path().join("config.pbtxt"), "name: \"fraud\"\n").unwrap();

    let options = || PushOptions { alias: Some("champion".into()), actor: "ci".into(), ..PushOptions::default() };
    let v1 = client.push("fraud", src.path(), options()).await.unwrap();
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["format"], "onnx");
    assert_eq!(v1["config_pbtxt"], "name: \"fraud\"\n");
    assert_eq!(blob_count(&server), 2);
    let v2 = client.push("fraud", src.path(), options()).await.unwrap();
    assert_eq!(v2["manifest_digest"], v1["manifest_digest"], "same files, same identity");
    assert_eq!(blob_count(&server), 2, "nothing uploaded twice");
    let (_, alias) = server.get("/cp/v1/models/fraud/aliases/champion").await;
    assert_eq!(alias["version"], 2);
    assert_eq!(alias["updated_by"], "ci");

    let out = tempfile::tempdir().unwrap();
    client.pull("fraud", "@champion", out.path()).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("1/model.onnx")).unwrap(), b"onnx weights");
    assert_eq!(std::fs::read_to_string(out.path().join("config.pbtxt")).unwrap(), "name: \"fraud\"\n");

    // A blob flipped on the server's disk is caught and never written out.
    let entry = v1["manifest"].as_array().unwrap().iter().find(|e| e["path"] == "1/model.onnx").unwrap().clone();
    let hex = entry["sha256"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let blob = server.data_dir().join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let bad = tempfile::tempdir().unwrap();
    let error = client.pull("fraud", "1", bad.path()).await.unwrap_err();
    assert!(matches!(error, ClientError::Verify { .. }), "{error}");
    assert!(!bad.path().join("1/model.onnx").exists());
    assert_eq!(std::fs::read_dir(bad.path().join("1")).unwrap().count(), 0, "no temp file left");

    let missing = client.pull("fraud", "9", bad.path()).await.unwrap_err();
    assert!(matches!(missing, ClientError::Api { status: reqwest::StatusCode::NOT_FOUND, .. }), "{missing}");
    server.stop().await;
}
