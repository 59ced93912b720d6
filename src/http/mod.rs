//! The HTTP/REST front door: KServe V2 endpoints with Triton's extensions.
//!
//! Bytes in, [`InferRequest`](crate::tensor::InferRequest) to the gateway,
//! bytes out. Every error is `{"error": "..."}` with Triton's status mapping.

pub mod body;
mod feedback;
mod infer;
pub mod json_tensor;
pub mod metadata;
mod response;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::Value;
use smallvec::SmallVec;

pub use infer::{DecodeError, HEADER_LENGTH, decode_request, encode_response};

use crate::error::{Error, Quoted};
use crate::gateway::{Call, Gateway};
use crate::metrics::Protocol;
use crate::repository::config_message;
use crate::respond::{Chunks, error_response, json_response};

/// The header a client may set to bound a request's time in the gateway, in
/// milliseconds (Triton's `timeout` parameter, in microseconds, works too).
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// Bodies above this size are decoded and encoded on the blocking pool, so a
/// large tensor never stalls the runtime's workers.
const OFFLOAD_BYTES: usize = 1 << 20;

/// Where a request goes; the names are borrowed from its path unless
/// percent-decoding changed them.
enum Endpoint<'a> {
    Live,
    Ready,
    ServerMetadata,
    Metrics,
    AllStats,
    Model { name: Cow<'a, str>, version: Option<Cow<'a, str>>, action: ModelAction },
    RepositoryIndex,
    RepositoryLoad(Cow<'a, str>),
    RepositoryUnload(Cow<'a, str>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ModelAction {
    Metadata,
    Ready,
    Infer,
    Feedback,
    Config,
    Stats,
}

fn route<'a>(method: &Method, path: &'a str) -> Result<Endpoint<'a>, Error> {
    // Every V2 path has at most 7 segments: a longer one spills and is not found.
    let segments: SmallVec<[&str; 7]> = path.trim_start_matches('/').split('/').collect();
    let (route, expected) = match segments.as_slice() {
        ["v2", "health", "live"] => (Endpoint::Live, Method::GET),
        ["v2", "health", "ready"] => (Endpoint::Ready, Method::GET),
        ["v2"] | ["v2", ""] => (Endpoint::ServerMetadata, Method::GET),
        ["metrics"] => (Endpoint::Metrics, Method::GET),
        ["v2", "models", "stats"] => (Endpoint::AllStats, Method::GET),
        ["v2", "repository", "index"] => (Endpoint::RepositoryIndex, Method::POST),
        ["v2", "repository", "models", name, "load"] => (Endpoint::RepositoryLoad(decode_name(name)?), Method::POST),
        ["v2", "repository", "models", name, "unload"] => {
            (Endpoint::RepositoryUnload(decode_name(name)?), Method::POST)
        }
        ["v2", "models", name, rest @ ..] => {
            let (version, rest) = match rest {
                ["versions", "", ..] => return Err(Error::invalid("the path names an empty model version")),
                ["versions", v, rest @ ..] => (Some(decode_name(v)?), rest),
                rest => (None, rest),
            };
            let (action, expected) = match rest {
                [] => (ModelAction::Metadata, Method::GET),
                ["ready"] => (ModelAction::Ready, Method::GET),
                ["infer"] => (ModelAction::Infer, Method::POST),
                ["feedback"] if version.is_none() => (ModelAction::Feedback, Method::POST),
                ["config"] => (ModelAction::Config, Method::GET),
                ["stats"] => (ModelAction::Stats, Method::GET),
                _ => {
                    return Err(Error::NotFound(format!("no endpoint at {}", Quoted(path))));
                }
            };
            (Endpoint::Model { name: decode_name(name)?, version, action }, expected)
        }
        _ => {
            return Err(Error::NotFound(format!("no endpoint at {}", Quoted(path))));
        }
    };
    if *method != expected {
        return Err(Error::MethodNotAllowed(format!(
            "{} is not allowed here; use {expected}",
            Quoted(method.as_str())
        )));
    }
    Ok(route)
}

/// Percent-decodes a path segment (tritonclient quotes model names); a
/// segment without `%` is borrowed as it is.
fn decode_name(segment: &str) -> Result<Cow<'_, str>, Error> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid("malformed percent-encoding in the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| Error::invalid("the path is not UTF-8 after percent-decoding"))
}

/// Answers one HTTP request.
pub async fn handle<B>(gateway: Arc<Gateway>, request: Request<B>) -> Response<Chunks>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let arrival = Instant::now();
    // Inference runs in place; every other endpoint's future is boxed. A
    // future is as large as its largest branch, and the connection copies
    // each request's into a box: inline, the feedback and repository
    // endpoints made every inference's 29 KB (issue #16).
    // A clone of the URI shares its bytes: the route borrows the names from
    // it while the request moves on.
    let uri = request.uri().clone();
    let result = match route(request.method(), uri.path()) {
        Ok(Endpoint::Model { name, version, action: ModelAction::Infer }) => {
            infer(&gateway, request, &name, version.as_deref(), arrival).await
        }
        Ok(endpoint) => Box::pin(dispatch(&gateway, endpoint, request, arrival)).await,
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| error_response(&error))
}

