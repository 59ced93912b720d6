//! The gRPC front door: `inference.GRPCInferenceService` as Triton serves it,
//! the standard `grpc.health.v1.Health` service, and modelgate's own
//! `modelgate.Modelgate` (feedback, `feedback.rs`).

pub mod bounded_codec;
pub mod codec;
pub mod compressed;
pub mod feedback;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::budget::{Held, HeldUntilWritten};
use crate::error::Error;
use crate::gateway::{Call, EXTENSIONS, Gateway, SERVER_NAME};
use crate::metrics::Protocol;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::{Health, HealthServer};
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::proto::inference::{self as pb, model_repository_parameter::ParameterChoice};
use crate::repository::config_message;

/// Typed elements from which a request is converted on the blocking pool.
const OFFLOAD_ELEMENTS: usize = 1 << 16;

/// Requests of one `ModelStreamInfer` stream that may run at once.
const STREAM_CONCURRENCY: usize = 64;

/// The gRPC services, ready to be served beside HTTP.
pub fn routes(gateway: Arc<Gateway>) -> Routes {
    let limit = gateway.limits.max_request_bytes;
    bounded_codec::set_request_limit(limit);
    let inference = GrpcInferenceServiceServer::new(InferenceService { gateway: gateway.clone() })
        // tonic's 4 MiB default would refuse what HTTP accepts; tritonclient allows 2 GiB.
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate);
    // Responses go uncompressed, as from Triton by default: gRPC clients
    // (tritonclient, perf_analyzer) all advertise gzip in grpc-accept-encoding,
    // so offering it would gzip every response, tensors included.
    let own = crate::proto::modelgate::modelgate_server::ModelgateServer::new(feedback::ModelgateService {
        gateway: gateway.clone(),
    })
    .max_decoding_message_size(limit);
    let health = HealthServer::new(HealthService { gateway });
    Routes::new(inference).add_service(own).add_service(health)
}

/// `inference.GRPCInferenceService`.
#[derive(Debug, Clone)]
pub struct InferenceService {
    gateway: Arc<Gateway>,
}

fn status(error: Error) -> Status {
    error.into()
}

/// The client's deadline from `grpc-timeout`, if any.
fn grpc_deadline<T>(request: &Request<T>) -> Result<Option<Duration>, Status> {
    match request.metadata().get("grpc-timeout") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(codec::parse_grpc_timeout)
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("malformed grpc-timeout header")),
    }
}

async fn infer_one(
    gateway: &Gateway,
    mut message: pb::ModelInferRequest,
    deadline: Option<Duration>,
    headers: &http::HeaderMap,
    arrival: Instant,
) -> Result<(pb::ModelInferResponse, Held), Error> {
    let model = std::mem::take(&mut message.model_name);
    let version = std::mem::take(&mut message.model_version);
    let limit = gateway.limits.max_request_bytes;
    // Converting typed contents is a loop over every element: a large one
    // runs on the blocking pool, not on the worker other clients share.
    let mut request = if codec::typed_elements(&message) < OFFLOAD_ELEMENTS {
        codec::decode_request(message, limit)?
    } else {
        tokio::task::spawn_blocking(move || codec::decode_request(message, limit))
            .await
            .map_err(|e| Error::Internal(format!("decode task failed: {e}")))??
    };
    // tonic has read the message already; holding its run's working set (see
    // `RUN_FACTOR`) against the budget still keeps queued requests from
    // outgrowing memory.
    let tensor_bytes: usize = request.inputs.iter().map(|t| t.data.len()).sum();
    let _held = gateway.inflight.reserve(tensor_bytes.saturating_mul(crate::budget::RUN_FACTOR))?;
    if let Some(d) = deadline {
        request.cap_timeout(d);
    }
    let call = Call { protocol: Protocol::Grpc, arrival, headers };
    let response = gateway.infer(&model, Some(&version), request, call).await?;
    drop(_held);
    let response = codec::encode_response(response);
    // Held until the connection has taken the encoded message (see
    // `HeldUntilWritten`): a client that does not read keeps it that long.
    let held = gateway.inflight.reserve(prost::Message::encoded_len(&response))?;
    Ok((response, held))
}

