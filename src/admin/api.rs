//! The admin API's routes: JSON in, JSON out, `{"error": "..."}` with the
//! error's status on failure, and one audit log line per change. The OpenAPI
//! description is `api/admin.openapi.yaml`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Peer;
use super::registry::{Read, ReadError, RegistryLink};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::respond::{Chunks, json_response};
use crate::rollout::Command;
use crate::routing::RouteSpec;

/// Largest admin request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Header a client may set to name who makes a change, for the audit log.
pub const ACTOR_HEADER: &str = "x-modelgate-actor";

/// Every admin endpoint, as method and path (with sample names): the tests
/// walk this list to check that each one sits behind the authentication layer.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/admin/v1/routes"),
    ("GET", "/admin/v1/routes/m"),
    ("PUT", "/admin/v1/routes/m"),
    ("DELETE", "/admin/v1/routes/m"),
    ("PUT", "/admin/v1/routes/m/weights"),
    ("POST", "/admin/v1/routes/m/promote"),
    ("POST", "/admin/v1/routes/m/rollback"),
    ("POST", "/admin/v1/routes/m/pause"),
    ("POST", "/admin/v1/routes/m/resume"),
    ("GET", "/admin/v1/routes/m/ab"),
    ("GET", "/admin/v1/models"),
    ("POST", "/admin/v1/models/m/versions/2/load"),
    ("POST", "/admin/v1/models/m/versions/2/unload"),
    ("GET", "/admin/v1/registry/models"),
    ("GET", "/admin/v1/registry/models/m/versions"),
    ("GET", "/admin/v1/registry/models/m/history"),
    ("GET", "/admin/v1/registry/models/m/drift"),
    ("GET", "/admin/v1/registry/models/m/versions/2/drift/distribution"),
];

/// An admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    ListRoutes,
    GetRoute(String),
    PutRoute(String),
    DeleteRoute(String),
    SetWeights(String),
    Rollout(String, Command),
    AbResult(String),
    Models,
    LoadVersion(String, u64),
    UnloadVersion(String, u64),
    Registry(Read),
}

impl Endpoint {
    fn changes(&self) -> bool {
        !matches!(
            self,
            Endpoint::ListRoutes
                | Endpoint::GetRoute(_)
                | Endpoint::AbResult(_)
                | Endpoint::Models
                | Endpoint::Registry(_)
        )
    }
}

/// Errors of the admin API beyond the gateway's own.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error(transparent)]
    Gateway(#[from] Error),
    #[error("request bodies must be JSON (Content-Type: application/json)")]
    NotJson,
    #[error(transparent)]
    Registry(#[from] ReadError),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Gateway(e) => e.http_status(),
            AdminError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::Registry(e) => e.status(),
        }
    }
}

fn route(method: &Method, path: &str) -> Result<Endpoint, Error> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let name = |s: &str| -> Result<String, Error> {
        crate::repository::validate_model_name(s)?;
        Ok(s.to_owned())
    };
    let version = |s: &str| -> Result<u64, Error> {
        s.parse::<u64>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::invalid(format!("invalid version {:?}: versions are positive integers", s)))
    };
    let (endpoint, allowed) = match segments.as_slice() {
        ["admin", "v1", "routes"] => (Endpoint::ListRoutes, &[Method::GET][..]),
        ["admin", "v1", "routes", m] => {
            let endpoint = match *method {
                Method::PUT => Endpoint::PutRoute(name(m)?),
                Method::DELETE => Endpoint::DeleteRoute(name(m)?),
                _ => Endpoint::GetRoute(name(m)?),
            };
            (endpoint, &[Method::GET, Method::PUT, Method::DELETE][..])
        }
        ["admin", "v1", "routes", m, "weights"] => (Endpoint::SetWeights(name(m)?), &[Method::PUT][..]),
        ["admin", "v1", "routes", m, action @ ("promote" | "rollback" | "pause" | "resume")] => {
            let command = match *action {
                "promote" => Command::Promote,
                "rollback" => Command::Rollback,
                "pause" => Command::Pause,
                _ => Command::Resume,
            };
            (Endpoint::Rollout(name(m)?, command), &[Method::POST][..])
        }
        ["admin", "v1", "routes", m, "ab"] => (Endpoint::AbResult(name(m)?), &[Method::GET][..]),
        ["admin", "v1", "models"] => (Endpoint::Models, &[Method::GET][..]),
        ["admin", "v1", "registry", rest @ ..] if let Some(read) = super::registry::route(rest)? => {
            (Endpoint::Registry(read), &[Method::GET][..])
        }
        ["admin", "v1", "models", m, "versions", v, "load"] => {
            (Endpoint::LoadVersion(name(m)?, version(v)?), &[Method::POST][..])
        }
        ["admin", "v1", "models", m, "versions", v, "unload"] => {
            (Endpoint::UnloadVersion(name(m)?, version(v)?), &[Method::POST][..])
        }
        _ => {
            let shown: String = path.chars().take(200).collect();
            return Err(Error::NotFound(format!("no admin endpoint at {shown:?}")));
        }
    };
    if !allowed.contains(method) {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        return Err(Error::MethodNotAllowed(format!("{method} is not allowed here; use {}", names.join(" or "))));
    }
    Ok(endpoint)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: Vec<WeightEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightEntry {
    version: u64,
    weight: u32,
}

