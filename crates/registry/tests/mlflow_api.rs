//! The MLflow subset and the artifact proxy at the HTTP level, on SQLite and
//! PostgreSQL (the unchanged MLflow client is exercised by
//! tests/registry/test_mlflow_client.py).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Server, answer, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn wait_status(server: &Server, model: &str, version: &str) -> Value {
    for _ in 0..100 {
        let (_, body) = server.get(&format!("/api/2.0/mlflow/model-versions/get?name={model}&version={version}")).await;
        if body["model_version"]["status"] != "PENDING_REGISTRATION" {
            return body["model_version"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("version {version} of {model} stayed PENDING_REGISTRATION");
}

#[tokio::test]
async fn an_uploaded_artifact_becomes_a_ready_version_and_a_failed_import_cannot_be_aliased() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let put = |path: &str, bytes: &'static [u8]| {
            server.http.put(server.url(&format!("/api/2.0/mlflow-artifacts/artifacts/{path}"))).body(bytes).send()
        };
        assert_eq!(put("exp/fraud/model.onnx", b"onnx!").await.unwrap().status(), StatusCode::OK);
        assert_eq!(put("exp/fraud/config.pbtxt", b"name: \"fraud\"").await.unwrap().status(), StatusCode::OK);
        assert_eq!(put("exp/fraud/sub/extra.txt", b"x").await.unwrap().status(), StatusCode::OK);
        for bad in ["..%2Fescape", "_modelgate/models/x"] {
            let status = put(bad, b"x").await.unwrap().status();
            assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{bad}: {status}");
        }
        let (_, listing) = server.get("/api/2.0/mlflow-artifacts/artifacts?path=exp/fraud").await;
        assert_eq!(
            listing["files"],
            json!([
                { "path": "config.pbtxt", "is_dir": false, "file_size": 13 },
                { "path": "model.onnx", "is_dir": false, "file_size": 5 },
                { "path": "sub", "is_dir": true },
            ])
        );

        let (status, _) = server.post("/api/2.0/mlflow/registered-models/create", json!({ "name": "fraud" })).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = server
            .post(
                "/api/2.0/mlflow/model-versions/create",
                json!({ "name": "fraud", "source": "mlflow-artifacts:/exp/fraud" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model_version"]["version"], "1");
        let ready = wait_status(&server, "fraud", "1").await;
        assert_eq!(ready["status"], "READY", "{ready}");
        let (_, native) = server.get("/cp/v1/models/fraud/versions/1").await;
        assert_eq!(native["format"], "onnx");
        assert_eq!(native["config_pbtxt"], "name: \"fraud\"");
        assert_eq!(native["manifest"].as_array().unwrap().len(), 3);

        // A source with nothing behind it fails in the background; it cannot carry an alias.
        let (_, body) = server
            .post(
                "/api/2.0/mlflow/model-versions/create",
                json!({ "name": "fraud", "source": "mlflow-artifacts:/exp/none" }),
            )
            .await;
        let failed = wait_status(&server, "fraud", body["model_version"]["version"].as_str().unwrap()).await;
        assert_eq!(failed["status"], "FAILED_REGISTRATION", "{failed}");
        let (status, body) = server.set_alias("fraud", "champion", 2, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"].as_str().unwrap().contains("FAILED_REGISTRATION"));

        // Sources the registry cannot import are refused at once, in MLflow's error shape.
        for (source, says) in [
            ("runs:/abc/model", "runs:/ URIs are not supported"),
            ("s3://bucket/model", "expected mlflow-artifacts"),
            ("file:///etc", "outside the directories"),
            ("mlflow-artifacts:/../etc", "'..'"),
        ] {
            let (status, body) = server
                .post("/api/2.0/mlflow/model-versions/create", json!({ "name": "fraud", "source": source }))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{source}: {body}");
            assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
            assert!(body["message"].as_str().unwrap().contains(says), "{source}: {body}");
        }

        // A file:// source under an allowed root imports like an uploaded one.
        let allowed = server.dir.path().join("allowed/m");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::write(allowed.join("model.pt"), b"torchscript").unwrap();
        let source = format!("file://{}", allowed.display());
        let (_, body) =
            server.post("/api/2.0/mlflow/model-versions/create", json!({ "name": "fraud", "source": source })).await;
        let v3 = wait_status(&server, "fraud", body["model_version"]["version"].as_str().unwrap()).await;
        assert_eq!(v3["status"], "READY");

        // Stages are aliases: Production = champion.
        let (status, body) = server
            .post(
                "/api/2.0/mlflow/model-versions/transition-stage",
                json!({ "name": "fraud", "version": "1", "stage": "Production", "archive_existing_versions": false }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model_version"]["current_stage"], "Production");
        let (_, alias) = server.get("/cp/v1/models/fraud/aliases/champion").await;
        assert_eq!(alias["version"], 1);
        let (status, body) = server.get("/api/2.0/mlflow/registered-models/get?name=nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");

        // The download URI serves the version's verified blobs.
        let (_, uri) = server.get("/api/2.0/mlflow/model-versions/get-download-uri?name=fraud&version=1").await;
        let path = uri["artifact_uri"].as_str().unwrap().strip_prefix("mlflow-artifacts:/").unwrap().to_owned();
        let (status, bytes) = answer(
            server
                .http
                .get(server.url(&format!("/api/2.0/mlflow-artifacts/artifacts/{path}/model.onnx")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, bytes), (StatusCode::OK, Value::String("onnx!".into())));
        server.stop().await;
    }
}

#[tokio::test]
async fn an_import_left_pending_by_a_crash_resumes_at_start() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let put = server.http.put(server.url("/api/2.0/mlflow-artifacts/artifacts/exp/later/model.onnx")).body("onnx");
        assert_eq!(put.send().await.unwrap().status(), StatusCode::OK);
        server.create_model("fraud").await;
        // What a crash between the version's row and the end of its import leaves behind.
        let new = modelgate_registry::types::NewVersion {
            source: "mlflow-artifacts:/exp/later".into(),
            creator: "test".into(),
            ..Default::default()
        };
        let pending = server.registry.store.create_version("fraud", new).await.unwrap();
        assert_eq!(pending.status, modelgate_registry::types::Status::PendingRegistration);
        let (dir, url) = server.stop().await;
        let server = Server::start_at(backend, dir, url).await;
        let resumed = wait_status(&server, "fraud", "1").await;
        assert_eq!(resumed["status"], "READY", "{backend:?}: {resumed}");
        server.stop().await;
    }
}
