//! Ground truth through real sockets: request ids on every answer (HTTP and
//! gRPC), the feedback endpoint joining truths to the predictions a route
//! kept, per-version accuracy in the admin API and the metrics, A/B verdicts,
//! the accuracy gate of a rollout, and every bad input refused with a status.
//!
//! Both versions serve the real `mlp` ONNX model, so they predict alike; the
//! test sets each version's accuracy by choosing the labels it sends: the
//! answer's own argmax (right) or another class (wrong).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;
mod support_routing;

use std::time::Duration;

use common::mlp_grpc_request;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support_routing::{Http, Kind, Repo, Server, route};

fn two_arms(model: &str, feedback: &str) -> Vec<modelgate::routing::RouteSpec> {
    vec![route(&format!(
        "model = \"{model}\"\ntargets = [{{ version = 1, weight = 50 }}, {{ version = 2, weight = 50 }}]\nfeedback = {{ {feedback} }}"
    ))]
}

/// The class an answer predicts: the argmax of its 10 scores.
fn argmax(reply: &support_routing::Reply) -> u64 {
    let scores: Vec<f64> =
        reply.body["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap() as u64
}

/// Sends `n` requests to route `model`; returns (id, answering version, predicted class).
async fn predictions(http: &Http, server: &Server, model: &str, n: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for seed in 0..n {
        let reply = http.infer(server, model, &[], seed).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        out.push((id, reply.version().unwrap(), argmax(&reply)));
    }
    out
}

/// Labels that make version 1 right on 9 answers in 10 and version 2 on 1 in 2.
fn labels(predictions: &[(String, u64, u64)]) -> (Vec<Value>, [(u64, u64); 2]) {
    let mut counts = [(0u64, 0u64); 2];
    let items = predictions
        .iter()
        .map(|(id, version, class)| {
            let count = &mut counts[(*version - 1) as usize];
            count.0 += 1;
            let right = if *version == 1 { count.0 % 10 != 0 } else { count.0 % 2 == 0 };
            count.1 += u64::from(right);
            let label = if right { *class } else { (*class + 1) % 10 };
            json!({ "id": id, "label": label })
        })
        .collect();
    (items, counts)
}

async fn feedback(http: &Http, server: &Server, model: &str, body: Value) -> support_routing::Reply {
    let url = format!("http://{}/v2/models/{model}/feedback", server.http);
    http.send(Method::POST, url, &[], Some(body.to_string())).await
}

async fn metrics(http: &Http, server: &Server) -> String {
    let reply = http.send(Method::GET, format!("http://{}/metrics", server.http), &[], None).await;
    reply.body.as_str().unwrap().to_owned()
}

/// The value of the metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn every_answer_carries_its_request_id_in_the_body_and_the_header() {
    let repo = Repo::new("m", &[(1, Kind::Mlp)]);
    let server = Server::start(&repo, Vec::new()).await;
    let http = Http::default();
    let generated = http.infer(&server, "m", &[], 1).await;
    let id = generated.body["id"].as_str().unwrap().to_owned();
    assert_eq!(generated.headers["x-request-id"], id.as_str());
    let again = http.infer(&server, "m", &[], 1).await;
    assert_ne!(again.body["id"], generated.body["id"], "generated ids are unique");

    let mut body: Value = serde_json::from_str(&support_routing::infer_body(1)).unwrap();
    body["id"] = json!("client-chosen-42");
    let url = format!("http://{}/v2/models/m/infer", server.http);
    let chosen = http.send(Method::POST, url, &[], Some(body.to_string())).await;
    assert_eq!(chosen.body["id"], "client-chosen-42");
    assert_eq!(chosen.headers["x-request-id"], "client-chosen-42");
}

#[tokio::test]
async fn grpc_answers_carry_the_request_id_in_the_message_and_the_metadata() {
    use modelgate::proto::inference as pb;
    let (_repo, server) = common::serve_example("mlp", |_| {}).await;
    let mut client = server.grpc().await;
    let request = |id: &str| pb::ModelInferRequest { id: id.into(), ..mlp_grpc_request("mlp") };
    let generated = client.model_infer(request("")).await.unwrap();
    let id = generated.get_ref().id.clone();
    assert!(!id.is_empty());
    assert_eq!(generated.metadata().get("x-request-id").unwrap(), id.as_str());
    let chosen = client.model_infer(request("grpc-7")).await.unwrap();
    assert_eq!(
        (chosen.get_ref().id.as_str(), chosen.metadata().get("x-request-id").unwrap().to_str().unwrap()),
        ("grpc-7", "grpc-7")
    );
}

