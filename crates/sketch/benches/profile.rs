//! Cost of profiling one value: the fixed-bin histogram alone, the KLL sketch alone and the whole
//! `FeatureProfile::update`, next to summing the same values (the floor: one load and one add).
//! Goals from the control-plane notes §2: histogram ~5 ns, KLL ~75 ns per value.
//!
//! Every benchmark feeds the same 10,000 N(0, 1)-like values into a fresh profile and reports
//! `Throughput::Elements`, so criterion prints values per second; time per value is its inverse.
//!
//! Run: `cargo bench -p modelgate-sketch --bench profile` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use datasketches::kll::{KllFloat, KllSketch};
use modelgate_sketch::{FeatureProfile, Histogram, numeric::DEFAULT_K};

const VALUES: usize = 10_000;

/// Roughly normal values from a fixed-seed generator (sum of uniforms), so every run and every
/// benchmark sees the same stream.
fn values() -> Vec<f64> {
    let mut state: u64 = 0x1234_5678;
    let mut uniform = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..VALUES).map(|_| (0..4).map(|_| uniform()).sum::<f64>() - 2.0).collect()
}

/// 19 edges: the 20-bin histogram the notes measured.
fn edges() -> Vec<f64> {
    (1..20).map(|i| -1.0 + f64::from(i) * 0.1).collect()
}

fn bench(c: &mut Criterion) {
    let values = values();
    let mut group = c.benchmark_group("profile_update");
    group.throughput(Throughput::Elements(VALUES as u64));

    group.bench_function("baseline_sum", |b| {
        b.iter(|| black_box(&values).iter().sum::<f64>());
    });
    group.bench_function("histogram_20_bins", |b| {
        b.iter_batched_ref(
            || Histogram::new(edges()).expect("edges are increasing"),
            |h| {
                for &v in black_box(&values) {
                    h.update(v);
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("kll_k200", |b| {
        b.iter_batched_ref(
            || KllSketch::<KllFloat<f64>>::new(DEFAULT_K).expect("k = 200 is valid"),
            |s| {
                for &v in black_box(&values) {
                    if let Ok(item) = KllFloat::<f64>::new(v) {
                        s.update(item);
                    }
                }
            },
            BatchSize::SmallInput,
        );
    });
    // The same 10,000 values into a sketch that already holds a million: compactions then reach
    // higher levels, the cost of a long window.
    let mut warm = KllSketch::<KllFloat<f64>>::new(DEFAULT_K).expect("k = 200 is valid");
    for _ in 0..100 {
        for &v in &values {
            if let Ok(item) = KllFloat::<f64>::new(v) {
                warm.update(item);
            }
        }
    }
    group.bench_function("kll_k200_after_1m", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |s| {
                for &v in black_box(&values) {
                    if let Ok(item) = KllFloat::<f64>::new(v) {
                        s.update(item);
                    }
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("feature_profile", |b| {
        b.iter_batched_ref(
            || FeatureProfile::new(edges(), DEFAULT_K).expect("edges are increasing"),
            |p| {
                for &v in black_box(&values) {
                    p.update(v);
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
