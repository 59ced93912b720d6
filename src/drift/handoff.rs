//! The hand-off from an instance thread to the profiler: [`DriftTap::offer`].
//!
//! It runs on the instance thread after the batch's answers are sent, so it
//! must cost next to nothing and never wait: the batch's tensors are shared
//! (`Bytes` reference counts: the request's own buffers or the assembled
//! batch buffer, and the backend's outputs), never copied, and go through a
//! bounded channel with `try_send`. When the profiler is behind, the batch is
//! dropped and its rows counted in `modelgate_drift_rows_dropped_total`.

use std::sync::Arc;

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

/// One model version's end of the profiler's channel, held by its instance threads.
#[derive(Debug)]
pub struct DriftTap {
    pub(super) sender: Sender<DriftBatch>,
    pub(super) registration: u64,
    pub(super) dropped: Counter,
    pub(super) _alive: Arc<Liveness>,
}

impl DriftTap {
    /// A tap on any channel, for benches and tests; the gateway's taps come
    /// from `Profiler::register`.
    pub fn new(sender: Sender<DriftBatch>, registration: u64, dropped: Counter) -> DriftTap {
        DriftTap { sender, registration, dropped, _alive: Arc::default() }
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
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn batch(rows: usize) -> DriftBatch {
        DriftBatch { registration: 7, rows, inputs: Tensors::new(), outputs: Tensors::new() }
    }

    #[test]
    fn a_full_channel_drops_the_batch_and_never_blocks() {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let tap =
            DriftTap { sender, registration: 7, dropped: Counter::from_arc(dropped.clone()), _alive: Arc::default() };
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
}
