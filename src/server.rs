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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::Service;

use crate::gateway::Gateway;
use crate::respond::Chunks;

/// The body of every response: REST parts or a gRPC stream.
pub type ResponseBody = Either<Chunks, tonic::body::Body>;

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
                Ok(response.map(Either::Left))
            });
        }
        if is_grpc(&request) {
            let mut grpc = self.grpc.clone();
            return Box::pin(async move {
                let response = match grpc.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok(resource_exhausted_on_oversize(response).map(Either::Right))
            });
        }
        Box::pin(async move { Ok(crate::http::handle(gateway, request).await.map(Either::Left)) })
    }
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
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Past `limits.max_connections` the data plane stops accepting until a
    // connection closes: new clients wait in the kernel's backlog instead of
    // the process running out of memory or file descriptors. The metrics port
    // has no such bound, so scrapes still get through.
    let connections = gateway.connection_slots.clone();
    let mut accept_loops = Vec::new();
    let mut spawn = |listener: TcpListener, role: Role| {
        let dispatch = Dispatch { gateway: gateway.clone(), grpc: grpc.clone(), role };
        let slots = (role == Role::DataPlane).then(|| connections.clone());
        let accepting =
            Accepting { builder: builder.clone(), graceful: graceful.clone(), slots, stop: stop_rx.clone() };
        accept_loops.push(tokio::spawn(accept(listener, dispatch, accepting)));
    };
    spawn(listeners.http, Role::DataPlane);
    if let Some(l) = listeners.grpc {
        spawn(l, Role::DataPlane);
    }
    if let Some(l) = listeners.metrics {
        spawn(l, Role::Metrics);
    }
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
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing the remaining connections");
    }
}

/// What an accept loop shares with the others.
struct Accepting {
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    /// Connection slots (`max_connections`); `None`: unbounded.
    slots: Option<Arc<Semaphore>>,
    stop: watch::Receiver<bool>,
}

async fn accept(listener: TcpListener, dispatch: Dispatch, accepting: Accepting) {
    let Accepting { builder, graceful, slots, mut stop } = accepting;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // At the bound, wait for a slot before serving (and before accepting
        // more: the rest wait in the listen backlog). Waiting after the accept
        // rather than before keeps a listener from holding a slot while
        // nobody connects to it.
        let slot = match &slots {
            Some(slots) => tokio::select! {
                slot = slots.clone().acquire_owned() => slot.ok(),
                _ = stop.changed() => return,
            },
            None => None,
        };
        // Without it, a reply split over two writes waits for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(stream), dispatch.clone()).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}
