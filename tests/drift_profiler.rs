//! The drift profiler end to end: a real gateway on loopback with `[drift]`
//! on, inferences over HTTP, and the closed windows the sync follower would
//! ship, drained from the gateway's `Profiler`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TempRepo, TestServer, config_for};
use modelgate::drift::{ClosedWindow, DriftSettings, Profiler};
use modelgate_sketch::Summary;
use serde_json::json;

/// Requests per phase, rows per request.
const REQUESTS: usize = 40;
const ROWS: usize = 4;

/// Every row of `mlp`'s 64 inputs at `value + (small spread)`.
fn request(value: f32, seed: usize) -> serde_json::Value {
    let data: Vec<f32> = (0..ROWS * 64).map(|i| value + ((i * 31 + seed * 17) % 100) as f32 / 1000.0).collect();
    json!({ "inputs": [{ "name": "input", "shape": [ROWS, 64], "datatype": "FP32", "data": data }] })
}

trait Ok200 {
    fn assert_ok(&self);
}

impl Ok200 for common::Reply {
    fn assert_ok(&self) {
        assert_eq!(self.status.as_u16(), 200, "body: {:?}", String::from_utf8_lossy(&self.body));
    }
}

/// Drains until `rows` rows have come out (windows close on the wall clock,
/// and the profiler thread works after the answers are sent).
async fn drain_rows(profiler: &Profiler, rows: u64) -> Vec<ClosedWindow> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut windows = Vec::new();
    while windows.iter().map(|w: &ClosedWindow| w.rows).sum::<u64>() < rows {
        assert!(
            Instant::now() < deadline,
            "only {:?} rows drained",
            windows.iter().map(|w| w.rows).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        windows.extend(profiler.drain_closed());
    }
    windows
}

/// The mean of `feature` over every drained window.
fn mean(windows: &[ClosedWindow], feature: &str) -> f64 {
    let (mut sum, mut n) = (0.0, 0u64);
    for w in windows {
        match w.profile.features.get(feature) {
            Some(Summary::Numeric(p)) => {
                sum += p.sum();
                n += p.finite_count();
            }
            other => panic!("{feature}: {other:?}"),
        }
    }
    sum / n as f64
}