/// Answers one admin request (already authenticated).
pub async fn handle<B>(gateway: Arc<Gateway>, registry: &RegistryLink, request: Request<B>) -> Response<Chunks>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let peer = request.extensions().get::<Peer>().map(|p| p.0.to_string()).unwrap_or_default();
    let actor: String = request
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect())
        .unwrap_or_default();
    let endpoint = match route(&method, &path) {
        Ok(endpoint) => endpoint,
        Err(e) => return error_response(&AdminError::Gateway(e)),
    };
    let body = match read_json(request).await {
        Ok(body) => body,
        Err(e) => {
            audit(&actor, &peer, &method, &path, endpoint.changes(), None, Some(&e));
            return error_response(&e);
        }
    };
    let result = run(&gateway, registry, &endpoint, body.as_ref(), query.as_deref()).await;
    audit(&actor, &peer, &method, &path, endpoint.changes(), body.as_ref(), result.as_ref().err());
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => error_response(&e),
    }
}

async fn read_json<B>(request: Request<B>) -> Result<Option<Value>, AdminError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Error::PayloadTooLarge(format!("admin request bodies are limited to {MAX_BODY_BYTES} bytes"))
            } else {
                Error::invalid(format!("failed to read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(None);
    }
    let json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(AdminError::NotJson);
    }
    let value = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("malformed JSON: {e}")))?;
    Ok(Some(value))
}

fn parse<T: serde::de::DeserializeOwned>(body: Option<&Value>, what: &str) -> Result<T, Error> {
    let body = body.ok_or_else(|| Error::invalid(format!("this request needs a JSON body: {what}")))?;
    T::deserialize(body).map_err(|e| Error::invalid(format!("invalid {what}: {e}")))
}

