//! Hedging for latency, end to end through a real socket and real ONNX
//! Runtime: a canary far slower than its threshold (`slow.onnx`, 50 ms and
//! more, against 10 ms) costs a client about the threshold
//! plus the baseline's latency when the route hedges, and the whole canary
//! time when it does not; the hedge budget caps the hedges, and every
//! canary run, hedged or not, is still recorded against the canary. Without
//! hedging, the canary's requests still running when it is rolled back are
//! rescued: the baseline answers them.
#![allow(clippy::unwrap_used)] // helpers of tests: a panic is the failure report

mod support_routing;

use std::time::{Duration, Instant};

use support_routing::{Http, Kind, Repo, Server, route};

/// When a canary request is hedged.
const HEDGE_AFTER: Duration = Duration::from_millis(10);
/// Scheduling noise allowed on top of the hedge time and the baseline's own latency (a shared
/// machine), well under what slow.onnx takes.
const SLACK: Duration = Duration::from_millis(25);
/// The burst of hedges a fresh budget holds (`routing::retry::RETRY_BURST`).
const BURST: usize = 20;

/// A rollout whose only step sends every weighted request to the slow
/// canary 2, with a latency SLO loose enough that nothing rolls it back:
/// only the hedging is under test.
fn slow_canary_route(model: &str, hedging: &str) -> modelgate::routing::RouteSpec {
    route(&format!(
        "model = \"{model}\"\ntargets = [{{ version = 1 }}, {{ version = 2 }}]\n\
         rollout = {{ canary = 2, step_weights = [100], interval = \"1h\", max_p99_latency = \"10s\"{hedging} }}"
    ))
}

/// Sends `n` requests one after the other; (version that answered, time) of each.
async fn answers(http: &Http, server: &Server, model: &str, n: u32) -> Vec<(u64, Duration)> {
    let mut out = Vec::new();
    for seed in 0..n {
        let started = Instant::now();
        let reply = http.infer(server, model, &[], seed).await;
        assert!(reply.status.is_success(), "{reply:?}");
        out.push((reply.version().unwrap(), started.elapsed()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_a_slow_canarys_requests_from_the_baseline_within_the_threshold_until_its_budget_is_spent() {
    let repo = Repo::new("hedged", &[(1, Kind::Mlp), (2, Kind::Slow)]);
    repo.add("unhedged", &[(1, Kind::Mlp), (2, Kind::Slow)], false);
    // Every weighted request goes to the canary; only its own answers earn hedges, a tenth of one
    // each: the 6 after the burst earn none, so the burst is all there is.
    let hedged = slow_canary_route("hedged", ", hedge_on_baseline = true, hedge_after = \"10ms\"");
    let server = Server::start(&repo, vec![hedged, slow_canary_route("unhedged", "")]).await;
    let http = Http::default();

    // The baseline's own latency, asked for by version (no route, no hedge).
    let url = format!("http://{}/v2/models/hedged/versions/1/infer", server.http);
    let mut alone = Vec::new();
    for seed in 0..10 {
        let started = Instant::now();
        let reply = http.send(http::Method::POST, url.clone(), &[], Some(support_routing::infer_body(seed))).await;
        assert_eq!(reply.version(), Some(1), "{reply:?}");
        alone.push(started.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let baseline = alone.iter().copied().max().unwrap_or_default();
    // A hedged answer comes within the threshold plus the baseline's slowest time seen (and slack)...
    let bound = HEDGE_AFTER + baseline + SLACK;

    // ...and an unhedged one, the slow canary's (about 35 ms), later than the threshold plus the
    // baseline's typical time (its median: one slow first request must not move this bound) and
    // half the slack.
    let typical = HEDGE_AFTER + median(alone) + SLACK / 2;
    let unhedged = answers(&http, &server, "unhedged", 5).await;
    assert!(unhedged.iter().all(|a| a.0 == 2), "{unhedged:?}");
    let waited = median(unhedged.iter().map(|a| a.1).collect());
    assert!(waited > typical, "without hedging a client waits for the canary: {unhedged:?} (bound {typical:?})");

    // Hedging on: the baseline answers each request about HEDGE_AFTER after it arrived...
    let hedged = answers(&http, &server, "hedged", BURST as u32 + 6).await;
    for &(version, took) in &hedged[..BURST] {
        assert_eq!(version, 1, "{hedged:?}");
        assert!(took >= HEDGE_AFTER && took <= bound, "hedged answer after {took:?}, bound {bound:?}: {hedged:?}");
    }
    // ...until the budget is spent: then the canary answers, as slowly as it is.
    for &(version, took) in &hedged[BURST..] {
        assert_eq!(version, 2, "{hedged:?}");
        assert!(took > typical, "{hedged:?}");
    }
    let hedges = |outcome: &str| {
        format!("modelgate_route_canary_hedges_total{{model=\"hedged\",canary=\"2\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(server.metric(&hedges("baseline_won")).await, BURST as f64);
    assert_eq!(server.metric(&hedges("budget_exhausted")).await, 6.0);
    assert_eq!(server.metric(&hedges("canary_won")).await, 0.0);

    // Every canary run goes on to its end and is recorded against the canary, the hedged ones too.
    let canary_answers = "modelgate_route_requests_total{model=\"hedged\",version=\"2\",outcome=\"success\"}";
    let started = Instant::now();
    while server.metric(canary_answers).await < (BURST + 6) as f64 {
        assert!(started.elapsed() < Duration::from_secs(60), "the hedged canary runs were not all recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "baseline alone: max {baseline:?}; hedged: median {:?}; unhedged: median {:?}",
        median(hedged[..BURST].iter().map(|a| a.1).collect()),
        waited,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_has_the_baseline_answer_the_canarys_running_requests() {
    const RUNNING: u32 = 24;
    let repo = Repo::new("rescued", &[(1, Kind::Mlp), (2, Kind::Slow)]);
    let server = Server::start(&repo, vec![slow_canary_route("rescued", "")]).await;
    let http = Http::default();
    let route = server.gateway.routes.get("rescued").unwrap();
    let canary = route.target(2).unwrap().arm.clone();

    let requests = futures_util::future::join_all((0..RUNNING).map(|seed| {
        let (http, server) = (&http, &server);
        async move {
            let reply = http.infer(server, "rescued", &[], seed).await;
            assert!(reply.status.is_success(), "{reply:?}");
            reply.version().unwrap()
        }
    }));
    let roll_back = async {
        // Every request on the slow canary first (it runs them a batch at a time, 35 ms and more each).
        let deadline = Instant::now() + Duration::from_secs(20);
        while canary.in_flight() < RUNNING {
            assert!(Instant::now() < deadline, "{} of {RUNNING} requests on the canary", canary.in_flight());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rolled = http.admin(&server, http::Method::POST, "/admin/v1/routes/rescued/rollback", None).await;
        assert_eq!(rolled.body["rollout"]["state"], "failed", "{rolled:?}");
    };
    let (versions, ()) = tokio::join!(requests, roll_back);

    // Without the rescue the canary answers all of them; with it, the baseline answers those the
    // canary had not finished when the baseline did.
    let by_baseline = versions.iter().filter(|&&v| v == 1).count();
    assert!(by_baseline >= RUNNING as usize / 2, "answered by version: {versions:?}");
    let rescues = |outcome: &str| {
        format!("modelgate_route_canary_rescues_total{{model=\"rescued\",canary=\"2\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(server.metric(&rescues("baseline_won")).await, by_baseline as f64);
    assert!(server.metric(&rescues("canary_won")).await <= (RUNNING as usize - by_baseline) as f64);
}
