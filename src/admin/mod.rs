//! The admin API: list routes and rollouts, set weights, promote, roll back,
//! pause, resume, put and delete routes, load and unload versions.
//!
//! It has its own listener, on loopback unless configured otherwise, and is
//! off unless a bearer token is configured (`--admin-token-file` or
//! `MODELGATE_ADMIN_TOKEN`). Every route sits behind one authentication
//! layer ([`auth::BearerAuthLayer`]); every change writes an audit line
//! (tracing target `modelgate::audit`). `api/admin.openapi.yaml` describes it,
//! and `modelgate admin ...` ([`client`]) calls it, as does the operations
//! page ([`ui`], `GET /admin/ui/`) from an operator's browser. Its registry
//! reads ([`registry`]) go to the control plane this gateway follows.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `admin.address` | address the admin listener binds | `127.0.0.1` |
//! | `admin.port` | admin port; 0 = off | 8003 |
//! | `admin.token_file` | file holding the bearer token (else `MODELGATE_ADMIN_TOKEN`; neither: off) | none |
//! | `admin.max_connections` | open admin connections; past it new ones wait (first-bytes and idle timeouts are `server.*`'s) | 64 |
//! | `admin.allowed_hosts` | names clients may put in `Host` besides loopback and the listener's address (e.g. a Service name) | none |

pub mod api;
pub mod auth;
pub mod client;
pub mod registry;
pub mod ui;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryFutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::{Layer, ServiceExt};

pub use auth::{AdminToken, BearerAuthLayer, Local, Peer};
pub use registry::RegistryLink;

use crate::connection::{Activity, Timeouts, Tracked};
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
    /// Open admin connections at most; past it new ones wait.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 8003,
            token_file: None,
            allowed_hosts: Vec::new(),
            max_connections: 64,
        }
    }
}

/// Longest wait for in-flight admin requests at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the admin API on `listener`, behind `auth`, until `shutdown`
/// resolves: at most `max_connections` at once, each closed after
/// `timeouts` like the data plane's (see [`crate::connection`]).
pub async fn serve(
    gateway: Arc<Gateway>,
    registry: RegistryLink,
    listener: TcpListener,
    auth: BearerAuthLayer,
    (max_connections, timeouts): (usize, Timeouts),
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let connection_stop = stop_rx.clone();
    let serve = move |stream: TcpStream, peer, slot| {
        let local = stream.local_addr().ok();
        let gateway = gateway.clone();
        let registry = registry.clone();
        let activity = Activity::new();
        let tracker = activity.clone();
        // The auth layer wraps the whole API and the page: no admin route exists without it.
        let service = auth.layer(tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (gateway, registry) = (gateway.clone(), registry.clone());
            async move {
                let (method, path) = (request.method(), request.uri().path());
                let response = if ui::serves(method, path) {
                    ui::respond(method, path)
                } else {
                    api::handle(gateway, &registry, request).await
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        }));
        let hyper_service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            if let Some(local) = local {
                request.extensions_mut().insert(Local(local));
            }
            let in_use = Some(tracker.begin());
            service.clone().oneshot(request).map_ok(|mut response| {
                ui::add_common_headers(response.headers_mut());
                response.map(|body| Tracked::new(body, in_use))
            })
        });
        let (builder, stop) = (builder.clone(), connection_stop.clone());
        tokio::spawn(async move {
            crate::connection::serve_connection(stream, timeouts, activity, stop, |stream| {
                builder.serve_connection(TokioIo::new(stream), hyper_service).into_owned()
            })
            .await;
            drop(slot);
        });
    };
    let accepting = tokio::spawn(crate::connection::accept_loop(listener, slots, stop_rx, serve));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = accepting.await;
    if tokio::time::timeout(DRAIN, stop_tx.closed()).await.is_err() {
        tracing::warn!("admin drain timed out");
    }
}
