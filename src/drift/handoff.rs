//! The hand-off from an instance thread to the profiler: [`DriftTap::offer`].
//!
//! It runs on the instance thread after the batch's answers are sent, so it
//! must cost next to nothing and never wait: the batch's tensors are shared
//! (`Bytes` reference counts: the request's own buffers or the assembled
//! batch buffer, and the backend's outputs), never copied, and go through a
//! bounded channel with `try_send`. When the profiler is behind, the batch is
//! dropped and its rows counted in `modelgate_drift_rows_dropped_total`.
//!
//! Above `drift.max_rows_per_second` a version offers one batch in n
//! ([`Sampling`]): the profiler's cost stays bounded whatever the traffic, and
//! a batch left out costs its instance thread two atomic operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use metrics::Counter;
use modelgate_backend::{DataType, OutputTensor};
use smallvec::SmallVec;

/// A shape of up to four dimensions held inline: sharing a tensor with the
/// profiler allocates nothing for it (and frees nothing on its thread).
pub type Shape = SmallVec<[i64; 4]>;

/// One input or output of a batch as the backend saw it, shared with the profiler.
#[derive(Clone, Debug)]
pub struct SharedTensor {
    /// Element type.
    pub dtype: DataType,
    /// Shape, batch dimension first when the model batches.
    pub shape: Shape,
    /// The bytes (row-major, little-endian; BYTES length-prefixed).
    pub data: Bytes,
}

impl SharedTensor {
    /// A backend output, shared: a reference count on its bytes.
    pub fn of_output(output: &OutputTensor) -> SharedTensor {
        SharedTensor { dtype: output.dtype, shape: Shape::from_slice(&output.shape), data: output.data.clone() }
    }
}

/// Inputs or outputs of a batch. Most models have one or two of each: held
/// inline, they cost the hand-off no allocation.
pub type Tensors<T> = SmallVec<[T; 2]>;

/// A batch that ran, offered to the profiler.
#[derive(Debug)]
pub struct DriftBatch {
    /// Which registration (model version) it belongs to.
    pub registration: u64,
    /// Rows in the batch.
    pub rows: usize,
    /// Every input, in the model's order.
    pub inputs: Tensors<SharedTensor>,
    /// The outputs the batch's requests asked for, by index in the model's order.
    pub outputs: Tensors<(usize, SharedTensor)>,
}

/// Kept alive by a version's [`DriftTap`]: when the version is gone (its
/// scheduler and instance threads dropped), the profiler sees the weak side
/// fail and retires the version once its windows are out.
#[derive(Debug, Default)]
pub struct Liveness;

/// Which of a version's batches its instance threads offer: every one, or one
/// in `every`. The profiler thread sets `every` once a second from the rows the
/// version executed; the tap reads it per batch.
#[derive(Debug)]
pub struct Sampling {
    every: AtomicU32,
    /// Batches seen while sampling.
    seen: AtomicU32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { every: AtomicU32::new(1), seen: AtomicU32::new(0) }
    }
}

impl Sampling {
    /// Whether the next batch is offered. Below the cap this is one relaxed load.
    #[inline]
    pub fn takes_next(&self) -> bool {
        let every = self.every.load(Ordering::Relaxed);
        every <= 1 || self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
    }

    /// One batch in how many is offered (1: all).
    pub fn every(&self) -> u32 {
        self.every.load(Ordering::Relaxed)
    }

    /// Offers one batch in `every` (at least 1) from now on.
    pub fn set_every(&self, every: u32) {
        self.every.store(every.max(1), Ordering::Relaxed);
    }
}

/// One model version's end of the profiler's channel, held by its instance threads.
#[derive(Debug)]
pub struct DriftTap {
    pub(super) sender: Sender<DriftBatch>,
    pub(super) registration: u64,
    pub(super) dropped: Counter,
    pub(super) sampling: Arc<Sampling>,
    pub(super) _alive: Arc<Liveness>,
}

impl DriftTap {
    /// A tap on any channel, for benches and tests; the gateway's taps come
    /// from `Profiler::register`.
    pub fn new(sender: Sender<DriftBatch>, registration: u64, dropped: Counter) -> DriftTap {
        DriftTap { sender, registration, dropped, sampling: Arc::default(), _alive: Arc::default() }
    }

    /// Which of this version's batches are offered (the profiler steers it):
    /// asked before a batch is built, so a batch left out costs nothing more.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The registration id batches of this version carry.
    pub fn registration(&self) -> u64 {
        self.registration
    }

    /// Offers a batch; never blocks. A full (or closed) channel drops it and
    /// counts its rows.
    #[inline]
    pub fn offer(&self, batch: DriftBatch) {
        match self.sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                self.dropped.increment(batch.rows as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn batch(rows: usize) -> DriftBatch {
        DriftBatch { registration: 7, rows, inputs: Tensors::new(), outputs: Tensors::new() }
    }

    #[test]
    fn a_full_channel_drops_the_batch_and_never_blocks() {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let tap = DriftTap::new(sender, 7, Counter::from_arc(dropped.clone()));
        tap.offer(batch(3));
        // Full: returns at once, the batch is gone and its rows counted.
        tap.offer(batch(5));
        tap.offer(batch(2));
        assert_eq!(dropped.load(Ordering::Relaxed), 7);
        assert_eq!(receiver.len(), 1);
        assert_eq!(receiver.try_recv().map(|b| b.rows).ok(), Some(3));

        // A profiler that has stopped counts the same way.
        drop(receiver);
        tap.offer(batch(4));
        assert_eq!(dropped.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn a_sampling_tap_takes_one_batch_in_every_and_all_of_them_at_one() {
        let sampling = Sampling::default();
        assert!((0..100).all(|_| sampling.takes_next()));
        sampling.set_every(4);
        let taken: Vec<bool> = (0..12).map(|_| sampling.takes_next()).collect();
        assert_eq!(taken.iter().filter(|&&t| t).count(), 3);
        assert_eq!(&taken[..4], &[true, false, false, false]);
        sampling.set_every(0);
        assert_eq!(sampling.every(), 1);
        assert!((0..10).all(|_| sampling.takes_next()));
    }
}
