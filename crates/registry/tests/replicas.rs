//! Two control-plane replicas on one PostgreSQL: either serves any gateway,
//! and a change made at one wakes the long polls waiting at the other through
//! LISTEN/NOTIFY; a change whose notification is lost still arrives within the
//! one-second re-read. Needs PostgreSQL (`scripts/with-postgres.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server, backends, fresh_db};
use reqwest::StatusCode;
use serde_json::Value;

/// Two replicas on one fresh PostgreSQL database, each with its own data directory.
async fn two_replicas() -> Option<(Server, Server)> {
    if !backends().contains(&Backend::Postgres) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_db(Backend::Postgres, dir.path()).await;
    let a = Server::start_at(Backend::Postgres, dir, db_url.clone()).await;
    let b = Server::start_at(Backend::Postgres, tempfile::tempdir().unwrap(), db_url).await;
    Some((a, b))
}

/// Starts a long poll at `server` from generation `since`; yields (status, body, when it answered).
fn long_poll(server: &Server, since: i64) -> tokio::task::JoinHandle<(StatusCode, Value, Instant)> {
    let request = server.http.get(server.url(&format!("/cp/v1/sync?gateway=gw-1&since={since}&wait=10s")));
    tokio::spawn(async move {
        let (status, body) = common::answer(request.send().await.unwrap()).await;
        (status, body, Instant::now())
    })
}

async fn generation(server: &Server) -> i64 {
    server.get("/cp/v1/generation").await.1["generation"].as_i64().unwrap()
}

#[tokio::test]
async fn an_alias_moved_at_one_replica_wakes_a_gateway_polling_the_other_at_once() {
    let Some((a, b)) = two_replicas().await else { return };
    a.create_model("fraud").await;
    let v1 = a.push("fraud", &[("model.onnx", b"one")]).await;
    let v2 = a.push("fraud", &[("model.onnx", b"two")]).await;
    let mut latencies = Vec::new();
    for round in 0..5 {
        let version = if round % 2 == 0 { v1 } else { v2 };
        let since = generation(&b).await;
        let poll = long_poll(&b, since);
        // The poll is waiting at B well before the move (a re-read alone would answer ~800 ms
        // after the move; a notification within milliseconds).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!poll.is_finished(), "round {round}: the poll answered before anything changed");
        let moved_at = Instant::now();
        let (status, body) = a.set_alias("fraud", "champion", version, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, state, answered_at) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(state["models"]["fraud"]["aliases"]["champion"], version, "round {round}: {state}");
        latencies.push(answered_at.duration_since(moved_at));
    }
    eprintln!("replica A move -> replica B poll answered: {latencies:?}");
    for latency in &latencies {
        assert!(*latency < Duration::from_millis(400), "woken by the re-read, not a notification: {latencies:?}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_change_whose_notification_is_lost_still_arrives_within_the_one_second_re_read() {
    let Some((a, b)) = two_replicas().await else { return };
    let since = generation(&b).await;
    let poll = long_poll(&b, since);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A commit that sends no notification, as if it came while B's LISTEN connection was down.
    let pool = sqlx::AnyPool::connect(&b.db_url).await.unwrap();
    let changed_at = Instant::now();
    sqlx::query("UPDATE cp_state SET generation = generation + 1 WHERE id = 1").execute(&pool).await.unwrap();
    let (status, state, answered_at) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["generation"], since + 1);
    let latency = answered_at.duration_since(changed_at);
    assert!(latency <= Duration::from_millis(1300), "the re-read took {latency:?}");
    pool.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn either_replica_serves_what_the_other_wrote() {
    let Some((a, b)) = two_replicas().await else { return };
    b.create_model("fraud").await;
    let version = b.push("fraud", &[("model.onnx", b"weights")]).await;
    let (status, body) = a.set_alias("fraud", "champion", version, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for server in [&a, &b] {
        let (status, state) = server.get("/cp/v1/sync?gateway=gw-2&since=0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(state["models"]["fraud"]["aliases"]["champion"], version);
    }
    a.stop().await;
    b.stop().await;
}
