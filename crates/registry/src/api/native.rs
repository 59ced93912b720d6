//! The native API, `/cp/v1`: blobs by digest, models, versions from a
//! manifest of uploaded blobs, aliases guarded by `If-Match: <generation>`,
//! alias history and the event log.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MATCH};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

use super::{ApiError, JsonBody};
use crate::Registry;
use crate::blobs::{Held, Stored, Upload};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::manifest::{Entry, Manifest};
use crate::name::Name;
use crate::store::AliasWrite;
use crate::types::{Format, Lineage, NewVersion, Tags};

type Shared = State<Arc<Registry>>;
type Answer = Result<Response, ApiError>;

/// The `/cp/v1` routes.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/cp/v1/generation", get(generation))
        .route("/cp/v1/blobs/{digest}", put(put_blob).get(get_blob).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/cp/v1/uploads/{digest}", get(get_upload))
        .route("/cp/v1/models", get(list_models).post(create_model))
        .route("/cp/v1/models/{model}", get(get_model))
        .route("/cp/v1/models/{model}/versions", get(list_versions).post(create_version))
        .route("/cp/v1/models/{model}/versions/{version}", get(get_version))
        .route("/cp/v1/models/{model}/aliases", get(list_aliases))
        .route("/cp/v1/models/{model}/aliases/{alias}", get(get_alias).put(set_alias).delete(delete_alias))
        .route("/cp/v1/models/{model}/history", get(history))
        .route("/cp/v1/events", get(events))
        .route("/cp/v1/mirror", get(mirror))
}

fn json(status: StatusCode, value: impl serde::Serialize) -> Response {
    (status, axum::Json(value)).into_response()
}

/// Parses a version number from a path or field.
pub(crate) fn parse_version(text: &str) -> Result<i64, RegistryError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| RegistryError::InvalidArgument(format!("version '{text}': expected a positive integer")))
}

async fn generation(State(registry): Shared) -> Answer {
    Ok(json(StatusCode::OK, json!({ "generation": registry.store.generation().await? })))
}

// === blobs ===

async fn put_blob(State(registry): Shared, Path(digest): Path<String>, request: Request) -> Answer {
    let digest: Digest = digest.parse()?;
    let size = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(RegistryError::LengthRequired)?;
    let range = request.headers().get(CONTENT_RANGE).map(|v| content_range(v, size)).transpose()?;
    let stream = request.into_body().into_data_stream();
    let (stored, total) = match range {
        None => (registry.blobs.put(&digest, size, stream).await?, size),
        Some((start, total)) => match registry.blobs.put_range(&digest, start, size, total, stream).await? {
            Upload::Done(stored) => (stored, total),
            Upload::Partial(held) => {
                let body = json!({ "digest": digest, "received": held, "size": total });
                return Ok(with_offset(json(StatusCode::ACCEPTED, body), held));
            }
        },
    };
    let status = if stored == Stored::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, json!({ "digest": digest, "size": total })))
}

/// `Content-Range: bytes START-END/TOTAL` of a resumed upload: (START, TOTAL), with END - START
/// + 1 equal to the `Content-Length`.
fn content_range(value: &HeaderValue, length: u64) -> Result<(u64, u64), RegistryError> {
    let text = value.to_str().unwrap_or("").trim();
    let bad = || {
        RegistryError::InvalidArgument(format!(
            "Content-Range '{}': expected bytes START-END/TOTAL covering the Content-Length ({length}) bytes sent",
            text.escape_debug()
        ))
    };
    let (range, total) = text.strip_prefix("bytes ").and_then(|r| r.split_once('/')).ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (start, end, total) = (number(start)?, number(end)?, number(total)?);
    if end < start || end >= total || end - start + 1 != length {
        return Err(bad());
    }
    Ok((start, total))
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn a_download_range_is_one_start_with_an_optional_inclusive_end() {
        let range = |text: &'static str| byte_range(&HeaderValue::from_static(text));
        assert_eq!(range("bytes=10-"), Some(10..u64::MAX));
        assert_eq!(range("bytes=0-9"), Some(0..10));
        assert_eq!(range("bytes=5-4"), None);
        assert_eq!(range("bytes=-5"), None, "suffix ranges are ignored: the whole blob is sent");
        assert_eq!(range("bytes=0-1,4-5"), None);
        assert_eq!(range("items=0-1"), None);
    }
}

/// The `Upload-Offset` header: how many bytes of the blob the control plane holds.
fn with_offset(mut response: Response, held: u64) -> Response {
    response.headers_mut().insert("upload-offset", HeaderValue::from(held));
    response
}

