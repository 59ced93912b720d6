//! Routing end to end over real sockets and ONNX Runtime: weights changed
//! under load, sticky keys, header rules, shadow copies, the canary's own
//! in-flight limit, gRPC metadata, and config reloads.

mod common;
mod support_routing;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use support_routing::{Http, Kind, Repo, Server, failures, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_changed_under_load_lose_no_request() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let spec = route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }, { version = 2, weight = 0 }]");
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let http = Http::default();
                let mut seen = HashMap::<u64, u64>::new();
                let mut seed = c * 10_000;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let reply = http.infer(&server, "m", &[], seed).await;
                    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                    *seen.entry(reply.version().unwrap()).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let http = Http::default();
    let splits = [(0, 100), (50, 50), (100, 0), (10, 90), (90, 10)];
    for round in 0..60 {
        let (a, b) = splits[round % splits.len()];
        let body = json!({ "weights": [{ "version": 1, "weight": a }, { "version": 2, "weight": b }] });
        let reply = http.admin(&server, Method::PUT, "/admin/v1/routes/m/weights", Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = HashMap::<u64, u64>::new();
    for client in clients {
        for (version, n) in client.await.unwrap() {
            *total.entry(version).or_default() += n;
        }
    }
    assert!(total[&1] > 0 && total[&2] > 0, "both versions served: {total:?}");
    assert_eq!(failures(&server, "m", 1) + failures(&server, "m", 2), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sticky_keys_each_stay_on_one_arm() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let spec = route(
        "model = \"m\"\ntargets = [{ version = 1, weight = 70 }, { version = 2, weight = 30 }]\nsticky_header = \"x-user-id\"",
    );
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let tasks: Vec<_> = (0..8u32)
        .map(|part| {
            let server = server.clone();
            tokio::spawn(async move {
                let http = Http::default();
                let mut arms = Vec::new();
                for user in (part..1000).step_by(8) {
                    let key = format!("user-{user}");
                    let mut versions = HashSet::new();
                    for round in 0..3 {
                        let reply = http.infer(&server, "m", &[("x-user-id", &key)], user * 3 + round).await;
                        versions.insert(reply.version().unwrap());
                    }
                    assert_eq!(versions.len(), 1, "user {key} moved between arms: {versions:?}");
                    arms.push(versions.into_iter().next().unwrap());
                }
                arms
            })
        })
        .collect();
    let mut on_two = 0;
    for task in tasks {
        on_two += task.await.unwrap().iter().filter(|&&v| v == 2).count();
    }
    assert!((220..380).contains(&on_two), "{on_two} of 1000 users on the 30 % arm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_pick_versions_and_an_explicit_version_bypasses_the_route() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp), (3, Kind::Mlp)]);
    let spec = route(
        r#"
        model = "m"
        targets = [{ version = 1, weight = 100 }, { version = 2, weight = 0 }, { version = 3, weight = 0 }]
        rules = [{ header = "x-variant", value = "b", version = 2 }, { header = "x-model-version" }]
        "#,
    );
    let server = Server::start(&repo, vec![spec]).await;
    let http = Http::default();
    assert_eq!(http.infer(&server, "m", &[], 1).await.version(), Some(1));
    assert_eq!(http.infer(&server, "m", &[("x-variant", "b")], 1).await.version(), Some(2));
    assert_eq!(http.infer(&server, "m", &[("x-model-version", "3")], 1).await.version(), Some(3));
    let unknown = http.infer(&server, "m", &[("x-model-version", "9")], 1).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    let explicit = format!("http://{}/v2/models/m/versions/3/infer", server.http);
    let reply = http.send(Method::POST, explicit, &[("x-variant", "b")], Some(support_routing::infer_body(1))).await;
    assert_eq!(reply.version(), Some(3), "a named version is served as named");
    let status = server.gateway.rollouts.status("m").await.unwrap();
    assert_eq!(status.targets[2].window.stats.requests, 1, "the explicit request did not count as routed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_never_changes_the_clients_response() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Failing), (3, Kind::Mlp)]);
    repo.add("plain", &[(1, Kind::Mlp)], false);
    let failing_shadow =
        route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }]\nshadow = { version = 2, percent = 100.0 }");
    let server = Server::start(&repo, vec![failing_shadow]).await;
    let http = Http::default();
    for seed in 0..50 {
        let shadowed = http.infer(&server, "m", &[], seed).await;
        let plain = http.infer(&server, "plain", &[], seed).await;
        assert_eq!(shadowed.status, StatusCode::OK);
        assert_eq!(shadowed.body["outputs"], plain.body["outputs"], "the shadow changed the answer");
    }
    let shadow = wait_shadow(&server, 50).await;
    assert_eq!((shadow.error, shadow.compared), (50, 0), "every copy failed and none was compared");

    // An identical shadow agrees on every request.
    let twin =
        route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }]\nshadow = { version = 3, percent = 100.0 }");
    server.gateway.rollouts.put(twin, modelgate::rollout::Source::Operator).await.unwrap();
    for seed in 0..40 {
        assert_eq!(http.infer(&server, "m", &[], seed).await.status, StatusCode::OK);
    }
    let shadow = wait_shadow(&server, 40).await;
    assert_eq!((shadow.compared, shadow.agreed), (40, 40));
    assert_eq!(shadow.max_abs_diff, Some(0.0));
    assert_eq!(failures(&server, "m", 1), 0);
}

