//! Cost of forming a batch (`concat`) and answering it (`split`), per byte,
//! next to a plain memcpy of the same bytes measured in the same run.
//!
//! Sizes: 1, 8 and 64 requests of one row each, rows of 256 B (the 64-float
//! input of the example MLP) and 64 KiB (an image-sized row). Every benchmark
//! reports `Throughput::Bytes` of the payload, so criterion prints GiB/s for
//! the gateway's code and for the memcpy baseline side by side;
//! `load-tests/bench_table.py` turns the results into a table of ratios.
//!
//! Run: `cargo bench --bench batching` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modelgate::batching::{concat, split};
use modelgate::tensor::Tensor;
use modelgate_backend::{DataType, OutputTensor};

/// Row sizes in bytes.
const ROW_BYTES: [usize; 2] = [256, 64 << 10];
/// Requests per batch, one row each.
const REQUESTS: [usize; 3] = [1, 8, 64];

/// One single-row FP32 request input of `row_bytes`, filled with a pattern
/// so the bytes are not all zero (a zero page could flatter a copy).
fn request_input(row_bytes: usize, seed: usize) -> Vec<Tensor> {
    let floats = row_bytes / 4;
    let values: Vec<f32> = (0..floats).map(|i| ((i + seed) % 251) as f32 * 0.5).collect();
    let data = Bytes::from(bytemuck::cast_slice::<f32, u8>(&values).to_vec());
    vec![Tensor::checked("input".into(), DataType::Fp32, vec![1, floats as i64], data).expect("shape matches bytes")]
}

fn label(row_bytes: usize) -> String {
    if row_bytes >= 1024 { format!("{}KiB", row_bytes >> 10) } else { format!("{row_bytes}B") }
}

/// Copies every source slice into `dst` back to back: what any batcher has to
/// do at least, with the destination already allocated and warm.
fn memcpy_all(sources: &[&[u8]], dst: &mut [u8]) {
    let mut at = 0;
    for src in sources {
        dst[at..at + src.len()].copy_from_slice(src);
        at += src.len();
    }
}

fn bench_concat(c: &mut Criterion) {
    let mut group = c.benchmark_group("concat");
    for row_bytes in ROW_BYTES {
        for n in REQUESTS {
            let requests: Vec<Vec<Tensor>> = (0..n).map(|i| request_input(row_bytes, i)).collect();
            let views: Vec<&[Tensor]> = requests.iter().map(Vec::as_slice).collect();
            let sources: Vec<&[u8]> = requests.iter().map(|r| &r[0].data[..]).collect();
            let mut dst = vec![0u8; n * row_bytes];
            let id = format!("{}x{n}", label(row_bytes));
            group.throughput(Throughput::Bytes((n * row_bytes) as u64));
            group.bench_with_input(BenchmarkId::new("gateway", &id), &views, |b, views| {
                b.iter(|| {
                    let batch = concat(black_box(views), 0, true);
                    black_box(batch.view().data.as_ptr());
                })
            });
            group.bench_with_input(BenchmarkId::new("memcpy", &id), &sources, |b, sources| {
                b.iter(|| {
                    memcpy_all(black_box(sources), &mut dst);
                    black_box(dst.as_ptr());
                })
            });
        }
    }
    group.finish();
}

fn bench_split(c: &mut Criterion) {
    let mut group = c.benchmark_group("split");
    for row_bytes in ROW_BYTES {
        for n in REQUESTS {
            let floats = row_bytes / 4;
            let output = OutputTensor {
                dtype: DataType::Fp32,
                shape: vec![n as i64, floats as i64],
                data: Bytes::from(vec![7u8; n * row_bytes]),
            };
            let rows = vec![1usize; n];
            let mut parts: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; row_bytes]).collect();
            let id = format!("{}x{n}", label(row_bytes));
            group.throughput(Throughput::Bytes((n * row_bytes) as u64));
            group.bench_with_input(BenchmarkId::new("gateway", &id), &output, |b, output| {
                b.iter_batched(
                    || output.clone(),
                    |output| black_box(split(output, &rows, 0).expect("rows match the shape")),
                    BatchSize::SmallInput,
                )
            });
            // A split that copies each request's rows into its own buffer.
            group.bench_with_input(BenchmarkId::new("memcpy", &id), &output, |b, output| {
                b.iter(|| {
                    for (i, part) in parts.iter_mut().enumerate() {
                        part.copy_from_slice(&black_box(&output.data)[i * row_bytes..(i + 1) * row_bytes]);
                    }
                    black_box(parts.as_ptr());
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_concat, bench_split);
criterion_main!(benches);
