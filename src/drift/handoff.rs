//! The hand-off from an instance thread to the profiler: [`DriftTap::offer`].
//!
//! It runs on the instance thread after the batch's answers are sent, so it
//! must cost next to nothing and never wait: the batch's tensors are shared
//! (`Bytes` reference counts: the request's own buffers or the assembled
//! batch buffer, and the backend's outputs), never copied, and go through a
//! bounded channel with `try_send`. When the profiler is behind, the batch is
//! dropped and its rows counted in `modelgate_drift_rows_dropped_total`.
//!
//! A queued batch keeps its tensors alive after its requests have answered,
//! so after `server.max_inflight_bytes` has let them go: the queue has a byte
//! bound of its own (`drift.queue_bytes`), held by the batch until the
//! profiler is done with it, and a batch that would go over is dropped the
//! same way. Without it, `drift.queue` large batches could hold gigabytes.
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

use crate::budget::{Held, InflightBytes};

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
    /// Its bytes, held in the queue's byte bound from the offer until the
    /// profiler drops the batch (`None` until offered).
    pub queued: Option<Held>,
}

impl DriftBatch {
    /// The bytes of its tensors (a tensor sliced from a larger buffer keeps
    /// all of that buffer alive: a request body, itself bounded by
    /// `server.max_request_bytes`).
    pub fn tensor_bytes(&self) -> usize {
        let inputs: usize = self.inputs.iter().map(|t| t.data.len()).sum();
        inputs + self.outputs.iter().map(|(_, t)| t.data.len()).sum::<usize>()
    }
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
    /// The queue's byte bound, shared by every tap of the profiler.
    pub(super) queued_bytes: Arc<InflightBytes>,
    pub(super) _alive: Arc<Liveness>,
}

impl DriftTap {
    /// A tap on any channel with a byte bound of `queued_bytes`, for benches
    /// and tests; the gateway's taps come from `Profiler::register`.
    pub fn new(sender: Sender<DriftBatch>, registration: u64, dropped: Counter, queued_bytes: usize) -> DriftTap {
        DriftTap {
            sender,
            registration,
            dropped,
            sampling: Arc::default(),
            queued_bytes: InflightBytes::new(queued_bytes),
            _alive: Arc::default(),
        }
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

    /// Offers a batch; never blocks. A full (or closed) channel, or a batch
    /// past the queue's byte bound, drops it and counts its rows.
    #[inline]
    pub fn offer(&self, mut batch: DriftBatch) {
        batch.queued = self.queued_bytes.try_hold(batch.tensor_bytes());
        let refused = match batch.queued {
            None => Some(batch),
            Some(_) => self.sender.try_send(batch).err().map(TrySendError::into_inner),
        };
        if let Some(batch) = refused {
            self.dropped.increment(batch.rows as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn batch(rows: usize) -> DriftBatch {
        DriftBatch { registration: 7, rows, inputs: Tensors::new(), outputs: Tensors::new(), queued: None }
    }

    /// A batch of `rows` FP32 rows of `features` values, and one output value a row.
    fn batch_of_bytes(rows: usize, features: usize) -> DriftBatch {
        let tensor = |width: usize| SharedTensor {
            dtype: DataType::Fp32,
            shape: Shape::from_slice(&[rows as i64, width as i64]),
            data: Bytes::from(vec![0u8; rows * width * 4]),
        };
        let mut batch = batch(rows);
        batch.inputs.push(tensor(features));
        batch.outputs.push((0, tensor(1)));
        batch
    }

    #[test]
    fn a_full_channel_drops_the_batch_and_never_blocks() {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let tap = DriftTap::new(sender, 7, Counter::from_arc(dropped.clone()), usize::MAX);
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
    fn queued_batches_hold_their_bytes_until_the_profiler_drops_them_and_past_the_bound_are_dropped() {
        let (sender, receiver) = crossbeam_channel::bounded(64);
        let dropped = Arc::new(AtomicU64::new(0));
        // Room for two batches of 10 rows x (64 + 1) floats (2,600 bytes each), not three.
        let tap = DriftTap::new(sender, 7, Counter::from_arc(dropped.clone()), 6_000);
        tap.offer(batch_of_bytes(10, 64));
        tap.offer(batch_of_bytes(10, 64));
        assert_eq!(tap.queued_bytes.held(), 5_200);
        tap.offer(batch_of_bytes(10, 64));
        assert_eq!(dropped.load(Ordering::Relaxed), 10, "the third batch went over the bound");
        assert_eq!(receiver.len(), 2, "though the channel had room");
        // A batch larger than the whole bound is never queued.
        tap.offer(batch_of_bytes(100, 64));
        assert_eq!(dropped.load(Ordering::Relaxed), 110);
        // The profiler drops a batch: its bytes are given back, and the next fits.
        drop(receiver.try_recv().unwrap());
        assert_eq!(tap.queued_bytes.held(), 2_600);
        tap.offer(batch_of_bytes(10, 64));
        assert_eq!((receiver.len(), dropped.load(Ordering::Relaxed)), (2, 110));
        // A batch the channel refuses gives its bytes back at once.
        drop(receiver);
        tap.offer(batch_of_bytes(10, 64));
        assert_eq!((tap.queued_bytes.held(), dropped.load(Ordering::Relaxed)), (5_200, 120));
        // The batches left in the channel give theirs back when the channel goes.
        let bound = tap.queued_bytes.clone();
        drop(tap);
        assert_eq!(bound.held(), 0);
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
