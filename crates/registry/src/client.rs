//! `modelgate registry ...`: push a model directory (hashing it, uploading
//! only the blobs the registry lacks, resuming an upload that broke off),
//! list versions, show one, move an alias, read the alias history, and pull a
//! version into a directory, verifying every file's size and sha256 before it
//! is renamed into place.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::auth::{TOKEN_ENV, Token};
use crate::digest::Digest;
use crate::drift::Reference;
use crate::manifest::check_path;
use crate::types::{Format, Lineage};

/// Flags of `modelgate registry`.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// host:port of the control plane (plain HTTP), or its http:// or https:// URL.
    #[arg(long, env = "MODELGATE_CP_ADDRESS", default_value = "127.0.0.1:8004")]
    pub address: String,
    /// CA certificates (a PEM file) trusted for an https:// control plane, besides the system's.
    #[arg(long, env = "MODELGATE_CP_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token (default: env MODELGATE_ADMIN_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Who makes the change, for the alias history (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    pub actor: String,
    /// What to do.
    #[command(subcommand)]
    pub command: RegistryCommand,
}

/// The registry commands.
// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Register a model directory (or one file) as a new version.
    Push {
        /// The registered model (created if missing).
        model: String,
        /// A directory (Triton layout or any) or a single model file.
        path: PathBuf,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
        /// onnx or torchscript (default: from the file names).
        #[arg(long)]
        format: Option<String>,
        /// Training run id.
        #[arg(long)]
        run_id: Option<String>,
        /// Code commit.
        #[arg(long)]
        git_commit: Option<String>,
        /// Training data digest.
        #[arg(long)]
        dataset_digest: Option<String>,
        /// Parameter k=v (repeatable).
        #[arg(long = "param", value_parser = key_value)]
        params: Vec<(String, String)>,
        /// Metric k=v with a numeric v (repeatable).
        #[arg(long = "metric", value_parser = key_value)]
        metrics: Vec<(String, String)>,
        /// Tag k=v (repeatable).
        #[arg(long = "tag", value_parser = key_value)]
        tags: Vec<(String, String)>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// The version's drift reference: a profile `.json` from `modelgate profile`, or a
        /// `.npy`/`.csv` data file profiled with the defaults.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// The model input a `--reference` data file is for (names its features INPUT[i]).
        #[arg(long)]
        reference_input: Option<String>,
    },
    /// Set a version's drift reference (a profile `.json`, or a `.npy`/`.csv` data file).
    Reference {
        /// The model.
        model: String,
        /// The version number.
        version: i64,
        /// The reference.
        file: PathBuf,
        /// The model input a data file is for (names its features INPUT[i]).
        #[arg(long)]
        input: Option<String>,
    },
    /// List a model's versions.
    Versions {
        /// The model.
        model: String,
    },
    /// One version: manifest and lineage (JSON).
    Show {
        /// The model.
        model: String,
        /// The version number.
        version: i64,
    },
    /// Point an alias at a version.
    Alias {
        /// The model.
        model: String,
        /// The alias (champion, challenger, ...).
        alias: String,
        /// The version.
        version: i64,
        /// Only if the alias is still at this generation (0: only if it does not exist).
        #[arg(long)]
        if_match: Option<i64>,
        /// Why, for the history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The moves of a model's aliases.
    History {
        /// The model.
        model: String,
        /// Only this alias.
        #[arg(long)]
        alias: Option<String>,
    },
    /// Download a version into a directory, verifying every file.
    Pull {
        /// The model.
        model: String,
        /// A version number or @alias.
        version: String,
        /// Target directory (created; files in it are replaced).
        dir: PathBuf,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{text}': expected key=value"))
}

/// What a registry command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token.
    #[error("no token: pass --token-file or set {TOKEN_ENV}")]
    Token,
    /// The control plane answered an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Its `error` text.
        message: String,
    },
    /// The connection failed (refused, reset, an untrusted certificate).
    #[error("cannot reach the control plane: {}", crate::error::with_causes(.0))]
    Http(#[from] reqwest::Error),
    /// A local file problem.
    #[error("{0}")]
    Local(String),
    /// A pulled file did not match its manifest entry.
    #[error("{path}: {why}; the file was not written")]
    Verify {
        /// The file.
        path: String,
        /// What differed.
        why: String,
    },
}

