//! Hedging of a rollout canary's slow requests on the stable version: a
//! canary request still running `after` its arrival is also sent to the
//! baseline, and the client gets whichever answers first (the gateway runs
//! the race). The canary's run is never cut short: its answer, however late,
//! is recorded against it, so hedging hides slowness from clients and never
//! from the analysis.
//!
//! Hedges draw on their own [`RetryBudget`] (the retries' token bucket, a
//! separate one): every request of the route answered by the version it was
//! routed to earns a share of a hedge, so a canary slow on every request adds
//! at most that share of the route's traffic to the baseline, after a burst.

use std::sync::Arc;
use std::time::Duration;

use super::retry::RetryBudget;

/// A route's hedging of canary requests on its baseline.
#[derive(Clone, Debug)]
pub struct CanaryHedge {
    /// The version whose slow requests are hedged.
    pub canary: u64,
    /// The version that runs the hedges.
    pub baseline: u64,
    /// Time since a request's arrival after which it is hedged.
    pub after: Duration,
    /// Shared by every table built from the same route (weight changes).
    pub budget: Arc<RetryBudget>,
}
