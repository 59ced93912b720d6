//! What the door's hostile-load guards (issue #15) add to a request, against
//! baselines measured in the same run.
//!
//! - `activity`: marking a request open on its connection and closing it
//!   (the idle timeout's bookkeeping: two atomic adds, a clock read);
//!   baseline: one atomic add.
//! - `body`: reading a 16 KiB body in one frame and in 16 frames through
//!   `http::body::read` (budget held as it grows, whole-body deadline);
//!   baseline: `http_body_util::BodyExt::collect` of the same frames.
//!
//! Run: `cargo bench --bench door`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use modelgate::budget::InflightBytes;
use modelgate::config::ServerConfig;
use modelgate::connection::Activity;
use modelgate::gateway::Limits;
use tokio::sync::Semaphore;

fn activity(c: &mut Criterion) {
    let mut group = c.benchmark_group("activity");
    let counter = AtomicU64::new(0);
    group.bench_function("baseline_atomic_add", |b| b.iter(|| black_box(&counter).fetch_add(1, Ordering::AcqRel)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let _entered = runtime.enter();
    let activity = Activity::new();
    group.bench_function("begin_and_end", |b| b.iter(|| drop(black_box(&activity).begin())));
    group.finish();
}

fn frames(parts: usize) -> Vec<Bytes> {
    (0..parts).map(|i| Bytes::from(vec![i as u8; (16 << 10) / parts])).collect()
}

/// A body of the given frames.
type Frames = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn stream(parts: Vec<Bytes>) -> Frames {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts.into_iter().map(|b| Ok(Frame::data(b))).collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

fn body(c: &mut Criterion) {
    let mut group = c.benchmark_group("body");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let limits = Limits::from(&ServerConfig::default());
    let budget = InflightBytes::new(limits.max_inflight_bytes);
    let turns = Arc::new(Semaphore::new(4));
    let headers = HeaderMap::new();
    for parts in [1, 16] {
        group.bench_function(format!("baseline_collect_{parts}_frames"), |b| {
            b.iter_batched(
                || stream(frames(parts)),
                |body| runtime.block_on(async { body.collect().await.map(|c| c.to_bytes().len()) }),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("read_{parts}_frames"), |b| {
            b.iter_batched(
                || stream(frames(parts)),
                |body| {
                    runtime.block_on(async {
                        modelgate::http::body::read(body, &headers, &limits, &budget, &turns)
                            .await
                            .map(|(b, _)| b.len())
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, activity, body);
criterion_main!(benches);