/// How much of a blob is held: a client resumes an interrupted upload from `received`.
async fn get_upload(State(registry): Shared, Path(digest): Path<String>) -> Answer {
    let digest: Digest = digest.parse()?;
    let (received, complete) = match registry.blobs.held(&digest).await? {
        Held::Complete(size) => (size, true),
        Held::Part(held) => (held, false),
        Held::InProgress => {
            return Err(RegistryError::Conflict(format!(
                "an upload of {digest} is in progress; ask again when it ends"
            ))
            .into());
        }
    };
    let body = json!({ "digest": digest, "received": received, "complete": complete });
    Ok(with_offset(json(StatusCode::OK, body), received))
}

async fn get_blob(State(registry): Shared, Path(digest): Path<String>, request: Request) -> Answer {
    let digest: Digest = digest.parse()?;
    serve_blob(&registry, &digest, request).await
}

/// A blob as an HTTP answer, streamed: from the data directory through `ServeFile` (HEAD,
/// Range, conditional requests), or from the bucket through the control plane, chunk by
/// chunk as the store sends them (never the whole blob in memory), honouring one
/// `Range: bytes=START-[END]` (what gateways send to resume a download).
pub(crate) async fn serve_blob(registry: &Registry, digest: &Digest, request: Request) -> Answer {
    let not_found = || ApiError(RegistryError::NotFound(format!("blob {digest} not found")));
    let Some(bucket) = registry.blobs.bucket() else {
        if registry.blobs.size(digest).await?.is_none() {
            return Err(not_found());
        }
        let response = tower_http::services::ServeFile::new(registry.blobs.path(digest))
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        return Ok(response.map(Body::new));
    };
    let range = request.headers().get(http::header::RANGE).and_then(byte_range);
    let size = if range.is_some() { registry.blobs.size(digest).await?.ok_or_else(not_found)? } else { 0 };
    if let Some(range) = &range
        && range.start >= size
    {
        let mut response = json(
            StatusCode::RANGE_NOT_SATISFIABLE,
            json!({ "error": format!("range starts at byte {} of a {size}-byte blob", range.start) }),
        );
        response.headers_mut().insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("bytes */0")),
        );
        return Ok(response);
    }
    let get_range = range.as_ref().map(|r| object_store::GetRange::Bounded(r.start..r.end.min(size)));
    let read = bucket.read(digest, get_range).await?.ok_or_else(not_found)?;
    let length = read.range.end - read.range.start;
    let mut response = Response::new(Body::from_stream(read.body));
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    response.headers_mut().insert(http::header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {}-{}/{}", read.range.start, read.range.end - 1, read.size);
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// `bytes=START-` or `bytes=START-END` as a half-open range (END inclusive in the header);
/// `None` for anything else (several ranges, suffix ranges), which is then ignored and the
/// whole blob sent, as RFC 9110 allows.
fn byte_range(value: &HeaderValue) -> Option<std::ops::Range<u64>> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => u64::MAX,
        end => end.parse::<u64>().ok()?.checked_add(1)?,
    };
    (end > start).then_some(start..end)
}

// === models ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewModel {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
}

async fn create_model(State(registry): Shared, JsonBody(body): JsonBody<NewModel>) -> Answer {
    let name = Name::parse("model", &body.name)?;
    let model = registry.store.create_model(name.as_str(), &body.description, &body.tags).await?;
    Ok(json(StatusCode::CREATED, model))
}

async fn list_models(State(registry): Shared) -> Answer {
    Ok(json(StatusCode::OK, json!({ "models": registry.store.models().await? })))
}

async fn get_model(State(registry): Shared, Path(model): Path<String>) -> Answer {
    let model = Name::parse("model", &model)?;
    Ok(json(StatusCode::OK, registry.store.require_model(model.as_str()).await?))
}

// === versions ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVersion {
    format: Format,
    files: Vec<Entry>,
    #[serde(default)]
    config_pbtxt: Option<String>,
    #[serde(default)]
    lineage: Lineage,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    creator: Option<String>,
}

async fn create_version(
    State(registry): Shared,
    Path(model): Path<String>,
    JsonBody(body): JsonBody<CreateVersion>,
) -> Answer {
    let model = Name::parse("model", &model)?;
    let manifest = Manifest::new(body.files, registry.limits)?;
    // Every file must be a blob already uploaded (and so verified) with the declared size.
    for entry in manifest.files() {
        if registry.blobs.size(&entry.sha256).await? != Some(entry.size) {
            return Err(RegistryError::MissingBlob {
                path: entry.path.clone(),
                digest: entry.sha256.to_string(),
                size: entry.size,
            }
            .into());
        }
    }
    let new = NewVersion {
        source: "modelgate:manifest".into(),
        format: Some(body.format),
        config_pbtxt: body.config_pbtxt,
        manifest: Some(manifest),
        lineage: body.lineage,
        description: body.description,
        tags: body.tags,
        creator: body.creator.unwrap_or_else(|| "api".into()),
    };
    let version = registry.store.create_version(model.as_str(), new).await?;
    Ok(json(StatusCode::CREATED, version))
}

