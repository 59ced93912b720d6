//! Health endpoints, the only paths outside the token layer: Kubernetes probes
//! and load balancers cannot send a bearer token from a Secret.
//!
//! | path | answers |
//! |---|---|
//! | `GET /cp/v1/health/live` | 200 while the process serves HTTP |
//! | `GET /cp/v1/health/ready` | 200 `{"ready": true, "generation": G}` when the database answers within [`READY_TIMEOUT`]; 503 `{"error": ...}` when it does not or shutdown has begun |
//! | `GET /health` | `OK`, as the MLflow tracking server answers it |
//!
//! They tell nothing a caller without the token should not know: the
//! generation is a change counter.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::Registry;

/// Longest a readiness check waits for the database: a kubelet gives a probe
/// one second by default, and a database that slow is as good as away.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The health routes, to merge outside the token layer.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/cp/v1/health/live", get(live))
        .route("/cp/v1/health/ready", get(ready))
        .route("/health", get(mlflow_health))
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn mlflow_health() -> &'static str {
    "OK"
}

async fn ready(State(registry): State<Arc<Registry>>) -> Response {
    let unavailable =
        |error: String| (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "error": error }))).into_response();
    if registry.draining.is_cancelled() {
        return unavailable("the control plane is shutting down".into());
    }
    match tokio::time::timeout(READY_TIMEOUT, registry.store.generation()).await {
        Ok(Ok(generation)) => axum::Json(json!({ "ready": true, "generation": generation })).into_response(),
        Ok(Err(error)) => unavailable(format!("the database does not answer: {error}")),
        Err(_) => unavailable(format!("the database did not answer within {} ms", READY_TIMEOUT.as_millis())),
    }
}
