//! The control plane's HTTP API: the native `/cp/v1` endpoints
//! ([`native`]), the MLflow Model Registry subset ([`mlflow`]) and MLflow's
//! artifact proxy ([`artifacts`]), all behind one bearer-token layer
//! ([`auth`]); only the probes' [`health`] paths are outside it. [`serve`]
//! takes a bound listener, so tests bind port 0.

pub mod artifacts;
pub mod auth;
pub mod drift;
pub mod feedback;
pub mod health;
pub mod mlflow;
pub mod native;
pub mod sync;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::Registry;
use crate::error::RegistryError;
use auth::{Auth, Conn};

/// How long in-flight requests may run on after shutdown begins.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest JSON body accepted (manifests of many files included).
pub const MAX_JSON_BODY: usize = 8 << 20;

/// A registry error as a native API response: status + `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub RegistryError);

impl<E: Into<RegistryError>> From<E> for ApiError {
    fn from(error: E) -> ApiError {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0.status(), axum::Json(serde_json::json!({ "error": self.0.to_string() }))).into_response()
    }
}

/// A JSON body decoded with the registry's errors (unknown fields, types and syntax all
/// answer 400 with serde's message naming the field), whatever the `Content-Type`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| RegistryError::TooLarge(format!("request body refused: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError(RegistryError::InvalidArgument(format!("invalid JSON body: {e}"))))
    }
}

/// The whole API behind the token layer, and the health paths beside it.
pub fn router(registry: Arc<Registry>, auth: Auth) -> Router {
    let guarded = Router::new()
        .merge(native::routes())
        .merge(mlflow::routes())
        .merge(artifacts::routes())
        .merge(sync::routes())
        .merge(drift::routes())
        .merge(feedback::routes())
        .fallback(|| async { ApiError(RegistryError::NotFound("no such endpoint".into())) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        // Outermost: nothing is read or routed before the token is checked.
        .layer(axum::middleware::from_fn_with_state(Arc::new(auth), auth::require));
    Router::new().merge(health::routes()).merge(guarded).with_state(registry)
}

/// Serves the API on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let draining_registry = registry.draining.clone();
    let app = router(registry, auth);
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "control plane listening");
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let graceful =
        axum::serve(listener, app.into_make_service_with_connect_info::<Conn>()).with_graceful_shutdown(async move {
            shutdown.await;
            // Long polls answer now and readiness turns 503 while the rest drains.
            draining_registry.cancel();
            let _ = draining.send(());
        });
    // A slow upload must not hold shutdown forever: in-flight requests get DRAIN_TIMEOUT.
    let deadline = async move {
        if drain_started.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = graceful => served,
        () = deadline => {
            tracing::warn!(?addr, "control plane drain timed out; in-flight requests dropped");
            Ok(())
        }
    }
}
