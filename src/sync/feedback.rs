//! Shared feedback routes (`feedback.shared`) and the control plane: the
//! shipper that empties each route's outbox in batches (`POST
//! /cp/v1/feedback/entries`, off the request path), and the lookups and
//! claims feedback makes (`feedback::Fleet`) over the follower's client.
//!
//! A control plane that is away costs nothing but the entries the outboxes
//! cannot hold (dropped and counted); the shipper backs off like the poller.

use std::sync::Arc;
use std::time::Duration;

use modelgate_registry::feedback::{Answers, Claim, Claims, Entries, Entry, Found, Lookup};

use super::Backoff;
use super::client::{CallError, ControlPlane};
use crate::feedback::fleet::{Fleet, FleetError, FleetFuture, to_shared};
use crate::feedback::{Feedback, Outbox};
use crate::gateway::Gateway;

/// How often the outboxes are emptied: a prediction reaches the other replicas within about this.
const SHIP_EVERY: Duration = Duration::from_millis(250);
/// Entries one POST carries at most.
const SHIP_BATCH: usize = 5_000;

/// The follower's client, as feedback's [`Fleet`].
#[derive(Debug)]
struct SharedFeedback {
    control_plane: ControlPlane,
    gateway: String,
}

impl Fleet for SharedFeedback {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn lookup<'a>(&'a self, model: &'a str, ids: Vec<String>) -> FleetFuture<'a, Vec<Found>> {
        Box::pin(async move {
            let body = Lookup { model: model.to_owned(), ids };
            let answers: Answers = self.control_plane.feedback("lookup", &body).await.map_err(fleet_error)?;
            Ok(answers.results)
        })
    }

    fn claim<'a>(&'a self, model: &'a str, claims: Vec<Claim>) -> FleetFuture<'a, Vec<Found>> {
        Box::pin(async move {
            let body = Claims { model: model.to_owned(), gateway: self.gateway.clone(), claims };
            let answers: Answers = self.control_plane.feedback("claims", &body).await.map_err(fleet_error)?;
            Ok(answers.results)
        })
    }
}

fn fleet_error(error: CallError) -> FleetError {
    FleetError(error.to_string())
}

/// The running shipper; it stops when this is dropped.
#[derive(Debug)]
pub struct Shipper(tokio::task::JoinHandle<()>);

impl Drop for Shipper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects the gateway's feedback to `control_plane` under gateway id `id`,
/// and starts the shipper.
pub fn start(gateway: &Arc<Gateway>, control_plane: ControlPlane, id: String) -> Shipper {
    gateway.fleet.connect(Arc::new(SharedFeedback { control_plane: control_plane.clone(), gateway: id }));
    Shipper(tokio::spawn(ship_forever(gateway.clone(), control_plane)))
}

async fn ship_forever(gateway: Arc<Gateway>, control_plane: ControlPlane) {
    let mut tick = tokio::time::interval(SHIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::default();
    loop {
        tick.tick().await;
        if let Err(error) = ship_once(&gateway, &control_plane).await {
            let pause = backoff.next();
            tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64,
                "feedback entries not shipped; kept (up to the outbox's bound) for the next try");
            tokio::time::sleep(pause).await;
        } else {
            backoff = Backoff::default();
        }
    }
}

/// Empties every shared route's outbox; stops at the first failure to reach the control plane.
async fn ship_once(gateway: &Gateway, control_plane: &ControlPlane) -> Result<(), CallError> {
    let routes = gateway.routes.snapshot();
    for route in routes.routes.values() {
        let Some(feedback) = &route.feedback else { continue };
        let Some(outbox) = feedback.outbox() else { continue };
        while ship_batch(feedback, outbox, control_plane).await? == SHIP_BATCH {}
    }
    Ok(())
}

/// Ships one batch of `outbox`; returns how many entries it took.
async fn ship_batch(feedback: &Feedback, outbox: &Outbox, control_plane: &ControlPlane) -> Result<usize, CallError> {
    let batch = outbox.take(SHIP_BATCH);
    if batch.is_empty() {
        return Ok(0);
    }
    let ttl_ms = i64::try_from(feedback.settings().ttl.as_millis()).unwrap_or(i64::MAX);
    let entries = batch
        .iter()
        .map(|o| Entry {
            model: feedback.model().to_owned(),
            id: o.id.to_string(),
            version: o.version,
            at_ms: o.at_unix_ms,
            ttl_ms,
            prediction: to_shared(o.prediction),
        })
        .collect();
    let taken = batch.len();
    match control_plane.feedback::<_, serde_json::Value>("entries", &Entries { entries }).await {
        Ok(_) => {
            outbox.count_shipped(taken);
            Ok(taken)
        }
        // Refused as malformed (a model name the control plane does not take): sending the
        // same entries again would be refused again.
        Err(CallError::Refused { status, message }) if status.is_client_error() => {
            tracing::error!(model = feedback.model(), %status, %message, entries = taken, "feedback entries refused by the control plane; dropped");
            outbox.count_dropped(taken);
            Ok(taken)
        }
        Err(error) => {
            outbox.give_back(batch);
            Err(error)
        }
    }
}
