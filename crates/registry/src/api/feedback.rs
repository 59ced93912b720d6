//! `/cp/v1/feedback/*`: gateways ship the predictions of shared feedback routes
//! (`entries`), look up those they do not hold (`lookup`) and claim an entry
//! when they accept its truth (`claims`). See [`crate::feedback`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::{ApiError, JsonBody};
use crate::Registry;
use crate::error::RegistryError;
use crate::feedback::{Answers, Claims, Entries, Lookup, check_batch, check_id};
use crate::name::Name;

type Shared = State<Arc<Registry>>;

/// The routes gateways call for feedback.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/cp/v1/feedback/entries", post(put_entries))
        .route("/cp/v1/feedback/lookup", post(lookup))
        .route("/cp/v1/feedback/claims", post(claims))
}

async fn put_entries(State(registry): Shared, JsonBody(body): JsonBody<Entries>) -> Result<Response, ApiError> {
    check_batch("entries", body.entries.len())?;
    let max_ttl = registry.feedback.max_ttl;
    let entries = body.entries.into_iter().map(|e| e.checked(max_ttl)).collect::<Result<Vec<_>, RegistryError>>()?;
    let stored = registry.store.put_feedback_entries(&entries).await?;
    purge_if_due(&registry);
    Ok(axum::Json(json!({ "stored": stored })).into_response())
}

async fn lookup(State(registry): Shared, JsonBody(body): JsonBody<Lookup>) -> Result<Response, ApiError> {
    let model = Name::parse("model", &body.model)?;
    check_batch("ids", body.ids.len())?;
    body.ids.iter().try_for_each(|id| check_id(id))?;
    let results = registry.store.lookup_feedback(model.as_str(), &body.ids, crate::store::now_ms()).await?;
    Ok(axum::Json(Answers { results }).into_response())
}

async fn claims(State(registry): Shared, JsonBody(body): JsonBody<Claims>) -> Result<Response, ApiError> {
    let model = Name::parse("model", &body.model)?;
    let gateway = Name::parse("gateway", &body.gateway)?;
    check_batch("claims", body.claims.len())?;
    let max_ttl = registry.feedback.max_ttl;
    let mut claims = Vec::with_capacity(body.claims.len());
    for mut claim in body.claims {
        check_id(&claim.id)?;
        if let Some(entry) = claim.entry.take() {
            if entry.model != body.model || entry.id != claim.id {
                return Err(RegistryError::InvalidArgument(format!(
                    "the entry of claim '{}' must name the claim's model and id",
                    claim.id
                ))
                .into());
            }
            claim.entry = Some(entry.checked(max_ttl)?);
        }
        claims.push(claim);
    }
    let now = crate::store::now_ms();
    let results = registry.store.claim_feedback(model.as_str(), gateway.as_str(), &claims, now).await?;
    Ok(axum::Json(Answers { results }).into_response())
}

/// Starts a purge of expired and surplus entries when the last began at least
/// `purge_every` ago (one at a time; a failed one is logged and tried again later).
fn purge_if_due(registry: &Arc<Registry>) {
    let now = crate::store::now_ms();
    let every = i64::try_from(registry.feedback.purge_every.as_millis()).unwrap_or(i64::MAX);
    let last = registry.feedback_purged_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) < every
        || registry.feedback_purged_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err()
    {
        return;
    }
    let registry = registry.clone();
    tokio::spawn(async move {
        match registry.store.purge_feedback(crate::store::now_ms(), registry.feedback.max_rows).await {
            Ok((expired, surplus)) if expired + surplus > 0 => {
                tracing::info!(expired, surplus, "feedback entries purged");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "feedback entries not purged; tried again after the next write"),
        }
    });
}
