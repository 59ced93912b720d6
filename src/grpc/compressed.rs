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

/// Whether the request's messages say they are compressed.
pub fn is_compressed<B>(request: &Request<B>) -> bool {
    request.headers().get("grpc-encoding").is_some_and(|encoding| encoding.as_bytes() != b"identity")
}

/// Runs `routes` on `request` on the `mg-inflate` runtime and hands back its
/// response. The call is aborted if the returned future is dropped (the
/// client left).
pub async fn call_apart<B>(
    mut routes: Routes,
    request: Request<B>,
) -> Result<Response<tonic::body::Body>, std::io::Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let runtime = match RUNTIME.get() {
        Some(Ok(runtime)) => runtime,
        Some(Err(e)) => return Err(std::io::Error::other(format!("the mg-inflate runtime could not start: {e}"))),
        None => return Err(std::io::Error::other("the mg-inflate runtime was not started")),
    };
    let call = AbortOnDrop(runtime.spawn(async move {
        match routes.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }));
    call.await
}

/// A spawned call that stops when its awaiting side is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, std::io::Error>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|joined| joined.map_err(std::io::Error::other))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
