//! Shared harness of the integration tests: a real gateway on loopback port 0,
//! real ONNX Runtime, and plain HTTP/1.1, HTTP/2 and gRPC clients.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelgate::config::Config;
use modelgate::gateway::Gateway;
use modelgate::proto::inference as pb;
use modelgate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use modelgate::server::{Listeners, ServerOptions};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The repository's example models.
pub fn example_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A temporary model repository holding copies of the named example models,
/// with `config.pbtxt` replaced when a config is given.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn new() -> TempRepo {
        TempRepo { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies example model `from` as `name` version `version`, with `config`
    /// (None keeps the example's own config, if any).
    pub fn add(&self, from: &str, name: &str, version: u64, config: Option<&str>) -> &TempRepo {
        let source = example_models().join(from);
        let target = self.path().join(name);
        let version_dir = target.join(version.to_string());
        std::fs::create_dir_all(&version_dir).expect("create version dir");
        for file in ["model.onnx", "model.pt"] {
            let src = source.join("1").join(file);
            if src.exists() {
                std::fs::copy(&src, version_dir.join(file)).expect("copy model");
            }
        }
        match config {
            Some(text) => std::fs::write(target.join("config.pbtxt"), text).expect("write config"),
            None => {
                let src = source.join("config.pbtxt");
                if src.exists() {
                    let text = std::fs::read_to_string(src).expect("read config");
                    let renamed = text.replace(&format!("name: \"{from}\""), &format!("name: \"{name}\""));
                    std::fs::write(target.join("config.pbtxt"), renamed).expect("write config");
                }
            }
        }
        self
    }

    /// Writes a file (e.g. a broken model) into the repository.
    pub fn write(&self, relative: &str, contents: &[u8]) -> &TempRepo {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
        self
    }
}

/// A gateway serving on loopback until dropped.
pub struct TestServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A config over `repository` with small, test-friendly limits.
pub fn config_for(repository: &Path) -> Config {
    let mut config = Config::default();
    config.repository.path = repository.to_path_buf();
    config.repository.strict_readiness = false;
    config.server.max_request_bytes = 4 << 20;
    config
}

/// Serves example model `from` alone (version 1), with `configure` applied
/// to the test config. The repository lives as long as the returned handle.
pub async fn serve_example(from: &str, configure: impl FnOnce(&mut Config)) -> (TempRepo, TestServer) {
    let repo = TempRepo::new();
    repo.add(from, from, 1, None);
    let mut config = config_for(repo.path());
    configure(&mut config);
    let server = TestServer::start(config).await;
    (repo, server)
}

impl TestServer {
    /// Serves the example models.
    pub async fn examples() -> TestServer {
        TestServer::start(config_for(&example_models())).await
    }

    /// Serves the example models with the repository load/unload API on
    /// (`repository.model_control`, off by default).
    pub async fn examples_with_model_control() -> TestServer {
        let mut config = config_for(&example_models());
        config.repository.model_control = true;
        TestServer::start(config).await
    }

    /// Serves `config` (ports are ignored: it binds port 0).
    pub async fn start(config: Config) -> TestServer {
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let (http_addr, grpc_addr) = (http.local_addr().expect("addr"), grpc.local_addr().expect("addr"));
        let gateway = modelgate::start(&config, modelgate::loaders(&config)).await;
        let (tx, rx) = oneshot::channel::<()>();
        let options = ServerOptions {
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(5),
            ..ServerOptions::from(&config.server)
        };
        let serving = gateway.clone();
        let task = tokio::spawn(async move {
            let listeners = Listeners { http, grpc: Some(grpc), metrics: None };
            modelgate::server::serve(serving, listeners, options, async {
                let _ = rx.await;
            })
            .await;
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestServer { http: http_addr, grpc: grpc_addr, gateway, shutdown: Some(tx), task: Some(task), client }
    }

    /// Stops accepting, drains and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Starts an HTTP/1.1 POST to `path` that declares `content_length`
    /// bytes and sends only `first_bytes` of them; the body stalls there
    /// until the returned socket is written to or dropped.
    pub async fn stalled_upload(&self, path: &str, content_length: usize, first_bytes: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(self.http).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {content_length}\r\n\r\n{first_bytes}"
        );
        socket.write_all(head.as_bytes()).await.expect("write the request head");
        socket
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// One HTTP/1.1 request; returns status, headers and the whole body.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let mut builder = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let response = self.client.request(request).await.expect("HTTP request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.request(Method::POST, path, &[("content-type", "application/json")], bytes).await
    }

    /// A gRPC client on the gRPC port.
    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        self.grpc_at(self.grpc).await
    }

    /// A gRPC client on any data-plane port.
    pub async fn grpc_at(&self, addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` message of an error reply.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error member in {:?}", self.json())).to_owned()
    }

    /// Asserts the status and that the error message contains `needle`.
    pub fn expect_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", String::from_utf8_lossy(&self.body));
        let message = self.error();
        assert!(message.contains(needle), "error {message:?} does not mention {needle:?}");
    }
}

/// The V2 JSON body of a one-input FP32 request to the `mlp` example.
pub fn mlp_request(rows: usize, seed: u32) -> Value {
    let data: Vec<f32> = (0..rows * 64)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0)
        .collect();
    serde_json::json!({ "inputs": [{ "name": "input", "shape": [rows, 64], "datatype": "FP32", "data": data }] })
}

/// A gRPC request of one input whose data travels as raw contents.
pub fn grpc_raw_request(
    model: &str,
    input: &str,
    datatype: &str,
    shape: &[i64],
    raw: impl Into<Bytes>,
) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: input.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// One row of zeros for the example MLP (`input` FP32 [1, 64]), in raw form, to `model`.
pub fn mlp_grpc_request(model: &str) -> pb::ModelInferRequest {
    grpc_raw_request(model, "input", "FP32", &[1, 64], vec![0u8; 64 * 4])
}

/// The V2 JSON body of a request to the `simple` example (add/sub of INT32).
pub fn simple_request(a: &[i32; 16], b: &[i32; 16]) -> Value {
    serde_json::json!({ "inputs": [
        { "name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a },
        { "name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b },
    ]})
}

/// The fixed-size inputs of the `identity` example: name, datatype, bytes per
/// element (`IN_BYTES` comes on top).
pub const IDENTITY_FIXED_INPUTS: &[(&str, &str, usize)] = &[
    ("IN_BOOL", "BOOL", 1),
    ("IN_INT8", "INT8", 1),
    ("IN_INT16", "INT16", 2),
    ("IN_INT32", "INT32", 4),
    ("IN_INT64", "INT64", 8),
    ("IN_UINT8", "UINT8", 1),
    ("IN_UINT16", "UINT16", 2),
    ("IN_UINT32", "UINT32", 4),
    ("IN_UINT64", "UINT64", 8),
    ("IN_FP16", "FP16", 2),
    ("IN_FP32", "FP32", 4),
    ("IN_FP64", "FP64", 8),
];

/// Polls `check` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