/// A connection to the control plane.
pub struct Client {
    base: String,
    token: Token,
    http: reqwest::Client,
}

impl Client {
    /// A client for `address`: host:port (plain HTTP), or an http:// or https:// URL.
    pub fn new(address: &str, token: Token) -> Client {
        Client::trusting(address, token, &[])
    }

    /// The same, trusting `roots` for https:// besides the system's CA certificates.
    pub fn trusting(address: &str, token: Token, roots: &[reqwest::Certificate]) -> Client {
        let base = if address.contains("://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("http://{address}")
        };
        let http = crate::tls::trusting(reqwest::Client::builder(), roots).build().unwrap_or_default();
        Client { base, token, http }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.expose())
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), ClientError> {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            Ok((status, body))
        } else {
            let message = body["error"].as_str().map_or_else(|| text.clone(), str::to_owned);
            Err(ClientError::Api { status, message })
        }
    }

    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self.json(self.request(Method::GET, path)).await?.1)
    }

    /// Hashes `path`, uploads missing blobs, creates the model if needed and the version;
    /// returns the version.
    pub async fn push(&self, model: &str, path: &Path, options: PushOptions) -> Result<Value, ClientError> {
        let files = local_files(path)?;
        let mut entries = Vec::new();
        let mut config_pbtxt = None;
        for (rel, file) in &files {
            let (digest, size) = hash_file(file).await?;
            let blob = format!("/cp/v1/blobs/{digest}");
            let present = self.request(Method::HEAD, &blob).send().await?.status() == StatusCode::OK;
            if present {
                println!("{rel}: {size} bytes, already in the registry");
            } else {
                self.upload(rel, file, &digest, size).await?;
            }
            if rel == "config.pbtxt" {
                config_pbtxt = tokio::fs::read_to_string(file).await.ok();
            }
            entries.push(json!({ "path": rel, "size": size, "sha256": digest }));
        }
        let format = match options.format {
            Some(f) => f.parse::<Format>().map_err(|e| ClientError::Local(e.to_string()))?,
            None => {
                let names: Vec<crate::manifest::Entry> = files
                    .iter()
                    .map(|(p, _)| crate::manifest::Entry { path: p.clone(), size: 0, sha256: Digest::of(b"") })
                    .collect();
                Format::guess(&names).ok_or_else(|| {
                    ClientError::Local("no *.onnx or *.pt file found: pass --format onnx|torchscript".into())
                })?
            }
        };
        if let Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) =
            self.get(&format!("/cp/v1/models/{model}")).await
        {
            self.json(self.request(Method::POST, "/cp/v1/models").json(&json!({ "name": model }))).await?;
            println!("registered model {model}");
        }
        let body = json!({
            "format": format,
            "files": entries,
            "config_pbtxt": config_pbtxt,
            "lineage": options.lineage,
            "description": options.description,
            "tags": options.tags,
            "creator": options.actor,
        });
        let (_, version) =
            self.json(self.request(Method::POST, &format!("/cp/v1/models/{model}/versions")).json(&body)).await?;
        println!("{model} version {} ({})", version["version"], version["manifest_digest"].as_str().unwrap_or(""));
        if let Some(alias) = options.alias {
            let number = version["version"].as_i64().unwrap_or(0);
            self.set_alias(model, &alias, number, None, &options.actor, "registry push").await?;
        }
        Ok(version)
    }

    /// Uploads one blob, resuming from what the control plane holds of it: after a broken
    /// connection it asks how much arrived and sends only the rest (up to [`UPLOAD_ATTEMPTS`]
    /// tries; a later push resumes too). Shows progress while it runs.
    pub async fn upload(&self, rel: &str, file: &Path, digest: &Digest, size: u64) -> Result<Uploaded, ClientError> {
        let mut progress = Progress::new(rel, size);
        let mut report = Uploaded { last_sent: 0, resumed_from: 0, tries: 0 };
        loop {
            report.tries += 1;
            let outcome = match self.upload_offset(digest).await {
                Ok(Some(held)) if held >= size => {
                    progress.done(&report);
                    return Ok(report);
                }
                Ok(Some(held)) => {
                    if held > 0 {
                        report.resumed_from = held;
                        progress.note(&format!("resuming at byte {held} of {size}"));
                    }
                    self.send_from(file, digest, held, size, &mut progress, &mut report.last_sent).await
                }
                // Another upload of this blob runs (or the server has not yet noticed that
                // ours broke off): wait for it.
                Ok(None) => Err(ClientError::Api {
                    status: StatusCode::CONFLICT,
                    message: format!("an upload of {digest} is in progress"),
                }),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    progress.done(&report);
                    return Ok(report);
                }
                Err(error) if report.tries < UPLOAD_ATTEMPTS && retryable(&error) => {
                    progress.note(&format!("interrupted ({error}); retrying"));
                    tokio::time::sleep(RETRY_PAUSE * report.tries).await;
                }
                Err(error) => {
                    progress.abandon();
                    return Err(error);
                }
            }
        }
    }

    /// Bytes of `digest` the control plane holds; `None` while an upload of it runs. A server
    /// without resumable uploads (404 on the endpoint) holds nothing.
    async fn upload_offset(&self, digest: &Digest) -> Result<Option<u64>, ClientError> {
        match self.json(self.request(Method::GET, &format!("/cp/v1/uploads/{digest}"))).await {
            Ok((_, body)) => Ok(Some(body["received"].as_u64().unwrap_or(0))),
            Err(ClientError::Api { status: StatusCode::CONFLICT, .. }) => Ok(None),
            Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// One PUT of the blob's bytes from `start` (a plain upload from 0, else `Content-Range`).
    async fn send_from(
        &self,
        file: &Path,
        digest: &Digest,
        start: u64,
        size: u64,
        progress: &mut Progress,
        sent: &mut u64,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncSeekExt;
        let mut handle = tokio::fs::File::open(file).await.map_err(|e| local(file, e))?;
        handle.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| local(file, e))?;
        let counter = Arc::new(AtomicU64::new(0));
        let read = counter.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 << 10).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            chunk
        });
        let mut request = self
            .request(Method::PUT, &format!("/cp/v1/blobs/{digest}"))
            .header("content-length", size - start)
            .body(reqwest::Body::wrap_stream(stream));
        if start > 0 {
            request = request.header("content-range", format!("bytes {start}-{}/{size}", size - 1));
        }
        let mut answer = std::pin::pin!(self.json(request));
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let result = loop {
            tokio::select! {
                result = &mut answer => break result,
                _ = tick.tick() => progress.show(start + read.load(Ordering::Relaxed)),
            }
        };
        *sent = read.load(Ordering::Relaxed);
        result.map(|_| ())
    }

    /// Moves an alias; with `if_match`, only from that generation.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        if_match: Option<i64>,
        actor: &str,
        reason: &str,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .request(Method::PUT, &format!("/cp/v1/models/{model}/aliases/{alias}"))
            .json(&json!({ "version": version, "actor": actor, "reason": reason }));
        if let Some(generation) = if_match {
            request = request.header("if-match", generation.to_string());
        }
        let (_, set) = self.json(request).await?;
        println!("{model}@{alias} -> version {version} (generation {})", set["generation"]);
        Ok(set)
    }

    /// Sets a version's drift reference; `source` says what made it.
    pub async fn set_reference(
        &self,
        model: &str,
        version: i64,
        reference: &Reference,
        source: &str,
    ) -> Result<Value, ClientError> {
        let request = self
            .request(Method::PUT, &format!("/cp/v1/models/{model}/versions/{version}/reference"))
            .query(&[("source", source.chars().take(200).collect::<String>())])
            .json(reference);
        let (_, set) = self.json(request).await?;
        println!(
            "{model} version {version}: drift reference of {} features, {} rows (generation {})",
            reference.profile.features.len(),
            reference.profile.rows(),
            set["generation"]
        );
        Ok(set)
    }

    /// Downloads a version into `dir`, each file verified before it is renamed into place.
    pub async fn pull(&self, model: &str, version: &str, dir: &Path) -> Result<Value, ClientError> {
        let number = match version.strip_prefix('@') {
            Some(alias) => self.get(&format!("/cp/v1/models/{model}/aliases/{alias}")).await?["version"].as_i64(),
            None => version.parse().ok(),
        }
        .ok_or_else(|| ClientError::Local(format!("version '{version}': expected a number or @alias")))?;
        let found = self.get(&format!("/cp/v1/models/{model}/versions/{number}")).await?;
        let entries: Vec<crate::manifest::Entry> = serde_json::from_value(found["manifest"].clone()).map_err(|_| {
            ClientError::Local(format!("version {number} of {model} has no manifest (status {})", found["status"]))
        })?;
        for entry in &entries {
            check_path(&entry.path).map_err(|e| ClientError::Local(e.to_string()))?;
            let target = dir.join(&entry.path);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| local(parent, e))?;
            }
            let temp = target.with_extension(format!("{}.part", uuid::Uuid::new_v4()));
            let result = self.download(entry, &temp).await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
            tokio::fs::rename(&temp, &target).await.map_err(|e| local(&target, e))?;
            println!("{}: {} bytes verified", entry.path, entry.size);
        }
        Ok(found)
    }

    async fn download(&self, entry: &crate::manifest::Entry, temp: &Path) -> Result<(), ClientError> {
        let response = self.request(Method::GET, &format!("/cp/v1/blobs/{}", entry.sha256)).send().await?;
        if !response.status().is_success() {
            return Err(ClientError::Api { status: response.status(), message: format!("blob of {}", entry.path) });
        }
        let mut out = tokio::fs::File::create(temp).await.map_err(|e| local(temp, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if size > entry.size {
                break;
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| local(temp, e))?;
        }
        let digest = Digest::from_hasher(hasher);
        if size != entry.size {
            return Err(ClientError::Verify {
                path: entry.path.clone(),
                why: format!("{size} bytes, expected {}", entry.size),
            });
        }
        if digest != entry.sha256 {
            return Err(ClientError::Verify {
                path: entry.path.clone(),
                why: format!("sha256 is {digest}, expected {}", entry.sha256),
            });
        }
        out.sync_all().await.map_err(|e| local(temp, e))?;
        Ok(())
    }
}