async fn wait_shadow(server: &Server, copies: u64) -> modelgate::rollout::ShadowStatus {
    for _ in 0..200 {
        let status = server.gateway.rollouts.status("m").await.expect("the route exists");
        let shadow = status.shadow.expect("the route has a shadow");
        if shadow.success + shadow.error + shadow.skipped >= copies {
            return shadow;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the shadow copies did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_over_its_in_flight_limit_fails_its_own_requests_only() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Slow)]);
    let spec = route(
        "model = \"m\"\ntargets = [{ version = 1, weight = 50 }, { version = 2, weight = 50, max_in_flight = 2 }]",
    );
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let tasks: Vec<_> = (0..16u32)
        .map(|c| {
            let server = server.clone();
            tokio::spawn(async move {
                let http = Http::default();
                let mut replies = Vec::new();
                for i in 0..20 {
                    replies.push(http.infer(&server, "m", &[], c * 100 + i).await);
                }
                replies
            })
        })
        .collect();
    let (mut baseline_ok, mut refused) = (0, 0);
    for task in tasks {
        for reply in task.await.unwrap() {
            match (reply.status, reply.version()) {
                (StatusCode::OK, Some(1)) => baseline_ok += 1,
                (StatusCode::OK, Some(2)) => {}
                (StatusCode::SERVICE_UNAVAILABLE, None) => {
                    assert!(reply.body["error"].as_str().unwrap().contains("in flight"), "{reply:?}");
                    refused += 1;
                }
                other => panic!("unexpected reply {other:?}: {reply:?}"),
            }
        }
    }
    assert!(refused > 0, "16 clients on a 2-request limit must hit it");
    assert!(baseline_ok > 100, "{baseline_ok}");
    let status = server.gateway.rollouts.status("m").await.unwrap();
    assert_eq!(status.targets[0].window.stats.errors, 0, "the stable version lost nothing");
    assert_eq!(status.targets[1].in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_reaches_the_header_rules() {
    use modelgate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let spec = route(
        "model = \"m\"\ntargets = [{ version = 1, weight = 100 }, { version = 2, weight = 0 }]\nrules = [{ header = \"x-model-version\" }]",
    );
    let server = Server::start(&repo, vec![spec]).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.http)).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let message = common::mlp_grpc_request("m");
    let plain = client.model_infer(message.clone()).await.unwrap().into_inner();
    assert_eq!(plain.model_version, "1");
    let mut pinned = tonic::Request::new(message);
    pinned.metadata_mut().insert("x-model-version", "2".parse().unwrap());
    assert_eq!(client.model_infer(pinned).await.unwrap().into_inner().model_version, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_changes_only_the_routes_the_file_changed() {
    let repo = Repo::new("a", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    repo.add("b", &[(1, Kind::Mlp), (2, Kind::Mlp)], false);
    repo.add("c", &[(1, Kind::Mlp)], false);
    let a = route("model = \"a\"\ntargets = [{ version = 1, weight = 90 }, { version = 2, weight = 10 }]");
    let b = route("model = \"b\"\ntargets = [{ version = 1, weight = 90 }, { version = 2, weight = 10 }]");
    let server = Server::start(&repo, vec![a.clone(), b.clone()]).await;
    let rollouts = &server.gateway.rollouts;
    // An operator moves route a; the file changes b, drops nothing, adds c.
    rollouts.set_weights("a", &[(1, 50), (2, 50)]).await.unwrap();
    let mut b2 = b.clone();
    b2.targets[0].weight = Some(0);
    b2.targets[1].weight = Some(100);
    let c = route("model = \"c\"\ntargets = [{ version = 1, weight = 100 }]");
    let summary = rollouts.apply_file(&[a.clone(), b2, c]).await.unwrap();
    assert_eq!((summary.applied, summary.unchanged), (vec!["b".to_owned(), "c".to_owned()], vec!["a".to_owned()]));
    assert_eq!(rollouts.status("a").await.unwrap().targets[0].weight, 50, "the operator's change to a survived");
    assert_eq!(rollouts.status("b").await.unwrap().targets[1].weight, 100);
    // Dropping routes from the file removes them; a bad file changes nothing.
    let mut bad = a.clone();
    bad.targets[0].weight = Some(1);
    assert!(rollouts.apply_file(&[bad]).await.is_err());
    assert_eq!(rollouts.list().await.len(), 3);
    let summary = rollouts.apply_file(&[a]).await.unwrap();
    assert_eq!(summary.removed, vec!["b".to_owned(), "c".to_owned()]);
    assert_eq!(rollouts.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_route_zeroes_the_weight_of_a_version_it_dropped() {
    let repo = Repo::new("w", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let split = route("model = \"w\"\ntargets = [{ version = 1, weight = 70 }, { version = 2, weight = 30 }]");
    let server = Server::start(&repo, vec![split]).await;
    let weight = |version: u64| {
        let text = server.gateway.metrics.render();
        let series = format!("modelgate_route_weight{{model=\"w\",version=\"{version}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned)).unwrap_or_default()
    };
    assert_eq!((weight(1), weight(2)), ("70".to_owned(), "30".to_owned()));
    let only_one = route("model = \"w\"\ntargets = [{ version = 1, weight = 100 }]");
    server.gateway.rollouts.apply_file(&[only_one]).await.unwrap();
    assert_eq!((weight(1), weight(2)), ("100".to_owned(), "0".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_depth_forgets_clients_that_left() {
    // Issue #15, finding 10: modelgate_queue_depth read 62 for 10 s after the clients left.
    let repo = Repo::new("slowq", &[(1, Kind::Slow)]);
    let server = Arc::new(Server::start(&repo, vec![]).await);
    let depth = || server.gateway.repository.resolve("slowq", None).unwrap().queue_depth();
    // Clients arrive one every 2 ms until 4 wait behind a running batch. (24 sent at once were
    // sometimes taken whole into one batch, so none ever waited.)
    let mut clients = Vec::new();
    let started = std::time::Instant::now();
    while depth() < 4 {
        assert!(started.elapsed() < Duration::from_secs(10), "the requests never queued");
        let (server, seed) = (server.clone(), clients.len() as u32);
        clients.push(tokio::spawn(async move { Http::default().infer(&server, "slowq", &[], seed).await }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Every client gives up: their connections close, their requests are cancelled.
    for client in &clients {
        client.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = Http::default().send(http::Method::GET, format!("http://{}/metrics", server.http), &[], None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    let line = text.lines().find(|l| l.starts_with("modelgate_queue_depth{model=\"slowq\"")).unwrap_or_default();
    assert!(line.ends_with(" 0"), "{line}");
}
