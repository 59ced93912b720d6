//! Drift: a version's reference (`PUT/GET/DELETE /cp/v1/models/{m}/versions/{v}/reference`),
//! its evaluations (`GET /cp/v1/models/{m}/drift`), and an evaluation round on demand
//! (`POST /cp/v1/drift/evaluate`, for operators and tests that cannot wait a minute).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::native::parse_version;
use super::{ApiError, JsonBody};
use crate::Registry;
use crate::drift::Reference;
use crate::error::RegistryError;
use crate::name::Name;

type Shared = State<Arc<Registry>>;

/// Most evaluations per version one request returns (a day of one-minute rounds).
pub const MAX_HISTORY: usize = 1440;

/// The drift routes.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route(
            "/cp/v1/models/{model}/versions/{version}/reference",
            get(get_reference).put(put_reference).delete(delete_reference),
        )
        .route("/cp/v1/models/{model}/drift", get(drift))
        .route("/cp/v1/drift/evaluate", post(evaluate_now))
}

/// A `{model}/versions/{version}` path, checked.
fn version_path(model: &str, version: &str) -> Result<(Name, i64), RegistryError> {
    Ok((Name::parse("model", model)?, parse_version(version)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceQuery {
    /// What made the reference (shown with it); `upload` by default.
    #[serde(default)]
    source: Option<String>,
}

async fn put_reference(
    State(registry): Shared,
    Path((model, version)): Path<(String, String)>,
    query: Result<Query<ReferenceQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(reference): JsonBody<Reference>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| RegistryError::InvalidArgument(e.body_text()))?;
    let (model, version) = version_path(&model, &version)?;
    let source = query.source.unwrap_or_else(|| "upload".into());
    if source.len() > 200 {
        return Err(RegistryError::InvalidArgument("source: at most 200 characters".into()).into());
    }
    let generation = registry.store.put_drift_reference(model.as_str(), version, &reference, &source).await?;
    let body = json!({
        "model": model, "version": version, "rows": reference.profile.rows(),
        "features": reference.profile.specs(), "generation": generation,
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn get_reference(
    State(registry): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (model, version) = version_path(&model, &version)?;
    let found =
        registry.store.drift_reference(model.as_str(), version).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("model '{model}' version {version} has no drift reference"))
        })?;
    Ok(axum::Json(found).into_response())
}

async fn delete_reference(
    State(registry): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (model, version) = version_path(&model, &version)?;
    registry.store.delete_drift_reference(model.as_str(), version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftQuery {
    /// Evaluations per version, newest first (default 1).
    #[serde(default)]
    history: Option<usize>,
}

async fn drift(
    State(registry): Shared,
    Path(model): Path<String>,
    query: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| RegistryError::InvalidArgument(e.body_text()))?;
    let model = Name::parse("model", &model)?;
    let history = query.history.unwrap_or(1);
    if !(1..=MAX_HISTORY).contains(&history) {
        return Err(RegistryError::InvalidArgument(format!("history {history}: expected 1 to {MAX_HISTORY}")).into());
    }
    registry.store.require_model(model.as_str()).await?;
    let results = registry.store.drift_results(model.as_str(), history).await?;
    let versions: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(version, evaluations)| (version.to_string(), json!({ "evaluations": evaluations })))
        .collect();
    let settings = &registry.drift;
    let body = json!({
        "model": model,
        "settings": {
            "every_seconds": settings.every.as_secs(), "span_seconds": settings.span.as_secs(),
            "min_rows": settings.min_rows, "rule": settings.rule(), "drift_share": settings.share,
        },
        "versions": versions,
    });
    Ok(axum::Json(body).into_response())
}

async fn evaluate_now(State(registry): Shared) -> Result<Response, ApiError> {
    let evaluated = crate::drift::evaluate_all(&registry, &registry.drift).await?;
    Ok(axum::Json(json!({ "evaluated_versions": evaluated })).into_response())
}