/// Tries of one blob upload before a push gives up (a later push still resumes).
pub const UPLOAD_ATTEMPTS: u32 = 5;
/// Pause before the next try, times the number of tries so far.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Uploads at least this large print plain progress lines every quarter when not on a terminal.
const PLAIN_PROGRESS_FROM: u64 = 16 << 20;

/// What one blob upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes of the blob the last try sent (a resumed try sends only the rest).
    pub last_sent: u64,
    /// Where the last resume started (0: never resumed).
    pub resumed_from: u64,
    /// Tries, the last included.
    pub tries: u32,
}

/// Whether an upload error may pass on a new try: the connection broke, the server had not yet
/// noticed, or it answered 5xx.
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Http(_) => true,
        ClientError::Api { status, .. } => *status == StatusCode::CONFLICT || status.is_server_error(),
        _ => false,
    }
}

/// One blob's upload progress: a line redrawn in place on a terminal, plain lines otherwise.
struct Progress {
    rel: String,
    total: u64,
    terminal: bool,
    /// Quarters already reported as plain lines.
    quarters: u64,
    drawn: bool,
    started: Instant,
}

impl Progress {
    fn new(rel: &str, total: u64) -> Progress {
        Progress {
            rel: rel.to_owned(),
            total,
            terminal: std::io::stdout().is_terminal(),
            quarters: 0,
            drawn: false,
            started: Instant::now(),
        }
    }

