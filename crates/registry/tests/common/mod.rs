//! Test servers on 127.0.0.1:0 over real SQLite and PostgreSQL databases.
//!
//! Every test runs against SQLite, and against PostgreSQL when
//! `MODELGATE_TEST_POSTGRES_URL` is set (`scripts/with-postgres.sh` sets it);
//! `MODELGATE_REQUIRE_POSTGRES=1` makes its absence a failure, so CI cannot
//! skip PostgreSQL silently.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use modelgate_registry::api::auth::{Auth, Token};
use modelgate_registry::digest::Digest;
use modelgate_registry::manifest::Limits;
use modelgate_registry::{Config, Registry};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Which database a server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The databases to run every test on.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match std::env::var("MODELGATE_TEST_POSTGRES_URL") {
        Ok(_) => out.push(Backend::Postgres),
        Err(_) => {
            assert!(
                std::env::var("MODELGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "MODELGATE_REQUIRE_POSTGRES=1 but MODELGATE_TEST_POSTGRES_URL is unset: run under scripts/with-postgres.sh"
            );
            eprintln!(
                "note: PostgreSQL tests skipped (MODELGATE_TEST_POSTGRES_URL unset; see scripts/with-postgres.sh)"
            );
        }
    }
    out
}

/// A fresh, empty database URL for `backend`.
pub async fn fresh_db(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("registry.db").display()),
        Backend::Postgres => {
            let admin = std::env::var("MODELGATE_TEST_POSTGRES_URL").expect("checked in backends()");
            sqlx::any::install_default_drivers();
            let name = format!("t_{}", uuid_like());
            let pool = sqlx::AnyPool::connect(&admin).await.expect("connect to the test PostgreSQL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
            pool.close().await;
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
            format!("{base}/{name}")
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}_{}_{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// A running control plane.
pub struct Server {
    pub backend: Backend,
    pub addr: SocketAddr,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn limits() -> Limits {
    Limits { max_files: 8, max_blob_size: 1 << 20 }
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db_url = fresh_db(backend, dir.path()).await;
        Server::start_at(backend, dir, db_url).await
    }

    pub async fn start_at(backend: Backend, dir: tempfile::TempDir, db_url: String) -> Server {
        Server::start_with(backend, dir, db_url, Default::default()).await
    }

    /// A server with its own drift settings.
    pub async fn start_with_drift(backend: Backend, drift: modelgate_registry::drift::DriftSettings) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db_url = fresh_db(backend, dir.path()).await;
        Server::start_with(backend, dir, db_url, drift).await
    }

    async fn start_with(
        backend: Backend,
        dir: tempfile::TempDir,
        db_url: String,
        drift: modelgate_registry::drift::DriftSettings,
    ) -> Server {
        let config = Server::config(&dir, db_url.clone(), drift, None);
        Server::start_config(backend, dir, config).await
    }

    /// The configuration a test server runs with (its data directory inside `dir`).
    pub fn config(
        dir: &tempfile::TempDir,
        db_url: String,
        drift: modelgate_registry::drift::DriftSettings,
        bucket: Option<modelgate_registry::bucket::BucketSettings>,
    ) -> Config {
        Config {
            db_url,
            data_dir: dir.path().join("data"),
            limits: limits(),
            file_roots: vec![dir.path().join("allowed")],
            drift,
            bucket,
        }
    }

    /// A server with the configuration given (see [`Server::config`]).
    pub async fn start_config(backend: Backend, dir: tempfile::TempDir, config: Config) -> Server {
        let db_url = config.db_url.clone();
        std::fs::create_dir_all(dir.path().join("allowed")).unwrap();
        let registry = Registry::open(&config).await.expect("open the registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let auth = Auth::new(Token::new(TOKEN).unwrap(), &[]);
        let task = tokio::spawn(modelgate_registry::api::serve(listener, registry.clone(), auth, async {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        Server { backend, addr, db_url, dir, registry, http, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving and closes the database; returns the directory and URL for a restart.
    pub async fn stop(mut self) -> (tempfile::TempDir, String) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.registry.store.close().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.db_url.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.http.post(self.url(path)).json(&body).send().await.unwrap()).await
    }

    pub async fn put_blob(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let response =
            self.http.put(self.url(&format!("/cp/v1/blobs/{digest}"))).body(bytes.to_vec()).send().await.unwrap();
        assert!(response.status().is_success(), "{:?}", response.text().await);
        digest
    }

    pub async fn create_model(&self, name: &str) {
        let (status, body) = self.post("/cp/v1/models", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Uploads `files` and registers them as a new version; returns its number.
    pub async fn push(&self, model: &str, files: &[(&str, &[u8])]) -> i64 {
        let mut entries = Vec::new();
        for (path, bytes) in files {
            let digest = self.put_blob(bytes).await;
            entries.push(json!({ "path": path, "size": bytes.len(), "sha256": digest }));
        }
        let (status, body) =
            self.post(&format!("/cp/v1/models/{model}/versions"), json!({ "format": "onnx", "files": entries })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["version"].as_i64().unwrap()
    }

    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        if_match: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .put(self.url(&format!("/cp/v1/models/{model}/aliases/{alias}")))
            .json(&json!({ "version": version }));
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        answer(request.send().await.unwrap()).await
    }
}

pub async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// The error message of a JSON error body.
pub fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("not a JSON error: {body}"))
}