#[tokio::test]
async fn truths_give_each_version_its_accuracy_and_the_weaker_arm_a_worse_verdict() {
    let repo = Repo::new("acc", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, two_arms("acc", "ttl = \"1h\", max_entries = 10000")).await;
    let http = Http::default();
    let predictions = predictions(&http, &server, "acc", 600).await;
    let (items, counts) = labels(&predictions);
    assert!(counts.iter().all(|c| c.0 >= 200), "both arms answered: {counts:?}");
    for chunk in items.chunks(250) {
        let reply = feedback(&http, &server, "acc", json!({ "feedback": chunk })).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["accepted"], chunk.len());
    }

    let status = http.admin(&server, Method::GET, "/admin/v1/routes/acc", None).await;
    for (i, target) in status.body["targets"].as_array().unwrap().iter().enumerate() {
        let expected = counts[i].1 as f64 / counts[i].0 as f64;
        assert_eq!(target["quality"]["total"]["labelled"], counts[i].0);
        assert!((target["quality"]["total"]["accuracy"].as_f64().unwrap() - expected).abs() < 1e-12);
        assert!((target["quality"]["window"]["accuracy"].as_f64().unwrap() - expected).abs() < 1e-12);
    }
    let text = metrics(&http, &server).await;
    let accuracy = metric(&text, "modelgate_model_accuracy{model=\"acc\",version=\"2\"}").unwrap();
    assert!((accuracy - counts[1].1 as f64 / counts[1].0 as f64).abs() < 1e-9, "{accuracy}");
    let samples = metric(&text, "modelgate_model_feedback_samples{kind=\"label\",model=\"acc\",version=\"1\"}")
        .or_else(|| metric(&text, "modelgate_model_feedback_samples{model=\"acc\",version=\"1\",kind=\"label\"}"));
    assert_eq!(samples, Some(counts[0].0 as f64), "{text}");
    assert_eq!(metric(&text, "modelgate_feedback_total{model=\"acc\",result=\"accepted\"}"), Some(600.0));

    let ab = http.admin(&server, Method::GET, "/admin/v1/routes/acc/ab", None).await;
    assert_eq!(ab.body["metric"], "accuracy", "{:?}", ab.body);
    assert_eq!(ab.body["baseline"], 1);
    let arm = &ab.body["arms"][1];
    assert_eq!((arm["version"].as_u64(), arm["comparison"]["verdict"].as_str()), (Some(2), Some("worse")));
    let ci = &arm["comparison"]["sequential_ci"];
    assert!(ci[0].as_f64().unwrap() < -0.4 && ci[1].as_f64().unwrap() < 0.0, "{ci}");
}

#[tokio::test]
async fn equal_arms_get_no_verdict() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, two_arms("m", "")).await;
    let http = Http::default();
    let predictions = predictions(&http, &server, "m", 400).await;
    // Both versions right on 9 answers in 10.
    let items: Vec<Value> = predictions
        .iter()
        .enumerate()
        .map(|(i, (id, _, class))| json!({ "id": id, "label": if i % 10 == 0 { (class + 1) % 10 } else { *class } }))
        .collect();
    let reply = feedback(&http, &server, "m", json!({ "feedback": items })).await;
    assert_eq!(reply.body["accepted"], 400);
    let ab = http.admin(&server, Method::GET, "/admin/v1/routes/m/ab", None).await;
    assert_eq!(ab.body["arms"][1]["comparison"]["verdict"], "not yet known", "{:?}", ab.body);
}