    fn show(&mut self, held: u64) {
        let percent = held.saturating_mul(100).checked_div(self.total).unwrap_or(100);
        if self.terminal {
            print!("\r{}: {held} / {} bytes ({percent}%)\x1b[K", self.rel, self.total);
            let _ = std::io::stdout().flush();
            self.drawn = true;
        } else if self.total >= PLAIN_PROGRESS_FROM && percent / 25 > self.quarters && percent < 100 {
            self.quarters = percent / 25;
            println!("{}: {held} / {} bytes ({percent}%)", self.rel, self.total);
        }
    }

    /// A line of its own, not overwritten by the progress line.
    fn note(&mut self, text: &str) {
        self.abandon();
        println!("{}: {text}", self.rel);
    }

    fn abandon(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }

    fn done(&mut self, report: &Uploaded) {
        if self.terminal {
            print!("\r\x1b[K");
            self.drawn = false;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        if report.resumed_from > 0 {
            println!(
                "{}: {} bytes uploaded (resumed at byte {}: the last of {} tries sent {} bytes; {seconds:.1} s)",
                self.rel, self.total, report.resumed_from, report.tries, report.last_sent
            );
        } else {
            println!("{}: {} bytes uploaded ({seconds:.1} s)", self.rel, self.total);
        }
    }
}

/// Extra fields of a push.
#[derive(Debug, Default)]
pub struct PushOptions {
    /// Alias to set.
    pub alias: Option<String>,
    /// Format, else guessed.
    pub format: Option<String>,
    /// Lineage.
    pub lineage: Lineage,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Description.
    pub description: String,
    /// Who.
    pub actor: String,
}

fn local(path: &Path, error: std::io::Error) -> ClientError {
    ClientError::Local(format!("{}: {error}", path.display()))
}

/// The regular files of `path` (a file or a directory), sorted, with relative paths.
fn local_files(path: &Path) -> Result<Vec<(String, PathBuf)>, ClientError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| local(path, e))?;
    if meta.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_owned();
        return Ok(vec![(name, path.to_owned())]);
    }
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), path.to_owned())];
    while let Some((prefix, dir)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| local(&dir, e))? {
            let entry = entry.map_err(|e| local(&dir, e))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| ClientError::Local(format!("file name {n:?} is not UTF-8")))?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type().map_err(|e| local(&entry.path(), e))?;
            if kind.is_dir() {
                pending.push((rel, entry.path()));
            } else if kind.is_file() {
                out.push((rel, entry.path()));
            } else {
                return Err(ClientError::Local(format!("{rel}: links and special files are not pushed")));
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn hash_file(path: &Path) -> Result<(Digest, u64), ClientError> {
    let file = tokio::fs::File::open(path).await.map_err(|e| local(path, e))?;
    let mut stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| local(path, e))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((Digest::from_hasher(hasher), size))
}

