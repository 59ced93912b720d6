//! Instance threads: each owns one backend session, takes a batch from the
//! shared queue whenever it is free, runs it, and answers every request.
//!
//! Why threads and a condition variable rather than a batcher task: a free
//! instance forms its own batch under the queue lock, so a request goes from
//! the async handler to the model with one wake-up, and no instance sits idle
//! while requests wait past their delay (work-conserving by construction).
//! The lock is held only to push or to pick a batch, never while a model runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Counter;
use modelgate_backend::{Backend, InputTensor, OutputTensor};
use parking_lot::{Condvar, Mutex, MutexGuard};
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::assemble::{concat, split};
use super::queue::{BatchQueue, Closed, Decision, Dropped, Queued};
use super::spin::{self, Unanswered};
use crate::drift::{DriftBatch, DriftTap, SharedTensor};
use crate::error::Error;
use crate::metrics::VersionMetrics;
use crate::stats::{ComputeTimes, ModelStats};
use crate::tensor::ValidRequest;

/// What a request gets back: its outputs, in the order it asked for them.
pub type Reply = Result<Vec<OutputTensor>, Error>;

/// A request waiting in the queue.
#[derive(Debug)]
pub struct Pending {
    pub(super) request: ValidRequest,
    pub(super) enqueued: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) reply: oneshot::Sender<Reply>,
    /// Counted until this request is answered or dropped (see `spin`).
    pub(super) _unanswered: Unanswered,
}

impl Queued for Pending {
    fn rows(&self) -> usize {
        self.request.batch_size
    }
    fn enqueued(&self) -> Instant {
        self.enqueued
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
    fn batches_with(&self, other: &Self) -> bool {
        self.request.batches_with(&other.request)
    }
}

/// Queue state guarded by the lock.
#[derive(Debug)]
pub(super) struct State {
    pub(super) queue: BatchQueue<Pending>,
    pub(super) closed: bool,
}

/// What the instances of one version share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) available: Condvar,
    pub(super) batched: bool,
    pub(super) stats: Arc<ModelStats>,
    pub(super) metrics: Arc<VersionMetrics>,
    /// Batches run, by why each closed (indexed by `Closed as usize`).
    pub(super) batches: [Counter; Closed::ALL.len()],
    /// The drift profiler's hand-off, when `[drift]` is on.
    pub(super) drift: Option<DriftTap>,
    /// How long an instance whose queue emptied polls for the next request
    /// before it parks (see `spin`); zero: it parks at once.
    pub(super) spin: Duration,
    /// Requests queued so far: the polling instance watches it without the lock.
    pub(super) queued: AtomicU64,
    /// Set while an instance polls: the others park at once.
    pub(super) polling: AtomicBool,
}

impl Shared {
    /// An instance whose queue is empty, called without the lock: unless
    /// another instance already does, polls for a request queued after the
    /// `seen`-th for up to `spin`. True if one was.
    fn await_request(&self, seen: u64) -> bool {
        if self.spin.is_zero() || self.polling.swap(true, Ordering::Acquire) {
            return false;
        }
        let arrived = spin::poll_until(self.spin, || self.queued.load(Ordering::Acquire) != seen);
        self.polling.store(false, Ordering::Release);
        arrived
    }

    /// Answers requests that left the queue without running.
    pub(super) fn answer_dropped(&self, dropped: &mut Vec<(Pending, Dropped)>) {
        for (pending, why) in dropped.drain(..) {
            match why {
                Dropped::Expired => {
                    self.metrics.queue_rejection("expired");
                    let waited = pending.enqueued.elapsed();
                    let _ = pending.reply.send(Err(Error::DeadlineExceeded(format!(
                        "request timeout expired after {} µs in the queue",
                        waited.as_micros()
                    ))));
                }
                Dropped::Cancelled => self.metrics.queue_rejection("cancelled"),
            }
        }
    }
}

/// The loop of one instance thread. Returns when the scheduler is closed and
/// the queue is empty; the backend is dropped on this thread.
pub(super) fn run_instance(shared: Arc<Shared>, mut backend: Box<dyn Backend>) {
    let mut dropped = Vec::new();
    loop {
        let (batch, closed) = {
            let mut state = shared.state.lock();
            loop {
                let decision = state.queue.next_batch(Instant::now(), &mut dropped);
                if !dropped.is_empty() {
                    shared.answer_dropped(&mut dropped);
                }
                match decision {
                    Decision::Run(batch, closed) => {
                        shared.metrics.queue_depth.set(state.queue.len() as f64);
                        // Another free instance can start on what is left while this one runs.
                        if !state.queue.is_empty() {
                            shared.available.notify_one();
                        }
                        break (batch, closed);
                    }
                    Decision::WaitUntil(at) => {
                        shared.available.wait_until(&mut state, at);
                    }
                    Decision::Idle if state.closed => return,
                    Decision::Idle => {
                        // The queue just emptied: the next request often comes
                        // within microseconds, sooner than a parked thread wakes.
                        let seen = shared.queued.load(Ordering::Acquire);
                        let arrived = MutexGuard::unlocked(&mut state, || shared.await_request(seen));
                        if !arrived && state.queue.is_empty() && !state.closed {
                            shared.available.wait(&mut state);
                        }
                    }
                }
            }
        };
        run_batch(&shared, backend.as_mut(), batch, closed);
    }
}