async fn list_versions(State(registry): Shared, Path(model): Path<String>) -> Answer {
    let model = Name::parse("model", &model)?;
    registry.store.require_model(model.as_str()).await?;
    Ok(json(StatusCode::OK, json!({ "versions": registry.store.versions(Some(model.as_str())).await? })))
}

async fn get_version(State(registry): Shared, Path((model, version)): Path<(String, String)>) -> Answer {
    let model = Name::parse("model", &model)?;
    let version = parse_version(&version)?;
    Ok(json(StatusCode::OK, registry.store.require_version(model.as_str(), version).await?))
}

// === aliases ===

/// `If-Match: 12` or `"12"` (the ETag form); absent = unconditional.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, RegistryError> {
    let Some(value) = headers.get(IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    let digits = text.trim_start_matches("W/").trim_matches('"');
    digits.parse::<i64>().ok().filter(|g| *g >= 0).map(Some).ok_or_else(|| {
        RegistryError::InvalidArgument(format!(
            "If-Match '{}': expected the alias's generation (0 when it must not exist yet)",
            text.escape_debug()
        ))
    })
}

fn with_etag(mut response: Response, generation: i64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{generation}\"")) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

async fn list_aliases(State(registry): Shared, Path(model): Path<String>) -> Answer {
    let model = Name::parse("model", &model)?;
    registry.store.require_model(model.as_str()).await?;
    Ok(json(StatusCode::OK, json!({ "aliases": registry.store.aliases(model.as_str()).await? })))
}

async fn get_alias(State(registry): Shared, Path((model, alias)): Path<(String, String)>) -> Answer {
    let model = Name::parse("model", &model)?;
    let alias = Name::parse("alias", &alias)?;
    let found = registry
        .store
        .alias(model.as_str(), alias.as_str())
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")))?;
    let generation = found.generation;
    Ok(with_etag(json(StatusCode::OK, found), generation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAlias {
    version: i64,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn set_alias(
    State(registry): Shared,
    Path((model, alias)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SetAlias>,
) -> Answer {
    let model = Name::parse("model", &model)?;
    let alias = Name::parse("alias", &alias)?;
    let write = AliasWrite {
        if_match: if_match(&headers)?,
        actor: body.actor.unwrap_or_else(|| "api".into()),
        reason: body.reason,
    };
    let set = registry.store.set_alias(model.as_str(), alias.as_str(), body.version, &write).await?;
    let generation = set.generation;
    Ok(with_etag(json(StatusCode::OK, set), generation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasQuery {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn delete_alias(
    State(registry): Shared,
    Path((model, alias)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<AliasQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(|e| RegistryError::InvalidArgument(e.body_text()))?;
    let model = Name::parse("model", &model)?;
    let alias = Name::parse("alias", &alias)?;
    let write = AliasWrite {
        if_match: if_match(&headers)?,
        actor: query.actor.unwrap_or_else(|| "api".into()),
        reason: query.reason,
    };
    registry.store.delete_alias(model.as_str(), alias.as_str(), &write).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn history(
    State(registry): Shared,
    Path(model): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let model = Name::parse("model", &model)?;
    let alias = query.get("alias").map(|a| Name::parse("alias", a)).transpose()?;
    registry.store.require_model(model.as_str()).await?;
    let history = registry.store.alias_history(model.as_str(), alias.as_ref().map(Name::as_str)).await?;
    Ok(json(StatusCode::OK, json!({ "history": history })))
}

// === events ===

async fn events(State(registry): Shared, Query(query): Query<HashMap<String, String>>) -> Answer {
    let number = |key: &str, default: i64| -> Result<i64, RegistryError> {
        query.get(key).map_or(Ok(default), |v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| RegistryError::InvalidArgument(format!("{key} '{v}': expected a non-negative integer")))
        })
    };
    let since = number("since", 0)?;
    let limit = number("limit", 100)?.clamp(1, 1000);
    let events = registry.store.events(since, limit).await?;
    Ok(json(StatusCode::OK, json!({ "generation": registry.store.generation().await?, "events": events })))
}

// === mirror ===

async fn mirror(State(registry): Shared) -> Answer {
    Ok(json(StatusCode::OK, registry.mirror.report()))
}