#[tokio::test]
async fn bad_feedback_gets_a_clear_status_and_is_counted() {
    let repo = Repo::new("bad", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    repo.add("plain", &[(1, Kind::Mlp)], false);
    let server = Server::start(&repo, two_arms("bad", "ttl = \"1s\"")).await;
    let http = Http::default();
    let predictions = predictions(&http, &server, "bad", 3).await;
    let (id, class) = (&predictions[0].0, predictions[0].2);

    let cases = [
        (json!({ "id": "never-seen", "label": 1 }), 404, "holds no prediction"),
        (json!({ "id": id, "label": "cat" }), 400, "class index"),
        (json!({ "id": id, "label": 10 }), 400, "classes are 0 to 9"),
        (json!({ "id": id, "value": 0.5 }), 400, "send a \"label\""),
        (json!({ "id": 17, "label": 1 }), 400, "must be a string"),
        (json!({ "id": "x".repeat(300), "label": 1 }), 400, "1 to 128 characters"),
        (json!({ "label": 1 }), 400, "needs the \"id\""),
        (json!({ "id": id, "label": class }), 200, ""),
        (json!({ "id": id, "label": class }), 409, "first one stands"),
    ];
    for (body, status, needle) in cases {
        let reply = feedback(&http, &server, "bad", body.clone()).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        if status != 200 {
            assert!(reply.body["error"].as_str().unwrap().contains(needle), "{body}: {:?}", reply.body);
        }
    }
    let url = format!("http://{}/v2/models/bad/feedback", server.http);
    let malformed = http.send(Method::POST, url.clone(), &[], Some("{\"id\":".into())).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.body["error"].as_str().unwrap().contains("malformed feedback request"));
    // A request that names a version bypasses the route: its prediction is not kept.
    let url = format!("http://{}/v2/models/bad/versions/1/infer", server.http);
    let named = http.send(Method::POST, url, &[], Some(support_routing::infer_body(7))).await;
    assert_eq!(named.status, StatusCode::OK, "{:?}", named.body);
    let named = feedback(&http, &server, "bad", json!({ "id": named.body["id"], "label": 1 })).await;
    assert_eq!(named.status, StatusCode::NOT_FOUND, "{:?}", named.body);
    let unrouted = feedback(&http, &server, "plain", json!({ "id": id, "label": 1 })).await;
    assert_eq!(unrouted.status, StatusCode::NOT_FOUND);
    assert!(unrouted.body["error"].as_str().unwrap().contains("feedback"));

    // A flood in one request is bounded: more items than a batch holds is 413, and nothing is judged.
    let flood: Vec<Value> = (0..10_001).map(|_| json!({ "id": predictions[1].0, "label": 1 })).collect();
    let reply = feedback(&http, &server, "bad", json!({ "feedback": flood })).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", reply.body);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = feedback(&http, &server, "bad", json!({ "id": predictions[1].0, "label": 1 })).await;
    assert_eq!(expired.status, StatusCode::GONE, "{:?}", expired.body);
    assert!(expired.body["error"].as_str().unwrap().contains("ttl"));

    // Unknown: "never-seen" and the request that named its version. Invalid: 3 refused on their prediction (class 10, a value, a long id), 3 items that name
    // none ("cat", 17, no id), the malformed body and the flood.
    let text = metrics(&http, &server).await;
    for (result, n) in [("accepted", 1.0), ("unknown", 2.0), ("duplicate", 1.0), ("expired", 1.0), ("invalid", 8.0)] {
        let line = format!("modelgate_feedback_total{{model=\"bad\",result=\"{result}\"}}");
        assert_eq!(metric(&text, &line), Some(n), "{line}");
    }
}

