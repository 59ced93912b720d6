//! Dynamic batching: a bounded queue per model version and one OS thread per
//! execution instance.
//!
//! - `queue.rs`: the pure batching rule ([`BatchQueue::next_batch`]).
//! - `assemble.rs`: concatenating inputs and splitting outputs.
//! - `worker.rs`: the instance threads.
//!
//! [`Scheduler::submit`] is the only entry from async code: it takes the queue
//! lock for a push and a notify, and returns a receiver to await.

mod assemble;
mod queue;
pub mod spin;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use modelgate_backend::Backend;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

pub use assemble::{AlignedBuf, BatchedInput, concat, split};
pub use queue::{BatchPolicy, BatchQueue, Closed, Decision, Dropped, Queued};
pub use worker::Reply;

use crate::drift::DriftTap;
use crate::error::Error;
use crate::metrics::VersionMetrics;
use crate::stats::ModelStats;
use crate::tensor::ValidRequest;
use spin::Unanswered;
use worker::{Pending, Shared, State};

/// The queue and instance threads of one model version. Dropping it closes the
/// queue; the threads finish what is queued and exit, dropping their sessions.
#[derive(Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
    instances: usize,
}

impl Scheduler {
    /// Starts one thread per backend instance. With `drift`, every batch that
    /// runs is offered to the drift profiler. An instance whose queue empties
    /// polls for the next request for up to `spin` before it parks (see [`spin`]).
    pub fn start(
        thread_name: &str,
        policy: BatchPolicy,
        spin: Duration,
        backends: Vec<Box<dyn Backend>>,
        stats: Arc<ModelStats>,
        metrics: Arc<VersionMetrics>,
        drift: Option<DriftTap>,
    ) -> std::io::Result<Scheduler> {
        let batched = policy.combine;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { queue: BatchQueue::new(policy), closed: false }),
            available: Condvar::new(),
            batched,
            stats,
            batches: metrics.batch_counters(Closed::ALL.map(Closed::as_str)),
            metrics,
            drift,
            spin,
            queued: AtomicU64::new(0),
            polling: AtomicBool::new(false),
        });
        let scheduler = Scheduler { shared: shared.clone(), instances: backends.len() };
        for (i, backend) in backends.into_iter().enumerate() {
            let shared = shared.clone();
            // Linux keeps 15 bytes of a thread name.
            let name: String =
                format!("{thread_name}-{i}").chars().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            std::thread::Builder::new().name(name).spawn(move || worker::run_instance(shared, backend))?;
        }
        Ok(scheduler)
    }

    /// Number of instances.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// Requests waiting, once those whose clients left or whose deadline
    /// passed are swept out (and answered); the queue-depth gauge is set to
    /// it. Read at scrape time: otherwise the gauge changes only when a
    /// request arrives or a batch starts, and kept counting clients that had
    /// left (issue #15: 62 for 10 s after every client was gone).
    pub fn queue_depth(&self) -> usize {
        let mut dropped = Vec::new();
        let mut state = self.shared.state.lock();
        state.queue.sweep(Instant::now(), &mut dropped);
        let depth = state.queue.len();
        drop(state);
        self.shared.answer_dropped(&mut dropped);
        self.shared.metrics.queue_depth.set(depth as f64);
        depth
    }

    /// Queues a request. A full queue refuses at once (503 / UNAVAILABLE).
    pub fn submit(&self, request: ValidRequest, deadline: Option<Instant>) -> Result<oneshot::Receiver<Reply>, Error> {
        let (reply, receiver) = oneshot::channel();
        let now = Instant::now();
        let pending = Pending { request, enqueued: now, deadline, reply, _unanswered: Unanswered::count() };
        let mut dropped = Vec::new();
        let mut state = self.shared.state.lock();
        if state.closed {
            return Err(Error::Unavailable("the model version is unloading".into()));
        }
        let pushed = state.queue.push(pending, now, &mut dropped);
        let depth = state.queue.len();
        drop(state);
        if pushed.is_ok() {
            // Release: an instance that sees the count move takes the lock and finds the request.
            self.shared.queued.fetch_add(1, Ordering::Release);
        }
        self.shared.answer_dropped(&mut dropped);
        match pushed {
            Ok(()) => {
                self.shared.metrics.queue_depth.set(depth as f64);
                self.shared.available.notify_one();
                Ok(receiver)
            }
            Err(_) => {
                self.shared.metrics.queue_rejection("full");
                Err(Error::Unavailable(format!("exceeds maximum queue size of {depth} requests")))
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.available.notify_all();
    }
}
