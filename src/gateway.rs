//! The state both front doors share, and the protocol-neutral inference path:
//! resolve the model version, run the request, record the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::HeaderMap;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::Error;
use crate::metrics::Protocol;
use crate::repository::{ModelVersion, Repository, validate_model_name};
use crate::tensor::{InferRequest, InferResponse, ResponseOutput, Tensor};

/// Limits applied at the door, the same for HTTP and gRPC.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, after decompression, and largest decoded tensor total.
    pub max_request_bytes: usize,
}

/// What the request path needs, behind one `Arc`.
#[derive(Debug)]
pub struct Gateway {
    /// Models and their versions.
    pub repository: Arc<Repository>,
    /// Door limits.
    pub limits: Limits,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    draining: AtomicBool,
}

/// Where a request came from: what the routing and the records need beyond
/// the tensors.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// HTTP or gRPC.
    pub protocol: Protocol,
    /// When the request reached the door.
    pub arrival: Instant,
    /// Request headers (gRPC metadata as headers): routing rules and sticky keys read them.
    pub headers: &'a HeaderMap,
}

/// The name and version this server reports in server metadata.
pub const SERVER_NAME: &str = "modelgate";

/// V2 extensions that are implemented here, and only those: perf_analyzer
/// calls the statistics endpoint because `statistics` is listed.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "model_repository", "statistics"];

impl Gateway {
    /// Shared state over a repository.
    pub fn new(repository: Arc<Repository>, limits: Limits, metrics: PrometheusHandle) -> Gateway {
        Gateway { repository, limits, metrics, draining: AtomicBool::new(false) }
    }

    /// Marks the server as shutting down: readiness turns false at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to take traffic.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.repository.is_ready()
    }

    /// Finds the version that serves `model` (and `version`, as the client
    /// wrote it; empty means the policy's choice).
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, Error> {
        validate_model_name(model)?;
        let version = match version {
            None | Some("") => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                Error::invalid(format!(
                    "invalid model version '{}': versions are positive integers",
                    text.escape_debug()
                ))
            })?),
        };
        self.repository.resolve(model, version)
    }

    /// Runs one inference and records its outcome in the version's statistics
    /// and metrics.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
        call: Call<'_>,
    ) -> Result<InferResponse, Error> {
        let Call { protocol, arrival, .. } = call;
        let served_by = self.resolve(model, version)?;
        let id = request.id.clone();
        let result = served_by.infer(request, arrival).await;
        let elapsed = arrival.elapsed();
        match result {
            Ok(outputs) => {
                served_by.stats.success.add(1, elapsed);
                served_by.metrics.request(protocol, Ok(()), elapsed);
                let specs = &served_by.io.outputs;
                Ok(InferResponse {
                    model_name: model.to_owned(),
                    model_version: served_by.version,
                    id,
                    outputs: outputs
                        .tensors
                        .into_iter()
                        .map(|(index, t, binary)| ResponseOutput {
                            tensor: Tensor {
                                name: specs[index].name.clone(),
                                dtype: t.dtype,
                                shape: t.shape,
                                data: t.data,
                            },
                            binary,
                        })
                        .collect(),
                })
            }
            Err(error) => {
                served_by.stats.fail.add(1, elapsed);
                served_by.metrics.request(protocol, Err(error.outcome()), elapsed);
                Err(error)
            }
        }
    }
}
