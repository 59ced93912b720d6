//! Windows driven by an explicit clock (`now_ms`), and the bad inputs a
//! profiler meets: NaN and inf, a flood of distinct strings, a constant
//! feature, a batch that does not fit the schema, a window with no traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use modelgate_backend::{DataType, push_bytes_element};

use super::*;
use crate::drift::handoff::SharedTensor;
use crate::tensor::IoSpec;

const MINUTE: i64 = 60_000;
/// A wall-clock time on a minute boundary (2027-01-15).
const T0: i64 = 1_800_000_000_000;

fn io(name: &str, dtype: DataType, dims: &[i64]) -> IoSpec {
    IoSpec { name: name.into(), dtype, dims: dims.to_vec() }
}

/// `x` FP32 [2] and `s` BYTES per row in; `y` FP32 [3] out.
fn schema() -> Schema {
    Schema::from_config(
        16,
        &[io("x", DataType::Fp32, &[2]), io("s", DataType::Bytes, &[])],
        &[io("y", DataType::Fp32, &[3])],
        &BTreeMap::new(),
    )
    .unwrap()
}

struct Counted {
    rows: Arc<AtomicU64>,
    skipped: Arc<AtomicU64>,
    windows_dropped: Arc<AtomicU64>,
}

fn counters() -> (VersionCounters, Counted) {
    let c = Counted { rows: Arc::default(), skipped: Arc::default(), windows_dropped: Arc::default() };
    let v = VersionCounters {
        rows: Counter::from_arc(c.rows.clone()),
        skipped: Counter::from_arc(c.skipped.clone()),
        windows_dropped: Counter::from_arc(c.windows_dropped.clone()),
    };
    (v, c)
}

fn f32_tensor(rows: usize, values: &[f32]) -> SharedTensor {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let columns = (values.len() / rows.max(1)) as i64;
    SharedTensor { dtype: DataType::Fp32, shape: [rows as i64, columns].into_iter().collect(), data: Bytes::from(data) }
}

fn strings(values: &[&str]) -> SharedTensor {
    let mut data = Vec::new();
    for v in values {
        push_bytes_element(&mut data, v.as_bytes());
    }
    SharedTensor { dtype: DataType::Bytes, shape: [values.len() as i64].into_iter().collect(), data: Bytes::from(data) }
}

/// A batch whose row `r` has x = [base + r, 2·(base + r)], s = "a" or "b",
/// and y with the largest value in column `r % 3`.
fn batch(registration: u64, rows: usize, base: f32) -> DriftBatch {
    let x: Vec<f32> = (0..rows).flat_map(|r| [base + r as f32, 2.0 * (base + r as f32)]).collect();
    let s: Vec<&str> = (0..rows).map(|r| if r % 2 == 0 { "a" } else { "b" }).collect();
    let y: Vec<f32> = (0..rows).flat_map(|r| (0..3).map(move |c| if c == r % 3 { 1.0 } else { 0.0 })).collect();
    let y = f32_tensor(rows, &y);
    DriftBatch {
        registration,
        rows,
        inputs: [f32_tensor(rows, &x), strings(&s)].into_iter().collect(),
        outputs: [(0, y)].into_iter().collect(),
        queued: None,
    }
}

fn windows_with(keep: usize) -> (Windows, u64, Arc<Liveness>, Counted) {
    let mut w = Windows::new(60, keep);
    let alive = Arc::new(Liveness);
    let (v, c) = counters();
    let id = w.register("m", 3, schema(), Arc::downgrade(&alive), v);
    (w, id, alive, c)
}

fn numeric<'a>(window: &'a ClosedWindow, name: &str) -> &'a modelgate_sketch::FeatureProfile {
    match window.profile.features.get(name) {
        Some(Summary::Numeric(p)) => p,
        other => panic!("{name}: {other:?}"),
    }
}

