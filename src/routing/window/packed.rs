//! One counter of a window's slot, tagged with the period it counts, apart
//! from the window so that the loom models (`crates/loom-models`) compile
//! this file as it is, against loom's atomics (see `crate::atomic`).
//!
//! The counter packs the period's epoch in its high 32 bits and the count in
//! its low 32 bits, so "start a new period" and "count one" are a single
//! compare-and-swap: no count is added to a stale period or lost to a reset
//! racing with it. Relaxed ordering is enough: the counter publishes no other
//! memory, and each update is one read-modify-write of it.

use crate::atomic::{AtomicU64, Ordering};

/// A count tagged with the period (epoch) it counts; epoch 0 marks a counter
/// never written.
#[derive(Debug, Default)]
pub struct Packed(AtomicU64);

impl Packed {
    /// Counts one in period `epoch`: starts the counter over at 1 when it
    /// holds another period. The count saturates rather than carry into the
    /// epoch.
    pub fn add(&self, epoch: u32) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = if (current >> 32) as u32 != epoch {
                (u64::from(epoch) << 32) | 1
            } else if current & 0xffff_ffff == 0xffff_ffff {
                // Saturate: a carry would corrupt the epoch.
                return;
            } else {
                current + 1
            };
            match self.0.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The count when it belongs to one of the `periods` periods up to and
    /// including `now`, else 0.
    pub fn read(&self, now: u32, periods: u32) -> u64 {
        let value = self.0.load(Ordering::Relaxed);
        let epoch = (value >> 32) as u32;
        if epoch != 0 && now.wrapping_sub(epoch) < periods { value & 0xffff_ffff } else { 0 }
    }
}

// Not in the loom models' build: this runs on std's atomics, outside a loom model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_full_counter_saturates_instead_of_corrupting_its_epoch() {
        let counter = Packed::default();
        counter.0.store((7u64 << 32) | 0xffff_fffe, Ordering::Relaxed);
        counter.add(7);
        counter.add(7);
        assert_eq!(counter.read(7, 10), 0xffff_ffff);
        counter.add(8);
        assert_eq!(counter.read(8, 10), 1);
    }
}
