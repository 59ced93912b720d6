//! Drift in the control plane, through a real socket, on SQLite and PostgreSQL: a reference is
//! stored and handed to gateways with the desired state (a broken one is refused with the
//! reason), windows reported by two gateways merge, a shifted stream flips the version's drift
//! status in `GET /cp/v1/models/{m}/drift` and in the desired state, windows for a version the
//! gateway does not hold are refused, and a version without a reference gets a production
//! baseline from its first rows.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{Server, backends};
use modelgate_sketch::{FeatureProfile, FeatureSpec, Profile, Summary};
use reqwest::StatusCode;
use serde_json::{Value, json};

const FEATURES: usize = 4;

/// A deterministic standard-normal-like sample (Box–Muller on a fixed LCG).
fn sample(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut uniform = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos() + shift).collect()
}

fn reference(rows: usize) -> Profile {
    let features = (0..FEATURES)
        .map(|f| {
            let p = FeatureProfile::reference(&sample(rows, f as u64, 0.0), 10, 2000).unwrap();
            (format!("INPUT0[{f}]"), Summary::Numeric(p))
        })
        .collect();
    Profile { features }
}

fn window(specs: &BTreeMap<String, FeatureSpec>, rows: usize, seed: u64, shift: f64) -> Profile {
    let mut p = Profile::empty(specs).unwrap();
    for (i, summary) in p.features.values_mut().enumerate() {
        if let Summary::Numeric(x) = summary {
            x.extend(&sample(rows, seed * 100 + i as u64, shift));
        }
    }
    p
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn report(version: i64, loaded: &[i64], windows: &[(i64, Profile)]) -> Value {
    let windows: Vec<Value> = windows
        .iter()
        .map(|(start, profile)| {
            json!({ "model": "fraud", "version": version, "arm": "stable", "start_ms": start, "seconds": 60,
                    "rows": profile.rows(), "profile": profile })
        })
        .collect();
    let loaded: Vec<Value> =
        loaded.iter().map(|v| json!({ "model": "fraud", "version": v, "manifest_digest": "sha256:00" })).collect();
    json!({ "applied_generation": 1, "loaded": loaded, "drift_windows": windows })
}

async fn put_reference(server: &Server, version: i64, body: &Value) -> (StatusCode, Value) {
    let url = server.url(&format!("/cp/v1/models/fraud/versions/{version}/reference"));
    common::answer(server.http.put(url).json(body).send().await.unwrap()).await
}

async fn fraud(server: &Server) {
    server.create_model("fraud").await;
    assert_eq!(server.push("fraud", &[("1/model.onnx", b"one")]).await, 1);
    assert_eq!(server.push("fraud", &[("1/model.onnx", b"two")]).await, 2);
    server.set_alias("fraud", "champion", 1, None).await;
}

#[tokio::test]
async fn a_reference_reaches_gateways_with_the_desired_state_and_a_broken_one_is_refused() {
    for backend in backends() {
        let server = Server::start(backend).await;
        fraud(&server).await;
        let profile = reference(5000);
        let (status, body) = put_reference(&server, 1, &json!({ "profile": profile })).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {body}");
        let (_, state) = server.get("/cp/v1/sync?gateway=gw-a&since=0").await;
        let features = &state["models"]["fraud"]["versions"]["1"]["drift_features"];
        assert_eq!(features["INPUT0[0]"]["kind"], "numeric", "{backend:?}: {state}");
        assert_eq!(features["INPUT0[0]"]["edges"].as_array().unwrap().len(), 9, "{backend:?}");
        let (status, stored) = server.get("/cp/v1/models/fraud/versions/1/reference").await;
        assert_eq!((status, stored["rows"].as_u64()), (StatusCode::OK, Some(5000)), "{backend:?}");

        // A sketch that is not one, a rule for a feature the profile lacks, a missing version.
        let mut broken = serde_json::to_value(&profile).unwrap();
        broken["features"]["INPUT0[0]"]["profile"]["kll"] = json!("bm90IGEgc2tldGNo");
        let (status, body) = put_reference(&server, 1, &json!({ "profile": broken })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {body}");
        assert!(common::error_of(&body).contains("invalid JSON body"), "{backend:?}: {body}");
        let rules = json!({ "profile": profile, "rules": { "age": { "rule": "auto" } } });
        let (status, body) = put_reference(&server, 1, &rules).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {body}");
        assert!(common::error_of(&body).contains("'age'"), "{backend:?}: {body}");
        let (status, _) = put_reference(&server, 9, &json!({ "profile": profile })).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend:?}");
        let (status, body) = put_reference(&server, 1, &json!({ "profile": { "features": {} } })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {body}");
    }
}

/// A local endpoint that records the bodies POSTed to it.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sent, received) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sent = sent.clone();
            async move {
                let _ = sent.send(body);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test]
async fn a_shifted_stream_from_two_gateways_flips_the_versions_drift_status() {
    for backend in backends() {
        let (url, mut hooks) = webhook().await;
        let settings = modelgate_registry::drift::DriftSettings { webhook: Some(url), ..Default::default() };
        let server = Server::start_with_drift(backend, settings).await;
        fraud(&server).await;
        let profile = reference(10_000);
        let specs = profile.specs();
        put_reference(&server, 1, &json!({ "profile": profile })).await;
        let start = now_ms() - 120_000;

        // Same distribution from two gateways: evaluated, not drifted.
        for (gateway, seed) in [("gw-a", 1), ("gw-b", 2)] {
            let body = report(1, &[1], &[(start, window(&specs, 1000, seed, 0.0))]);
            let (status, answer) = server.post(&format!("/cp/v1/gateways/{gateway}/report"), body).await;
            assert_eq!(status, StatusCode::OK, "{backend:?}: {answer}");
            assert_eq!(answer["drift_windows"], json!({ "stored": 1, "refused": 0 }), "{backend:?}");
        }
        let (status, body) = server.post("/cp/v1/drift/evaluate", json!({})).await;
        assert_eq!((status, body["evaluated_versions"].as_u64()), (StatusCode::OK, Some(1)), "{backend:?}: {body}");
        let (_, drift) = server.get("/cp/v1/models/fraud/drift").await;
        let latest = &drift["versions"]["1"]["evaluations"][0];
        assert_eq!(latest["rows"], 2000, "{backend:?}: {drift}");
        assert_eq!(latest["gateways"], 2, "{backend:?}");
        assert_eq!(latest["dataset"]["drifted"], false, "{backend:?}: {latest}");
        assert_eq!(latest["features"]["INPUT0[0]"]["stat"], "wasserstein", "{backend:?}");

        // A resent report stores nothing twice; a window for version 2, which gw-a does not
        // report loaded, is refused.
        let resent = report(1, &[1], &[(start, window(&specs, 1000, 1, 0.0))]);
        server.post("/cp/v1/gateways/gw-a/report", resent).await;
        let foreign = report(2, &[1], &[(start, window(&specs, 1000, 3, 0.0))]);
        let (_, answer) = server.post("/cp/v1/gateways/gw-a/report", foreign).await;
        assert_eq!(answer["drift_windows"], json!({ "stored": 0, "refused": 1 }), "{backend:?}");

        // A later window shifted by half a standard deviation.
        let shifted = report(1, &[1], &[(start + 60_000, window(&specs, 3000, 4, 0.5))]);
        server.post("/cp/v1/gateways/gw-a/report", shifted).await;
        server.post("/cp/v1/drift/evaluate", json!({})).await;
        let (_, drift) = server.get("/cp/v1/models/fraud/drift?history=2").await;
        let evaluations = drift["versions"]["1"]["evaluations"].as_array().unwrap();
        assert_eq!(evaluations.len(), 2, "{backend:?}");
        assert_eq!(evaluations[0]["rows"], 5000, "{backend:?}: the resent window counted twice");
        assert_eq!(evaluations[0]["dataset"]["drifted"], true, "{backend:?}: {}", evaluations[0]);
        let (_, state) = server.get("/cp/v1/sync?gateway=gw-a&since=0").await;
        let status = &state["models"]["fraud"]["drift"]["1"];
        assert_eq!(status["drifted"], true, "{backend:?}: {state}");
        assert!(status["features"]["INPUT0[2]"]["value"].as_f64().unwrap() > 0.1, "{backend:?}: {status}");
        // The flip is an event and a webhook call; the first, undrifted evaluation was neither.
        let (_, events) = server.get("/cp/v1/events?model=fraud").await;
        let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(
            kinds.iter().filter(|k| k.starts_with("drift_d") || k.starts_with("drift_c")).count(),
            1,
            "{backend:?}: {kinds:?}"
        );
        assert!(kinds.contains(&"drift_detected"), "{backend:?}: {kinds:?}");
        let hook = tokio::time::timeout(std::time::Duration::from_secs(5), hooks.recv()).await.unwrap().unwrap();
        assert_eq!((hook["event"].as_str(), hook["version"].as_i64()), (Some("drift_detected"), Some(1)), "{hook}");
        assert!(hooks.try_recv().is_err(), "{backend:?}: a second webhook call");

        // The page's view of one feature: the reference's bins beside the span's, on the same
        // edges; the shifted window moved mass into the top bin.
        let (status, shown) =
            server.get("/cp/v1/models/fraud/versions/1/drift/distribution?feature=INPUT0%5B2%5D").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {shown}");
        let (reference, current) = (&shown["reference"], &shown["current"]);
        assert_eq!(reference["edges"], current["edges"], "{backend:?}: {shown}");
        let counts = |side: &Value| -> Vec<f64> {
            side["counts"].as_array().unwrap().iter().map(|c| c.as_f64().unwrap()).collect()
        };
        let (before, now) = (counts(reference), counts(current));
        assert_eq!(now.iter().sum::<f64>(), 5000.0, "{backend:?}: {shown}");
        let top = |c: &[f64]| c[c.len() - 1] / c.iter().sum::<f64>();
        assert!(top(&now) > top(&before) + 0.03, "{backend:?}: {} vs {}", top(&now), top(&before));
        let (status, body) = server.get("/cp/v1/models/fraud/versions/1/drift/distribution?feature=nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend:?}: {body}");
        let (status, _) = server.get("/cp/v1/models/fraud/versions/1/drift/distribution").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}");

        let (status, body) = server.get("/cp/v1/models/fraud/drift?history=0").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {body}");
        let (status, _) = server.get("/cp/v1/models/nope/drift").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend:?}");
    }
}

