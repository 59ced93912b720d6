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

/// The three compute phases (assembling inputs, running the model, splitting
/// outputs) of a set of executions: one count for the three. Triton's three
/// counts are always equal, and perf_analyzer stops ("Server side
/// statistics compute counts must be the same") when a read taken while a
/// batch records its three separately finds them apart.
#[derive(Debug, Default)]
pub struct ComputeStats {
    count: AtomicU64,
    input_ns: AtomicU64,
    infer_ns: AtomicU64,
    output_ns: AtomicU64,
}

/// One read of [`ComputeStats`]: `(count, ns)` of each phase, one count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputeRead {
    /// Assembling inputs.
    pub input: (u64, u64),
    /// Running the model.
    pub infer: (u64, u64),
    /// Splitting outputs.
    pub output: (u64, u64),
}

impl ComputeStats {
    /// Adds `n` events whose phases took `total` together.
    pub fn add(&self, n: u64, total: ComputeTimes) {
        self.input_ns.fetch_add(total.input.as_nanos() as u64, Relaxed);
        self.infer_ns.fetch_add(total.infer.as_nanos() as u64, Relaxed);
        self.output_ns.fetch_add(total.output.as_nanos() as u64, Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    /// Events so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The three phases, with the count read once.
    pub fn get(&self) -> ComputeRead {
        let count = self.count();
        ComputeRead {
            input: (count, self.input_ns.load(Relaxed)),
            infer: (count, self.infer_ns.load(Relaxed)),
            output: (count, self.output_ns.load(Relaxed)),
        }
    }
}

/// Compute durations of the executions of one batch size.
#[derive(Debug, Default)]
pub struct BatchSizeStats {
    /// Per execution of this size.
    pub compute: ComputeStats,
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
    /// Per request: assembling its batch's inputs, running it, splitting its outputs.
    pub compute: ComputeStats,
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
            compute: ComputeStats::default(),
            batch: (0..=max_rows.max(1)).map(|_| BatchSizeStats::default()).collect(),
        }
    }

    /// Records one execution of `requests` requests totalling `rows` rows.
    pub fn record_execution(&self, requests: usize, rows: usize, times: ComputeTimes) {
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(rows as u64, Relaxed);
        let n = requests as u32;
        let per_request = ComputeTimes { input: times.input * n, infer: times.infer * n, output: times.output * n };
        self.compute.add(requests as u64, per_request);
        if let Some(b) = self.batch.get(rows) {
            b.compute.add(1, times);
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
        self.batch.iter().enumerate().skip(1).filter(|(_, b)| b.compute.count() > 0)
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
        let compute = stats.compute.get();
        assert_eq!((compute.input, compute.infer, compute.output), ((4, 40), (4, 400), (4, 20)));
        let sizes: Vec<usize> = stats.batch_stats().map(|(s, _)| s).collect();
        assert_eq!(sizes, vec![1, 4]);
        assert!(stats.last_inference_ms() > 0);
    }

    #[test]
    fn a_read_while_batches_record_finds_the_three_compute_counts_equal() {
        let stats = std::sync::Arc::new(ModelStats::new(8));
        let t = ComputeTimes {
            input: Duration::from_nanos(1),
            infer: Duration::from_nanos(2),
            output: Duration::from_nanos(3),
        };
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stats, done) = (stats.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    stats.record_execution(2, 2, t);
                }
            })
        };
        // perf_analyzer stops at the first read whose counts differ.
        for _ in 0..200_000 {
            let read = stats.compute.get();
            assert!(read.input.0 == read.infer.0 && read.infer.0 == read.output.0, "{read:?}");
            let (_, batch) = stats.batch_stats().next().unwrap_or((0, &stats.batch[2]));
            let read = batch.compute.get();
            assert!(read.input.0 == read.infer.0 && read.infer.0 == read.output.0, "{read:?}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }
}