/// A gateway on `repo` with `[drift]` on in 1 s windows, `tune` laid over it.
async fn start_profiling(repo: &TempRepo, tune: impl FnOnce(&mut DriftSettings)) -> (TestServer, Arc<Profiler>) {
    let mut config = config_for(repo.path());
    config.drift.enabled = true;
    config.drift.window_seconds = 1;
    tune(&mut config.drift);
    let server = TestServer::start(config).await;
    let profiler = server.gateway.drift.clone().expect("[drift] enabled gives the gateway a profiler");
    (server, profiler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_rows_are_profiled_and_a_shifted_input_shows_in_the_windows() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, None);
    let (server, profiler) = start_profiling(&repo, |_| {}).await;

    for i in 0..REQUESTS {
        server.post_json("/v2/models/mlp/infer", &request(0.0, i)).await.assert_ok();
    }
    let before = drain_rows(&profiler, (REQUESTS * ROWS) as u64).await;
    assert_eq!(before.iter().map(|w| w.rows).sum::<u64>(), (REQUESTS * ROWS) as u64);
    for w in &before {
        assert_eq!((w.model.as_str(), w.version, w.arm.as_str(), w.seconds), ("mlp", 1, "stable", 1));
        assert_eq!(w.start_ms % 1000, 0, "windows align to the wall clock");
        // 64 inputs, 10 outputs and the predicted class.
        assert_eq!(w.profile.features.len(), 75);
        assert!(matches!(w.profile.features.get("output.argmax"), Some(Summary::Categorical(_))));
    }
    let base = mean(&before, "input[5]");
    assert!((0.0..0.1).contains(&base), "mean before the shift: {base}");

    for i in 0..REQUESTS {
        server.post_json("/v2/models/mlp/infer", &request(3.0, i)).await.assert_ok();
    }
    let after = drain_rows(&profiler, (REQUESTS * ROWS) as u64).await;
    let shifted = mean(&after, "input[5]");
    assert!((shifted - base - 3.0).abs() < 0.01, "mean {base} before, {shifted} after a +3 shift");

    // The counters the operator sees.
    let metrics = server.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l.starts_with("modelgate_drift_rows_total{") && l.contains("model=\"mlp\"")),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_drift_section_the_gateway_has_no_profiler() {
    let repo = TempRepo::new();
    repo.add("mlp", "mlp", 1, None);
    let server = TestServer::start(config_for(repo.path())).await;
    assert!(server.gateway.drift.is_none());
    server.post_json("/v2/models/mlp/infer", &request(0.0, 0)).await.assert_ok();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_rows_per_second_a_version_profiles_one_batch_in_n_and_says_so() {
    let repo = TempRepo::new();
    // Its own model name: the gauge is process-wide, and the other tests serve `mlp`.
    repo.add("mlp", "sampled", 1, None);
    let (server, profiler) = start_profiling(&repo, |drift| drift.max_rows_per_second = 20).await;

    // Far above 20 rows/s for 1.5 s: the profiler steers four times a second.
    let (started, mut served) = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_millis(1500) {
        server.post_json("/v2/models/sampled/infer", &request(0.0, served as usize)).await.assert_ok();
        served += ROWS as u64;
    }
    let metrics = server.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let one_in: f64 = text
        .lines()
        .find(|l| l.starts_with("modelgate_drift_sampled_one_in{") && l.contains("model=\"sampled\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no modelgate_drift_sampled_one_in for sampled in {text}"));
    assert!(one_in > 1.0, "one batch in {one_in} at {served} rows in 1.5 s");

    // Every window that closed holds a part of the rows served, and at least one was profiled.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let profiled: u64 = profiler.drain_closed().iter().map(|w| w.rows).sum();
    assert!(profiled > 0 && profiled * 2 < served, "{profiled} of {served} rows profiled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_past_the_queues_byte_bound_are_dropped_and_counted_while_their_clients_are_answered() {
    let repo = TempRepo::new();
    // Its own model name: the counters are process-wide, and the other tests serve `mlp`.
    repo.add("mlp", "bounded", 1, None);
    // A row of `mlp` is 64 input and 10 output floats: 296 bytes. 16 rows (4,736 bytes) never
    // fit in 4,096; five single rows (1,480) always do, however far behind the profiler is.
    let (server, profiler) = start_profiling(&repo, |drift| drift.queue_bytes = 4096).await;
    let rows = |n: usize, value: f32| {
        let data: Vec<f32> = (0..n * 64).map(|i| value + (i % 7) as f32 / 100.0).collect();
        json!({ "inputs": [{ "name": "input", "shape": [n, 64], "datatype": "FP32", "data": data }] })
    };
    for _ in 0..10 {
        server.post_json("/v2/models/bounded/infer", &rows(16, 5.0)).await.assert_ok();
    }
    for _ in 0..5 {
        server.post_json("/v2/models/bounded/infer", &rows(1, 0.0)).await.assert_ok();
    }
    let windows = drain_rows(&profiler, 5).await;
    assert_eq!(windows.iter().map(|w| w.rows).sum::<u64>(), 5, "only the single rows were profiled");
    assert!(mean(&windows, "input[0]") < 1.0, "no row of the large batches was profiled");

    let metrics = server.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let dropped = text
        .lines()
        .find(|l| l.starts_with("modelgate_drift_rows_dropped_total{") && l.contains("model=\"bounded\""))
        .unwrap_or_else(|| panic!("no modelgate_drift_rows_dropped_total for bounded in {text}"));
    assert!(dropped.ends_with(" 160"), "{dropped}");
    server.stop().await;
}