#[tokio::test]
async fn a_version_without_a_reference_is_compared_with_its_first_rows() {
    for backend in backends() {
        let server = Server::start(backend).await;
        fraud(&server).await;
        let specs: BTreeMap<String, FeatureSpec> =
            (0..FEATURES).map(|f| (format!("INPUT0[{f}]"), FeatureSpec::Numeric { edges: Vec::new() })).collect();
        let start = now_ms() - 300_000;
        let windows: Vec<(i64, Profile)> =
            (0..4).map(|i| (start + i * 60_000, window(&specs, 3000, 10 + i as u64, 0.0))).collect();
        server.post("/cp/v1/gateways/gw-a/report", report(1, &[1], &windows)).await;
        server.post("/cp/v1/drift/evaluate", json!({})).await;
        let (status, stored) = server.get("/cp/v1/models/fraud/versions/1/reference").await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {stored}");
        assert_eq!(stored["rows"], 12_000, "{backend:?}");
        assert!(stored["source"].as_str().unwrap().starts_with("production baseline"), "{backend:?}");
        let (_, drift) = server.get("/cp/v1/models/fraud/drift").await;
        assert_eq!(drift["versions"]["1"]["evaluations"][0]["dataset"]["drifted"], false, "{backend:?}: {drift}");
    }
}
