//! The admin API: list routes and rollouts, set weights, promote, roll back,
//! pause, resume, put and delete routes, load and unload versions.
//!
//! It has its own listener, on loopback unless configured otherwise, and is
//! off unless a bearer token is configured (`--admin-token-file` or
//! `MODELGATE_ADMIN_TOKEN`). Every route sits behind one authentication
//! layer ([`auth::BearerAuthLayer`]); every change writes an audit line
//! (tracing target `modelgate::audit`). `api/admin.openapi.yaml` describes it,
//! and `modelgate admin ...` ([`client`]) calls it.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `admin.address` | address the admin listener binds | `127.0.0.1` |
//! | `admin.port` | admin port; 0 = off | 8003 |
//! | `admin.token_file` | file holding the bearer token (else `MODELGATE_ADMIN_TOKEN`; neither: off) | none |
//! | `admin.allowed_hosts` | names clients may put in `Host` besides loopback and the listener's address (e.g. a Service name) | none |

pub mod api;
pub mod auth;
pub mod client;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

pub use auth::{AdminToken, BearerAuthLayer, Local, Peer};

use crate::gateway::Gateway;

/// The admin listener's settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to bind.
    pub address: IpAddr,
    /// Port; 0 turns the admin API off.
    pub port: u16,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Names allowed in `Host` besides loopback and the listener's address.
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { address: IpAddr::from([127, 0, 0, 1]), port: 8003, token_file: None, allowed_hosts: Vec::new() }
    }
}

/// Longest wait for in-flight admin requests at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the admin API on `listener`, behind `auth`, until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    auth: BearerAuthLayer,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let local = stream.local_addr().ok();
        let gateway = gateway.clone();
        // The auth layer wraps the whole API: no admin route exists without it.
        let service = auth.layer(tower::service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(api::handle(gateway, request).await) }
        }));
        let hyper_service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            if let Some(local) = local {
                request.extensions_mut().insert(Local(local));
            }
            service.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), hyper_service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("admin drain timed out");
    }
}
