//! What the routing, rollout and admin tests share: model repositories of
//! real ONNX versions (a good MLP, a model that fails every request, a slow
//! one), a gateway served on loopback ports the OS picks, and a small client.
#![allow(dead_code, missing_docs, clippy::unwrap_used)] // test harness: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelgate::admin::AdminToken;
use modelgate::config::Config;
use modelgate::gateway::Gateway;
use modelgate::routing::RouteSpec;
use modelgate::server::{Listeners, ServerOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A version's model file.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `models/mlp`: 64 -> 10, fast.
    Mlp,
    /// Loads, then fails every request.
    Failing,
    /// Answers in tens of milliseconds.
    Slow,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The generated test models, made by `tests/models/make_test_models.py`
/// once per version of the script and kept under cargo's temp dir for tests.
fn generated() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = root().join("tests/models/make_test_models.py");
        let text = std::fs::read(&script).unwrap();
        // FNV-1a of the script: a changed recipe gets a fresh directory.
        let hash =
            text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("routing-test-models-{hash:016x}"));
        if dir.join("failing.onnx").exists() && dir.join("slow.onnx").exists() {
            return dir;
        }
        let python = std::env::var_os("MODELGATE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv/models/bin/python"));
        // Generate beside, then rename: test binaries running at once never see half a directory.
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let output = Command::new(&python).arg(&script).arg("--out").arg(scratch.path()).output().unwrap_or_else(|e| {
            panic!(
                "cannot run {} (make it with scripts/setup.sh models, or set MODELGATE_PYTHON): {e}",
                python.display()
            )
        });
        assert!(output.status.success(), "make_test_models.py failed: {}", String::from_utf8_lossy(&output.stderr));
        if std::fs::rename(scratch.path(), &dir).is_err() {
            assert!(dir.join("slow.onnx").exists(), "cannot store the test models in {}", dir.display());
        }
        dir
    })
}

/// A model file `make_test_models.py` writes (e.g. `bf16.onnx`).
pub fn test_model(file: &str) -> PathBuf {
    generated().join(file)
}