/// A stream's responses, each holding its bytes against the budget until the
/// connection asks for the next one: HTTP/2 asks only once the last has
/// mostly gone out (hyper waits for flow-control room before it polls the
/// body again), so a stream whose client never reads holds what the budget
/// allows and no more. The replies waiting in the channel hold theirs too.
struct HeldStream {
    responses: ReceiverStream<(Result<pb::ModelStreamInferResponse, Status>, Option<Held>)>,
    last: Option<Held>,
}

impl Stream for HeldStream {
    type Item = Result<pb::ModelStreamInferResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        let next = std::task::ready!(Pin::new(&mut self.responses).poll_next(cx));
        std::task::Poll::Ready(next.map(|(reply, held)| {
            self.last = held;
            reply
        }))
    }
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.gateway.is_ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = match self.gateway.resolve(&r.name, Some(&r.version)) {
            Ok(_) => true,
            Err(e @ Error::InvalidArgument(_)) => return Err(status(e)),
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let served = self.gateway.resolve(&r.name, Some(&r.version)).map_err(status)?;
        let versions = self
            .gateway
            .repository
            .ready_versions(Some(&r.name))
            .map_err(status)?
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        let io = &served.io;
        let tensors = |specs: &[crate::tensor::IoSpec]| {
            specs
                .iter()
                .map(|s| pb::model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.dtype.v2_name().into(),
                    shape: io.full_shape(s),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: r.name,
            versions,
            platform: served.config.platform.clone(),
            inputs: tensors(&io.inputs),
            outputs: tensors(&io.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let arrival = Instant::now();
        let deadline = grpc_deadline(&request)?;
        let (metadata, _, message) = request.into_parts();
        let headers = metadata.into_headers();
        let (response, held) = infer_one(&self.gateway, message, deadline, &headers, arrival).await.map_err(status)?;
        // The id is in the message too; the metadata lets a proxy or a log read it unparsed.
        let id = tonic::metadata::MetadataValue::try_from(response.id.as_str()).ok();
        let mut response = Response::new(response);
        response.extensions_mut().insert(HeldUntilWritten::new(held));
        if let Some(id) = id {
            response.metadata_mut().insert(crate::feedback::request_id::HEADER, id);
        }
        Ok(response)
    }

    type ModelStreamInferStream = StreamOf<pb::ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = grpc_deadline(&request)?;
        let (metadata, _, mut inbound) = request.into_parts();
        let headers = Arc::new(metadata.into_headers());
        let (tx, rx) = mpsc::channel(STREAM_CONCURRENCY);
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(STREAM_CONCURRENCY));
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    () = tx.closed() => return,
                };
                let message = match next {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send((Err(e), None)).await;
                        return;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (gateway, tx, headers) = (gateway.clone(), tx.clone(), headers.clone());
                tokio::spawn(async move {
                    let id = message.id.clone();
                    let (reply, held) = match infer_one(&gateway, message, deadline, &headers, Instant::now()).await {
                        Ok((response, held)) => (
                            pb::ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(response),
                            },
                            Some(held),
                        ),
                        Err(error) => (
                            pb::ModelStreamInferResponse {
                                error_message: error.message().to_owned(),
                                infer_response: Some(pb::ModelInferResponse { id, ..Default::default() }),
                            },
                            None,
                        ),
                    };
                    let _ = tx.send((Ok(reply), held)).await;
                    drop(slot);
                });
            }
        });
        Ok(Response::new(Box::pin(HeldStream { responses: ReceiverStream::new(rx), last: None })))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let served = self.gateway.resolve(&r.name, Some(&r.version)).map_err(status)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config_message::message(&served.config)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let versions = if r.version.is_empty() {
            let model = (!r.name.is_empty()).then_some(r.name.as_str());
            self.gateway.repository.ready_versions(model).map_err(status)?
        } else {
            vec![self.gateway.resolve(&r.name, Some(&r.version)).map_err(status)?]
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: versions.iter().map(|v| codec::statistics(v)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let rows = self.gateway.repository.index(r.ready).await;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: rows
                .into_iter()
                .map(|row| pb::repository_index_response::ModelIndex {
                    name: row.name,
                    version: row.version.map(|v| v.to_string()).unwrap_or_default(),
                    state: row.state.unwrap_or_default().to_owned(),
                    reason: row.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        check_repository_parameters(&r.parameters)?;
        self.control_allowed()?;
        self.gateway.repository.load(&r.model_name).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        self.control_allowed()?;
        self.gateway.check_unload(&r.model_name).map_err(status)?;
        self.gateway.repository.unload(&r.model_name).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl InferenceService {
    fn control_allowed(&self) -> Result<(), Status> {
        if self.gateway.repository.settings().model_control {
            Ok(())
        } else {
            Err(Status::failed_precondition("explicit model load / unload is not allowed (model control is disabled)"))
        }
    }
}

/// Models load only from the repository: no inline config or file contents.
fn check_repository_parameters(
    parameters: &std::collections::HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<(), Status> {
    for (key, value) in parameters {
        let carries_content = matches!(value.parameter_choice, Some(ParameterChoice::BytesParam(_)));
        if key == "config" || key.starts_with("file:") || carries_content {
            return Err(Status::invalid_argument(format!(
                "repository parameter '{key}' is not accepted: models load only from the model repository"
            )));
        }
    }
    Ok(())
}

/// `grpc.health.v1.Health`: SERVING when the gateway is ready.
#[derive(Debug, Clone)]
pub struct HealthService {
    gateway: Arc<Gateway>,
}

impl HealthService {
    fn status_of(&self, service: &str) -> Result<ServingStatus, Status> {
        if !service.is_empty() && service != "inference.GRPCInferenceService" {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        Ok(if self.gateway.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing })
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.status_of(&request.into_inner().service)?;
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = StreamOf<HealthCheckResponse>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let first = self.status_of(&service)?;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                let now = this.status_of(&service).unwrap_or(first);
                if last != Some(now) {
                    last = Some(now);
                    if tx.send(Ok(HealthCheckResponse { status: now as i32 })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Limits;
    use crate::repository::{Loaders, Repository, RepositorySettings};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    fn gateway() -> Arc<Gateway> {
        let settings = RepositorySettings {
            path: std::env::temp_dir(),
            load_models: Some(vec![]),
            model_control: false,
            strict_readiness: false,
            default_max_queue_size: 16,
            ..Default::default()
        };
        let repository = Arc::new(Repository::new(settings, Default::default(), Loaders::default()));
        Arc::new(Gateway::new(
            repository,
            Limits { max_request_bytes: 1 << 20, ..Limits::from(&crate::config::ServerConfig::default()) },
            crate::metrics::install(),
        ))
    }

    #[tokio::test]
    async fn responses_are_not_compressed_when_the_client_merely_accepts_gzip() {
        // What every tritonclient and perf_analyzer call looks like: an empty
        // ServerMetadataRequest, and gzip among the accepted encodings.
        let request = http::Request::post("/inference.GRPCInferenceService/ServerMetadata")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-accept-encoding", "identity, deflate, gzip")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        let response = routes(gateway()).oneshot(request).await.unwrap();
        assert!(response.headers().get("grpc-encoding").is_none(), "{:?}", response.headers());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.first(), Some(&0), "the message's compressed flag must be 0");
        let message = <pb::ServerMetadataResponse as prost::Message>::decode(&body[5..]).unwrap();
        assert_eq!(message.name, SERVER_NAME);
    }
}
