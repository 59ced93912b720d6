//! Shadow traffic: a copy of a sample of routed requests goes to another
//! version on a spawned task. Its answer is dropped; it is measured (outcome,
//! latency) and compared with the primary's answer: agreement of the
//! predictions and the largest absolute difference of the outputs.
//!
//! The client's response never waits for, or changes with, the shadow: the
//! copy starts after the primary has answered, and at most `max_in_flight`
//! copies run at once (the rest are skipped and counted), so a slow shadow
//! cannot pile up work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use modelgate_backend::DataType;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::random::next_random;
use super::spec::ShadowSpec;
use crate::metrics::ShadowMetrics;
use crate::repository::Repository;
use crate::tensor::{InferRequest, ResponseOutput};

/// The shadow target of a route and what its copies did.
#[derive(Debug)]
pub struct Shadow {
    /// The spec as applied.
    pub spec: ShadowSpec,
    /// Sample when a random `u64` is below this.
    threshold: u64,
    permits: Arc<Semaphore>,
    counts: ShadowCounts,
    metrics: ShadowMetrics,
}

/// Running totals of one shadow target, for the admin API.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    /// Copies answered.
    pub success: AtomicU64,
    /// Copies that failed.
    pub error: AtomicU64,
    /// Copies skipped: too many in flight.
    pub skipped: AtomicU64,
    /// Answers compared with the primary's.
    pub compared: AtomicU64,
    /// Comparisons that agreed.
    pub agreed: AtomicU64,
    /// Largest absolute difference seen (f64 bits).
    pub max_abs_diff: AtomicU64,
}

/// Primary and shadow answers side by side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Same outputs, shapes and types, and the same prediction: per row the
    /// same arg-max for float outputs with at least two classes, equal values
    /// (up to 1e-4 absolute plus 1e-3 relative) for other floats, identical
    /// values for integers, booleans and bytes.
    pub agree: bool,
    /// Largest absolute difference over the numeric elements; `None` when no
    /// numeric output could be compared.
    pub max_abs_diff: Option<f64>,
}

impl Shadow {
    /// A shadow target of `model`, compared with the route's `targets`.
    pub fn new(model: &str, spec: &ShadowSpec, targets: &[u64]) -> Shadow {
        let fraction = (spec.percent / 100.0).clamp(0.0, 1.0);
        let threshold = if fraction >= 1.0 { u64::MAX } else { (fraction * 2f64.powi(64)) as u64 };
        Shadow {
            spec: spec.clone(),
            threshold,
            permits: Arc::new(Semaphore::new(spec.max_in_flight as usize)),
            counts: ShadowCounts::default(),
            metrics: ShadowMetrics::new(model, spec.version, targets),
        }
    }

    /// The running totals.
    pub fn counts(&self) -> &ShadowCounts {
        &self.counts
    }

    /// Whether this request is copied; `None` when it is not sampled or when
    /// too many copies are in flight (counted as skipped).
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if self.threshold != u64::MAX && next_random() >= self.threshold {
            return None;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                self.metrics.skipped.increment(1);
                None
            }
        }
    }

    /// Runs the copy on the shadow version and compares its answer with the
    /// primary's outputs (when the primary answered).
    pub async fn run(
        self: Arc<Self>,
        _permit: OwnedSemaphorePermit,
        repository: Arc<Repository>,
        model: String,
        primary_version: u64,
        request: InferRequest,
        primary: Option<Vec<ResponseOutput>>,
    ) {
        let started = Instant::now();
        let answer = match repository.resolve(&model, Some(self.spec.version)) {
            Ok(version) => version.infer_recorded(request, started).await.0,
            Err(e) => Err(e),
        };
        self.metrics.duration.record(started.elapsed().as_secs_f64());
        let shadow = match answer {
            Ok(outputs) => {
                self.counts.success.fetch_add(1, Ordering::Relaxed);
                self.metrics.success.increment(1);
                outputs
            }
            Err(e) => {
                self.counts.error.fetch_add(1, Ordering::Relaxed);
                self.metrics.error.increment(1);
                tracing::debug!(model = %model, version = self.spec.version, error = %e, "shadow copy failed");
                return;
            }
        };
        let Some(primary) = primary else { return };
        let comparison = compare(&primary, &shadow);
        self.counts.compared.fetch_add(1, Ordering::Relaxed);
        if comparison.agree {
            self.counts.agreed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(diff) = comparison.max_abs_diff {
            self.counts.max_abs_diff.fetch_max(diff.to_bits(), Ordering::Relaxed);
        }
        self.metrics.comparison(primary_version, comparison.agree, comparison.max_abs_diff);
    }
}

impl ShadowCounts {
    /// The largest absolute difference seen.
    pub fn max_abs_diff(&self) -> f64 {
        // Non-negative f64s order like their bits, which is why `fetch_max` on the bits works.
        f64::from_bits(self.max_abs_diff.load(Ordering::Relaxed))
    }
}

/// Compares a primary and a shadow answer.
pub fn compare(primary: &[ResponseOutput], shadow: &[ResponseOutput]) -> Comparison {
    let mut agree = primary.len() == shadow.len();
    let mut max_abs_diff: Option<f64> = None;
    for (p, s) in primary.iter().zip(shadow) {
        let (p, s) = (&p.tensor, &s.tensor);
        if p.name != s.name || p.dtype != s.dtype || p.shape != s.shape {
            agree = false;
            continue;
        }
        match (numbers(p.dtype, &p.data), numbers(s.dtype, &s.data)) {
            (Some(a), Some(b)) => {
                let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| {
                    let d = (x - y).abs();
                    // A NaN on one side only is as far apart as values get.
                    if d.is_nan() && !(x.is_nan() && y.is_nan()) { f64::INFINITY } else { m.max(d) }
                });
                max_abs_diff = Some(max_abs_diff.map_or(diff, |m| m.max(diff)));
                let row = p.shape.last().copied().unwrap_or(1).max(1) as usize;
                agree &= if is_float(p.dtype) && row >= 2 {
                    a.chunks(row).zip(b.chunks(row)).all(|(x, y)| argmax(x) == argmax(y))
                } else if is_float(p.dtype) {
                    a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-4 + 1e-3 * x.abs())
                } else {
                    a == b
                };
            }
            _ => agree &= p.data == s.data,
        }
    }
    Comparison { agree, max_abs_diff }
}