/// Checks a reference against the model it is for (its directory), before anything is sent:
/// the gateway binary passes one that reads the model's config.
pub type ReferenceCheck = fn(&Path, &Reference) -> Result<(), String>;

/// Runs one `modelgate registry` command, printing its result.
pub async fn run(args: RegistryArgs) -> Result<(), ClientError> {
    run_with(args, None).await
}

fn load_reference(path: &Path, input: Option<&str>) -> Result<Reference, ClientError> {
    crate::reference::load(path, input).map_err(|e| ClientError::Local(format!("--reference: {e}")))
}

/// Runs one `modelgate registry` command, checking references with `check`.
pub async fn run_with(args: RegistryArgs, check: Option<ReferenceCheck>) -> Result<(), ClientError> {
    let text = match &args.token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| local(path, e))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| ClientError::Token)?,
    };
    let token = Token::new(&text).map_err(|e| ClientError::Local(e.to_string()))?;
    let roots = match &args.ca_file {
        None => Vec::new(),
        Some(path) => crate::tls::ca_certificates("--ca-file", path).map_err(ClientError::Local)?,
    };
    let client = Client::trusting(&args.address, token, &roots);
    match args.command {
        RegistryCommand::Push {
            model,
            path,
            alias,
            format,
            run_id,
            git_commit,
            dataset_digest,
            params,
            metrics,
            tags,
            description,
            reference,
            reference_input,
        } => {
            // Read and checked before anything is uploaded: a reference that does not fit the
            // model is refused at registration, with the reason.
            let reference = match &reference {
                Some(file) => {
                    let loaded = load_reference(file, reference_input.as_deref())?;
                    if let Some(check) = check {
                        check(&path, &loaded).map_err(|e| ClientError::Local(format!("--reference: {e}")))?;
                    }
                    Some((loaded, file.display().to_string()))
                }
                None => None,
            };
            let mut metric_values = BTreeMap::new();
            for (k, v) in metrics {
                let number: f64 =
                    v.parse().map_err(|_| ClientError::Local(format!("metric {k}={v}: the value must be a number")))?;
                metric_values.insert(k, number);
            }
            let lineage = Lineage {
                run_id,
                git_commit,
                dataset_digest,
                parameters: params.into_iter().collect(),
                metrics: metric_values,
                tags: BTreeMap::new(),
            };
            let options = PushOptions {
                alias,
                format,
                lineage,
                tags: tags.into_iter().collect(),
                description,
                actor: args.actor,
            };
            let pushed = client.push(&model, &path, options).await?;
            if let Some((reference, source)) = reference {
                let version = pushed["version"].as_i64().unwrap_or(0);
                client.set_reference(&model, version, &reference, &source).await?;
            }
        }
        RegistryCommand::Reference { model, version, file, input } => {
            let reference = load_reference(&file, input.as_deref())?;
            client.set_reference(&model, version, &reference, &file.display().to_string()).await?;
        }
        RegistryCommand::Versions { model } => {
            let listed = client.get(&format!("/cp/v1/models/{model}/versions")).await?;
            println!("{:>7}  {:<20}  {:<11}  {:<19}  aliases", "version", "status", "format", "manifest");
            for v in listed["versions"].as_array().into_iter().flatten() {
                let digest = v["manifest_digest"].as_str().unwrap_or("-");
                let aliases: Vec<&str> =
                    v["aliases"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:>7}  {:<20}  {:<11}  {:<19}  {}",
                    v["version"].as_i64().unwrap_or(0),
                    v["status"].as_str().unwrap_or(""),
                    v["format"].as_str().unwrap_or("-"),
                    digest.get(..19).unwrap_or(digest),
                    aliases.join(",")
                );
            }
        }
        RegistryCommand::Show { model, version } => {
            let found = client.get(&format!("/cp/v1/models/{model}/versions/{version}")).await?;
            println!("{}", serde_json::to_string_pretty(&found).unwrap_or_default());
        }
        RegistryCommand::Alias { model, alias, version, if_match, reason } => {
            client.set_alias(&model, &alias, version, if_match, &args.actor, &reason).await?;
        }
        RegistryCommand::History { model, alias } => {
            let query = alias.map(|a| format!("?alias={a}")).unwrap_or_default();
            let history = client.get(&format!("/cp/v1/models/{model}/history{query}")).await?;
            for h in history["history"].as_array().into_iter().flatten() {
                let show = |v: &Value| v.as_i64().map_or_else(|| "-".to_owned(), |n| n.to_string());
                println!(
                    "generation {:>5}  {:<12} {:>4} -> {:<4}  by {}  {}",
                    h["generation"].as_i64().unwrap_or(0),
                    h["alias"].as_str().unwrap_or(""),
                    show(&h["from_version"]),
                    show(&h["to_version"]),
                    h["actor"].as_str().unwrap_or(""),
                    h["reason"].as_str().unwrap_or("")
                );
            }
        }
        RegistryCommand::Pull { model, version, dir } => {
            client.pull(&model, &version, &dir).await?;
        }
    }
    Ok(())
}
