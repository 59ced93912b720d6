//! MLflow's artifact proxy, `/api/2.0/mlflow-artifacts/artifacts`: PUT a
//! file, GET a file, GET `?path=DIR` to list. Files land under
//! `<data-dir>/artifacts/`; a version registered from
//! `mlflow-artifacts:/<path>` is hashed from there into the blob store.
//! Registered versions are also readable, verified by construction, under
//! `_modelgate/models/<model>/versions/<n>/`, which is where
//! `get-download-uri` points.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;
use tower::ServiceExt;

use super::ApiError;
use super::mlflow::MlflowError;
use crate::Registry;
use crate::error::RegistryError;
use crate::manifest::check_path;
use crate::types::Status;

/// The virtual directory of registered versions.
pub const VERSIONS_PREFIX: &str = "_modelgate/models";

type Shared = State<Arc<Registry>>;

/// The artifact proxy's routes.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new().route("/api/2.0/mlflow-artifacts/artifacts", get(list)).route(
        "/api/2.0/mlflow-artifacts/artifacts/{*path}",
        get(download).put(upload).layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

/// The `mlflow-artifacts:` URI of a registered version's files.
pub fn version_uri(model: &str, version: i64) -> String {
    format!("mlflow-artifacts:/{VERSIONS_PREFIX}/{model}/versions/{version}")
}

/// A version's files as (path inside the version → (digest, size)), when `path` names one.
async fn version_files(
    registry: &Registry,
    path: &str,
) -> Result<Option<(String, BTreeMap<String, (crate::digest::Digest, u64)>)>, RegistryError> {
    let Some(rest) = path.strip_prefix(VERSIONS_PREFIX) else { return Ok(None) };
    let mut parts = rest.trim_start_matches('/').splitn(4, '/');
    let (Some(model), Some("versions"), Some(number)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(RegistryError::NotFound(format!("artifact '{path}' not found")));
    };
    let inner = parts.next().unwrap_or("").to_owned();
    let version = super::native::parse_version(number)?;
    let found = registry.store.require_version(model, version).await?;
    if found.status != Status::Ready {
        return Err(RegistryError::Conflict(format!("version {version} of '{model}' is {}", found.status.as_str())));
    }
    let files = found.manifest.unwrap_or_default().into_iter().map(|e| (e.path, (e.sha256, e.size))).collect();
    Ok(Some((inner, files)))
}

async fn upload(State(registry): Shared, Path(path): Path<String>, request: Request) -> Result<Response, MlflowError> {
    check_path(&path)?;
    if path.starts_with("_modelgate") {
        return Err(
            RegistryError::InvalidArgument("paths under _modelgate/ are the registry's, read-only".into()).into()
        );
    }
    let target = registry.artifacts_root.join(&path);
    registry.blobs.write_file(&target, request.into_body().into_data_stream()).await?;
    Ok((StatusCode::OK, axum::Json(json!({}))).into_response())
}

async fn download(State(registry): Shared, Path(path): Path<String>, request: Request) -> Result<Response, ApiError> {
    check_path(&path)?;
    let file = match version_files(&registry, &path).await? {
        Some((inner, files)) => {
            let (digest, _) =
                files.get(&inner).ok_or_else(|| RegistryError::NotFound(format!("artifact '{path}' not found")))?;
            if registry.blobs.bucket().is_some() {
                return super::native::serve_blob(&registry, digest, request).await;
            }
            registry.blobs.path(digest)
        }
        None => registry.artifacts_root.join(&path),
    };
    if !tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
        return Err(RegistryError::NotFound(format!("artifact '{path}' not found")).into());
    }
    let response =
        tower_http::services::ServeFile::new(file).oneshot(request).await.unwrap_or_else(|never| match never {});
    Ok(response.map(Body::new))
}

async fn list(State(registry): Shared, Query(query): Query<HashMap<String, String>>) -> Result<Response, MlflowError> {
    let path = query.get("path").map_or("", |p| p.trim_matches('/'));
    if !path.is_empty() {
        check_path(path)?;
    }
    let mut files = Vec::new();
    if let Some((inner, manifest)) = version_files(&registry, path).await? {
        let mut seen = std::collections::BTreeSet::new();
        let prefix = if inner.is_empty() { String::new() } else { format!("{inner}/") };
        for (file, (_, size)) in &manifest {
            let Some(rest) = file.strip_prefix(&prefix) else { continue };
            match rest.split_once('/') {
                Some((dir, _)) => {
                    if seen.insert(dir.to_owned()) {
                        files.push(json!({ "path": dir, "is_dir": true }));
                    }
                }
                None => files.push(json!({ "path": rest, "is_dir": false, "file_size": size })),
            }
        }
    } else {
        let dir = registry.artifacts_root.join(path);
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let (Ok(name), Ok(meta)) = (entry.file_name().into_string(), entry.metadata().await) else { continue };
                if path.is_empty() && name == "_modelgate" {
                    continue;
                }
                if meta.is_dir() {
                    files.push(json!({ "path": name, "is_dir": true }));
                } else if meta.is_file() {
                    files.push(json!({ "path": name, "is_dir": false, "file_size": meta.len() }));
                }
            }
        }
        files.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    }
    Ok(axum::Json(json!({ "files": files })).into_response())
}
