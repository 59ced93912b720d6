//! `/cp/v1/feedback/*` through a real socket, on SQLite and PostgreSQL: shipped
//! entries are found by id, a claim wins once fleet-wide, expired and surplus
//! rows are purged, and bad input is refused with a status.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn entry(id: &str, at_ms: i64, ttl_ms: i64) -> Value {
    json!({ "model": "fraud", "id": id, "version": 2, "at_ms": at_ms, "ttl_ms": ttl_ms,
            "prediction": { "class": 1, "classes": 3, "score": 0.75 } })
}

fn now_ms() -> i64 {
    modelgate_registry::store::now_ms()
}

fn states(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn shipped_entries_are_found_and_claimed_once() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let now = now_ms();
        let (status, body) = server
            .post("/cp/v1/feedback/entries", json!({ "entries": [entry("a", now, 60_000), entry("b", now, 60_000)] }))
            .await;
        assert_eq!((status, &body["stored"]), (StatusCode::OK, &json!(2)), "{backend:?}: {body}");
        let (status, body) =
            server.post("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": ["a", "zz"] })).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {body}");
        assert_eq!(states(&body), ["open", "unknown"], "{backend:?}");
        assert_eq!(body["results"][0]["version"], 2);
        assert_eq!(body["results"][0]["prediction"], json!({ "class": 1, "classes": 3, "score": 0.75 }));

        // Gateway gw-b claims "a" (which it does not hold); gw-a's later claim of its own entry loses.
        let claim = |gateway: &str, with_entry: bool| {
            let entry = with_entry.then(|| entry("a", now, 60_000));
            json!({ "model": "fraud", "gateway": gateway, "claims": [{ "id": "a", "entry": entry }] })
        };
        let (_, body) = server.post("/cp/v1/feedback/claims", claim("gw-b", false)).await;
        assert_eq!(states(&body), ["claimed"], "{backend:?}: {body}");
        let (_, body) = server.post("/cp/v1/feedback/claims", claim("gw-a", true)).await;
        assert_eq!(states(&body), ["judged"], "{backend:?}: {body}");
        let (_, body) = server.post("/cp/v1/feedback/claims", claim("gw-b", false)).await;
        assert_eq!(states(&body), ["judged"], "{backend:?}: {body}");
        // A shipped copy arriving after the claim does not reopen it.
        server.post("/cp/v1/feedback/entries", json!({ "entries": [entry("a", now, 60_000)] })).await;
        let (_, body) = server.post("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": ["a"] })).await;
        assert_eq!(states(&body), ["judged"], "{backend:?}");

        // A claim that brings its entry stores it judged when it was never shipped.
        let fresh =
            json!({ "model": "fraud", "gateway": "gw-a", "claims": [{ "id": "c", "entry": entry("c", now, 60_000) }] });
        let (_, body) = server.post("/cp/v1/feedback/claims", fresh).await;
        assert_eq!(states(&body), ["claimed"], "{backend:?}");
        let (_, body) = server.post("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": ["c", "b"] })).await;
        assert_eq!(states(&body), ["judged", "open"], "{backend:?}");
    }
}

#[tokio::test]
async fn expired_entries_answer_expired_then_are_purged_and_rows_stay_bounded() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let now = now_ms();
        let old = entry("old", now - 10_000, 1_000);
        server.post("/cp/v1/feedback/entries", json!({ "entries": [old] })).await;
        let (_, body) = server.post("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": ["old"] })).await;
        assert_eq!(states(&body), ["expired"], "{backend:?}");
        let claim = json!({ "model": "fraud", "gateway": "gw-a", "claims": [{ "id": "old" }] });
        let (_, body) = server.post("/cp/v1/feedback/claims", claim).await;
        assert_eq!(states(&body), ["expired"], "{backend:?}: an expired entry is not claimed");

        let entries: Vec<Value> = (0..50).map(|i| entry(&format!("e{i}"), now + i, 60_000)).collect();
        server.post("/cp/v1/feedback/entries", json!({ "entries": entries })).await;
        let store = &server.registry.store;
        assert_eq!(store.feedback_rows().await.unwrap(), 51, "{backend:?}");
        let (expired, surplus) = store.purge_feedback(now_ms(), 20).await.unwrap();
        assert_eq!((expired, surplus), (1, 30), "{backend:?}");
        assert_eq!(store.feedback_rows().await.unwrap(), 20, "{backend:?}");
        let (_, body) =
            server.post("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": ["e29", "e30", "old"] })).await;
        assert_eq!(states(&body), ["unknown", "open", "unknown"], "{backend:?}: the oldest went first");
    }
}

#[tokio::test]
async fn bad_feedback_calls_are_refused_with_a_status() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let now = now_ms();
        let mut bad_class = entry("x", now, 1000);
        bad_class["prediction"] = json!({ "class": 3, "classes": 3, "score": null });
        let too_many: Vec<Value> = (0..10_001).map(|i| json!(format!("id-{i}"))).collect();
        for (path, body, want) in [
            ("/cp/v1/feedback/entries", json!({ "entries": [bad_class] }), StatusCode::BAD_REQUEST),
            ("/cp/v1/feedback/entries", json!({ "entries": [entry("a b", now, 1000)] }), StatusCode::BAD_REQUEST),
            ("/cp/v1/feedback/entries", json!({ "entries": [entry("a", now, 0)] }), StatusCode::BAD_REQUEST),
            ("/cp/v1/feedback/entries", json!({ "rows": [] }), StatusCode::BAD_REQUEST),
            ("/cp/v1/feedback/lookup", json!({ "model": "../x", "ids": [] }), StatusCode::BAD_REQUEST),
            ("/cp/v1/feedback/lookup", json!({ "model": "fraud", "ids": too_many }), StatusCode::PAYLOAD_TOO_LARGE),
            (
                "/cp/v1/feedback/claims",
                json!({ "model": "fraud", "gateway": "gw-a", "claims": [{ "id": "a", "entry": entry("b", now, 1000) }] }),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (status, answer) = server.post(path, body).await;
            assert_eq!(status, want, "{backend:?} {path}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
    }
}
