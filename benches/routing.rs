//! What routing adds to a request, against baselines measured in the same run.
//!
//! - `lookup`: a model without a route pays one `ArcSwap` load and a miss in
//!   an empty map (`routes_get_unrouted`); baseline: the bare `ArcSwap` load.
//! - `pick`: choosing a target by weights, by a sticky key, by a header rule;
//!   baseline: one random number.
//! - `record`: admitting a request and recording its outcome in the arm's
//!   window (CAS on packed counters); baseline: one atomic add.
//! - `sequential`: one update of a canary's sequential test (`Sprt::observe`)
//!   for a healthy outcome (the ratio at its floor: a load, no write) and a
//!   failure (a CAS), and a canary arm's whole record (window, both tests)
//!   beside the same record on an arm without tests; baseline: one atomic add.
//! - `latency_watch`: a canary request's place in the overdue watch, taken
//!   and given back; baseline: the tokio timer per request it replaced.
//!
//! Run: `cargo bench --bench routing`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use modelgate::error::Fault;
use modelgate::routing::policy::Rates;
use modelgate::routing::sprt::Sprt;
use modelgate::routing::{Route, RouteSpec, Routes, RuleSpec};

fn route(spec: RouteSpec) -> Route {
    Route::build(&spec.validate().expect("a valid bench route"), 1)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    let bare: ArcSwap<u64> = ArcSwap::from_pointee(7);
    group.bench_function("baseline_arc_swap_load", |b| b.iter(|| **black_box(&bare).load()));
    let empty = Routes::default();
    group.bench_function("routes_get_unrouted", |b| b.iter(|| black_box(&empty).get(black_box("mlp")).is_some()));
    let routes = Routes::default();
    for i in 0..10 {
        routes.insert(route(RouteSpec::weighted(&format!("model{i}"), &[(1, 90), (2, 10)])));
    }
    group.bench_function("routes_get_miss_of_10", |b| b.iter(|| black_box(&routes).get(black_box("mlp")).is_some()));
    group.bench_function("routes_get_hit_of_10", |b| b.iter(|| black_box(&routes).get(black_box("model3")).is_some()));
    group.finish();
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.bench_function("baseline_random_number", |b| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        b.iter(|| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(x)
        })
    });
    let weighted = route(RouteSpec::weighted("mlp", &[(1, 95), (2, 5)]));
    let none = HeaderMap::new();
    group.bench_function("weighted", |b| b.iter(|| weighted.pick(black_box(&none))));
    let mut spec = RouteSpec::weighted("mlp", &[(1, 50), (2, 50)]);
    spec.sticky_header = Some("x-user-id".into());
    let sticky = route(spec);
    let mut user = HeaderMap::new();
    user.insert("x-user-id", HeaderValue::from_static("user-1234567890"));
    group.bench_function("sticky_key", |b| b.iter(|| sticky.pick(black_box(&user))));
    let mut spec = RouteSpec::weighted("mlp", &[(1, 100), (2, 0)]);
    spec.rules = vec![RuleSpec { header: "x-variant".into(), value: Some("b".into()), version: Some(2) }];
    let rules = route(spec);
    let mut variant = HeaderMap::new();
    variant.insert("x-variant", HeaderValue::from_static("b"));
    group.bench_function("header_rule", |b| b.iter(|| rules.pick(black_box(&variant))));
    group.finish();
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let counter = AtomicU64::new(0);
    group.bench_function("baseline_atomic_add", |b| b.iter(|| black_box(&counter).fetch_add(1, Ordering::Relaxed)));
    let route = route(RouteSpec::weighted("mlp", &[(1, 100)]));
    let arm = &route.targets[0].arm;
    group.bench_function("admit_and_record_success", |b| {
        b.iter(|| {
            let admitted = arm.admit("mlp", Some(1024));
            arm.record(Ok(()), black_box(Duration::from_micros(850)));
            drop(admitted);
        })
    });
    group.bench_function("record_failure", |b| b.iter(|| arm.record(Err(Fault::Server), Duration::ZERO)));
    group.finish();
}

/// Versions 1 and 2 of `mlp` under a rollout of canary 2 with the default policy.
fn canary_rollout() -> Route {
    route(RouteSpec::canary_release("mlp", 1, modelgate::routing::RolloutSpec::new(2)))
}

fn sequential(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequential");
    let counter = AtomicU64::new(0);
    group.bench_function("baseline_atomic_add", |b| b.iter(|| black_box(&counter).fetch_add(1, Ordering::Relaxed)));
    let rates = Rates { false_rollback: 0.001, missed_breach: 0.01, breach_factor: 10.0 };
    let test = Sprt::new(0.01, rates).expect("a 1 % SLO can be breached");
    group.bench_function("observe_healthy", |b| b.iter(|| test.observe(black_box(false))));
    // Breaches alternating with enough good outcomes to stay under the bound: each one writes.
    let busy = Sprt::new(0.01, rates).expect("a 1 % SLO can be breached");
    let mut i = 0u32;
    group.bench_function("observe_mixed_one_in_30_breaches", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            busy.observe(black_box(i.is_multiple_of(30)))
        })
    });
    let rollout = canary_rollout();
    let (plain, canary) = (&rollout.targets[0].arm, &rollout.targets[1].arm);
    assert!(plain.sequential.is_none() && canary.sequential.is_some());
    group.bench_function("record_success_arm_without_tests", |b| {
        b.iter(|| plain.record(Ok(()), black_box(Duration::from_micros(850))))
    });
    group.bench_function("record_success_canary_arm", |b| {
        b.iter(|| canary.record(Ok(()), black_box(Duration::from_micros(850))))
    });
    group.finish();
}

/// What a canary request pays to have its slowness counted while it runs: a
/// slot of the overdue watch taken and given back (`routing/overdue.rs`),
/// against what it paid before, a tokio timer armed at the threshold (one
/// poll registers it in the timer wheel) and dropped when the answer came.
fn latency_watch(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency_watch");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let _entered = runtime.enter();
    let rollout = canary_rollout();
    let sequential = rollout.targets[1].arm.sequential.as_ref().expect("the canary is tested");
    group.bench_function("slot_taken_and_given_back", |b| {
        b.iter(|| {
            let watch = sequential.watch(tokio::time::Instant::now()).expect("latency is tested");
            black_box(watch.end())
        })
    });
    let threshold = Duration::from_secs(5);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    group.bench_function("baseline_tokio_timer_armed_and_dropped", |b| {
        b.iter(|| {
            let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now() + threshold));
            black_box(std::future::Future::poll(timer.as_mut(), &mut context).is_pending())
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, pick, record, sequential, latency_watch);
criterion_main!(benches);
