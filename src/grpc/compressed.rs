//! Compressed gRPC calls are served on threads of their own (#15, finding 6).
//!
//! tonic inflates a compressed message synchronously, inside its polling of
//! the request body: a small gzip message that inflates to the 64 MiB limit
//! kept one runtime worker busy, and every task queued behind it waited (up
//! to 1.3 s measured). There is no place inside tonic for `spawn_blocking`,
//! so a call whose messages are compressed (`grpc-encoding` other than
//! `identity`) is run whole on a small runtime of its own, `mg-inflate`:
//! there, compressed calls wait for each other, and the runtime workers that
//! serve everyone else never inflate. A stream's reader task, spawned by the
//! handler, lands on the same runtime, so a compressed stream inflates there
//! too. The response body is still written by the connection.

use std::sync::OnceLock;

use http::{Request, Response};
use tokio_util::task::AbortOnDropHandle;
use tonic::service::Routes;
use tower::Service;

/// The runtime of compressed calls, built once for the process by the first
/// server ([`start`]), or why it could not be.
static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// Builds the `mg-inflate` runtime with `threads` workers (the server's
/// `server.max_concurrent_decompressions`), unless one was built already.
/// Built by `modelgate::start` rather than at the first compressed call, so that its
/// threads are part of the idle server's memory, not of the first call's.
/// Servers racing here (tests start several) wait for the one that builds:
/// a runtime must not be dropped inside an async context.
pub fn start(threads: usize) -> Result<(), String> {
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mg-inflate")
            .on_thread_park(crate::memory::collect_if_due)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    built.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Calls `routes` with `request`: in place, or on the `mg-inflate` runtime
/// when its messages say they are compressed (`grpc-encoding` other than
/// `identity`). There, the call is aborted if the returned future is dropped
/// (the client left); a runtime that did not start gives INTERNAL.
pub async fn call<B>(mut routes: Routes, request: Request<B>) -> Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let compressed = request.headers().get("grpc-encoding").is_some_and(|encoding| encoding.as_bytes() != b"identity");
    let in_place = async move {
        match routes.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    };
    if !compressed {
        return in_place.await;
    }
    let runtime = match RUNTIME.get() {
        Some(Ok(runtime)) => runtime,
        Some(Err(e)) => return internal(format!("the mg-inflate runtime could not start: {e}")),
        None => return internal("the mg-inflate runtime was not started".into()),
    };
    AbortOnDropHandle::new(runtime.spawn(in_place))
        .await
        .unwrap_or_else(|e| internal(format!("the compressed call failed: {e}")))
}

fn internal(message: String) -> Response<tonic::body::Body> {
    tonic::Status::internal(message).into_http()
}
