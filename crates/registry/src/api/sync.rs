//! What gateways call: `GET /cp/v1/sync` (a long poll for the whole desired
//! state), `POST /cp/v1/gateways/{id}/report`, and `GET /cp/v1/gateways`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::StatusCode;
use http::header::{CONTENT_TYPE, ETAG};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, JsonBody};
use crate::Registry;
use crate::error::RegistryError;
use crate::name::Name;
use crate::sync::{FollowSpec, OnRollback, Report};

type Shared = State<Arc<Registry>>;

/// Longest a sync request may wait for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting sync re-reads the generation. Commits of another replica on the same
/// PostgreSQL wake the waiters through LISTEN/NOTIFY (`store::listen`), but notifications sent
/// while this replica's listening connection was down are lost: this bounds the delay then.
const RECHECK: Duration = Duration::from_secs(1);

/// The routes gateways call.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/cp/v1/sync", get(sync))
        .route("/cp/v1/gateways", get(gateways))
        .route("/cp/v1/follow", get(list_follow))
        .route("/cp/v1/follow/{model}", put(put_follow).delete(delete_follow))
        .route("/cp/v1/gateways/{id}/report", post(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    gateway: String,
    #[serde(default)]
    since: i64,
    /// Seconds, optionally suffixed `s` (`30` or `30s`).
    #[serde(default)]
    wait: Option<String>,
}

fn parse_wait(text: Option<&str>) -> Result<Duration, RegistryError> {
    let Some(text) = text else { return Ok(Duration::ZERO) };
    let seconds = text.strip_suffix('s').unwrap_or(text);
    let seconds: u64 = seconds.parse().map_err(|_| {
        RegistryError::InvalidArgument(format!("wait '{text}': expected whole seconds, e.g. 30s (at most 60s)"))
    })?;
    Ok(Duration::from_secs(seconds).min(MAX_WAIT))
}

/// Answers the whole desired state once the generation passes `since`, at once if
/// it has; else waits up to `wait` (or until shutdown begins) and answers 304 Not Modified.
async fn sync(
    State(registry): Shared,
    query: Result<Query<SyncQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| RegistryError::InvalidArgument(e.body_text()))?;
    Name::parse("gateway", &query.gateway)?;
    let deadline = tokio::time::Instant::now() + parse_wait(query.wait.as_deref())?;
    loop {
        // Enabled before the read: a commit between the read and the wait still wakes us.
        let notice = registry.store.change_notice();
        tokio::pin!(notice);
        notice.as_mut().enable();
        let generation = registry.store.generation().await?;
        if generation > query.since {
            let state = registry.store.desired_state_json(generation).await?;
            let etag = format!("\"{}\"", state.generation);
            return Ok(([(ETAG, etag), (CONTENT_TYPE, "application/json".into())], state.json).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NOT_MODIFIED.into_response());
        }
        // Shutting down: answer now rather than hold the drain for the rest of the wait
        // (the gateway polls again, reaching another replica or this one restarted).
        tokio::select! {
            _ = tokio::time::timeout((deadline - now).min(RECHECK), notice) => {}
            () = registry.draining.cancelled() => return Ok(StatusCode::NOT_MODIFIED.into_response()),
        }
    }
}

async fn report(
    State(registry): Shared,
    Path(id): Path<String>,
    JsonBody(report): JsonBody<Report>,
) -> Result<Response, ApiError> {
    let id = Name::parse("gateway", &id)?;
    let refused = registry.store.apply_report(id.as_str(), &report).await?;
    if refused > 0 {
        tracing::warn!(gateway = %id, refused, "drift windows for versions the gateway does not report loaded were refused");
    }
    let body = json!({
        "gateway": id, "applied_generation": report.applied_generation,
        "drift_windows": { "stored": report.drift_windows.len() - refused, "refused": refused },
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// A follow rule's body: the spec without the model, which the path names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowBody {
    source: String,
    #[serde(default)]
    canary_alias: Option<String>,
    #[serde(default)]
    on_rollback: OnRollback,
    #[serde(default)]
    rollout: Option<serde_json::Map<String, serde_json::Value>>,
}

async fn list_follow(State(registry): Shared) -> Result<Response, ApiError> {
    Ok(axum::Json(json!({ "follow": registry.store.follow_rules().await? })).into_response())
}

async fn put_follow(
    State(registry): Shared,
    Path(model): Path<String>,
    JsonBody(body): JsonBody<FollowBody>,
) -> Result<Response, ApiError> {
    let spec = FollowSpec {
        model,
        source: body.source,
        canary_alias: body.canary_alias,
        on_rollback: body.on_rollback,
        rollout: body.rollout,
    };
    let generation = registry.store.put_follow(&spec).await?;
    Ok(axum::Json(json!({ "follow": spec, "generation": generation })).into_response())
}

async fn delete_follow(State(registry): Shared, Path(model): Path<String>) -> Result<Response, ApiError> {
    let model = Name::parse("model", &model)?;
    registry.store.delete_follow(model.as_str()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn gateways(State(registry): Shared) -> Result<Response, ApiError> {
    Ok(axum::Json(json!({ "gateways": registry.store.gateways().await? })).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_seconds_with_or_without_a_suffix_and_is_capped() {
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("30s")).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(Some("5")).unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait(Some("3600s")).unwrap(), MAX_WAIT);
        assert!(parse_wait(Some("-1")).is_err());
        assert!(parse_wait(Some("1m")).is_err());
    }
}
