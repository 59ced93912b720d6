//! modelgate: a model-serving gateway.
//!
//! The request path, outermost first (see DESIGN.md):
//!
//! - [`server`]: listeners; HTTP/1.1 and h2c gRPC told apart per request.
//! - [`http`], [`grpc`]: the V2 front doors, bytes to [`tensor::InferRequest`] and back.
//! - [`gateway`]: resolve the model version (through a [`routing`] route when
//!   the client names none), run, record.
//! - [`rollout`]: SLO checks, automatic canary release and rollback; every
//!   route change goes through it.
//! - [`routing`]: routes of public names to versions: weights, header rules,
//!   sticky keys, shadow copies, and the outcome windows and rollout policy a
//!   route carries.
//! - [`feedback`]: request ids, the predictions routes keep for ground
//!   truth, per-version quality and A/B results.
//! - [`repository`]: the model table, config.pbtxt, load → warm → publish → drain.
//! - [`batching`]: per-version queue and instance threads.
//!
//! Beside it: [`drift`] (profiles of served traffic for drift checks, off the
//! request path), [`admin`] (the admin API, own listener, bearer token, and its
//! client), [`sync`] (following the control plane: pulled versions, alias-driven
//! canaries, the last-known-good state), [`config`] (the file and flags, assembled from each subsystem's
//! own settings), [`respond`] (response bodies both doors and the admin API
//! send), [`stats`], [`metrics`], [`triton_metrics`] (Triton statistics and
//! Prometheus metrics), [`budget`] (request bytes held at once),
//! [`connection`] (accept loops, connection caps, first-bytes and idle
//! timeouts, for every listener), and at the
//! bottom [`tensor`], [`proto`] and [`error`] (every client-visible error,
//! mapped once to HTTP and gRPC).
//!
//! Imports point down this order only, top floor first: `server`, `config`,
//! `admin`, `sync`, `http`/`grpc`, `respond`/`triton_metrics`, `gateway`, `rollout`,
//! `routing`, `feedback`, `repository`, `batching`, `stats`/`budget`/`connection`, `metrics`,
//! `tensor`/`proto`, `error`, `atomic` (checked by `tests/module_floors.rs`).

pub mod admin;
pub mod atomic;
pub mod batching;
pub mod budget;
pub mod config;
pub mod connection;
pub mod drift;
pub mod error;
pub mod feedback;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod proto;
pub mod repository;
pub mod respond;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod stats;
pub mod sync;
pub mod tensor;
pub mod triton_metrics;

use std::sync::Arc;

use config::Config;
use gateway::{Gateway, Limits};
use repository::{Loaders, MissingRuntime, Repository};

/// The model loaders this build has: ONNX Runtime when it can be opened, and
/// the reason when it cannot (models that need it then fail with that reason);
/// TorchScript with the `torch` feature.
pub fn loaders(config: &Config) -> Loaders {
    let mut loaders = Loaders::default();
    #[cfg(feature = "onnx")]
    match modelgate_backend_onnx::OnnxLoader::new(config.onnxruntime_library()) {
        Ok(loader) => loaders.ready.push(Arc::new(loader)),
        Err(e) => {
            tracing::error!(error = %e, "ONNX models cannot be served");
            loaders.missing.push(MissingRuntime {
                platform: "onnxruntime_onnx",
                backend: "onnxruntime",
                filename: "model.onnx",
                reason: e.to_string(),
            });
        }
    }
    #[cfg(not(feature = "onnx"))]
    let _ = config;
    // libtorch is linked in: if the binary starts, the runtime is there.
    #[cfg(feature = "torch")]
    loaders.ready.push(Arc::new(modelgate_backend_torch::TorchLoader::new()));
    #[cfg(not(feature = "torch"))]
    loaders.missing.push(MissingRuntime {
        platform: "pytorch_libtorch",
        backend: "pytorch",
        filename: "model.pt",
        reason: "this build has no TorchScript support (cargo feature `torch`)".into(),
    });
    loaders
}

/// Builds the gateway and loads the start-up models. Models that fail are
/// reported in the repository index; the others serve.
pub async fn start(config: &Config, loaders: Loaders) -> Arc<Gateway> {
    let mut repository = Repository::new(config.repository.clone(), config.models.clone(), loaders);
    if config.sync.enabled {
        repository = repository.with_pulled_models(config.sync.models_dir());
    }
    if config.drift.enabled {
        match drift::Profiler::start(&config.drift) {
            Ok(profiler) => repository = repository.with_drift(profiler),
            Err(e) => tracing::error!(error = %e, "the drift profiler thread did not start; drift is off"),
        }
    }
    let repository = Arc::new(repository);
    // Threads (and descriptors) taken here, while the gateway starts, not
    // later while it already serves.
    if let Err(e) = grpc::compressed::start(config.server.max_concurrent_decompressions) {
        tracing::error!(error = %e, "the threads of compressed gRPC calls did not start; those calls fail with INTERNAL");
    }
    let gateway = Arc::new(Gateway::new(repository.clone(), Limits::from(&config.server), metrics::install()));
    repository.load_startup_models().await;
    if !config.routes.is_empty() {
        match gateway.rollouts.apply_file(&config.routes).await {
            Ok(summary) => tracing::info!(routes = ?summary.applied, "routes applied"),
            Err(e) => tracing::error!(error = %e, "routes not applied"),
        }
    }
    gateway
}