#[tokio::test]
async fn the_prediction_index_keeps_at_most_max_entries_and_drops_the_oldest() {
    let repo = Repo::new("small", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    // 64 shards of one entry each.
    let server = Server::start(&repo, two_arms("small", "max_entries = 64")).await;
    let http = Http::default();
    let predictions = predictions(&http, &server, "small", 400).await;
    let status = http.admin(&server, Method::GET, "/admin/v1/routes/small", None).await;
    let index = &status.body["feedback"];
    assert!(index["entries"].as_u64().unwrap() <= 64, "{index}");
    assert_eq!(index["capacity"], 64);
    assert!(index["evicted"].as_u64().unwrap() >= 400 - 64, "{index}");
    let oldest = feedback(&http, &server, "small", json!({ "id": predictions[0].0, "label": 1 })).await;
    assert_eq!(oldest.status, StatusCode::NOT_FOUND);
    let text = metrics(&http, &server).await;
    assert!(metric(&text, "modelgate_feedback_index_entries{model=\"small\"}").unwrap() <= 64.0);
    assert!(metric(&text, "modelgate_feedback_index_bytes{model=\"small\"}").unwrap() > 0.0);
}

fn gated(on_breach: &str) -> Vec<modelgate::routing::RouteSpec> {
    vec![route(&format!(
        "model = \"m\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\nfeedback = {{ }}\n\
         rollout = {{ canary = 2, step_weights = [50, 100], interval = \"3s\", check_interval = \"50ms\", \
         max_p99_latency = \"10s\", min_accuracy_delta = -0.05, on_quality_breach = \"{on_breach}\" }}"
    ))]
}

/// Version 1 is the baseline (right 9 in 10), version 2 the canary (right 1 in 2).
async fn judge_the_canary_worse(http: &Http, server: &Server) {
    let predictions = predictions(http, server, "m", 600).await;
    let (items, counts) = labels(&predictions);
    assert!(counts.iter().all(|c| c.0 >= 200), "{counts:?}");
    let reply = feedback(http, server, "m", json!({ "feedback": items })).await;
    assert_eq!(reply.body["accepted"], 600, "{:?}", reply.body);
}

#[tokio::test]
async fn the_accuracy_gate_holds_a_less_accurate_canary() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, gated("hold")).await;
    let http = Http::default();
    judge_the_canary_worse(&http, &server).await;
    // Past the step's interval: without the gate the canary would be at 100 % (promoted).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = http.admin(&server, Method::GET, "/admin/v1/routes/m", None).await;
    let rollout = &status.body["rollout"];
    assert_eq!(
        (rollout["state"].as_str(), rollout["canary_weight"].as_u64()),
        (Some("progressing"), Some(50)),
        "{rollout}"
    );
    let events = rollout["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "quality_hold" && e["message"].as_str().unwrap().contains("min_accuracy_delta")),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_accuracy_gate_rolls_back_when_told_to() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, gated("rollback")).await;
    let http = Http::default();
    judge_the_canary_worse(&http, &server).await;
    let mut state = Value::Null;
    for _ in 0..100 {
        let status = http.admin(&server, Method::GET, "/admin/v1/routes/m", None).await;
        state = status.body["rollout"].clone();
        if state["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "failed", "{state}");
    assert_eq!(state["canary_weight"], 0);
    assert!(
        state["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("on_quality_breach"))
    );
}

#[tokio::test]
async fn an_accuracy_gate_without_feedback_is_refused() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, Vec::new()).await;
    let http = Http::default();
    let body = json!({ "targets": [{ "version": 1 }, { "version": 2 }], "rollout": { "canary": 2, "min_accuracy_delta": -0.01 } });
    let reply = http.admin(&server, Method::PUT, "/admin/v1/routes/m", Some(body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert!(reply.body["error"].as_str().unwrap().contains("feedback"));
}

#[tokio::test]
async fn grpc_feedback_judges_each_truth_like_the_http_batch() {
    use modelgate::proto::modelgate::{FeedbackRequest, Truth, modelgate_client::ModelgateClient, truth};
    let repo = common::TempRepo::new();
    repo.add("mlp", "g", 1, None);
    let mut config = common::config_for(repo.path());
    config.routes = vec![route("model = \"g\"\ntargets = [{ version = 1, weight = 100 }]\nfeedback = {}")];
    let server = common::TestServer::start(config).await;
    let mut client = server.grpc().await;
    let answer = client.model_infer(mlp_grpc_request("g")).await.unwrap().into_inner();
    let scores: Vec<f32> = bytemuck::pod_collect_to_vec(&answer.raw_output_contents[0]);
    let class = (0..10).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap() as u32;

    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut own = ModelgateClient::new(channel);
    let truths = vec![
        Truth { id: answer.id.clone(), truth: Some(truth::Truth::Label(class)) },
        Truth { id: answer.id.clone(), truth: Some(truth::Truth::Label(class)) },
        Truth { id: "unknown".into(), truth: Some(truth::Truth::Label(0)) },
        Truth { id: answer.id.clone(), truth: None },
    ];
    let reply = own.feedback(FeedbackRequest { model_name: "g".into(), truths }).await.unwrap().into_inner();
    assert_eq!(reply.accepted, 1);
    let codes: Vec<(i32, u32)> = reply.results.iter().map(|r| (r.code, r.http_status)).collect();
    assert_eq!(codes, [(0, 200), (6, 409), (5, 404), (3, 400)]);
    assert_eq!((reply.results[0].model_version.as_str(), reply.results[0].correct), ("1", Some(true)));

    let refused = own.feedback(FeedbackRequest { model_name: "mlp".into(), truths: Vec::new() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let flood = vec![Truth { id: "x".into(), truth: Some(truth::Truth::Reward(1.0)) }; 10_001];
    let refused = own.feedback(FeedbackRequest { model_name: "g".into(), truths: flood }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_truths_and_shows_ab_results() {
    let repo = Repo::new("cli", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, two_arms("cli", "")).await;
    let http = Http::default();
    let predictions = predictions(&http, &server, "cli", 3).await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
                .args(args)
                .env("MODELGATE_ADMIN_TOKEN", support_routing::TOKEN)
                .env("RUST_LOG", "off")
                .output()
                .unwrap()
        })
    };
    let (id, _, class) = &predictions[0];
    let out = run(vec![
        "feedback".into(),
        "--address".into(),
        server.http.clone(),
        "cli".into(),
        id.clone(),
        "--label".into(),
        class.to_string(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let judged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(judged["correct"], true);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("truths.jsonl");
    let lines: Vec<String> =
        predictions.iter().map(|(id, _, _)| json!({ "id": id, "reward": 1.0 }).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args = vec!["feedback".into(), "--address".into(), server.http.clone(), "cli".into(), "--file".into()];
    let out = run([args, vec![file.display().to_string()]].concat()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["accepted"].as_u64(), summary["refused"].as_u64()),
        (Some(2), Some(1)),
        "the first id already had its truth"
    );

    let out =
        run(vec!["admin".into(), "--address".into(), server.admin.clone(), "ab".into(), "cli".into()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ab: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ab["model"], "cli");
    assert_eq!(ab["arms"].as_array().unwrap().len(), 2);
}
