//! Retries of a rollout canary's server faults on the stable version, and
//! the budget that bounds the extra load they put on it (hedges, in
//! `hedge.rs`, have a bucket of the same kind).
//!
//! The budget is a token bucket in thousandths of a retry: every request of
//! the route that the version it was routed to answered (the baseline's or
//! the canary's, not a retry or a hedge) adds `retry_budget_percent` of a
//! retry, and each retry takes one whole. So retries add at most that share
//! of the route's traffic to the baseline, which is the load it carried alone
//! before the rollout, at every step, the last one included. It starts full
//! with a burst of [`RETRY_BURST`] retries, so the first faults of a canary
//! that is bad from its first request are answered too, and never holds
//! more. A retry that the baseline fails empties it: when the baseline is
//! failing itself, retries stop until the route's answers earn them again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Retries the bucket holds at most (and at start).
pub const RETRY_BURST: i64 = 20;
/// Bucket units per retry.
const ONE: i64 = 1000;

/// The token bucket of one route's retries.
#[derive(Debug)]
pub struct RetryBudget {
    per_success: i64,
    balance: AtomicI64,
}

impl RetryBudget {
    /// A full bucket that earns `fraction` of a retry per baseline success.
    pub fn new(fraction: f64) -> RetryBudget {
        let per_success = ((fraction * ONE as f64).round() as i64).clamp(1, ONE);
        RetryBudget { per_success, balance: AtomicI64::new(RETRY_BURST * ONE) }
    }

    /// Earns from one request the baseline answered. A full bucket (the usual
    /// case) costs one relaxed load and no write.
    #[inline]
    pub fn earn(&self) {
        let cap = RETRY_BURST * ONE;
        if self.balance.load(Ordering::Relaxed) < cap {
            let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < cap).then(|| (b + self.per_success).min(cap))
            });
        }
    }

    /// Spends everything: the baseline failed a retry.
    pub fn empty(&self) {
        self.balance.store(0, Ordering::Relaxed);
    }

    /// Takes one retry; false when the bucket holds less than one.
    pub fn spend(&self) -> bool {
        self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= ONE).then(|| b - ONE)).is_ok()
    }
}

/// A route's retry of canary faults on its baseline.
#[derive(Clone, Debug)]
pub struct CanaryRetry {
    /// The version whose faults are retried.
    pub canary: u64,
    /// The version that answers them.
    pub baseline: u64,
    /// Shared by every table built from the same route (weight changes).
    pub budget: Arc<RetryBudget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_a_share_of_baseline_successes() {
        let budget = RetryBudget::new(0.1);
        assert_eq!((0..100).filter(|_| budget.spend()).count(), RETRY_BURST as usize);
        // Ten baseline answers earn one retry.
        for _ in 0..9 {
            budget.earn();
        }
        assert!(!budget.spend());
        budget.earn();
        assert!(budget.spend());
        assert!(!budget.spend());
        // It never holds more than the burst.
        for _ in 0..10_000 {
            budget.earn();
        }
        assert_eq!((0..100).filter(|_| budget.spend()).count(), RETRY_BURST as usize);
    }
}