fn run_batch(shared: &Shared, backend: &mut dyn Backend, batch: Vec<Pending>, closed: Closed) {
    let started = Instant::now();
    for pending in &batch {
        let waited = started.saturating_duration_since(pending.enqueued);
        shared.stats.queue.add(1, waited);
        shared.metrics.queue_duration.record(waited.as_secs_f64());
    }
    shared.batches[closed as usize].increment(1);
    match execute(shared, backend, &batch) {
        Ok((outputs, profiled)) => {
            for (pending, outputs) in batch.into_iter().zip(outputs) {
                let _ = pending.reply.send(Ok(outputs));
            }
            // After the answers: the profiler never delays a client.
            if let (Some(tap), Some(profiled)) = (&shared.drift, profiled) {
                tap.offer(profiled);
            }
        }
        // A batch-mate may be the cause (e.g. a string the runtime refuses):
        // run each request alone so only the culprit fails.
        Err(_) if batch.len() > 1 => {
            for pending in batch {
                let reply = execute(shared, backend, std::slice::from_ref(&pending))
                    .map(|(mut per_request, _)| per_request.pop().unwrap_or_default());
                let _ = pending.reply.send(reply);
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Per request, the outputs it asked for; and the batch for the drift
/// profiler when it is on.
type Executed = (Vec<Vec<OutputTensor>>, Option<DriftBatch>);

/// Runs one batch and returns, per request, the outputs it asked for.
fn execute(shared: &Shared, backend: &mut dyn Backend, batch: &[Pending]) -> Result<Executed, Error> {
    let t0 = Instant::now();
    // Small vectors: a batch's bookkeeping stays off the heap for the usual
    // few outputs and requests (issue #16: allocations on the request path).
    let mut wanted: SmallVec<[usize; 4]> = batch.iter().flat_map(|p| p.request.outputs.iter().copied()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let rows: SmallVec<[usize; 8]> = batch.iter().map(|p| p.request.batch_size).collect();
    let total_rows: usize = rows.iter().sum();

    let inputs: SmallVec<[&[crate::tensor::Tensor]; 8]> = batch.iter().map(|p| p.request.inputs.as_slice()).collect();
    let input_count = inputs[0].len();
    let assembled: SmallVec<[_; 4]> = (0..input_count).map(|i| concat(&inputs, i, shared.batched)).collect();
    let views: SmallVec<[InputTensor<'_>; 4]> = assembled.iter().map(|b| b.view()).collect();

    let t1 = Instant::now();
    let outputs = match catch_unwind(AssertUnwindSafe(|| backend.execute(&views, &wanted))) {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(Error::Internal("the model backend panicked while running a batch".into()));
        }
    };
    let t2 = Instant::now();
    // The views borrow `assembled`, which the profiler may take below.
    drop(views);
    if outputs.len() != wanted.len() {
        return Err(Error::Internal(format!(
            "backend returned {} outputs for {} requested",
            outputs.len(),
            wanted.len()
        )));
    }
    // Shared, not copied: reference counts on the buffers the backend saw and produced.
    let profiled = shared.drift.as_ref().filter(|tap| tap.sampling().takes_next()).map(|tap| DriftBatch {
        registration: tap.registration(),
        rows: total_rows,
        inputs: assembled.into_iter().map(|input| input.into_shared()).collect(),
        outputs: wanted.iter().copied().zip(outputs.iter().map(SharedTensor::of_output)).collect(),
        queued: None,
    });
    // Per wanted output, its parts in request order.
    let mut parts: SmallVec<[std::vec::IntoIter<OutputTensor>; 4]> = SmallVec::with_capacity(outputs.len());
    for (output, &index) in outputs.into_iter().zip(&wanted) {
        parts.push(split(output, &rows, index)?.into_iter());
    }
    let mut replies = Vec::with_capacity(batch.len());
    for pending in batch {
        // This request's part of every wanted output, by position in `wanted`;
        // the parts it did not ask for are dropped here.
        let mut mine: SmallVec<[Option<OutputTensor>; 4]> = parts.iter_mut().map(|outputs| outputs.next()).collect();
        let reply = pending
            .request
            .outputs
            .iter()
            .map(|index| {
                let at = wanted.binary_search(index).expect("wanted holds every requested output");
                mine[at].take().ok_or_else(|| Error::Internal("output taken twice".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        replies.push(reply);
    }
    let t3 = Instant::now();

    let times = ComputeTimes { input: t1 - t0, infer: t2 - t1, output: t3 - t2 };
    shared.stats.record_execution(batch.len(), total_rows, times);
    shared.metrics.compute_duration.record(times.infer.as_secs_f64());
    shared.metrics.batch_size.record(total_rows as f64);
    Ok((replies, profiled))
}

#[cfg(test)]
mod tests;
