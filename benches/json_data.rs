//! V2 JSON tensor data (issue 16): what parsing `"data"` costs per element,
//! the FP32/FP64 fast path (`json_tensor::parse_data`) against serde_json's
//! visitor on the same text (`json_tensor::parse_with_serde`, the path every
//! other element type and every malformed text takes), and a whole request's
//! decode (`decode_request`) for scale.
//!
//! Texts: the example MLP's row (64 FP32 values as Python's json writes
//! them) and a 64 x 64 tensor of the same kind, nested by row.
//!
//! Run: `cargo bench --bench json_data`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelgate::http::decode_request;
use modelgate::http::json_tensor::{parse_data, parse_with_serde};
use modelgate_backend::DataType;
use serde_json::value::RawValue;

/// `count` floats in [-3, 3) with the digits Python's json writes for
/// float32 values widened to double (17 significant digits).
fn values(count: usize) -> Vec<f64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            f64::from(((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0)
        })
        .collect()
}

fn text(values: &[f64], row: usize) -> String {
    let rows: Vec<String> = values
        .chunks(row)
        .map(|r| format!("[{}]", r.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")))
        .collect();
    format!("[{}]", rows.join(", "))
}

fn data(c: &mut Criterion) {
    for (label, count, row) in [("1x64", 64, 64), ("64x64", 4096, 64)] {
        let raw = RawValue::from_string(text(&values(count), row)).expect("valid JSON");
        assert_eq!(parse_data(&raw, DataType::Fp32, count, 2), parse_with_serde(&raw, DataType::Fp32, count, 2));
        let mut group = c.benchmark_group(format!("json_data/fp32_{label}"));
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function("fast_path", |b| b.iter(|| parse_data(black_box(&raw), DataType::Fp32, count, 2)));
        group.bench_function("serde_json_visitor", |b| {
            b.iter(|| parse_with_serde(black_box(&raw), DataType::Fp32, count, 2))
        });
        group.finish();
    }
}

fn request(c: &mut Criterion) {
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":{}}}]}}"#,
        text(&values(64), 64)
    );
    let body = Bytes::from(body);
    let mut group = c.benchmark_group("json_data/decode_request");
    group.bench_function("mlp_row", |b| {
        b.iter(|| decode_request(None, black_box(body.clone()), 1 << 20).expect("valid request"))
    });
    group.finish();
}

criterion_group!(benches, data, request);
criterion_main!(benches);