fn categorical<'a>(window: &'a ClosedWindow, name: &str) -> &'a modelgate_sketch::CategoricalProfile {
    match window.profile.features.get(name) {
        Some(Summary::Categorical(p)) => p,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn a_window_closes_when_its_time_passes_even_without_traffic() {
    let (mut w, id, _alive, c) = windows_with(60);
    assert_eq!(w.record(&batch(id, 4, 0.0), T0 + 1_000), Recorded::Profiled(4));
    assert_eq!(w.record(&batch(id, 2, 10.0), T0 + 59_999), Recorded::Profiled(2));
    assert_eq!(w.next_close_ms(), Some(T0 + MINUTE));
    // Still open at the last millisecond of the window.
    assert!(w.drain_closed(T0 + MINUTE - 1).is_empty());

    let closed = w.drain_closed(T0 + MINUTE);
    assert_eq!(closed.len(), 1);
    let window = &closed[0];
    assert_eq!((window.model.as_str(), window.version, window.arm.as_str()), ("m", 3, "stable"));
    assert_eq!((window.start_ms, window.seconds, window.rows), (T0, 60, 6));
    assert_eq!(c.rows.load(Ordering::Relaxed), 6);
    let x0 = numeric(window, "x[0]");
    assert_eq!((x0.rows(), x0.min(), x0.max()), (6, Some(0.0), Some(11.0)));
    assert_eq!(numeric(window, "x[1]").max(), Some(22.0));
    let (counts, other) = categorical(window, "s").counts();
    assert_eq!((counts, other), (vec![("a".to_string(), 3), ("b".to_string(), 3)], 0));
    let (classes, _) = categorical(window, "y.argmax").counts();
    assert_eq!(classes, vec![("0".to_string(), 3), ("1".to_string(), 2), ("2".to_string(), 1)]);

    // Nothing is open any more, and a second drain finds nothing.
    assert_eq!(w.next_close_ms(), None);
    assert!(w.drain_closed(T0 + 10 * MINUTE).is_empty());
}

#[test]
fn traffic_in_the_next_window_closes_the_previous_one() {
    let (mut w, id, _alive, _c) = windows_with(60);
    w.record(&batch(id, 1, 0.0), T0);
    w.record(&batch(id, 1, 0.0), T0 + MINUTE + 5);
    let closed = w.drain_closed(T0 + MINUTE + 6);
    assert_eq!(closed.iter().map(|c| (c.start_ms, c.rows)).collect::<Vec<_>>(), [(T0, 1)]);
    let closed = w.drain_closed(T0 + 2 * MINUTE);
    assert_eq!(closed.iter().map(|c| (c.start_ms, c.rows)).collect::<Vec<_>>(), [(T0 + MINUTE, 1)]);
}

#[test]
fn a_version_with_no_traffic_ships_no_window() {
    let (mut w, _id, _alive, _c) = windows_with(60);
    w.tick(T0 + 10 * MINUTE);
    assert!(w.drain_closed(T0 + 20 * MINUTE).is_empty());
    assert_eq!(w.memory_bytes(), 0);
}

#[test]
fn undrained_windows_are_bounded_and_the_oldest_go_first() {
    let (mut w, id, _alive, c) = windows_with(3);
    for minute in 0..5 {
        w.record(&batch(id, 1, 0.0), T0 + minute * MINUTE);
    }
    let closed = w.drain_closed(T0 + 5 * MINUTE);
    let starts: Vec<i64> = closed.iter().map(|c| (c.start_ms - T0) / MINUTE).collect();
    assert_eq!(starts, [2, 3, 4]);
    assert_eq!(c.windows_dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn requeued_windows_come_back_first_within_the_bound() {
    let (mut w, id, _alive, c) = windows_with(3);
    for minute in 0..2 {
        w.record(&batch(id, 1, 0.0), T0 + minute * MINUTE);
    }
    let failed = w.drain_closed(T0 + 2 * MINUTE);
    assert_eq!(failed.len(), 2);
    // Two more windows close while the send fails.
    for minute in 2..4 {
        w.record(&batch(id, 1, 0.0), T0 + minute * MINUTE);
    }
    w.tick(T0 + 4 * MINUTE);
    w.requeue(failed);
    // Three fit: the oldest returning window is the one dropped.
    let starts: Vec<i64> = w.drain_closed(T0 + 4 * MINUTE).iter().map(|c| (c.start_ms - T0) / MINUTE).collect();
    assert_eq!(starts, [1, 2, 3]);
    assert_eq!(c.windows_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn nan_and_inf_are_counted_and_kept_out_of_the_sketches() {
    let (mut w, id, _alive, _c) = windows_with(60);
    let mut b = batch(id, 4, 0.0);
    b.inputs[0] = f32_tensor(4, &[f32::NAN, 1.0, f32::INFINITY, 1.0, f32::NEG_INFINITY, 1.0, 5.0, 1.0]);
    assert_eq!(w.record(&b, T0), Recorded::Profiled(4));
    let closed = w.drain_closed(T0 + MINUTE);
    let x0 = numeric(&closed[0], "x[0]");
    assert_eq!((x0.rows(), x0.nan_count(), x0.inf_count(), x0.finite_count()), (4, 1, 2, 1));
    assert_eq!((x0.min(), x0.max(), x0.mean()), (Some(5.0), Some(5.0), Some(5.0)));
    // A constant feature: one value, zero spread, no trouble.
    let x1 = numeric(&closed[0], "x[1]");
    assert_eq!((x1.min(), x1.max(), x1.std()), (Some(1.0), Some(1.0), Some(0.0)));
    assert_eq!(x1.quantile(0.5), Some(1.0));
}

#[test]
fn a_hundred_thousand_distinct_strings_stay_bounded() {
    let (mut w, id, _alive, _c) = windows_with(60);
    let values: Vec<String> = (0..100_000).map(|i| format!("request-{i}")).collect();
    for chunk in values.chunks(1000) {
        let s: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let mut b = batch(id, s.len(), 0.0);
        b.inputs[1] = strings(&s);
        assert_eq!(w.record(&b, T0), Recorded::Profiled(1000));
    }
    let closed = w.drain_closed(T0 + MINUTE);
    let s = categorical(&closed[0], "s");
    assert_eq!(s.count(), 100_000);
    // Measured: the 64-entry map holds ~3 KiB whatever the number of distinct values.
    assert!(s.memory_bytes() < 16 * 1024, "{} bytes", s.memory_bytes());
    let (held, other) = s.counts();
    assert!(held.len() <= 48, "{} categories held", held.len());
    assert!(other > 90_000);
}

#[test]
fn a_batch_that_does_not_fit_the_schema_is_skipped_and_counted() {
    let (mut w, id, _alive, c) = windows_with(60);
    // Three columns where the schema has two.
    let mut wide = batch(id, 2, 0.0);
    wide.inputs[0] = f32_tensor(2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(matches!(w.record(&wide, T0), Recorded::Skipped(_)));
    // The right shape, too few bytes.
    let mut short = batch(id, 2, 0.0);
    short.inputs[0].data = short.inputs[0].data.slice(0..8);
    assert!(matches!(w.record(&short, T0), Recorded::Skipped(_)));
    // A BYTES input with a broken length prefix.
    let mut broken = batch(id, 2, 0.0);
    broken.inputs[1].data = Bytes::from_static(&[9, 0, 0, 0, b'a']);
    assert!(matches!(w.record(&broken, T0), Recorded::Skipped(_)));
    // An input missing, and rows that disagree with the batch.
    let mut missing = batch(id, 2, 0.0);
    missing.inputs.pop();
    assert!(matches!(w.record(&missing, T0), Recorded::Skipped(_)));
    let mut rows = batch(id, 2, 0.0);
    rows.rows = 3;
    assert!(matches!(w.record(&rows, T0), Recorded::Skipped(_)));

    assert_eq!(c.skipped.load(Ordering::Relaxed), 11);
    // Nothing fit: no window, not an empty profile.
    assert!(w.drain_closed(T0 + MINUTE).is_empty());
}

#[test]
fn the_reference_specs_apply_from_the_next_window() {
    let (mut w, id, _alive, _c) = windows_with(60);
    w.record(&batch(id, 2, 0.0), T0);
    let reference = BTreeMap::from([
        ("x[0]".to_string(), FeatureSpec::Numeric { edges: vec![0.5, 1.5] }),
        ("s".to_string(), FeatureSpec::Categorical),
        ("not-a-feature".to_string(), FeatureSpec::Categorical),
    ]);
    w.set_features("m", 3, Some(reference));
    w.record(&batch(id, 2, 0.0), T0 + 1);
    w.record(&batch(id, 2, 0.0), T0 + MINUTE);
    let closed = w.drain_closed(T0 + 2 * MINUTE);
    assert_eq!(closed.len(), 2);
    // The window open when the specs came keeps its own features.
    assert_eq!(closed[0].profile.features.len(), 7);
    assert_eq!(closed[0].rows, 4);
    let names: Vec<&str> = closed[1].profile.features.keys().map(String::as_str).collect();
    assert_eq!(names, ["s", "x[0]"]);
    assert_eq!(numeric(&closed[1], "x[0]").histogram().counts(), &[1, 1, 0]);
}

#[test]
fn specs_set_before_a_version_loads_apply_to_its_first_window() {
    let mut w = Windows::new(60, 60);
    w.set_features("m", 3, Some(BTreeMap::from([("x[1]".to_string(), FeatureSpec::Categorical)])));
    let alive = Arc::new(Liveness);
    let id = w.register("m", 3, schema(), Arc::downgrade(&alive), counters().0);
    w.record(&batch(id, 2, 1.0), T0);
    let closed = w.drain_closed(T0 + MINUTE);
    let (counts, _) = categorical(&closed[0], "x[1]").counts();
    assert_eq!(counts, vec![("2".to_string(), 1), ("4".to_string(), 1)]);
}

#[test]
fn a_version_that_is_gone_is_forgotten_once_drained() {
    let (mut w, id, alive, _c) = windows_with(60);
    w.record(&batch(id, 1, 0.0), T0);
    drop(alive);
    w.tick(T0 + 1);
    // Its open window still closes and ships.
    let shipped = w.drain_closed(T0 + MINUTE);
    assert_eq!(shipped.len(), 1);
    w.tick(T0 + MINUTE + 1);
    assert_eq!(w.record(&batch(id, 1, 0.0), T0 + MINUTE), Recorded::Unknown);
    // A failed send of its last window still gets it back.
    w.requeue(shipped);
    assert_eq!(w.drain_closed(T0 + 2 * MINUTE).len(), 1);
}

#[test]
fn higher_rank_inputs_are_profiled_as_row_statistics() {
    let mut w = Windows::new(60, 60);
    let alive = Arc::new(Liveness);
    let schema = Schema::from_config(4, &[io("img", DataType::Uint8, &[2, 2])], &[], &BTreeMap::new()).unwrap();
    let id = w.register("img", 1, schema, Arc::downgrade(&alive), counters().0);
    let b = DriftBatch {
        registration: id,
        rows: 2,
        inputs: [SharedTensor {
            dtype: DataType::Uint8,
            shape: [2, 2, 2].into_iter().collect(),
            data: Bytes::from_static(&[0, 2, 4, 6, 1, 1, 1, 1]),
        }]
        .into_iter()
        .collect(),
        outputs: Default::default(),
        queued: None,
    };
    assert_eq!(w.record(&b, T0), Recorded::Profiled(2));
    let closed = w.drain_closed(T0 + MINUTE);
    assert_eq!(numeric(&closed[0], "img.mean").max(), Some(3.0));
    assert_eq!(numeric(&closed[0], "img.min").min(), Some(0.0));
    assert_eq!(numeric(&closed[0], "img.max").max(), Some(6.0));
    assert_eq!(numeric(&closed[0], "img.std").min(), Some(0.0));
}

#[test]
fn a_closed_window_becomes_the_sync_reports_drift_window() {
    let (mut w, id, _alive, _c) = windows_with(60);
    w.record(&batch(id, 2, 0.0), T0);
    let window = w.drain_closed(T0 + MINUTE).remove(0).into_report();
    assert_eq!((window.model.as_str(), window.version, window.start_ms, window.rows), ("m", 3, T0, 2));
    assert_eq!(window.profile.rows(), 2);
}

#[test]
fn above_the_sketch_rate_the_quantile_sketch_takes_a_systematic_sample_and_the_counts_take_every_row() {
    // 1 row/s in full: a minute of 500 rows makes the next window sketch one row in 8.
    let (w, id, _alive, _c) = windows_with(60);
    let mut w = w.with_sketch_rate(1);
    let minute = |w: &mut Windows, start: i64| {
        for b in 0..20 {
            // Batches of 25 rows: 8 does not divide them, so the sample's phase runs across batches.
            w.record(&batch(id, 25, (b * 25) as f32), start + b * 1_000);
        }
    };
    minute(&mut w, T0);
    let first = w.drain_closed(T0 + MINUTE);
    let x0 = numeric(&first[0], "x[0]");
    assert_eq!((x0.rows(), x0.kll().n()), (500, 500), "no window before it: every row");

    minute(&mut w, T0 + MINUTE);
    let second = w.drain_closed(T0 + 2 * MINUTE);
    let x0 = numeric(&second[0], "x[0]");
    assert_eq!((x0.rows(), x0.min(), x0.max(), x0.sum()), (500, Some(0.0), Some(499.0), 124_750.0));
    // Rows 0, 8, 16, ..., 496 of the window (x[0] is the row's index): 63 of them.
    assert_eq!(x0.kll().n(), 63);
    assert_eq!((x0.quantile(0.0), x0.quantile(1.0)), (Some(0.0), Some(496.0)));
    // Histograms and frequent items are never sampled.
    let (counts, _) = categorical(&second[0], "s").counts();
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 500);

    // A quiet window (its own sample still one in 8), then every row again.
    w.record(&batch(id, 3, 0.0), T0 + 2 * MINUTE);
    let third = w.drain_closed(T0 + 3 * MINUTE);
    assert_eq!(numeric(&third[0], "x[0]").kll().n(), 1);
    w.record(&batch(id, 5, 0.0), T0 + 3 * MINUTE);
    let fourth = w.drain_closed(T0 + 4 * MINUTE);
    assert_eq!(numeric(&fourth[0], "x[0]").kll().n(), 5);
}

#[test]
fn a_sample_keeps_its_phase_across_batches() {
    use crate::drift::extract::Sketched;
    // One in 4 of a window that has 6 rows already: its rows 8, 12, ... are this batch's rows 2, 6, ...
    assert_eq!(Sketched::one_in(4, 6), Sketched { first: 2, every: 4 });
    assert_eq!(Sketched::one_in(4, 8), Sketched { first: 0, every: 4 });
    assert_eq!(Sketched::one_in(0, 5), Sketched::ALL);
}

#[test]
fn a_take_profiled_together_equals_its_batches_profiled_one_by_one() {
    let (mut together, id, _alive, c) = windows_with(60);
    let (mut one_by_one, other_id, _other_alive, _) = windows_with(60);
    assert_eq!(id, other_id);
    let mut no_outputs = batch(id, 2, 10.0);
    no_outputs.outputs.clear();
    let mut broken = batch(id, 2, 0.0);
    broken.inputs[1].data = Bytes::from_static(&[9, 0, 0, 0, b'a']);
    let mut unknown = batch(id, 5, 0.0);
    unknown.registration = id + 1;
    let mut three = batch(id, 3, 30.0);
    three.inputs[1] = strings(&["c", "", "d"]);
    // Outputs, none, a batch that does not fit, outputs again, another registration, more.
    let take = [batch(id, 3, 0.0), no_outputs, broken, batch(id, 4, 20.0), unknown, three];

    let mut outcomes = Vec::new();
    together.record_all(&take, T0, |i, recorded| outcomes.push((i, recorded)));
    let expected: Vec<(usize, Recorded)> = take.iter().map(|b| one_by_one.record(b, T0)).enumerate().collect();
    assert_eq!(outcomes, expected);
    assert!(matches!(outcomes[2].1, Recorded::Skipped(_)));
    assert_eq!(outcomes[4].1, Recorded::Unknown);
    assert_eq!((c.rows.load(Ordering::Relaxed), c.skipped.load(Ordering::Relaxed)), (12, 2));

    let (a, b) = (together.drain_closed(T0 + MINUTE), one_by_one.drain_closed(T0 + MINUTE));
    assert_eq!((a.len(), a[0].rows), (1, 12));
    for name in ["x[0]", "x[1]", "y[0]", "y[2]"] {
        let (x, y) = (numeric(&a[0], name), numeric(&b[0], name));
        assert_eq!((x.rows(), x.min(), x.max(), x.sum()), (y.rows(), y.min(), y.max(), y.sum()), "{name}");
        assert_eq!(x.quantile(0.5), y.quantile(0.5), "{name}");
        let (mx, my) = (x.mean().unwrap(), y.mean().unwrap());
        assert!((mx - my).abs() < 1e-12 && (x.std().unwrap() - y.std().unwrap()).abs() < 1e-9, "{name}");
    }
    // The batch without outputs gave its inputs' rows but none of the outputs'.
    assert_eq!((numeric(&a[0], "x[0]").rows(), numeric(&a[0], "y[0]").rows()), (12, 10));
    for name in ["s", "y.argmax"] {
        let (x, y) = (categorical(&a[0], name), categorical(&b[0], name));
        assert_eq!((x.counts(), x.missing_count()), (y.counts(), y.missing_count()), "{name}");
    }
    assert_eq!(categorical(&a[0], "s").missing_count(), 1);
}
