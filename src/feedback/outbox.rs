//! The predictions of a shared feedback route on their way to the control
//! plane: filled by the index's applier thread (never the request path),
//! emptied in batches by the shipper (`sync::feedback`). Bounded: when the
//! control plane is slow or away, new entries are dropped and counted
//! (`modelgate_feedback_shipped_total{result="dropped"}`); the gateway's own
//! index still holds them.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use super::summary::Prediction;

/// Entries waiting for the shipper: a minute of 1,000 requests/s, 5 MiB.
pub const CAPACITY: usize = 1 << 16;

/// One prediction to ship.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The request id.
    pub id: Box<str>,
    /// The version that answered.
    pub version: u64,
    /// When, Unix milliseconds.
    pub at_unix_ms: i64,
    /// What it predicted.
    pub prediction: Prediction,
}

/// A bounded queue of entries to ship.
#[derive(Debug)]
pub struct Outbox {
    queue: ArrayQueue<Outgoing>,
    dropped: AtomicU64,
    shipped: AtomicU64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::with_capacity(CAPACITY)
    }
}

impl Outbox {
    /// An empty outbox of `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Outbox {
        Outbox { queue: ArrayQueue::new(capacity.max(1)), dropped: AtomicU64::new(0), shipped: AtomicU64::new(0) }
    }

    /// Queues `entry`, or drops and counts it when full.
    pub fn push(&self, entry: Outgoing) {
        if self.queue.push(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes up to `max` entries, oldest first.
    pub fn take(&self, max: usize) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(max.min(self.queue.len()));
        while out.len() < max {
            match self.queue.pop() {
                Some(entry) => out.push(entry),
                None => break,
            }
        }
        out
    }

    /// Gives back entries a failed shipment took (dropped and counted where they no longer fit).
    pub fn give_back(&self, entries: Vec<Outgoing>) {
        for entry in entries {
            self.push(entry);
        }
    }

    /// Counts entries the control plane stored.
    pub fn count_shipped(&self, n: usize) {
        self.shipped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts entries dropped on the way (refused by the control plane).
    pub fn count_dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Entries waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Entries dropped since the route began (the outbox was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Entries the control plane stored since the route began.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(id: &str) -> Outgoing {
        Outgoing { id: id.into(), version: 1, at_unix_ms: 0, prediction: Prediction::Value(1.0) }
    }

    #[test]
    fn a_full_outbox_drops_and_counts_and_takes_in_order() {
        let outbox = Outbox::with_capacity(2);
        for id in ["a", "b", "c"] {
            outbox.push(outgoing(id));
        }
        assert_eq!(outbox.dropped(), 1);
        let taken = outbox.take(10);
        assert_eq!(taken.iter().map(|o| &*o.id).collect::<Vec<_>>(), ["a", "b"]);
        outbox.give_back(taken);
        assert_eq!(outbox.len(), 2);
    }
}
