//! Drift: a version's reference (`PUT/GET/DELETE /cp/v1/models/{m}/versions/{v}/reference`),
//! its evaluations (`GET /cp/v1/models/{m}/drift`), one feature's reference and current
//! distributions (`GET /cp/v1/models/{m}/versions/{v}/drift/distribution?feature=F`, what the
//! operations page draws), and an evaluation round on demand (`POST /cp/v1/drift/evaluate`, for
//! operators and tests that cannot wait a minute).

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
use modelgate_sketch::Summary;

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
        .route("/cp/v1/models/{model}/versions/{version}/drift/distribution", get(distribution))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DistributionQuery {
    /// The feature, as the reference names it.
    feature: String,
}

/// One feature of a version: its reference's histogram (or category counts) and the same of the
/// windows the next evaluation merges (the last `--drift-span`, on the reference's edges).
async fn distribution(
    State(registry): Shared,
    Path((model, version)): Path<(String, String)>,
    query: Result<Query<DistributionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| RegistryError::InvalidArgument(e.body_text()))?;
    let (model, version) = version_path(&model, &version)?;
    let found =
        registry.store.drift_reference(model.as_str(), version).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("model '{model}' version {version} has no drift reference"))
        })?;
    let feature = &query.feature;
    let reference = found.reference.profile.features.get(feature).ok_or_else(|| {
        let shown: String = feature.chars().take(200).collect();
        RegistryError::NotFound(format!("the reference of model '{model}' version {version} has no feature {shown:?}"))
    })?;
    let span_ms = i64::try_from(registry.drift.span.as_millis()).unwrap_or(i64::MAX);
    let since_ms = crate::store::now_ms().saturating_sub(span_ms);
    let specs = std::collections::BTreeMap::from([(feature.clone(), reference.spec())]);
    let current = registry.store.merged_windows(model.as_str(), version, since_ms, None, Some(&specs)).await?;
    let body = json!({
        "model": model, "version": version, "feature": feature,
        "span_seconds": registry.drift.span.as_secs(), "since_ms": since_ms, "windows": current.windows,
        "reference": shape(reference), "current": current.profile.features.get(feature).map(shape),
    });
    Ok(axum::Json(body).into_response())
}

/// A summary as counts to draw: a numeric feature's bins (one more count than edges: the outer
/// bins are open), or a categorical one's categories, largest first, and the rest.
fn shape(summary: &Summary) -> serde_json::Value {
    match summary {
        Summary::Numeric(p) => json!({
            "kind": "numeric", "rows": p.rows(), "edges": p.histogram().edges(), "counts": p.histogram().counts(),
            "nan": p.nan_count(), "inf": p.inf_count(),
        }),
        Summary::Categorical(p) => {
            let (counts, other) = p.counts();
            json!({ "kind": "categorical", "rows": p.count(), "counts": counts, "other": other, "missing": p.missing_count() })
        }
    }
}

async fn evaluate_now(State(registry): Shared) -> Result<Response, ApiError> {
    let evaluated = crate::drift::evaluate_all(&registry, &registry.drift).await?;
    Ok(axum::Json(json!({ "evaluated_versions": evaluated })).into_response())
}
