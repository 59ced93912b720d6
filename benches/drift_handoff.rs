//! What the drift profiler costs.
//!
//! - `handoff`: the instance thread's side per batch (share the inputs and
//!   outputs, build the message, `try_send` to a live profiler thread), next
//!   to a bare `try_send(())` on the same kind of channel and to the check a
//!   worker without the profiler makes. Goal: ≤ 150 ns per batch. Two kinds
//!   of consumer: one parked on the channel (`woken`: every offer that finds
//!   it parked wakes it, as the profiler did before it polled) and one that
//!   sleeps and takes what queued (`polled`, as the profiler does while
//!   traffic flows); the real profiler, which this loop outruns, so most
//!   offers find its queue full and drop the batch; and a polled tap that
//!   offers one batch in 5 (`drift.max_rows_per_second` exceeded).
//! - `profile`: the profiler thread's cost per value (row × feature) for a
//!   64-feature FP32 input, without and with a reference's 10-bin edges, and
//!   (`_at_10k_rows_per_s`) in a window that follows a minute of 10,000 rows/s,
//!   whose quantile sketches take one row in 10 (`drift.sketch_rows_per_second`
//!   = 1000). At 10,000 rows/s × 64 features (640,000 values/s) the share of a
//!   core is ns/value × 640,000 / 10^9. Goal: ≤ 2 %.
//! - Before the benches, the bytes one window holds per feature after a full
//!   minute of that traffic (600,000 rows) are printed.
//!
//! Run: `cargo bench --bench drift_handoff` (add `-- --quick` for a short run).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use metrics::Counter;
use modelgate::batching::concat;
use modelgate::drift::handoff::{DriftBatch, DriftTap, Liveness, SharedTensor};
use modelgate::drift::windows::{VersionCounters, Windows};
use modelgate::drift::{DriftSettings, Profiler, Schema};
use modelgate::tensor::{IoSpec, Tensor};
use modelgate_backend::{DataType, OutputTensor};
use modelgate_sketch::FeatureSpec;

// The gateway's allocator (src/main.rs), so the hand-off's few small
// allocations cost here what they cost in the server.
#[global_allocator]
static ALLOCATOR: modelgate::memory::Allocator = modelgate::memory::Allocator;

const FEATURES: usize = 64;
/// A wall-clock time on a minute boundary (2027-01-15): every batch falls in one window.
const MINUTE_START_MS: i64 = 1_800_000_000_000;
const CLASSES: usize = 10;

