//! End to end through a real socket and real ONNX Runtime: a canary that
//! fails every request and one that is slow are each rolled back by the
//! analyzer while the baseline serves every request it gets; a healthy canary
//! is promoted step by step; a failing canary's faults are answered by the
//! baseline, and client mistakes and expired client deadlines never are.
#![allow(clippy::unwrap_used)] // helpers of tests: a panic is the failure report

mod support_routing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use modelgate::rollout::{EventKind, Phase};
use support_routing::{Http, Kind, Repo, Server, failures, route};

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok_baseline: AtomicU64,
    ok_canary: AtomicU64,
    failed: AtomicU64,
    failed_after_rollback: AtomicU64,
}

/// Sends requests from `clients` tasks until `stop`; counts what comes back.
fn drive(
    server: &Arc<Server>,
    model: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
    rolled_back: Arc<AtomicBool>,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let tasks = (0..clients)
        .map(|c| {
            let (server, stop, rolled_back, tally) = (server.clone(), stop.clone(), rolled_back.clone(), tally.clone());
            tokio::spawn(async move {
                let http = Http::default();
                let mut seed = c as u32 * 1000;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    // Read before sending: a request sent after the rollback was seen must not fail.
                    let after = rolled_back.load(Ordering::Acquire);
                    let reply = http.infer(&server, model, &[], seed).await;
                    match reply.version() {
                        Some(1) => tally.ok_baseline.fetch_add(1, Ordering::Relaxed),
                        Some(_) => tally.ok_canary.fetch_add(1, Ordering::Relaxed),
                        None => {
                            assert!(reply.status.is_server_error(), "a client mistake in the test: {reply:?}");
                            if after {
                                tally.failed_after_rollback.fetch_add(1, Ordering::Relaxed);
                            }
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    (tally, tasks)
}

/// Waits until the rollout reaches `phase`; returns how long it took.
async fn wait_for(server: &Server, model: &str, phase: Phase, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = server.gateway.rollouts.status(model).await.unwrap();
        if status.rollout.as_ref().map(|r| r.state) == Some(phase) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no {phase:?} within {limit:?}: {:#?}", status.rollout);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rolls out `canary` as version 2 of `model` (each test its own model name:
/// the metrics registry is shared by the tests of this binary).
async fn roll_back_bad_canary(model: &'static str, canary: Kind, rollout: &str, slo: &str) {
    let repo = Repo::new(model, &[(1, Kind::Mlp), (2, canary)]);
    let spec =
        route(&format!("model = \"{model}\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\nrollout = {rollout}"));
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let (stop, rolled_back) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (tally, tasks) = drive(&server, model, 6, stop.clone(), rolled_back.clone());

    let took = wait_for(&server, model, Phase::Failed, Duration::from_secs(30)).await;
    rolled_back.store(true, Ordering::Release);
    // Traffic goes on until the baseline has answered 100 more requests (a count, not a
    // time: the rollback can come within a few requests, on a machine of any speed).
    let at_rollback = tally.ok_baseline.load(Ordering::Relaxed);
    let started = Instant::now();
    while tally.ok_baseline.load(Ordering::Relaxed) < at_rollback + 100 {
        assert!(started.elapsed() < Duration::from_secs(30), "the baseline stopped serving after the rollback");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let status = server.gateway.rollouts.status(model).await.unwrap();
    let rollout = status.rollout.unwrap();
    assert_eq!(rollout.reason.as_deref(), Some(format!("rolled back: {slo}").as_str()));
    assert_eq!((status.targets[0].weight, status.targets[1].weight), (100, 0));
    assert!(status.targets[1].failed);
    assert_eq!(failures(&server, model, 1), 0, "the baseline failed no request");
    assert_eq!(tally.failed_after_rollback.load(Ordering::Relaxed), 0, "no failure after the rollback was visible");
    let baseline_ok = tally.ok_baseline.load(Ordering::Relaxed);
    assert!(baseline_ok > 100, "the baseline kept serving: {baseline_ok}");
    // The rollback shows in the metrics at once.
    let metrics = Http::default().send(http::Method::GET, format!("http://{}/metrics", server.http), &[], None).await;
    let text = metrics.body.as_str().map(str::to_owned).unwrap_or_default();
    for line in [
        format!("modelgate_rollout_rollbacks_total{{model=\"{model}\",canary=\"2\",reason=\"{slo}\"}} 1"),
        format!("modelgate_route_weight{{model=\"{model}\",version=\"2\"}} 0"),
        format!("modelgate_route_weight{{model=\"{model}\",version=\"1\"}} 100"),
        format!("modelgate_rollout_state{{model=\"{model}\",canary=\"2\",state=\"failed\"}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "/metrics lacks {line}");
    }
    assert!(
        text.contains(&format!(
            "modelgate_route_requests_total{{model=\"{model}\",version=\"1\",outcome=\"success\"}}"
        ))
    );
    eprintln!(
        "{slo}: rolled back {took:?} after the first request; clients saw {baseline_ok} baseline answers, {} canary answers, {} failures",
        tally.ok_canary.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_every_request_is_rolled_back_and_the_baseline_fails_none() {
    // Retries off: the clients see the canary's failures, as before retries existed.
    let rollout = r#"{ canary = 2, step_weights = [20, 50, 100], interval = "1m", check_interval = "100ms",
        window = "2s", threshold = 2, min_requests = 10, max_error_rate = 0.05, retry_on_baseline = false }"#;
    roll_back_bad_canary("failing", Kind::Failing, rollout, "error_rate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_its_p99_and_the_baseline_fails_none() {
    // slow.onnx takes tens of milliseconds; the MLP well under a millisecond.
    let rollout = r#"{ canary = 2, step_weights = [20, 50, 100], interval = "1m", check_interval = "100ms",
        window = "3s", threshold = 2, min_requests = 5, max_p99_latency = "20ms" }"#;
    roll_back_bad_canary("slow", Kind::Slow, rollout, "latency").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_steps_up_and_is_promoted_without_a_failure() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let spec = route(
        r#"
        model = "m"
        targets = [{ version = 1 }, { version = 2 }]
        rollout = { canary = 2, step_weights = [20, 60, 100], interval = "1s", check_interval = "100ms",
                    window = "1s", threshold = 2, min_requests = 5, max_p99_latency = "2s" }
        "#,
    );
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let (stop, never) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (tally, tasks) = drive(&server, "m", 3, stop.clone(), never);
    wait_for(&server, "m", Phase::Succeeded, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let status = server.gateway.rollouts.status("m").await.unwrap();
    assert_eq!((status.targets[0].weight, status.targets[1].weight), (0, 100));
    let kinds: Vec<EventKind> = status.rollout.unwrap().events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Started, EventKind::Step, EventKind::Step, EventKind::Promoted]);
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0);
    assert!(tally.ok_canary.load(Ordering::Relaxed) > 0 && tally.ok_baseline.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_the_client_sets_never_roll_a_healthy_canary_back() {
    // Issue #15, finding 8: 60 requests with a 1 µs `timeout` rolled a healthy canary back.
    let model = "client_deadline";
    let repo = Repo::new(model, &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let rollout = r#"{ canary = 2, step_weights = [50, 100], interval = "1m", check_interval = "50ms",
        window = "10s", threshold = 1, min_requests = 5, max_error_rate = 0.05 }"#;
    let spec = route(&format!(
        "model = \"{model}\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\nsticky_header = \"x-user\"\nrollout = {rollout}"
    ));
    let server = Server::start(&repo, vec![spec]).await;
    let http = Http::default();
    // The attacker finds a sticky key that the canary serves...
    let mut key = None;
    for k in 0..200 {
        let candidate = format!("user-{k}");
        if http.infer(&server, model, &[("x-user", &candidate)], k).await.version() == Some(2) {
            key = Some(candidate);
            break;
        }
    }
    let key = key.expect("no sticky key lands on the canary");
    // ...and sends 60 requests there with a 1 µs deadline: 504 each.
    let url = format!("http://{}/v2/models/{model}/infer", server.http);
    for seed in 0..60 {
        let mut body: serde_json::Value = serde_json::from_str(&support_routing::infer_body(seed)).unwrap();
        body["parameters"] = serde_json::json!({ "timeout": 1 });
        let reply = http.send(http::Method::POST, url.clone(), &[("x-user", &key)], Some(body.to_string())).await;
        assert_eq!(reply.status, 504, "{reply:?}");
    }
    // Ten checks' time: a rollback would have happened by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = server.gateway.rollouts.status(model).await.unwrap();
    let state = status.rollout.as_ref().map(|r| r.state);
    assert_ne!(state, Some(Phase::Failed), "{:#?}", status.rollout);
    assert!(!status.targets[1].failed);
    // The client's deadline is answered as one, and counted as the client's outcome.
    let metrics = http.send(http::Method::GET, format!("http://{}/metrics", server.http), &[], None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(&format!(
            "modelgate_route_requests_total{{model=\"{model}\",version=\"2\",outcome=\"client_error\"}}"
        )),
        "{text}"
    );
}

/// Successful requests of `model` version `version` (Triton statistics).
fn successes(server: &Server, model: &str, version: u64) -> u64 {
    let table = server.gateway.repository.snapshot();
    match table.models.get(model).and_then(|m| m.versions.get(&version)) {
        Some(modelgate::repository::VersionState::Ready(v)) => v.stats.success.get().0,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canarys_faults_are_answered_once_by_the_baseline_and_no_client_sees_one() {
    let model = "retried";
    let repo = Repo::new(model, &[(1, Kind::Mlp), (2, Kind::Failing)]);
    // The default policy but for a quick first step: sequential test and retries on.
    let spec = route(&format!(
        "model = \"{model}\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\nrollout = {{ canary = 2, step_weights = [20, 50, 100] }}"
    ));
    let server = Arc::new(Server::start(&repo, vec![spec]).await);
    let (stop, rolled_back) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (tally, tasks) = drive(&server, model, 6, stop.clone(), rolled_back.clone());
    wait_for(&server, model, Phase::Failed, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let status = server.gateway.rollouts.status(model).await.unwrap();
    let rollout = status.rollout.unwrap();
    assert_eq!(rollout.reason.as_deref(), Some("rolled back: error_rate"));
    let message = &rollout.events.back().unwrap().message;
    assert!(message.contains("sequential test"), "the stopping rule decided, not a check: {message}");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "no client saw a failure");
    assert_eq!(tally.ok_canary.load(Ordering::Relaxed), 0);
    // Counted against the canary (that is what rolled it back), each answered by one baseline run.
    let canary_faults = failures(&server, model, 2);
    assert!(canary_faults >= 3, "the canary failed {canary_faults} requests");
    let retried = server
        .metric(&format!("modelgate_route_canary_retries_total{{model=\"{model}\",canary=\"2\",outcome=\"success\"}}"))
        .await;
    assert_eq!(retried as u64, canary_faults, "every canary fault was retried once");
    assert_eq!(failures(&server, model, 1), 0);
    // No double answer: each baseline run is exactly one answer a client got.
    assert_eq!(successes(&server, model, 1), tally.ok_baseline.load(Ordering::Relaxed));
    eprintln!(
        "retries: {canary_faults} canary faults, all answered by the baseline; rolled back: {}",
        rollout.events.back().unwrap().message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_and_expired_client_deadlines_are_never_retried_on_the_baseline() {
    let model = "not_retried";
    let repo = Repo::new(model, &[(1, Kind::Mlp), (2, Kind::Slow)]);
    // Every weighted request goes to the (slow) canary first; the latency SLO is loose.
    let spec = route(&format!(
        "model = \"{model}\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\n\
         rollout = {{ canary = 2, step_weights = [100], interval = \"1h\", max_p99_latency = \"10s\" }}"
    ));
    let server = Server::start(&repo, vec![spec]).await;
    let http = Http::default();
    let url = format!("http://{}/v2/models/{model}/infer", server.http);
    // A request that does not fit the model: the client's mistake, answered as such.
    let bad = serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0] }] });
    for _ in 0..5 {
        let reply = http.send(http::Method::POST, url.clone(), &[], Some(bad.to_string())).await;
        assert_eq!(reply.status, 400, "{reply:?}");
    }
    // A client deadline shorter than the canary takes: 504, the client's outcome, not retried.
    for seed in 0..5 {
        let mut body: serde_json::Value = serde_json::from_str(&support_routing::infer_body(seed)).unwrap();
        body["parameters"] = serde_json::json!({ "timeout": 2000 });
        let reply = http.send(http::Method::POST, url.clone(), &[], Some(body.to_string())).await;
        assert_eq!(reply.status, 504, "{reply:?}");
    }
    // The baseline ran none of them, and no retry was counted.
    assert_eq!((successes(&server, model, 1), failures(&server, model, 1)), (0, 0));
    for outcome in ["success", "error", "no_budget"] {
        let line =
            format!("modelgate_route_canary_retries_total{{model=\"{model}\",canary=\"2\",outcome=\"{outcome}\"}}");
        assert_eq!(server.metric(&line).await, 0.0, "{line}");
    }
    let status = server.gateway.rollouts.status(model).await.unwrap();
    assert_eq!(status.rollout.unwrap().state, Phase::Progressing, "client outcomes never count against the canary");
}
