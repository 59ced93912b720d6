//! The door's memory budget: bytes of request data held at once, across every
//! connection, protocol and model.
//!
//! `server.max_request_bytes` bounds one request; this bounds them together.
//! Without it, a thousand large requests at once (or slow uploads that declare
//! a large body) hold a thousand bodies in memory and the process is killed
//! for it. With it, the request that would go over is refused at once with
//! 429 / RESOURCE_EXHAUSTED and every request already admitted runs on.
//!
//! A lock-free counter rather than a semaphore: nothing ever waits for bytes
//! (an over-budget request is refused, not queued), and a semaphore's release
//! takes a lock on every request.

mod count;

use std::sync::Arc;

use crate::error::Error;
use count::ByteCount;

/// What an inference holds while it runs, in multiples of its input tensors'
/// bytes: the inputs, the batch's copy of them, and outputs about as large.
/// A request holds this much from when it is decoded until its response is
/// ready (eight 60 MiB inferences at once otherwise held three times what
/// the budget counted; issue #15's unread-responses attack).
pub const RUN_FACTOR: usize = 3;

/// How many request bytes may be held at once, and how many are.
#[derive(Debug)]
pub struct InflightBytes {
    count: ByteCount,
}

/// Bytes taken from an [`InflightBytes`]; given back when dropped. It owns
/// a handle on the budget, so it can travel with the data it accounts for
/// (into a blocking task that inflates a body, for one).
#[derive(Debug)]
#[must_use = "the bytes are given back as soon as this is dropped"]
pub struct Held {
    budget: Arc<InflightBytes>,
    bytes: usize,
}

/// A response's [`Held`] bytes riding in the response's extensions from a
/// handler that cannot reach the body (tonic's) to the listener, which keeps
/// it with the body until the body is dropped. Clone only because extensions
/// must be; the bytes are given back when the last clone goes.
#[derive(Clone, Debug)]
pub struct HeldUntilWritten {
    _held: Arc<Held>,
}

impl HeldUntilWritten {
    /// Carries `held`.
    pub fn new(held: Held) -> HeldUntilWritten {
        HeldUntilWritten { _held: Arc::new(held) }
    }
}

impl InflightBytes {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<InflightBytes> {
        Arc::new(InflightBytes { count: ByteCount::new(limit) })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.count.held()
    }

    /// Takes `bytes` quietly, or returns `None` if that would go over the
    /// limit: for a holder that drops what does not fit (the drift queue)
    /// rather than refusing a client.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<Held> {
        self.count.take(bytes).then(|| Held { budget: self.clone(), bytes })
    }

    /// Takes `bytes`, or refuses if that would go over the limit.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Held, Error> {
        let mut held = Held { budget: self.clone(), bytes: 0 };
        held.resize(bytes)?;
        Ok(held)
    }

    fn take(&self, bytes: usize) -> Result<(), Error> {
        if self.count.take(bytes) {
            return Ok(());
        }
        crate::metrics::overloaded();
        Err(Error::Overloaded(format!(
            "the server holds too much request data at once (limit {} bytes, server.max_inflight_bytes): retry later",
            self.count.limit()
        )))
    }

    fn give_back(&self, bytes: usize) {
        self.count.give_back(bytes);
    }
}

impl Held {
    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` from now on: gives back what is no longer needed, or
    /// takes more (refused, holding what it held, if that goes over).
    pub fn resize(&mut self, bytes: usize) -> Result<(), Error> {
        if bytes > self.bytes {
            self.budget.take(bytes - self.bytes)?;
        } else {
            self.budget.give_back(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn bytes_are_refused_past_the_limit_and_given_back_on_drop() {
        let budget = InflightBytes::new(100);
        let a = budget.reserve(60).unwrap();
        let refused = budget.reserve(41).unwrap_err();
        assert!(matches!(refused, Error::Overloaded(_)), "{refused}");
        assert_eq!(refused.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(budget.held(), 60, "a refusal holds nothing");
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_reservation_shrinks_and_grows_within_the_limit() {
        let budget = InflightBytes::new(100);
        let mut held = budget.reserve(80).unwrap();
        held.resize(30).unwrap();
        assert_eq!(budget.held(), 30);
        let other = budget.reserve(50).unwrap();
        assert!(held.resize(51).is_err(), "30 + 21 more + 50 is over 100");
        assert_eq!(budget.held(), 80, "a refused growth keeps what it held");
        held.resize(50).unwrap();
        assert_eq!(budget.held(), 100);
        drop((held, other));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_quiet_hold_takes_what_fits_and_nothing_past_the_limit() {
        let budget = InflightBytes::new(100);
        let held = budget.try_hold(70).unwrap();
        assert!(budget.try_hold(31).is_none());
        assert_eq!(budget.held(), 70, "a refusal holds nothing");
        let rest = budget.try_hold(30).unwrap();
        drop((held, rest));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_refused_without_overflow() {
        let budget = InflightBytes::new(100);
        let _held = budget.reserve(10).unwrap();
        assert!(budget.reserve(usize::MAX).is_err());
        assert_eq!(budget.held(), 10);
    }

    #[test]
    fn concurrent_reservations_never_admit_more_than_the_limit() {
        let budget = InflightBytes::new(1000);
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Ok(held) = budget.reserve(300) {
                            let now = admitted.fetch_add(300, Ordering::SeqCst) + 300;
                            assert!(now <= 1000, "{now} bytes admitted at once");
                            admitted.fetch_sub(300, Ordering::SeqCst);
                            drop(held);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.held(), 0);
    }
}
