//! Listeners: HTTP/1.1 and HTTP/2 (h2c) on every data-plane port, with gRPC
//! told apart from REST per request by its content type, so Triton's separate
//! ports and a single sidecar port both work. Graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::budget::HeldUntilWritten;
use crate::config::ServerConfig;
use crate::connection::{Activity, Timeouts, Tracked};
use crate::gateway::Gateway;
use crate::respond::Chunks;

/// The body of every response: REST parts or a gRPC stream, keeping its
/// request open on the connection until written (see [`Activity`]).
pub type ResponseBody = Tracked<Either<Chunks, tonic::body::Body>>;

/// Bound sockets; tests bind port 0 and read the addresses back.
#[derive(Debug)]
pub struct Listeners {
    /// HTTP (and gRPC).
    pub http: TcpListener,
    /// gRPC (and HTTP).
    pub grpc: Option<TcpListener>,
    /// `/metrics` only.
    pub metrics: Option<TcpListener>,
}

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Longest wait for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// First-bytes and idle timeouts of every connection.
    pub timeouts: Timeouts,
    /// Open connections of the metrics port at most.
    pub max_metrics_connections: usize,
}

impl From<&ServerConfig> for ServerOptions {
    fn from(config: &ServerConfig) -> ServerOptions {
        ServerOptions {
            max_concurrent_streams: config.max_concurrent_streams,
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            timeouts: config.timeouts(),
            max_metrics_connections: config.max_metrics_connections,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// REST and gRPC.
    DataPlane,
    /// `/metrics` only.
    Metrics,
}

/// Routes one request to the gRPC services or the REST handler.
#[derive(Clone)]
struct Dispatch {
    gateway: Arc<Gateway>,
    grpc: tonic::service::Routes,
    role: Role,
    /// The connection's open requests (one `Dispatch` per connection).
    activity: Arc<Activity>,
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl hyper::service::Service<Request<Incoming>> for Dispatch {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let gateway = self.gateway.clone();
        // Open from here until the response body is dropped.
        let in_use = Some(self.activity.begin());
        if let Err(refused) = check_framing(&request) {
            let response = crate::respond::error_response(&refused);
            return Box::pin(async move { Ok(response.map(|body| Tracked::new(Either::Left(body), in_use))) });
        }
        if self.role == Role::Metrics {
            let path_ok = request.uri().path() == "/metrics";
            return Box::pin(async move {
                let response = if path_ok {
                    crate::http::handle(gateway, request).await
                } else {
                    crate::respond::error_response(&crate::error::Error::NotFound(
                        "this port serves /metrics only".into(),
                    ))
                };
                Ok(response.map(|body| Tracked::new(Either::Left(body), in_use)))
            });
        }
        if is_grpc(&request) {
            let grpc = self.grpc.clone();
            return Box::pin(async move {
                let mut response = crate::grpc::compressed::call(grpc, request).await;
                // A unary response's bytes stay held until its body is dropped.
                let held = response.extensions_mut().remove::<HeldUntilWritten>();
                let keep = held.map(|h| Box::new(h) as Box<dyn std::any::Any + Send + Sync>);
                Ok(resource_exhausted_on_oversize(response)
                    .map(|body| Tracked::new(Either::Right(body), in_use).keeping(keep)))
            });
        }
        Box::pin(async move {
            Ok(crate::http::handle(gateway, request).await.map(|body| Tracked::new(Either::Left(body), in_use)))
        })
    }
}

/// Refuses what RFC 9112 says a server must refuse and hyper lets through:
/// an HTTP/1.1 request without `Host` or with two (400), and a transfer
/// coding other than `chunked`, e.g. `gzip, chunked` (501: the body would be
/// read as if the gzip were not there).
fn check_framing<B>(request: &Request<B>) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    let headers = request.headers();
    let hosts = headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() == http::Version::HTTP_11) {
        return Err(Error::invalid("an HTTP/1.1 request must carry exactly one Host header"));
    }
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        let only_chunked =
            value.to_str().is_ok_and(|v| v.split(',').all(|coding| coding.trim().eq_ignore_ascii_case("chunked")));
        if !only_chunked {
            return Err(Error::Unsupported(
                "Transfer-Encoding other than chunked is not supported (use Content-Encoding for gzip)".into(),
            ));
        }
    }
    Ok(())
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; clients of
/// Triton (and the HTTP side's 413) expect RESOURCE_EXHAUSTED for the same
/// limit. The check happens on the length prefix, before the message is read.
fn resource_exhausted_on_oversize<B>(mut response: Response<B>) -> Response<B> {
    let oversize =
        response.headers().get("grpc-status").is_some_and(|s| s == "11")
            && response.headers().get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
                m.contains("message%20length%20too%20large") || m.contains("message length too large")
            });
    if oversize {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    // A message that is not valid protobuf is the client's mistake, which
    // tonic reports as INTERNAL: INVALID_ARGUMENT, as Triton answers.
    let malformed = response.headers().get("grpc-status").is_some_and(|s| s == "13")
        && response.headers().get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
            m.contains("failed%20to%20decode%20Protobuf%20message") || m.contains("failed to decode Protobuf message")
        });
    if malformed {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

/// Streams a client may open and reset before the server accepts them
/// (HTTP/2 rapid reset, CVE-2023-44487); h2's default.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors, per
/// connection (RUSTSEC-2024-0003); h2's default.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Largest decoded header block of an HTTP/2 request (h2 allows 16 MiB).
const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;

fn connection_builder(options: ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        // Set here rather than trusted to defaults: tonic's own server passes
        // `None` for the second, which turns h2's guard off (see
        // ../shared/notes/reliability-security.md, RUSTSEC-2024-0003). A
        // client past either is sent GOAWAY(ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 20)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (at most `drain_timeout`), and returns.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let grpc = crate::grpc::routes(gateway.clone());
    let builder = Arc::new(connection_builder(options));
    // Every accept loop and connection holds a receiver; the drain waits
    // for the last one to be dropped.
    let (stop_tx, stop_rx) = watch::channel(false);

    // Past `limits.max_connections` the data plane stops accepting until a
    // connection closes (see `connection::accept_loop`); the metrics port
    // has its own, smaller cap, so scrapes get through a full data plane.
    let metrics_slots = Arc::new(Semaphore::new(options.max_metrics_connections.min(Semaphore::MAX_PERMITS)));
    let mut accept_loops = Vec::new();
    let mut spawn = |listener: TcpListener, role: Role| {
        let slots = match role {
            Role::DataPlane => gateway.connection_slots.clone(),
            Role::Metrics => metrics_slots.clone(),
        };
        let (gateway, grpc, builder, stop) = (gateway.clone(), grpc.clone(), builder.clone(), stop_rx.clone());
        let connection_stop = stop.clone();
        let serve = move |stream: tokio::net::TcpStream, _peer, slot| {
            let activity = Activity::new();
            let dispatch = Dispatch { gateway: gateway.clone(), grpc: grpc.clone(), role, activity: activity.clone() };
            let (builder, stop) = (builder.clone(), connection_stop.clone());
            tokio::spawn(async move {
                crate::connection::serve_connection(stream, options.timeouts, activity, stop, |stream| {
                    builder.serve_connection(TokioIo::new(stream), dispatch).into_owned()
                })
                .await;
                drop(slot);
            });
        };
        accept_loops.push(tokio::spawn(crate::connection::accept_loop(listener, slots, stop, serve)));
    };
    spawn(listeners.http, Role::DataPlane);
    if let Some(l) = listeners.grpc {
        spawn(l, Role::DataPlane);
    }
    if let Some(l) = listeners.metrics {
        spawn(l, Role::Metrics);
    }
    drop(stop_rx);
    let upkeep = {
        let handle = gateway.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };

    shutdown.await;
    tracing::info!("shutting down: readiness off, draining connections");
    gateway.start_draining();
    let _ = stop_tx.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    upkeep.abort();
    if tokio::time::timeout(options.drain_timeout, stop_tx.closed()).await.is_err() {
        tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing the remaining connections");
    }
}
