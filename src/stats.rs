//! Triton's statistics extension for one model version: cumulative counts and
//! durations, kept in atomics so the request path and the instance threads
//! record without a lock.
//!
//! `inference_count` counts rows (batch elements), `execution_count` counts
//! model executions; their ratio is the batch size the batcher achieved.
//!
//! The loom models (`crates/loom-models`) compile this file as it is, against
//! loom's atomics (see `crate::atomic`): no count is lost to a race.

use crate::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration (`{"count", "ns"}` on the wire).
#[derive(Debug, Default)]
pub struct StatDuration {
    count: AtomicU64,
    ns: AtomicU64,
}

impl StatDuration {
    /// Adds `n` events that took `total` together.
    pub fn add(&self, n: u64, total: Duration) {
        self.count.fetch_add(n, Relaxed);
        self.ns.fetch_add(total.as_nanos() as u64, Relaxed);
    }

    /// `(count, ns)`.
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.ns.load(Relaxed))
    }
}

/// Compute durations of the executions of one batch size.
#[derive(Debug, Default)]
pub struct BatchSizeStats {
    /// Assembling inputs.
    pub compute_input: StatDuration,
    /// Running the model.
    pub compute_infer: StatDuration,
    /// Splitting outputs.
    pub compute_output: StatDuration,
}

/// Statistics of one model version.
#[derive(Debug)]
pub struct ModelStats {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    /// Requests answered successfully, with their total time in the gateway.
    pub success: StatDuration,
    /// Requests that failed after reaching this version.
    pub fail: StatDuration,
    /// Time requests waited in the queue.
    pub queue: StatDuration,
    /// Per request: assembling its batch's inputs.
    pub compute_input: StatDuration,
    /// Per request: running its batch.
    pub compute_infer: StatDuration,
    /// Per request: splitting its batch's outputs.
    pub compute_output: StatDuration,
    /// Indexed by batch size (rows); index 0 unused.
    batch: Vec<BatchSizeStats>,
}

/// The three compute phases of one execution.
#[derive(Clone, Copy, Debug, Default)]
pub struct ComputeTimes {
    /// Assembling inputs.
    pub input: Duration,
    /// Running the model.
    pub infer: Duration,
    /// Splitting outputs.
    pub output: Duration,
}

impl ModelStats {
    /// Statistics for batches of up to `max_rows` rows.
    pub fn new(max_rows: usize) -> ModelStats {
        ModelStats {
            last_inference_ms: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            success: StatDuration::default(),
            fail: StatDuration::default(),
            queue: StatDuration::default(),
            compute_input: StatDuration::default(),
            compute_infer: StatDuration::default(),
            compute_output: StatDuration::default(),
            batch: (0..=max_rows.max(1)).map(|_| BatchSizeStats::default()).collect(),
        }
    }

    /// Records one execution of `requests` requests totalling `rows` rows.
    pub fn record_execution(&self, requests: usize, rows: usize, times: ComputeTimes) {
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(rows as u64, Relaxed);
        let n = requests as u64;
        self.compute_input.add(n, times.input * requests as u32);
        self.compute_infer.add(n, times.infer * requests as u32);
        self.compute_output.add(n, times.output * requests as u32);
        if let Some(b) = self.batch.get(rows) {
            b.compute_input.add(1, times.input);
            b.compute_infer.add(1, times.infer);
            b.compute_output.add(1, times.output);
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now_ms, Relaxed);
    }

    /// Milliseconds since the epoch of the last execution (0 = never).
    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Relaxed)
    }

    /// Rows executed.
    pub fn inference_count(&self) -> u64 {
        self.inference_count.load(Relaxed)
    }

    /// Executions.
    pub fn execution_count(&self) -> u64 {
        self.execution_count.load(Relaxed)
    }

    /// `(batch size, stats)` for every batch size that ran.
    pub fn batch_stats(&self) -> impl Iterator<Item = (usize, &BatchSizeStats)> {
        self.batch.iter().enumerate().skip(1).filter(|(_, b)| b.compute_infer.get().0 > 0)
    }
}

// Not in the loom models' build: these run on std's atomics, outside a loom model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn executions_count_rows_and_batches_separately() {
        let stats = ModelStats::new(8);
        let t = ComputeTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        stats.record_execution(3, 4, t);
        stats.record_execution(1, 1, t);
        assert_eq!(stats.execution_count(), 2);
        assert_eq!(stats.inference_count(), 5);
        assert_eq!(stats.compute_infer.get(), (4, 400));
        let sizes: Vec<usize> = stats.batch_stats().map(|(s, _)| s).collect();
        assert_eq!(sizes, vec![1, 4]);
        assert!(stats.last_inference_ms() > 0);
    }
}