async fn run(
    gateway: &Gateway,
    registry: &RegistryLink,
    endpoint: &Endpoint,
    body: Option<&Value>,
    query: Option<&str>,
) -> Result<Value, AdminError> {
    let rollouts = &gateway.rollouts;
    Ok(match endpoint {
        Endpoint::ListRoutes => json!({ "routes": status(rollouts.list().await)? }),
        Endpoint::GetRoute(model) => status(rollouts.status(model).await?)?,
        Endpoint::PutRoute(model) => {
            let mut spec: RouteSpec = parse(body, "route")?;
            if spec.model.is_empty() {
                spec.model = model.clone();
            } else if spec.model != *model {
                return Err(
                    Error::invalid(format!("the body names model '{}' but the path '{model}'", spec.model)).into()
                );
            }
            rollouts.put(spec, crate::rollout::Source::Operator).await?;
            status(rollouts.status(model).await?)?
        }
        Endpoint::DeleteRoute(model) => {
            rollouts.delete(model).await?;
            json!({ "deleted": model })
        }
        Endpoint::SetWeights(model) => {
            let weights: WeightsBody =
                parse(body, "weights (`{\"weights\": [{\"version\": 1, \"weight\": 90}, ...]}`)")?;
            let weights: Vec<(u64, u32)> = weights.weights.iter().map(|w| (w.version, w.weight)).collect();
            rollouts.set_weights(model, &weights).await?;
            status(rollouts.status(model).await?)?
        }
        Endpoint::Rollout(model, command) => {
            rollouts.command(model, command.clone()).await?;
            status(rollouts.status(model).await?)?
        }
        Endpoint::AbResult(model) => {
            let route = gateway.routes.get(model).ok_or_else(|| Error::NotFound(format!("no route for '{model}'")))?;
            let feedback = route.feedback.as_ref().ok_or_else(|| {
                Error::NotFound(format!(
                    "route '{model}' keeps no predictions: A/B results need a `feedback` section and its truths"
                ))
            })?;
            status(feedback.ab(route.baseline()))?
        }
        Endpoint::Models => {
            let rows = gateway.repository.index(false).await;
            crate::http::metadata::repository_index(&rows)
        }
        Endpoint::Registry(read) => super::registry::read(registry, read, query).await?,
        Endpoint::LoadVersion(model, version) | Endpoint::UnloadVersion(model, version) => {
            if !gateway.repository.settings().model_control {
                return Err(Error::FailedPrecondition(
                    "model load / unload is disabled (repository.model_control = false)".into(),
                )
                .into());
            }
            if matches!(endpoint, Endpoint::LoadVersion(..)) {
                gateway.repository.load_version(model, *version).await?;
            } else {
                if gateway.routes.serves(model, *version) {
                    return Err(Error::FailedPrecondition(format!(
                        "version {version} of '{model}' gets traffic from its route: set its weight to 0 or remove it from the route first"
                    ))
                    .into());
                }
                gateway.repository.unload_version(model, *version).await?;
            }
            let state = gateway
                .repository
                .snapshot()
                .models
                .get(model)
                .and_then(|m| m.versions.get(version).map(|s| s.name()))
                .unwrap_or("UNAVAILABLE");
            json!({ "model": model, "version": version, "state": state })
        }
    })
}

fn status<T: serde::Serialize>(value: T) -> Result<Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Internal(format!("cannot encode the status: {e}")))
}

fn audit(
    actor: &str,
    peer: &str,
    method: &Method,
    path: &str,
    changes: bool,
    body: Option<&Value>,
    error: Option<&AdminError>,
) {
    if !changes {
        return;
    }
    let detail: String = body.map(|b| b.to_string().chars().take(1024).collect()).unwrap_or_default();
    match error {
        None => tracing::info!(
            target: "modelgate::audit", actor, peer, method = %method, path, detail, outcome = "applied",
            "admin change"
        ),
        Some(e) => tracing::info!(
            target: "modelgate::audit", actor, peer, method = %method, path, detail, outcome = "refused",
            status = e.status().as_u16(), error = %e, "admin change refused"
        ),
    }
}