fn floats(n: usize, seed: usize) -> Vec<f32> {
    // A cheap deterministic spread of values (no two rows alike).
    (0..n).map(|i| (((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0 - 0.5) * 6.0).collect()
}

fn fp32_bytes(values: &[f32]) -> Bytes {
    Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// One single-row request of the example MLP's shape (`input` FP32 [1, 64]).
fn request(seed: usize) -> Vec<Tensor> {
    let data = fp32_bytes(&floats(FEATURES, seed));
    vec![Tensor::checked("input".into(), DataType::Fp32, vec![1, FEATURES as i64], data).expect("shape matches bytes")]
}

fn output(rows: usize) -> OutputTensor {
    OutputTensor {
        dtype: DataType::Fp32,
        shape: vec![rows as i64, CLASSES as i64],
        data: fp32_bytes(&floats(rows * CLASSES, 1)),
    }
}

fn mlp_schema() -> Schema {
    let io = |name: &str, dims: &[i64]| IoSpec { name: name.into(), dtype: DataType::Fp32, dims: dims.to_vec() };
    Schema::from_config(64, &[io("input", &[FEATURES as i64])], &[io("output", &[CLASSES as i64])], &BTreeMap::new())
        .expect("the MLP's schema")
}

fn bench_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");

    // Baseline: the cheapest possible hand-off, a unit through the same kind of
    // bounded channel to a thread that drains it.
    let (unit_tx, unit_rx) = crossbeam_channel::bounded::<()>(64);
    std::thread::spawn(move || while unit_rx.recv().is_ok() {});
    group.bench_function("baseline_try_send_unit_woken", |b| b.iter(|| black_box(unit_tx.try_send(()).is_ok())));
    let unit_tx = polled_consumer::<()>();
    group.bench_function("baseline_try_send_unit_polled", |b| b.iter(|| black_box(unit_tx.try_send(()).is_ok())));

    // What the worker does per batch with the profiler off.
    let off: Option<DriftTap> = None;
    group.bench_function("drift_off_check", |b| b.iter(|| black_box(black_box(&off).is_some())));

    // With the profiler off the worker still frees the assembled batch: the same setup as the
    // offers below, dropped. An offer's own cost is its time less this one's.
    for requests in [1usize, 8, 64] {
        let batch: Vec<Vec<Tensor>> = (0..requests).map(request).collect();
        let views: Vec<&[Tensor]> = batch.iter().map(Vec::as_slice).collect();
        group.bench_function(BenchmarkId::new("drift_off_frees_the_batch", format!("{requests}req")), |b| {
            b.iter_batched(|| vec![concat(&views, 0, requests > 1)], drop, BatchSize::SmallInput)
        });
    }

    // Consumers that keep up (drop what they take), so every offer succeeds.
    let (tx, rx) = crossbeam_channel::bounded::<DriftBatch>(64);
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let woken = DriftTap::new(tx, 1, Counter::noop(), usize::MAX);
    let polled = DriftTap::new(polled_consumer(), 1, Counter::noop(), usize::MAX);
    // The real profiler, which is slower than this loop: most offers find the queue full.
    let profiler = Profiler::start(&DriftSettings { enabled: true, ..DriftSettings::default() }).expect("profiler");
    let real = profiler.register("mlp", 1, mlp_schema(), Arc::new(modelgate::stats::ModelStats::new(1)));
    // Above drift.max_rows_per_second a version offers one batch in n: the others cost a
    // relaxed load and an atomic add, and are freed like the profiler-off case.
    let sampled = DriftTap::new(polled_consumer(), 1, Counter::noop(), usize::MAX);
    sampled.sampling().set_every(5);
    for (label, tap) in [
        ("drift_on_woken", &woken),
        ("drift_on_polled", &polled),
        ("drift_on_profiler_behind", &real),
        ("drift_on_polled_one_in_5", &sampled),
    ] {
        bench_offers(&mut group, label, tap);
    }
    group.finish();
}

/// A channel whose consumer sleeps a millisecond, then takes everything queued
/// (room for the 5,000 or so offers this loop makes meanwhile): no offer finds it parked.
fn polled_consumer<T: Send + 'static>() -> crossbeam_channel::Sender<T> {
    let (tx, rx) = crossbeam_channel::bounded::<T>(1 << 16);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(1));
            loop {
                match rx.try_recv() {
                    Ok(taken) => drop(taken),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
        }
    });
    tx
}

fn bench_offers(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    tap: &DriftTap,
) {
    for requests in [1usize, 8, 64] {
        let batch: Vec<Vec<Tensor>> = (0..requests).map(request).collect();
        let views: Vec<&[Tensor]> = batch.iter().map(Vec::as_slice).collect();
        let outputs = [output(requests)];
        group.bench_with_input(BenchmarkId::new(label, format!("{requests}req")), &requests, |b, &rows| {
            // The assembled batch exists in the worker already: setup, not measured.
            b.iter_batched(
                || vec![concat(&views, 0, requests > 1)],
                |assembled| {
                    // As the worker does: a batch the sampling leaves out is never built.
                    if !tap.sampling().takes_next() {
                        return drop(assembled);
                    }
                    let profiled = DriftBatch {
                        registration: tap.registration(),
                        rows,
                        inputs: assembled.into_iter().map(|input| input.into_shared()).collect(),
                        outputs: [0usize].into_iter().zip(outputs.iter().map(SharedTensor::of_output)).collect(),
                        queued: None,
                    };
                    tap.offer(profiled);
                },
                BatchSize::SmallInput,
            )
        });
    }
}

fn windows_on(reference: Option<BTreeMap<String, FeatureSpec>>) -> (Windows, u64, Arc<Liveness>) {
    let mut windows = Windows::new(60, 60);
    let alive = Arc::new(Liveness);
    let counters =
        VersionCounters { rows: Counter::noop(), skipped: Counter::noop(), windows_dropped: Counter::noop() };
    let schema = {
        let io = IoSpec { name: "input".into(), dtype: DataType::Fp32, dims: vec![FEATURES as i64] };
        Schema::from_config(64, &[io], &[], &BTreeMap::new()).expect("schema")
    };
    windows.set_features("m", 1, reference);
    let id = windows.register("m", 1, schema, Arc::downgrade(&alive), counters);
    (windows, id, alive)
}