async fn dispatch<B>(
    gateway: &Arc<Gateway>,
    route: Endpoint<'_>,
    request: Request<B>,
    arrival: Instant,
) -> Result<Response<Chunks>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match route {
        Endpoint::Live => Ok(empty(StatusCode::OK)),
        Endpoint::Ready => Ok(empty(if gateway.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })),
        Endpoint::ServerMetadata => Ok(json_response(StatusCode::OK, &metadata::server_metadata())),
        Endpoint::Metrics => {
            // Read at scrape time, so the request path pays nothing for them.
            let versions = gateway.repository.ready_versions(None)?;
            // Sweeps departed clients out of each queue and sets its gauge.
            for version in &versions {
                version.queue_depth();
            }
            gateway.record_door_metrics();
            gateway.record_feedback_metrics();
            let mut text = gateway.metrics.render();
            crate::triton_metrics::render(&versions, &mut text);
            let mut response = Response::new(Chunks::one(Bytes::from(text)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            Ok(response)
        }
        Endpoint::AllStats => {
            let versions = gateway.repository.ready_versions(None)?;
            Ok(json_response(StatusCode::OK, &metadata::statistics(&versions)))
        }
        Endpoint::Model { name, version, action } => {
            model_endpoint(gateway, request, &name, version.as_deref(), action, arrival).await
        }
        Endpoint::RepositoryIndex => {
            let (parts, body) = request.into_parts();
            let (body, _held) =
                body::read(body, &parts.headers, &gateway.limits, &gateway.inflight, &gateway.decompressions).await?;
            let ready_only = if body.is_empty() {
                false
            } else {
                let value: Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::invalid(format!("malformed repository index request: {e}")))?;
                value.get("ready").and_then(Value::as_bool).unwrap_or(false)
            };
            let rows = gateway.repository.index(ready_only).await;
            Ok(json_response(StatusCode::OK, &metadata::repository_index(&rows)))
        }
        Endpoint::RepositoryLoad(name) | Endpoint::RepositoryUnload(name) => {
            let load = request.uri().path().ends_with("/load");
            let (parts, body) = request.into_parts();
            let (body, _held) =
                body::read(body, &parts.headers, &gateway.limits, &gateway.inflight, &gateway.decompressions).await?;
            check_repository_parameters(&body)?;
            if !gateway.repository.settings().model_control {
                return Err(Error::FailedPrecondition(
                    "explicit model load / unload is not allowed (model control is disabled)".into(),
                ));
            }
            if load {
                gateway.repository.load(&name).await?;
            } else {
                gateway.check_unload(&name)?;
                gateway.repository.unload(&name).await?;
            }
            Ok(empty(StatusCode::OK))
        }
    }
}

/// The load API takes no file contents or inline configs: model bytes come
/// only from the repository the operator configured.
fn check_repository_parameters(body: &[u8]) -> Result<(), Error> {
    if body.is_empty() {
        return Ok(());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Error::invalid(format!("malformed repository request: {e}")))?;
    if let Some(parameters) = value.get("parameters").and_then(Value::as_object) {
        for key in parameters.keys() {
            if key == "config" || key.starts_with("file:") {
                return Err(Error::invalid(format!(
                    "repository parameter '{key}' is not accepted: models load only from the model repository"
                )));
            }
        }
    }
    Ok(())
}

async fn model_endpoint<B>(
    gateway: &Arc<Gateway>,
    request: Request<B>,
    name: &str,
    version: Option<&str>,
    action: ModelAction,
    arrival: Instant,
) -> Result<Response<Chunks>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match action {
        ModelAction::Infer => infer(gateway, request, name, version, arrival).await,
        ModelAction::Feedback => {
            let feedback = gateway.feedback(name)?;
            let (parts, body) = request.into_parts();
            let (body, _held) =
                body::read(body, &parts.headers, &gateway.limits, &gateway.inflight, &gateway.decompressions).await?;
            // Parsing a batch of 10,000 items is a few milliseconds of work: the blocking pool takes large ones.
            let parsed = if body.len() < OFFLOAD_BYTES / 16 {
                feedback::parse(&feedback, &body)?
            } else {
                let for_parse = feedback.clone();
                offload(move || feedback::parse(&for_parse, &body)).await?
            };
            let reply = feedback::judge(&feedback, &gateway.fleet, parsed).await?;
            Ok(json_response(StatusCode::OK, &reply))
        }
        ModelAction::Ready => {
            gateway.resolve(name, version)?;
            Ok(empty(StatusCode::OK))
        }
        ModelAction::Metadata => {
            let served = gateway.resolve(name, version)?;
            let versions: Vec<u64> = gateway.repository.ready_versions(Some(name))?.iter().map(|v| v.version).collect();
            Ok(json_response(StatusCode::OK, &metadata::model_metadata(name, &served, &versions)))
        }
        ModelAction::Config => {
            let served = gateway.resolve(name, version)?;
            Ok(json_response(StatusCode::OK, &config_message::json(&served.config)))
        }
        ModelAction::Stats => {
            let versions = match version {
                Some(_) => vec![gateway.resolve(name, version)?],
                None => gateway.repository.ready_versions(Some(name))?,
            };
            Ok(json_response(StatusCode::OK, &metadata::statistics(&versions)))
        }
    }
}

