//! `/cp/v1/sync` and gateway reports, through a real socket, on SQLite and
//! PostgreSQL: the long poll answers at once when behind, 304 when nothing
//! changed, and wakes within milliseconds of a change; a finished rollout's
//! report moves the aliases once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn sync(server: &Server, since: i64, wait: &str) -> (StatusCode, Value) {
    let url = server.url(&format!("/cp/v1/sync?gateway=gw-a&since={since}&wait={wait}"));
    common::answer(server.http.get(url).send().await.unwrap()).await
}

async fn two_versions(server: &Server) {
    server.create_model("fraud").await;
    assert_eq!(server.push("fraud", &[("1/model.onnx", b"one")]).await, 1);
    assert_eq!(server.push("fraud", &[("1/model.onnx", b"two")]).await, 2);
}

#[tokio::test]
async fn the_desired_state_holds_every_aliased_version_with_its_manifest() {
    for backend in backends() {
        let server = Server::start(backend).await;
        two_versions(&server).await;
        server.set_alias("fraud", "champion", 1, None).await;
        server.set_alias("fraud", "challenger", 2, None).await;
        let (status, state) = sync(&server, 0, "0s").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {state}");
        let fraud = &state["models"]["fraud"];
        assert_eq!(fraud["aliases"], json!({ "champion": 1, "challenger": 2 }), "{backend:?}");
        assert_eq!(fraud["versions"]["1"]["files"][0]["path"], "1/model.onnx", "{backend:?}");
        assert!(fraud["versions"]["2"]["manifest_digest"].as_str().unwrap().starts_with("sha256:"));
        // Nothing newer: 304 after the wait.
        let generation = state["generation"].as_i64().unwrap();
        let started = Instant::now();
        let (status, _) = sync(&server, generation, "1s").await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{backend:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{backend:?}: answered early");
    }
}

#[tokio::test]
async fn a_waiting_sync_answers_as_soon_as_an_alias_moves() {
    for backend in backends() {
        let server = std::sync::Arc::new(Server::start(backend).await);
        two_versions(&server).await;
        let (_, state) = sync(&server, 0, "0s").await;
        let generation = state["generation"].as_i64().unwrap();
        let waiting = {
            let server = server.clone();
            tokio::spawn(async move {
                let (status, state) = sync(&server, generation, "30s").await;
                (status, state, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let moved = Instant::now();
        server.set_alias("fraud", "champion", 2, None).await;
        let (status, state, answered) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert_eq!(state["models"]["fraud"]["aliases"]["champion"], 2, "{backend:?}");
        let lag = answered.duration_since(moved);
        assert!(lag < Duration::from_millis(500), "{backend:?}: the poll answered {lag:?} after the change");
    }
}

fn outcome(outcome: &str, stable: i64, canary: i64, canary_alias: Option<&str>, on_rollback: &str) -> Value {
    json!({
        "applied_generation": 1,
        "rollouts": [{
            "model": "fraud", "stable": stable, "canary": canary, "outcome": outcome,
            "stable_alias": "champion", "canary_alias": canary_alias, "on_rollback": on_rollback,
            "reason": "test",
        }],
    })
}

#[tokio::test]
async fn a_promotion_moves_the_champion_and_clears_the_challenger_once() {
    for backend in backends() {
        let server = Server::start(backend).await;
        two_versions(&server).await;
        server.set_alias("fraud", "champion", 1, None).await;
        server.set_alias("fraud", "challenger", 2, None).await;
        let report = outcome("promoted", 1, 2, Some("challenger"), "revert_alias");
        let (status, body) = server.post("/cp/v1/gateways/gw-a/report", report.clone()).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {body}");
        let (_, aliases) = server.get("/cp/v1/models/fraud/aliases").await;
        let names: Vec<(&str, i64)> = aliases["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["alias"].as_str().unwrap(), a["version"].as_i64().unwrap()))
            .collect();
        assert_eq!(names, [("champion", 2)], "{backend:?}");
        let (_, history) = server.get("/cp/v1/models/fraud/history?alias=champion").await;
        let last = history["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["actor"], "rollout", "{backend:?}");
        assert!(last["reason"].as_str().unwrap().contains("gw-a promoted version 2"), "{backend:?}: {last}");
        // The same report again moves nothing.
        let before = server.get("/cp/v1/models/fraud/history").await.1["history"].as_array().unwrap().len();
        server.post("/cp/v1/gateways/gw-a/report", report).await;
        let after = server.get("/cp/v1/models/fraud/history").await.1["history"].as_array().unwrap().len();
        assert_eq!(before, after, "{backend:?}: a repeated report moved an alias again");
        let (_, gateways) = server.get("/cp/v1/gateways").await;
        assert_eq!(gateways["gateways"][0]["id"], "gw-a", "{backend:?}");
    }
}

#[tokio::test]
async fn a_rollback_moves_the_alias_back_and_tags_the_version_unless_held() {
    for backend in backends() {
        let server = Server::start(backend).await;
        two_versions(&server).await;
        server.set_alias("fraud", "champion", 2, None).await;
        let (status, _) =
            server.post("/cp/v1/gateways/gw-a/report", outcome("rolled_back", 1, 2, None, "revert_alias")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, state) = sync(&server, 0, "0s").await;
        assert_eq!(state["models"]["fraud"]["aliases"]["champion"], 1, "{backend:?}: {state}");
        assert_eq!(state["models"]["fraud"]["rolled_back"], json!([2]), "{backend:?}");
        // `hold`: the alias stays, the version is tagged.
        server.set_alias("fraud", "champion", 2, None).await;
        server.post("/cp/v1/gateways/gw-a/report", outcome("rolled_back", 1, 2, None, "hold")).await;
        let (_, state) = sync(&server, 0, "0s").await;
        assert_eq!(state["models"]["fraud"]["aliases"]["champion"], 2, "{backend:?}");
    }
}

#[tokio::test]
async fn bad_sync_and_report_requests_are_refused_with_the_field_named() {
    let server = Server::start(common::Backend::Sqlite).await;
    let (status, body) =
        common::answer(server.http.get(server.url("/cp/v1/sync?gateway=../x")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        common::answer(server.http.get(server.url("/cp/v1/sync?gateway=a&wait=soon")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(common::error_of(&body).contains("wait"), "{body}");
    let (status, body) =
        server.post("/cp/v1/gateways/gw-a/report", json!({ "applied_generation": 1, "typo": 1 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(common::error_of(&body).contains("typo"), "{body}");
}

#[tokio::test]
async fn follow_rules_set_through_the_api_are_part_of_the_desired_state() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let rule = json!({ "source": "models:/fraud@champion", "canary_alias": "challenger",
                           "rollout": { "step_weights": [50, 100] } });
        let put = server.http.put(server.url("/cp/v1/follow/fraud-live")).json(&rule).send().await.unwrap();
        let (status, body) = common::answer(put).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {body}");
        let (_, state) = sync(&server, 0, "0s").await;
        assert_eq!(state["follow"][0]["model"], "fraud-live", "{backend:?}: {state}");
        assert_eq!(state["follow"][0]["rollout"]["step_weights"], json!([50, 100]), "{backend:?}");
        for (bad, expected) in [
            (json!({ "source": "models:/fraud/3" }), "models:/NAME@ALIAS"),
            (json!({ "source": "models:/fraud@a", "canary_alias": "a" }), "differ"),
            (json!({ "source": "models:/fraud@a", "rollout": { "canary": 2 } }), "canary"),
            (json!({ "source": "models:/fraud@a", "typo": 1 }), "typo"),
        ] {
            let put = server.http.put(server.url("/cp/v1/follow/x")).json(&bad).send().await.unwrap();
            let (status, body) = common::answer(put).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {bad}");
            assert!(common::error_of(&body).contains(expected), "{backend:?}: {body}");
        }
        let delete = server.http.delete(server.url("/cp/v1/follow/fraud-live")).send().await.unwrap();
        assert_eq!(delete.status(), StatusCode::NO_CONTENT, "{backend:?}");
        let again = server.http.delete(server.url("/cp/v1/follow/fraud-live")).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_FOUND, "{backend:?}");
        let (_, state) = sync(&server, 0, "0s").await;
        assert!(state.get("follow").is_none(), "{backend:?}: {state}");
    }
}

#[tokio::test]
async fn shutdown_answers_a_waiting_sync_at_once_instead_of_draining_for_the_rest_of_its_wait() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let (_, state) = server.get("/cp/v1/generation").await;
        let generation = state["generation"].as_i64().unwrap();
        let waiting = {
            let (http, url) =
                (server.http.clone(), server.url(&format!("/cp/v1/sync?gateway=gw-a&since={generation}&wait=60s")));
            tokio::spawn(async move { (http.get(url).send().await.unwrap().status(), Instant::now()) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let registry = server.registry.clone();
        let stopping = Instant::now();
        server.stop().await;
        let stopped = stopping.elapsed();
        let (status, answered) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{backend:?}");
        // Before, the drain waited out the poll up to DRAIN_TIMEOUT (10 s).
        assert!(answered.duration_since(stopping) < Duration::from_secs(2), "{backend:?}: the poll held on");
        assert!(stopped < Duration::from_secs(3), "{backend:?}: shutdown took {stopped:?}");
        assert!(registry.draining.is_cancelled());
    }
}
