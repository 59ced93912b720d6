//! The budget's lock-free count of bytes held, apart from the errors and
//! metrics around it so that the loom models (`crates/loom-models`) compile
//! this file as it is, against loom's atomics (see `crate::atomic`).
//!
//! Relaxed ordering is enough: the count publishes no other memory, and the
//! limit is kept by the read-modify-write itself (every take and give-back is
//! one atomic operation on the one counter, in one total order).

use crate::atomic::{AtomicUsize, Ordering};

/// Bytes held, never more than `limit` of them.
#[derive(Debug)]
pub struct ByteCount {
    held: AtomicUsize,
    limit: usize,
}

impl ByteCount {
    /// Nothing held, of at most `limit` bytes.
    pub fn new(limit: usize) -> ByteCount {
        ByteCount { held: AtomicUsize::new(0), limit }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` and returns true, or returns false, taking nothing, if
    /// that would go over the limit.
    pub fn take(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        // Compare-and-swap rather than add-then-undo: a refused request never
        // shows in the count, so it cannot make a concurrent one look over.
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken before.
    pub fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}