async fn infer<B>(
    gateway: &Arc<Gateway>,
    request: Request<B>,
    name: &str,
    version: Option<&str>,
    arrival: Instant,
) -> Result<Response<Chunks>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let limit = gateway.limits.max_request_bytes;
    // Held until the inference is done: the request's data lives that long.
    let (body, mut held) =
        body::read(body, &parts.headers, &gateway.limits, &gateway.inflight, &gateway.decompressions).await?;
    let header_timeout = timeout_header(&parts.headers)?;
    let header_length = infer::header_length(&parts.headers)?;
    // Large JSON is parsed on the blocking pool; a raw binary body (header length 0) is not parsed.
    let mut decoded = if body.len() < OFFLOAD_BYTES || header_length == Some(0) {
        decode_request(header_length, body, limit)?
    } else {
        offload(move || Ok(decode_request(header_length, body, limit)?)).await?
    };
    // From here the request holds its run's working set (see `RUN_FACTOR`);
    // a JSON body's text is gone with the decode.
    let tensor_bytes: usize = decoded.inputs.iter().map(|t| t.data.len()).sum();
    held.resize(tensor_bytes.saturating_mul(crate::budget::RUN_FACTOR))?;
    if let Some(t) = header_timeout {
        decoded.cap_timeout(t);
    }
    let call = Call { protocol: Protocol::Http, arrival, headers: &parts.headers };
    let response = gateway.infer(name, version, decoded, call).await?;
    // The request's data is gone with the inference; the response's is held
    // from here until the connection has taken its last slice (finding 4 of
    // #15: a small compressed request can ask for hundreds of megabytes of
    // JSON, and a client that does not read keeps them). While it is encoded
    // the outputs, the text and a compressed copy all live at once.
    drop(held);
    // Gateway ids are header-safe; a client's id is echoed only when it is.
    let id_header = response.id.as_deref().and_then(|id| HeaderValue::from_str(id).ok());
    let size: usize = response.outputs.iter().map(|o| o.tensor.data.len()).sum();
    let encoding = response::accepts(&parts.headers);
    let text = infer::encoded_bound(&response);
    let encoding_bytes = size.saturating_add(text).saturating_add(if encoding.is_some() { text } else { 0 });
    let mut held = gateway.inflight.reserve(encoding_bytes)?;
    let respond = move || {
        let response = response::infer_response(encode_response(&response)?, encoding);
        held.resize(response.body().len())?;
        Ok(response.map(|body| body.held(held)))
    };
    let mut reply = if size < OFFLOAD_BYTES && text < OFFLOAD_BYTES { respond() } else { offload(respond).await }?;
    if let Some(id) = id_header {
        reply.headers_mut().insert(crate::feedback::request_id::HEADER_NAME, id);
    }
    Ok(reply)
}

/// Runs CPU-heavy work (large decodes and encodes) on the blocking pool.
async fn offload<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
}

fn timeout_header(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let millis = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| Error::invalid(format!("{TIMEOUT_HEADER} must be a whole number of milliseconds")))?;
    Ok((millis > 0).then(|| Duration::from_millis(millis)))
}

fn empty(status: StatusCode) -> Response<Chunks> {
    let mut response = Response::new(Chunks::empty());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_v2_endpoint_and_decodes_quoted_names() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(matches!(route(&get, "/v2/health/live"), Ok(Endpoint::Live)));
        assert!(matches!(route(&get, "/v2"), Ok(Endpoint::ServerMetadata)));
        assert!(matches!(route(&get, "/v2/models/stats"), Ok(Endpoint::AllStats)));
        assert!(matches!(route(&post, "/v2/repository/index"), Ok(Endpoint::RepositoryIndex)));
        match route(&post, "/v2/models/my%2Dmodel/versions/3/infer") {
            Ok(Endpoint::Model { name, version, action }) => {
                assert_eq!(name, "my-model");
                assert_eq!(version.as_deref(), Some("3"));
                assert!(action == ModelAction::Infer);
            }
            _ => panic!("expected an infer route"),
        }
        assert!(matches!(route(&get, "/v2/models/m/config"), Ok(Endpoint::Model { action: ModelAction::Config, .. })));
        assert!(matches!(route(&get, "/v2/models/m/infer"), Err(Error::MethodNotAllowed(_))));
        assert!(matches!(route(&get, "/v2/models/m/bogus"), Err(Error::NotFound(_))));
        assert!(matches!(route(&get, "/nope"), Err(Error::NotFound(_))));
        assert!(matches!(route(&get, "/v2/models/%zz"), Err(Error::InvalidArgument(_))));
    }
}
