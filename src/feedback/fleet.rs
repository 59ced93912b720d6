//! The other replicas, as feedback sees them: the control plane that holds
//! the predictions shared routes ship (`/cp/v1/feedback/*`). Feedback whose id
//! this gateway does not hold is looked up there, and a truth is accepted
//! only once the control plane lets this gateway claim the entry, so a second
//! truth is refused at any replica.
//!
//! The client itself lives with the rest of the control plane's API
//! (`sync::feedback`), which connects it to the gateway's [`FleetLink`]. Every
//! call is bounded by [`CALL_TIMEOUT`]; after a failure the link stays down
//! for [`DOWN_PAUSE`], so a control plane that is away costs feedback one
//! timeout, not one per request: joins are then local only.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub use modelgate_registry::feedback::{Claim, Found, State};

use super::summary::Prediction;

/// Longest wait for one call to the control plane.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the link stays down after a failed call.
pub const DOWN_PAUSE: Duration = Duration::from_secs(5);

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

/// A call in flight.
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FleetError>> + Send + 'a>>;

/// What feedback asks of the control plane.
pub trait Fleet: Send + Sync + std::fmt::Debug {
    /// This gateway's id (claims are recorded under it).
    fn gateway(&self) -> &str;
    /// Where each of `ids` of `model` stands, unchanged.
    fn lookup<'a>(&'a self, model: &'a str, ids: Vec<String>) -> FleetFuture<'a, Vec<Found>>;
    /// Claims each entry for this gateway.
    fn claim<'a>(&'a self, model: &'a str, claims: Vec<Claim>) -> FleetFuture<'a, Vec<Found>>;
}

/// The gateway's link to the control plane for feedback: empty until a
/// follower connects it (a gateway that follows none joins locally only).
#[derive(Clone, Debug, Default)]
pub struct FleetLink {
    fleet: Arc<OnceLock<Arc<dyn Fleet>>>,
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl FleetLink {
    /// Calls go to `fleet` from now on; a second call keeps the first.
    pub fn connect(&self, fleet: Arc<dyn Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// The control plane, unless none is connected or the last call failed
    /// less than [`DOWN_PAUSE`] ago.
    pub fn available(&self) -> Option<&Arc<dyn Fleet>> {
        let fleet = self.fleet.get()?;
        match *self.down_until.lock() {
            Some(until) if Instant::now() < until => None,
            _ => Some(fleet),
        }
    }

    /// Runs `call` within [`CALL_TIMEOUT`]; a failure takes the link down for [`DOWN_PAUSE`].
    pub async fn call<T>(&self, call: FleetFuture<'_, T>) -> Result<T, FleetError> {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(FleetError(format!("no answer within {}s", CALL_TIMEOUT.as_secs()))),
        };
        match &result {
            Ok(_) => *self.down_until.lock() = None,
            Err(error) => {
                tracing::warn!(%error, pause_s = DOWN_PAUSE.as_secs(), "feedback: the control plane did not answer; joining locally only for a while");
                crate::metrics::feedback_fleet_failure();
                *self.down_until.lock() = Some(Instant::now() + DOWN_PAUSE);
            }
        }
        result
    }
}

/// A prediction as the control plane's API carries it.
pub fn to_shared(prediction: Prediction) -> modelgate_registry::feedback::Prediction {
    use modelgate_registry::feedback::Prediction as Shared;
    match prediction {
        Prediction::Class { class, classes, score } => {
            Shared::Class { class, classes, score: score.is_finite().then_some(score) }
        }
        Prediction::Value(value) => Shared::Value { value },
    }
}

/// A prediction from the control plane's API.
pub fn from_shared(prediction: modelgate_registry::feedback::Prediction) -> Prediction {
    use modelgate_registry::feedback::Prediction as Shared;
    match prediction {
        Shared::Class { class, classes, score } => {
            Prediction::Class { class, classes, score: score.unwrap_or(f32::NAN) }
        }
        Shared::Value { value } => Prediction::Value(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Down;

    impl Fleet for Down {
        fn gateway(&self) -> &str {
            "gw"
        }
        fn lookup<'a>(&'a self, _: &'a str, _: Vec<String>) -> FleetFuture<'a, Vec<Found>> {
            Box::pin(std::future::pending())
        }
        fn claim<'a>(&'a self, _: &'a str, _: Vec<Claim>) -> FleetFuture<'a, Vec<Found>> {
            Box::pin(async { Err(FleetError("refused".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_control_plane_costs_one_timeout_then_the_link_rests() {
        let link = FleetLink::default();
        assert!(link.available().is_none(), "nothing connected");
        link.connect(Arc::new(Down));
        let fleet = link.available().unwrap().clone();
        let started = Instant::now();
        assert!(link.call(fleet.lookup("m", vec!["a".into()])).await.is_err());
        assert_eq!(started.elapsed(), CALL_TIMEOUT);
        assert!(link.available().is_none(), "down after a failure");
        tokio::time::advance(DOWN_PAUSE).await;
        assert!(link.available().is_some(), "tried again after the pause");
    }

    #[test]
    fn predictions_cross_the_wire_unchanged_save_a_nan_score() {
        let class = Prediction::Class { class: 2, classes: 3, score: 0.5 };
        assert_eq!(from_shared(to_shared(class)), class);
        assert_eq!(from_shared(to_shared(Prediction::Value(1.5))), Prediction::Value(1.5));
        let nan = to_shared(Prediction::Class { class: 0, classes: 3, score: f32::NAN });
        assert_eq!(nan, modelgate_registry::feedback::Prediction::Class { class: 0, classes: 3, score: None });
    }
}