fn is_float(dtype: DataType) -> bool {
    matches!(dtype, DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64)
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// The elements of a numeric tensor as `f64`; `None` for BYTES.
fn numbers(dtype: DataType, data: &[u8]) -> Option<Vec<f64>> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
    }
    Some(match dtype {
        DataType::Bool | DataType::Uint8 => data.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => data.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => each(data, |b| f64::from(u16::from_le_bytes(b))),
        DataType::Int16 => each(data, |b| f64::from(i16::from_le_bytes(b))),
        DataType::Uint32 => each(data, |b| f64::from(u32::from_le_bytes(b))),
        DataType::Int32 => each(data, |b| f64::from(i32::from_le_bytes(b))),
        DataType::Uint64 => each(data, |b| u64::from_le_bytes(b) as f64),
        DataType::Int64 => each(data, |b| i64::from_le_bytes(b) as f64),
        DataType::Fp16 => each(data, |b| f16_to_f64(u16::from_le_bytes(b))),
        DataType::Bf16 => each(data, |b| f64::from(f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16))),
        DataType::Fp32 => each(data, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Fp64 => each(data, f64::from_le_bytes),
        DataType::Bytes => return None,
    })
}

/// IEEE half precision to `f64`.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    sign * match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tensor::Tensor;

    fn output(name: &str, dtype: DataType, shape: Vec<i64>, data: Vec<u8>) -> ResponseOutput {
        ResponseOutput { tensor: Tensor { name: name.into(), dtype, shape, data: Bytes::from(data) }, binary: false }
    }

    fn fp32(shape: Vec<i64>, values: &[f32]) -> ResponseOutput {
        output("out", DataType::Fp32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    #[test]
    fn same_class_per_row_agrees_and_reports_the_difference() {
        let a = fp32(vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.1, 0.4]);
        let b = fp32(vec![2, 3], &[0.2, 0.6, 0.2, 0.45, 0.1, 0.4]);
        let c = compare(std::slice::from_ref(&a), &[b]);
        assert!(c.agree);
        assert!((c.max_abs_diff.unwrap() - 0.1).abs() < 1e-6, "{c:?}");
        let flipped = fp32(vec![2, 3], &[0.1, 0.7, 0.2, 0.1, 0.5, 0.4]);
        assert!(!compare(std::slice::from_ref(&a), &[flipped]).agree);
        assert_eq!(compare(std::slice::from_ref(&a), std::slice::from_ref(&a)).max_abs_diff, Some(0.0));
    }

    #[test]
    fn different_shapes_types_or_names_disagree() {
        let a = fp32(vec![1, 2], &[1.0, 2.0]);
        assert!(!compare(std::slice::from_ref(&a), &[fp32(vec![2, 1], &[1.0, 2.0])]).agree);
        assert!(!compare(std::slice::from_ref(&a), &[output("out", DataType::Int32, vec![1, 2], vec![0; 8])]).agree);
        assert!(!compare(std::slice::from_ref(&a), &[]).agree);
        let mut renamed = a.clone();
        renamed.tensor.name = "other".into();
        assert!(!compare(&[a], &[renamed]).agree);
    }

    #[test]
    fn integers_and_bytes_must_match_exactly() {
        let ints = |v: &[i32]| {
            output("o", DataType::Int32, vec![v.len() as i64], v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        let c = compare(&[ints(&[1, 2, 3])], &[ints(&[1, 2, 4])]);
        assert_eq!(c, Comparison { agree: false, max_abs_diff: Some(1.0) });
        let text = |s: &[u8]| output("o", DataType::Bytes, vec![1], [&(s.len() as u32).to_le_bytes()[..], s].concat());
        assert_eq!(compare(&[text(b"cat")], &[text(b"cat")]), Comparison { agree: true, max_abs_diff: None });
        assert!(!compare(&[text(b"cat")], &[text(b"dog")]).agree);
    }

    #[test]
    fn a_nan_on_one_side_is_an_infinite_difference() {
        let c = compare(&[fp32(vec![1], &[1.0])], &[fp32(vec![1], &[f32::NAN])]);
        assert_eq!(c.max_abs_diff, Some(f64::INFINITY));
        assert!(!c.agree);
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
    }

    #[tokio::test]
    async fn sampling_follows_the_percentage_and_the_in_flight_bound() {
        let spec = ShadowSpec { version: 2, percent: 25.0, max_in_flight: 10_000 };
        let shadow = Shadow::new("m", &spec, &[1]);
        let mut permits = Vec::new();
        for _ in 0..20_000 {
            if let Some(p) = shadow.admit() {
                permits.push(p);
            }
        }
        assert!((4_500..5_500).contains(&permits.len()), "{} of 20000 sampled at 25 %", permits.len());
        let bounded = Shadow::new("m", &ShadowSpec { version: 2, percent: 100.0, max_in_flight: 3 }, &[1]);
        let held: Vec<_> = (0..5).filter_map(|_| bounded.admit()).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(bounded.counts().skipped.load(Ordering::Relaxed), 2);
    }
}