/// A model repository in a temp dir.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// `model` with `versions`, every version loaded at start unless `latest_only`.
    pub fn new(model: &str, versions: &[(u64, Kind)]) -> Repo {
        let repo = Repo { dir: tempfile::tempdir().unwrap() };
        repo.add(model, versions, false);
        repo
    }

    pub fn add(&self, model: &str, versions: &[(u64, Kind)], latest_only: bool) {
        let dir = self.dir.path().join(model);
        for &(version, kind) in versions {
            let source = match kind {
                Kind::Mlp => root().join("models/mlp/1/model.onnx"),
                Kind::Failing => generated().join("failing.onnx"),
                Kind::Slow => generated().join("slow.onnx"),
            };
            let target = dir.join(version.to_string());
            std::fs::create_dir_all(&target).unwrap();
            std::fs::copy(source, target.join("model.onnx")).unwrap();
        }
        let policy = if latest_only { "latest { num_versions: 1 }" } else { "all { }" };
        let config = format!(
            "name: \"{model}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 64\nversion_policy: {{ {policy} }}\n\
             dynamic_batching {{ }}\ninstance_group [ {{ count: 1, kind: KIND_CPU }} ]\n"
        );
        std::fs::write(dir.join("config.pbtxt"), config).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A gateway on loopback; stops when dropped.
pub struct Server {
    pub gateway: Arc<Gateway>,
    pub http: String,
    pub admin: String,
    stop: Option<oneshot::Sender<()>>,
    stop_admin: Option<oneshot::Sender<()>>,
}

impl Server {
    /// The value of the `/metrics` line `name{labels}`, 0 when absent.
    pub async fn metric(&self, line: &str) -> f64 {
        let metrics = Http::default().send(Method::GET, format!("http://{}/metrics", self.http), &[], None).await;
        let text = metrics.body.as_str().map(str::to_owned).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    pub async fn start(repo: &Repo, routes: Vec<RouteSpec>) -> Server {
        let mut config = Config::default();
        config.repository.path = repo.path().to_owned();
        config.repository.strict_readiness = false;
        config.repository.model_control = true;
        config.routes = routes;
        config.validate().unwrap();
        let gateway = modelgate::start(&config, modelgate::loaders(&config)).await;
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, admin_addr) = (http.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let options = ServerOptions {
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(5),
            ..ServerOptions::from(&config.server)
        };
        tokio::spawn(modelgate::server::serve(
            gateway.clone(),
            Listeners { http, grpc: None, metrics: None },
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let auth = modelgate::admin::BearerAuthLayer::new(AdminToken::new(TOKEN).unwrap(), &[]);
        let limits = (config.admin.max_connections, config.server.timeouts());
        tokio::spawn(modelgate::admin::serve(gateway.clone(), Default::default(), admin, auth, limits, async move {
            let _ = admin_stopped.await;
        }));
        Server {
            gateway,
            http: http_addr.to_string(),
            admin: admin_addr.to_string(),
            stop: Some(stop),
            stop_admin: Some(stop_admin),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.stop_admin.take().map(|s| s.send(()));
    }
}

/// An HTTP client with keep-alive.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

/// A reply: status and JSON body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The version that answered (`model_version` of a success).
    pub fn version(&self) -> Option<u64> {
        self.body.get("model_version").and_then(Value::as_str).and_then(|v| v.parse().ok())
    }
}

impl Http {
    pub async fn send(&self, method: Method, url: String, headers: &[(&str, &str)], body: Option<String>) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = body.map(Bytes::from).unwrap_or_default();
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let response = self.client.request(request.body(Full::new(body)).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        // JSON when it parses (every API answer), else the text (/metrics).
        let body = match serde_json::from_slice(&bytes) {
            Ok(json) => json,
            Err(_) if bytes.is_empty() => Value::Null,
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        Reply { status, headers, body }
    }

    /// One MLP inference on `model` (no version: through its route).
    pub async fn infer(&self, server: &Server, model: &str, headers: &[(&str, &str)], seed: u32) -> Reply {
        let url = format!("http://{}/v2/models/{model}/infer", server.http);
        self.send(Method::POST, url, headers, Some(infer_body(seed))).await
    }

    /// An admin call with the token.
    pub async fn admin(&self, server: &Server, method: Method, path: &str, body: Option<Value>) -> Reply {
        let url = format!("http://{}{path}", server.admin);
        let auth = format!("Bearer {TOKEN}");
        self.send(method, url, &[("authorization", &auth)], body.map(|b| b.to_string())).await
    }
}

/// A JSON request for the MLP: 64 floats that depend on `seed`.
pub fn infer_body(seed: u32) -> String {
    let data: Vec<f32> = (0..64).map(|i| ((i as u32 * 7 + seed * 13) % 97) as f32 / 97.0 - 0.5).collect();
    json!({ "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "data": data }] }).to_string()
}

/// Parses a route from TOML.
pub fn route(toml_text: &str) -> RouteSpec {
    toml::from_str(toml_text).unwrap()
}

/// Server-side failures of `model` version `version` (Triton statistics).
pub fn failures(server: &Server, model: &str, version: u64) -> u64 {
    let table = server.gateway.repository.snapshot();
    match table.models.get(model).and_then(|m| m.versions.get(&version)) {
        Some(modelgate::repository::VersionState::Ready(v)) => v.stats.fail.get().0,
        _ => 0,
    }
}

/// A control plane (the registry's API) over SQLite in `data_dir`, listening on `addr`, with
/// the test token; it serves until the sender is used or dropped.
pub struct ControlPlaneOnLoopback {
    pub addr: std::net::SocketAddr,
    pub registry: Arc<modelgate_registry::Registry>,
    pub stop: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start_control_plane(data_dir: &Path, addr: &str) -> ControlPlaneOnLoopback {
    use modelgate_registry::api::auth::{Auth, Token};
    let config = modelgate_registry::Config {
        db_url: modelgate_registry::Config::default_db_url(data_dir),
        data_dir: data_dir.to_owned(),
        limits: Default::default(),
        file_roots: Vec::new(),
        drift: Default::default(),
        bucket: None,
    };
    let registry = modelgate_registry::Registry::open(&config).await.unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let auth = Auth::new(Token::new(TOKEN).unwrap(), &[]);
    let task = tokio::spawn({
        let registry = registry.clone();
        async move {
            let _ = modelgate_registry::api::serve(listener, registry, auth, async {
                let _ = stopped.await;
            })
            .await;
        }
    });
    ControlPlaneOnLoopback { addr, registry, stop, task }
}