fn input_batch(id: u64, rows: usize, seed: usize) -> DriftBatch {
    DriftBatch {
        registration: id,
        rows,
        inputs: [SharedTensor {
            dtype: DataType::Fp32,
            shape: [rows as i64, FEATURES as i64].into_iter().collect(),
            data: fp32_bytes(&floats(rows * FEATURES, seed)),
        }]
        .into_iter()
        .collect(),
        outputs: Default::default(),
        queued: None,
    }
}

fn deciles() -> BTreeMap<String, FeatureSpec> {
    (0..FEATURES)
        .map(|i| {
            let edges = (1..10).map(|k| (k as f64 / 10.0 - 0.5) * 6.0).collect();
            (format!("input[{i}]"), FeatureSpec::Numeric { edges })
        })
        .collect()
}

/// Prints what one window holds per feature after a minute at 10,000 rows/s.
fn report_window_bytes() {
    for (label, reference) in [("no reference", None), ("10-bin reference", Some(deciles()))] {
        let (mut windows, id, _alive) = windows_on(reference);
        let batches: Vec<DriftBatch> = (0..16).map(|s| input_batch(id, 64, s)).collect();
        let now = MINUTE_START_MS;
        let mut rows = 0;
        while rows < 600_000 {
            windows.record(&batches[rows % 16], now);
            rows += 64;
        }
        println!(
            "drift window after {rows} rows x {FEATURES} features ({label}): {} bytes per (feature, version, window)",
            windows.memory_bytes() / FEATURES
        );
    }
}

/// The minute before `now`: 600,000 rows, so the window of `now` sketches one row in 10.
fn busy_minute(windows: &mut Windows, batches: &[DriftBatch], now: i64) {
    let before = now - 60_000;
    for i in 0..600_000 / 64 {
        windows.record(&batches[i % batches.len()], before);
    }
    windows.tick(now);
    black_box(windows.drain_closed(now));
}

fn bench_profile(c: &mut Criterion) {
    report_window_bytes();
    let mut group = c.benchmark_group("profile");
    let cases = [
        ("no_reference", None, false),
        ("deciles", Some(deciles()), false),
        ("no_reference_at_10k_rows_per_s", None, true),
        ("deciles_at_10k_rows_per_s", Some(deciles()), true),
    ];
    for (label, reference, after_busy_minute) in cases {
        let (mut windows, id, _alive) = windows_on(reference);
        let batches: Vec<DriftBatch> = (0..16).map(|s| input_batch(id, 64, s)).collect();
        let now = MINUTE_START_MS;
        if after_busy_minute {
            busy_minute(&mut windows, &batches, now);
        }
        group.throughput(Throughput::Elements((64 * FEATURES) as u64));
        let mut i = 0;
        group.bench_function(BenchmarkId::new("64rows_x_64features", label), |b| {
            b.iter(|| {
                i += 1;
                black_box(windows.record(&batches[i % 16], now))
            })
        });
    }
    // At c=64 on the MLP the batcher makes batches of one to four rows, and the profiler takes
    // up to 16 queued batches per wake: the per-batch and per-column costs then dominate.
    for (label, reference) in [("at_10k_rows_per_s", None), ("deciles_at_10k_rows_per_s", Some(deciles()))] {
        let (mut windows, id, _alive) = windows_on(reference);
        let now = MINUTE_START_MS;
        busy_minute(&mut windows, &(0..16).map(|s| input_batch(id, 64, s)).collect::<Vec<_>>(), now);
        let take: Vec<DriftBatch> = (0..16).map(|s| input_batch(id, 1, s)).collect();
        group.throughput(Throughput::Elements((16 * FEATURES) as u64));
        group.bench_function(BenchmarkId::new("take_of_16_one_row_batches", label), |b| {
            b.iter(|| windows.record_all(&take, now, |_, recorded| drop(black_box(recorded))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handoff, bench_profile);
criterion_main!(benches);
