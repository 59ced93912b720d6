//! Shared feedback routes across replicas, end to end through real sockets: two
//! gateways connected to one control plane (SQLite, loopback) by the sync
//! follower's wiring (`sync::feedback::start`). A prediction made at gateway A
//! joins feedback sent to gateway B, or to A after its bounded index pushed the
//! entry out; a second truth is refused at any replica; unknown ids are 404; a
//! control plane that is down leaves joins local, without a hang.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support_routing;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use modelgate::sync::client::ControlPlane;
use modelgate_registry::api::auth::Token;
use serde_json::{Value, json};
use support_routing::{Http, Kind, Repo, Server, TOKEN, route};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A control plane on loopback over SQLite.
struct Plane {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start() -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let plane = support_routing::start_control_plane(&dir.path().join("cp"), "127.0.0.1:0").await;
        Plane { addr: plane.addr, _stop: plane.stop, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A gateway serving route `m` (versions 1 and 2 of the real `mlp` model, 50/50,
/// shared feedback holding `max_entries`), its feedback connected to `control_plane` as `id`.
struct Replica {
    server: Server,
    _shipper: modelgate::sync::feedback::Shipper,
    _repo: Repo,
}

impl Replica {
    async fn start(control_plane: &str, id: &str, max_entries: usize) -> Replica {
        let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
        let spec = route(&format!(
            "model = \"m\"\ntargets = [{{ version = 1, weight = 50 }}, {{ version = 2, weight = 50 }}]\n\
             feedback = {{ ttl = \"1h\", max_entries = {max_entries}, shared = true }}"
        ));
        let server = Server::start(&repo, vec![spec]).await;
        let client = ControlPlane::new(control_plane, Token::new(TOKEN).unwrap()).unwrap();
        let shipper = modelgate::sync::feedback::start(&server.gateway, client, id.to_owned());
        Replica { server, _shipper: shipper, _repo: repo }
    }

    /// One prediction: (request id, answering version, predicted class).
    async fn predict(&self, seed: u32) -> (String, u64, u64) {
        let reply = Http::default().infer(&self.server, "m", &[], seed).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let scores: Vec<f64> =
            reply.body["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let class = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap() as u64;
        (reply.body["id"].as_str().unwrap().to_owned(), reply.version().unwrap(), class)
    }

    async fn feedback(&self, body: Value) -> (StatusCode, Value) {
        let url = format!("http://{}/v2/models/m/feedback", self.server.http);
        let reply = Http::default().send(Method::POST, url, &[], Some(body.to_string())).await;
        (reply.status, reply.body)
    }

    /// Labelled truths counted for `version` since the route began.
    fn labelled(&self, version: u64) -> u64 {
        let route = self.server.gateway.routes.get("m").unwrap();
        let reports = route.feedback.as_ref().unwrap().reports();
        reports.iter().find(|(v, _, _)| *v == version).map_or(0, |(_, total, _)| total.labelled)
    }
}

/// Sends `body` to `replica` until it is no longer 404 (the entry is shipped within
/// about a quarter second), for up to 5 s; returns the last answer.
async fn feedback_once_shipped(replica: &Replica, body: Value) -> (StatusCode, Value) {
    let started = Instant::now();
    loop {
        let (status, reply) = replica.feedback(body.clone()).await;
        if status != StatusCode::NOT_FOUND || started.elapsed() > Duration::from_secs(5) {
            return (status, reply);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn feedback_at_another_gateway_joins_and_a_second_truth_is_refused_everywhere() {
    let plane = Plane::start().await;
    let a = Replica::start(&plane.url(), "gw-a", 1000).await;
    let b = Replica::start(&plane.url(), "gw-b", 1000).await;
    let (id, version, class) = a.predict(1).await;

    let (status, reply) = feedback_once_shipped(&b, json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply, json!({ "id": id, "model_version": version.to_string(), "correct": true }));
    assert_eq!(b.labelled(version), 1, "the truth counts at the gateway that took it, for the version that answered");

    // A holds the entry open locally, but B judged it first: the claim at the control plane refuses it.
    let (status, reply) = a.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    let (status, _) = b.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(a.labelled(version), 0);

    // Unknown everywhere: 404 at both.
    for replica in [&a, &b] {
        let (status, reply) = replica.feedback(json!({ "id": "never-seen-anywhere", "label": 1 })).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    }
}

#[tokio::test]
async fn a_truth_accepted_where_it_was_predicted_is_refused_at_another_gateway() {
    let plane = Plane::start().await;
    let a = Replica::start(&plane.url(), "gw-a", 1000).await;
    let b = Replica::start(&plane.url(), "gw-b", 1000).await;
    let (id, version, class) = a.predict(2).await;
    let (status, reply) = a.feedback(json!({ "id": id, "label": (class + 1) % 10 })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["correct"], false);
    assert_eq!(a.labelled(version), 1);
    // Claimed with its entry at once, shipped or not: B is refused at once (409, not 404).
    let (status, reply) = b.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert_eq!(b.labelled(version), 0);
}

#[tokio::test]
async fn feedback_after_the_local_index_pushed_the_entry_out_joins_through_the_control_plane() {
    let plane = Plane::start().await;
    // 64 entries at most: one per shard.
    let a = Replica::start(&plane.url(), "gw-a", 64).await;
    let (id, version, class) = a.predict(3).await;
    for seed in 0..400 {
        a.predict(100 + seed).await;
    }
    let route = a.server.gateway.routes.get("m").unwrap();
    let index = route.feedback.as_ref().unwrap().index();
    // The later entries may still wait for the applier (it wakes every 10 ms): apply them first.
    index.flush();
    assert_eq!(index.peek(&id), Err(modelgate::feedback::Miss::Unknown), "pushed out of the local index");
    let (status, reply) = feedback_once_shipped(&a, json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["model_version"], version.to_string());
    assert_eq!(a.labelled(version), 1);
    let (status, _) = a.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_control_plane_that_is_down_leaves_joins_local_and_answers_at_once() {
    // Nothing listens there: every call fails at connect.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let a = Replica::start(&format!("http://{closed}"), "gw-a", 1000).await;
    let (id, version, class) = a.predict(4).await;
    let started = Instant::now();
    let (status, reply) = a.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(a.labelled(version), 1);
    let (status, _) = a.feedback(json!({ "id": id, "label": class })).await;
    assert_eq!(status, StatusCode::CONFLICT, "duplicates are still refused here");
    let (status, _) = a.feedback(json!({ "id": "nowhere", "label": class })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
}
