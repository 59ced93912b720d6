//! PostgreSQL stopped mid-test: requests answer a clear 503, nothing is half
//! written, and the registry works again once the database is back. Its own
//! test binary, because it stops the cluster every other test shares.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Backend, Server, backends, error_of};
use reqwest::StatusCode;
use serde_json::json;

fn ctl(action: &str) {
    let script = std::env::var("MODELGATE_TEST_POSTGRES_CTL").expect("set by scripts/with-postgres.sh");
    let status = std::process::Command::new(script).arg(action).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success(), "ctl.sh {action}");
}

#[tokio::test]
async fn a_database_outage_is_a_clear_503_and_the_registry_recovers() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let server = Server::start(Backend::Postgres).await;
    server.create_model("fraud").await;
    let v1 = server.push("fraud", &[("model.onnx", b"v1")]).await;
    let (_, before) = server.get("/cp/v1/generation").await;

    let ready = || async { server.get("/cp/v1/health/ready").await };
    assert_eq!(ready().await.0, StatusCode::OK);

    ctl("stop");
    let (status, body) = ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "readiness follows the database: {body}");
    assert!(error_of(&body).contains("database"), "{body}");
    assert_eq!(server.get("/cp/v1/health/live").await.0, StatusCode::OK);
    let (status, body) = server.post("/cp/v1/models", json!({ "name": "during-outage" })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(error_of(&body).contains("database is unavailable"), "{body}");
    let (status, body) = server.set_alias("fraud", "champion", v1, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = server.get("/cp/v1/models/fraud/versions").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    ctl("start");

    let mut back = false;
    for _ in 0..50 {
        if server.get("/cp/v1/generation").await.0 == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the registry answers again once PostgreSQL is back");
    assert_eq!(ready().await.0, StatusCode::OK);
    let (_, after) = server.get("/cp/v1/generation").await;
    assert_eq!(after, before, "no write of the outage was half applied");
    let (status, _) = server.get("/cp/v1/models/during-outage").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server.set_alias("fraud", "champion", v1, Some("0")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}
