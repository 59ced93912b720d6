//! What keeping a prediction for feedback adds to a request, against
//! baselines in the same run.
//!
//! - `id`: generating a request id (`request_id::generate`); baseline: an
//!   atomic add and the same-size `String` allocation.
//! - `insert`: what a request pays, `PredictionIndex::insert` on a full index
//!   of 1,000,000 entries (foldhash, then a push onto the applier's
//!   `ArrayQueue`), one thread and two threads at once; baselines: the same
//!   entry put into one `HashMap` behind one mutex (unsharded, its growth
//!   stopped by a clear), and `baseline_before_siphash_channel`, the request
//!   path this index had before (SipHash-1-3 of the id, then `try_send` to a
//!   crossbeam channel whose receiver thread parks in `Select::ready` and is
//!   woken by the send, applying into a map of a million entries).
//!   `insert_and_apply` is the whole work per entry, the applier's included
//!   (batches of 10,000 inserts, then a flush): what the CPU pays, off the
//!   request path.
//! - `keep`: the whole per-request cost, `Feedback::keep` (argmax of a
//!   10-class FP32 output, then the insert).
//!
//! Goal: `insert` ≤ 100 ns. Run: `cargo bench --bench feedback_index`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use modelgate::feedback::{Feedback, OutputKind, Prediction, PredictionIndex, Settings, request_id};
use modelgate::tensor::{ResponseOutput, Tensor};
use modelgate_backend::DataType;
use parking_lot::Mutex;

const FULL: usize = 1_000_000;
const P: Prediction = Prediction::Class { class: 3, classes: 10, score: 0.9 };

/// Ids as the gateway makes them, made before the clock runs.
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| request_id::generate()).collect()
}

fn full_index(ids: &[String]) -> PredictionIndex {
    let index = PredictionIndex::new(FULL, Duration::from_secs(86_400));
    for id in &ids[..FULL] {
        index.insert(id, 1, P);
    }
    index
}

fn id(c: &mut Criterion) {
    let mut group = c.benchmark_group("id");
    let counter = AtomicU64::new(0);
    group.bench_function("baseline_atomic_add_and_string", |b| {
        b.iter(|| {
            counter.fetch_add(1, Ordering::Relaxed);
            black_box(String::from("0123456789abcdef-12345"))
        })
    });
    group.bench_function("generate", |b| b.iter(|| black_box(request_id::generate())));
    group.finish();
}

fn insert(c: &mut Criterion) {
    let ids = ids(FULL * 2);
    let mut group = c.benchmark_group("insert");
    let plain: Mutex<HashMap<String, Prediction>> = Mutex::new(HashMap::with_capacity(FULL));
    let mut i = 0usize;
    group.bench_function("baseline_one_mutex_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let mut map = plain.lock();
            if map.len() >= FULL {
                map.clear();
            }
            map.insert(ids[i].clone(), P);
        })
    });
    drop(plain);
    before_siphash_channel(&mut group, &ids);
    let index = full_index(&ids);
    let mut i = FULL;
    group.bench_function("full_index_1m", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            index.insert(black_box(&ids[i]), 2, P);
        })
    });
    index.flush();
    // Two threads inserting at once: the cost per insert when shards are shared.
    group.bench_function("full_index_1m_two_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2usize {
                    let (index, ids) = (&index, &ids);
                    scope.spawn(move || {
                        for k in 0..iters as usize {
                            index.insert(&ids[(k * 2 + t) % ids.len()], 2, P);
                        }
                    });
                }
            });
            // Two inserts per iteration ran side by side: time per insert.
            start.elapsed() / 2
        })
    });
    index.flush();
    eprintln!(
        "insert: {} of the inserts found the queue full (dropped: the bench outran the applier)",
        index.dropped()
    );
    let mut i = 0usize;
    group.bench_function("insert_and_apply_full_1m", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(10_000);
                for _ in 0..n {
                    i = (i + 1) % ids.len();
                    index.insert(&ids[i], 2, P);
                }
                index.flush();
                left -= n;
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// The request path of the index before the change: SipHash-1-3 keyed per process, an
/// entry of the same size, `try_send` on a bounded crossbeam channel of 65,536 whose
/// receiver parks until woken and applies into a map of up to a million entries.
fn before_siphash_channel(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, ids: &[String]) {
    type Queued = (u64, (u64, u64, bool, Prediction));
    let (sender, receiver) = crossbeam_channel::bounded::<Queued>(1 << 16);
    let applier = std::thread::spawn(move || {
        let mut map: HashMap<u64, (u64, u64, bool, Prediction)> = HashMap::with_capacity(FULL);
        loop {
            let mut ready = crossbeam_channel::Select::new();
            ready.recv(&receiver);
            ready.ready();
            let mut any = false;
            for (key, entry) in receiver.try_iter() {
                if map.len() >= FULL {
                    map.clear();
                }
                map.insert(key, entry);
                any = true;
            }
            // Ready with nothing to take: the sender is gone.
            if !any && matches!(receiver.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)) {
                return;
            }
        }
    });
    let keys = RandomState::new();
    let start = Instant::now();
    let mut i = FULL;
    group.bench_function("baseline_before_siphash_channel", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let mut hasher = keys.build_hasher();
            hasher.write(black_box(&ids[i]).as_bytes());
            let entry = (2u64, start.elapsed().as_millis() as u64, false, P);
            let _ = black_box(sender.try_send((hasher.finish(), entry)));
        })
    });
    drop(sender);
    let _ = applier.join();
}

fn keep(c: &mut Criterion) {
    let ids = ids(FULL * 2);
    let settings = Settings {
        ttl: Duration::from_secs(86_400),
        max_entries: FULL,
        window: Duration::from_secs(600),
        output: None,
        kind: OutputKind::Auto,
        min_effect: 0.02,
        shared: false,
    };
    let feedback = Feedback::new("mlp", settings, &[1, 2]);
    let scores: Vec<u8> = (0..10).flat_map(|i| (i as f32 / 10.0).to_le_bytes()).collect();
    let tensor =
        Tensor::checked("output".into(), DataType::Fp32, vec![1, 10], Bytes::from(scores)).expect("a sound tensor");
    let outputs = [ResponseOutput { tensor, binary: false }];
    for id in &ids[..FULL] {
        feedback.keep(id, 1, &outputs);
    }
    let mut i = FULL;
    let mut group = c.benchmark_group("keep");
    group.bench_function("summarize_and_insert_full_1m", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            feedback.keep(black_box(&ids[i]), 1, black_box(&outputs));
        })
    });
    group.finish();
}

criterion_group!(benches, id, insert, keep);
criterion_main!(benches);