fn error_response(error: &AdminError) -> Response<Chunks> {
    json_response(error.status(), &json!({ "error": error.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_routes_and_others_are_refused() {
        let cases = [
            (Method::GET, "/admin/v1/routes", Endpoint::ListRoutes),
            (Method::GET, "/admin/v1/routes/mlp", Endpoint::GetRoute("mlp".into())),
            (Method::PUT, "/admin/v1/routes/mlp/", Endpoint::PutRoute("mlp".into())),
            (Method::DELETE, "/admin/v1/routes/mlp", Endpoint::DeleteRoute("mlp".into())),
            (Method::PUT, "/admin/v1/routes/mlp/weights", Endpoint::SetWeights("mlp".into())),
            (Method::POST, "/admin/v1/routes/mlp/promote", Endpoint::Rollout("mlp".into(), Command::Promote)),
            (Method::POST, "/admin/v1/routes/mlp/rollback", Endpoint::Rollout("mlp".into(), Command::Rollback)),
            (Method::POST, "/admin/v1/routes/mlp/pause", Endpoint::Rollout("mlp".into(), Command::Pause)),
            (Method::POST, "/admin/v1/routes/mlp/resume", Endpoint::Rollout("mlp".into(), Command::Resume)),
            (Method::GET, "/admin/v1/routes/mlp/ab", Endpoint::AbResult("mlp".into())),
            (Method::GET, "/admin/v1/models", Endpoint::Models),
            (Method::POST, "/admin/v1/models/mlp/versions/2/load", Endpoint::LoadVersion("mlp".into(), 2)),
            (Method::POST, "/admin/v1/models/mlp/versions/2/unload", Endpoint::UnloadVersion("mlp".into(), 2)),
            (Method::GET, "/admin/v1/registry/models/mlp/drift", Endpoint::Registry(Read::Drift("mlp".into()))),
        ];
        for (method, path, endpoint) in cases {
            assert_eq!(route(&method, path), Ok(endpoint), "{method} {path}");
        }
        for (method, path) in ENDPOINTS {
            assert!(route(&method.parse().unwrap(), path).is_ok(), "{method} {path}");
        }
        assert_eq!(ENDPOINTS.len(), 18, "a new endpoint goes in ENDPOINTS (and in api/admin.openapi.yaml)");
        assert!(matches!(route(&Method::GET, "/admin/v1/routes/mlp/promote"), Err(Error::MethodNotAllowed(_))));
        assert!(matches!(route(&Method::POST, "/admin/v1/routes"), Err(Error::MethodNotAllowed(_))));
        assert!(matches!(route(&Method::GET, "/admin/v1/nothing"), Err(Error::NotFound(_))));
        assert!(matches!(route(&Method::GET, "/admin/v1/registry/models/m/aliases"), Err(Error::NotFound(_))));
        assert!(matches!(route(&Method::PUT, "/admin/v1/registry/models/m/drift"), Err(Error::MethodNotAllowed(_))));
        assert!(matches!(route(&Method::GET, "/v2/models/mlp"), Err(Error::NotFound(_))));
        assert!(matches!(route(&Method::GET, "/admin/v1/routes/..%2f"), Err(Error::InvalidArgument(_))));
        assert!(matches!(route(&Method::POST, "/admin/v1/models/m/versions/0/load"), Err(Error::InvalidArgument(_))));
        assert!(matches!(route(&Method::POST, "/admin/v1/models/m/versions/x/load"), Err(Error::InvalidArgument(_))));
    }

    /// `(method, path template)` of every operation under `/admin/v1` in
    /// api/admin.openapi.yaml: a path is a key two spaces in under `paths:`,
    /// its operations the HTTP methods four spaces in (the file's layout; no
    /// YAML parser in the tree for this).
    fn documented_operations() -> Vec<(Method, String)> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/api/admin.openapi.yaml");
        let text = std::fs::read_to_string(file).expect("api/admin.openapi.yaml");
        let mut operations = Vec::new();
        let mut path = None;
        for line in text.lines() {
            if let Some(key) = line.strip_prefix("  /").and_then(|rest| rest.strip_suffix(':')) {
                path = Some(format!("/{key}"));
            } else if !line.starts_with("   ") {
                path = None;
            } else if let (Some(path), Some(method)) =
                (&path, line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')))
                && let Ok(method) = method.to_uppercase().parse::<Method>()
                && ["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method.as_str())
                && path.starts_with("/admin/v1/")
            {
                operations.push((method, path.clone()));
            }
        }
        operations
    }

    /// Whether a sample path (ENDPOINTS') fills the template's `{name}` segments.
    fn fills(template: &str, path: &str) -> bool {
        let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
    }

    #[test]
    fn the_openapi_file_describes_exactly_the_routes_served() {
        let documented = documented_operations();
        // Every operation documented is served: its template, with sample names, routes.
        for (method, template) in &documented {
            let sample = template.replace("{model}", "m").replace("{version}", "2");
            assert!(route(method, &sample).is_ok(), "{method} {template} is documented but not served");
        }
        // Every endpoint served is documented, once.
        for (method, path) in ENDPOINTS {
            let matching: Vec<_> = documented.iter().filter(|(m, t)| m == method && fills(t, path)).collect();
            assert_eq!(matching.len(), 1, "{method} {path}: documented as {matching:?} in api/admin.openapi.yaml");
        }
        assert_eq!(documented.len(), ENDPOINTS.len(), "documented: {documented:?}");
    }
}
