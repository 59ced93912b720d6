//! Mirror mode: follow an external MLflow Model Registry over its REST API.
//!
//! Every `--mirror-interval` seconds the mirror lists the upstream's registered models
//! (`registered-models/search`, whose `aliases` field carries each model's aliases) and their
//! versions (`model-versions/search`). Each READY upstream version not imported yet is fetched
//! file by file through the upstream's artifact proxy (`model-versions/get-download-uri`, then
//! `/api/2.0/mlflow-artifacts/artifacts`), hashed into the blob store and registered READY with
//! its manifest; then the local aliases are moved to match the upstream's. Gateways read only
//! this registry: they never need MLflow or its bucket.
//!
//! Rules:
//! - **Idempotent.** An imported version carries the tags `mlflow.source_url` (the upstream)
//!   and `mlflow.source_version` (its upstream number), written in the same transaction as the
//!   version, so a restart finds what it imported and imports nothing twice.
//! - **Numbers.** A version keeps its upstream number when the local model holds only mirrored
//!   versions and that number is above every local one (the common case: the mirror is the
//!   model's only writer). Otherwise (the model has versions of its own, or an older upstream
//!   version turned READY after a newer one was imported) it takes the next local number;
//!   aliases are translated through `mlflow.source_version`, so either way they point at the
//!   same files. Local numbers never go down and are never reused.
//! - **Aliases.** The upstream decides the aliases it has (set or moved, actor `mirror`). An
//!   alias the upstream no longer has is deleted only if the mirror set it last: aliases set
//!   locally by people are left alone. An alias on an upstream version that is not imported
//!   (yet) waits.
//! - **Errors** are logged, counted and shown by `GET /cp/v1/mirror`; they never stop the other
//!   models. A version that cannot be imported as it is (a `runs:/`, `s3://` or other non-proxy
//!   URI, a file over the blob limit, a bad path) is not retried until the next start; an
//!   upstream that is down or answers 5xx is retried at the next poll.
//!
//! `http://` or `https://` upstreams; `https://` is verified against the system's CA certificates
//! and those of `--mirror-mlflow-ca` (PEM). When `MLFLOW_TRACKING_TOKEN` is set it is sent as
//! `Authorization: Bearer`, as MLflow's client does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Registry;
use crate::error::RegistryError;
use crate::manifest::{Entry, Manifest, check_path};
use crate::name::Name;
use crate::store::AliasWrite;
use crate::types::{Format, Lineage, NewVersion, Tags, Version};

/// The actor recorded in the alias history for the mirror's moves.
pub const ACTOR: &str = "mirror";
/// Version (and model) tag naming the upstream MLflow.
pub const TAG_SOURCE_URL: &str = "mlflow.source_url";
/// Version tag holding the upstream version number.
pub const TAG_SOURCE_VERSION: &str = "mlflow.source_version";

/// Connect timeout for upstream requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence inside one upstream response (a download may take long, but not stall).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Page size for the upstream searches.
const PAGE_SIZE: u32 = 200;
/// Deepest directory nesting followed in an upstream artifact tree.
const MAX_DEPTH: usize = 32;

/// Flags of mirror mode (in `modelgate control-plane` and `modelgate serve`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MirrorArgs {
    /// Follow this MLflow server's Model Registry (http://HOST:PORT or https://...): import its
    /// READY versions and keep their aliases in step.
    #[arg(long, value_name = "URL")]
    pub mirror_mlflow: Option<String>,
    /// CA certificates (a PEM file) trusted for an https:// upstream, besides the system's.
    #[arg(long, value_name = "FILE", requires = "mirror_mlflow")]
    pub mirror_mlflow_ca: Option<std::path::PathBuf>,
    /// Only these upstream models (comma-separated; default: all).
    #[arg(long, value_name = "A,B", value_delimiter = ',', requires = "mirror_mlflow")]
    pub mirror_models: Vec<String>,
    /// Seconds between two polls of the upstream.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "mirror_mlflow")]
    pub mirror_interval: u64,
}

/// What the mirror follows.
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// The upstream's base URL, without a trailing slash.
    pub upstream: String,
    /// Only these models (empty: all).
    pub models: BTreeSet<String>,
    /// Between two polls.
    pub interval: Duration,
    /// CA certificates trusted for the upstream besides the system's.
    pub roots: Vec<reqwest::Certificate>,
}

impl MirrorArgs {
    /// The mirror's configuration; `None` when mirror mode is off.
    pub fn config(&self) -> Result<Option<MirrorConfig>, MirrorError> {
        let Some(url) = &self.mirror_mlflow else { return Ok(None) };
        let upstream = url.trim_end_matches('/').to_owned();
        let host = upstream.strip_prefix("http://").or_else(|| upstream.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(MirrorError::Config(format!(
                "--mirror-mlflow '{url}': expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let roots = match &self.mirror_mlflow_ca {
            None => Vec::new(),
            Some(path) => crate::tls::ca_certificates("--mirror-mlflow-ca", path).map_err(MirrorError::Config)?,
        };
        if self.mirror_interval == 0 {
            return Err(MirrorError::Config("--mirror-interval must be at least 1 second".into()));
        }
        let models = self.mirror_models.iter().map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect();
        Ok(Some(MirrorConfig { upstream, models, interval: Duration::from_secs(self.mirror_interval), roots }))
    }
}

/// Why the mirror could not do something.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Bad flags.
    #[error("{0}")]
    Config(String),
    /// The upstream could not be reached or broke off.
    #[error("upstream {url}: {}", crate::error::with_causes(source))]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// The upstream answered an error status.
    #[error("upstream {url} answered {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of its body.
        body: String,
    },
    /// The upstream answered something this mirror does not understand.
    #[error("upstream {url}: unexpected answer: {why}")]
    Protocol {
        /// What was asked.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// A version whose files are not reachable through the upstream's artifact proxy.
    #[error("{0}")]
    Unsupported(String),
    /// A model named by `--mirror-models` that the upstream does not have.
    #[error("model '{0}' is not in the upstream registry")]
    NoSuchModel(String),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl MirrorError {
    /// Whether retrying the same version later can only fail the same way (so it is not
    /// retried until the next start).
    pub fn is_permanent(&self) -> bool {
        match self {
            MirrorError::Unsupported(_) | MirrorError::Config(_) => true,
            MirrorError::Registry(e) => matches!(
                e,
                RegistryError::TooLarge(_)
                    | RegistryError::InvalidManifest(_)
                    | RegistryError::InvalidName { .. }
                    | RegistryError::InvalidArgument(_)
                    | RegistryError::Unsupported(_)
            ),
            MirrorError::Unreachable { .. }
            | MirrorError::Status { .. }
            | MirrorError::Protocol { .. }
            | MirrorError::NoSuchModel(_) => false,
        }
    }
}

/// One version the mirror gave up on until the next start.
#[derive(Clone, Debug, Serialize)]
pub struct FailedVersion {
    /// The upstream model.
    pub model: String,
    /// The upstream version number.
    pub version: i64,
    /// Why.
    pub reason: String,
}

/// What the mirror has done, as `GET /cp/v1/mirror` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MirrorReport {
    /// Whether mirror mode is on.
    pub enabled: bool,
    /// The upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The models followed (empty: all).
    pub models: Vec<String>,
    /// Seconds between polls.
    pub interval_s: u64,
    /// Polls finished.
    pub polls: u64,
    /// Unix milliseconds of the last finished poll.
    pub last_poll_ms: Option<i64>,
    /// Versions imported since the start.
    pub imported: u64,
    /// Alias changes made since the start.
    pub alias_changes: u64,
    /// Errors since the start (each failed poll step counts once).
    pub errors: u64,
    /// The last error per model (`*` for the upstream as a whole), cleared when it syncs again.
    pub last_errors: BTreeMap<String, String>,
    /// Versions not retried until the next start.
    pub failed_versions: Vec<FailedVersion>,
}

/// The mirror's live report, shared with the API.
#[derive(Debug, Default)]
pub struct MirrorStatus(Mutex<MirrorReport>);

impl MirrorStatus {
    /// A copy of the report.
    pub fn report(&self) -> MirrorReport {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, change: impl FnOnce(&mut MirrorReport)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Starts the mirror in the background; it polls until the handle is aborted. An abort is safe
/// at any point: a half-downloaded file is a temp file removed on drop, and a version is created
/// in one transaction.
pub fn spawn(registry: Arc<Registry>, config: MirrorConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut mirror = Mirror::new(registry, config);
        let mut tick = tokio::time::interval(mirror.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(upstream = mirror.config.upstream, "mirroring an MLflow model registry");
        loop {
            tick.tick().await;
            mirror.poll().await;
        }
    })
}

/// The upstream model as its search shows it.
#[derive(Debug, Deserialize)]
struct UpModel {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    aliases: Vec<UpAlias>,
}

#[derive(Debug, Deserialize)]
struct UpAlias {
    alias: String,
    version: String,
}

#[derive(Debug, Deserialize)]
struct UpVersion {
    version: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UpFile {
    path: String,
    #[serde(default)]
    is_dir: bool,
    #[serde(default)]
    file_size: Option<u64>,
}

/// One mirror: its client, its settings and what it gave up on.
struct Mirror {
    registry: Arc<Registry>,
    config: MirrorConfig,
    http: reqwest::Client,
    token: Option<String>,
    /// (upstream model, upstream version) → why, for versions not retried until restart.
    failed: HashMap<(String, i64), String>,
}

impl Mirror {
    fn new(registry: Arc<Registry>, config: MirrorConfig) -> Mirror {
        let http = crate::tls::trusting(reqwest::Client::builder(), &config.roots)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let token = std::env::var("MLFLOW_TRACKING_TOKEN").ok().filter(|t| !t.trim().is_empty());
        registry.mirror.update(|r| {
            r.enabled = true;
            r.upstream = Some(config.upstream.clone());
            r.models = config.models.iter().cloned().collect();
            r.interval_s = config.interval.as_secs();
        });
        Mirror { registry, config, http, token, failed: HashMap::new() }
    }

    /// One pass over the upstream; every error is recorded, none stops the other models.
    async fn poll(&mut self) {
        match self.upstream_models().await {
            Ok(models) => {
                self.clear_error("*");
                let mut seen = BTreeSet::new();
                for model in models {
                    if !self.config.models.is_empty() && !self.config.models.contains(&model.name) {
                        continue;
                    }
                    seen.insert(model.name.clone());
                    match self.sync_model(&model).await {
                        Ok(()) => self.clear_error(&model.name),
                        Err(error) => self.record_error(&model.name, &error),
                    }
                }
                for missing in self.config.models.difference(&seen).cloned().collect::<Vec<_>>() {
                    self.record_error(&missing, &MirrorError::NoSuchModel(missing.clone()));
                }
            }
            Err(error) => self.record_error("*", &error),
        }
        let now = crate::store::now_ms();
        self.registry.mirror.update(|r| {
            r.polls += 1;
            r.last_poll_ms = Some(now);
        });
    }

    fn record_error(&self, key: &str, error: &MirrorError) {
        let text = error.to_string();
        self.registry.mirror.update(|r| {
            r.errors += 1;
            // Log a repeated error once, not at every poll.
            if r.last_errors.get(key) != Some(&text) {
                tracing::warn!(upstream = self.config.upstream, model = key, error = text, "mirror error");
                r.last_errors.insert(key.to_owned(), text);
            }
        });
    }

    fn clear_error(&self, key: &str) {
        self.registry.mirror.update(|r| {
            r.last_errors.remove(key);
        });
    }

    // === one model ===

    async fn sync_model(&mut self, up: &UpModel) -> Result<(), MirrorError> {
        let name = Name::parse("model", &up.name)?;
        let model = name.as_str();
        if self.registry.store.model(model).await?.is_none() {
            let tags = Tags::from([(TAG_SOURCE_URL.to_owned(), self.config.upstream.clone())]);
            match self.registry.store.create_model(model, up.description.as_deref().unwrap_or(""), &tags).await {
                Ok(_) | Err(RegistryError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut versions = self.upstream_versions(model).await?;
        versions.sort_by_key(|(n, _)| *n);
        let mut local = self.registry.store.versions(Some(model)).await?;
        let mut imported = self.imported(&local);
        // Errors of single versions are recorded and the next version is tried; the first one
        // is also the model's outcome, so the report shows it.
        let mut first_error = None;
        for (number, version) in &versions {
            if imported.contains_key(number)
                || version.status.as_deref() != Some("READY")
                || self.failed.contains_key(&(up.name.clone(), *number))
            {
                continue;
            }
            match self.import(model, *number, version, &local).await {
                Ok(created) => {
                    tracing::info!(model, upstream_version = number, version = created.version, "mirrored a version");
                    self.registry.mirror.update(|r| r.imported += 1);
                    imported.insert(*number, created.version);
                    local.push(created);
                }
                Err(error) if error.is_permanent() => {
                    let reason = error.to_string();
                    tracing::warn!(model, upstream_version = number, reason, "mirror: version skipped until restart");
                    self.registry.mirror.update(|r| {
                        r.errors += 1;
                        r.failed_versions.push(FailedVersion {
                            model: up.name.clone(),
                            version: *number,
                            reason: reason.clone(),
                        });
                    });
                    self.failed.insert((up.name.clone(), *number), reason);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        self.sync_aliases(model, &up.aliases, &imported).await?;
        first_error.map_or(Ok(()), Err)
    }

    /// Upstream version → local version, from the tags of the versions this upstream imported.
    fn imported(&self, local: &[Version]) -> BTreeMap<i64, i64> {
        local
            .iter()
            .filter(|v| v.tags.get(TAG_SOURCE_URL) == Some(&self.config.upstream))
            .filter_map(|v| Some((v.tags.get(TAG_SOURCE_VERSION)?.parse().ok()?, v.version)))
            .collect()
    }

    async fn sync_aliases(
        &self,
        model: &str,
        upstream: &[UpAlias],
        imported: &BTreeMap<i64, i64>,
    ) -> Result<(), MirrorError> {
        let current: BTreeMap<String, crate::types::Alias> =
            self.registry.store.aliases(model).await?.into_iter().map(|a| (a.alias.clone(), a)).collect();
        let mut wanted = BTreeSet::new();
        for up in upstream {
            let alias = Name::parse("alias", &up.alias)?;
            wanted.insert(alias.as_str().to_owned());
            let number = parse_number(&up.version, &self.config.upstream)?;
            let Some(&target) = imported.get(&number) else {
                tracing::debug!(model, alias = up.alias, number, "mirror: alias waits for its version");
                continue;
            };
            let here = current.get(alias.as_str());
            if here.is_some_and(|a| a.version == target) {
                continue;
            }
            let write = AliasWrite {
                // Conditional on what was just read: a concurrent local move wins this round.
                if_match: Some(here.map_or(0, |a| a.generation)),
                actor: ACTOR.into(),
                reason: format!("mirror of {}: {model}@{alias} is upstream version {number}", self.config.upstream),
            };
            self.registry.store.set_alias(model, alias.as_str(), target, &write).await?;
            tracing::info!(model, alias = alias.as_str(), version = target, "mirror moved an alias");
            self.registry.mirror.update(|r| r.alias_changes += 1);
        }
        for (alias, here) in &current {
            if wanted.contains(alias) || here.updated_by != ACTOR {
                continue;
            }
            let write = AliasWrite {
                if_match: Some(here.generation),
                actor: ACTOR.into(),
                reason: format!("mirror of {}: {model}@{alias} was deleted upstream", self.config.upstream),
            };
            self.registry.store.delete_alias(model, alias, &write).await?;
            tracing::info!(model, alias, "mirror deleted an alias");
            self.registry.mirror.update(|r| r.alias_changes += 1);
        }
        Ok(())
    }

    // === one version ===

    async fn import(
        &self,
        model: &str,
        number: i64,
        up: &UpVersion,
        local: &[Version],
    ) -> Result<Version, MirrorError> {
        let query = [("name", model.to_owned()), ("version", number.to_string())];
        let answer = self.get_json("/api/2.0/mlflow/model-versions/get-download-uri", &query).await?;
        let uri = answer["artifact_uri"].as_str().unwrap_or_default().to_owned();
        let Some(root) = crate::import::mlflow_artifacts_path(&uri) else {
            return Err(MirrorError::Unsupported(format!(
                "version {number} of '{model}': its files are at '{uri}', which this mirror cannot fetch; only \
                 mlflow-artifacts:/ URIs (an upstream started with --serve-artifacts) are mirrored"
            )));
        };
        let root = root?.to_owned();
        let files = self.list_files(&root).await?;
        let limits = self.registry.limits;
        let mut entries = Vec::with_capacity(files.len());
        let mut config_pbtxt = None;
        for (path, listed_size) in files {
            if let Some(size) = listed_size.filter(|s| *s > limits.max_blob_size) {
                return Err(RegistryError::TooLarge(format!(
                    "'{path}' of version {number} of '{model}' has {size} bytes; at most {} per file",
                    limits.max_blob_size
                ))
                .into());
            }
            let remote = if path.is_empty() { root.clone() } else { format!("{root}/{path}") };
            let (sha256, size) = self.download(&remote).await?;
            if listed_size.is_some_and(|s| s != size) {
                return Err(MirrorError::Protocol {
                    url: remote,
                    why: format!("listed as {} bytes, {size} arrived", listed_size.unwrap_or(0)),
                });
            }
            let path = if path.is_empty() { root.rsplit('/').next().unwrap_or("model").to_owned() } else { path };
            if path == "config.pbtxt" && size <= crate::import::MAX_CONFIG_PBTXT {
                config_pbtxt =
                    self.registry.blobs.read_text(&sha256, crate::import::MAX_CONFIG_PBTXT).await.ok().flatten();
            }
            entries.push(Entry { path, size, sha256 });
        }
        let manifest = Manifest::new(entries, limits)?;
        let tags = Tags::from([
            (TAG_SOURCE_URL.to_owned(), self.config.upstream.clone()),
            (TAG_SOURCE_VERSION.to_owned(), number.to_string()),
        ]);
        let new = NewVersion {
            source: up.source.clone().unwrap_or(uri),
            format: Format::guess(manifest.files()),
            config_pbtxt,
            manifest: Some(manifest),
            lineage: Lineage { run_id: up.run_id.clone().filter(|r| !r.is_empty()), ..Lineage::default() },
            description: up.description.clone().unwrap_or_default(),
            tags,
            creator: ACTOR.into(),
        };
        let only_mirrored = local.iter().all(|v| v.tags.get(TAG_SOURCE_URL) == Some(&self.config.upstream));
        let highest = local.iter().map(|v| v.version).max().unwrap_or(0);
        let keep_number = (only_mirrored && number > highest).then_some(number);
        Ok(self.registry.store.create_version_numbered(model, keep_number, new).await?)
    }

    /// The files under `root` in the upstream's artifact store, as (relative path, listed size);
    /// a root that is a single file is `("", None)`.
    async fn list_files(&self, root: &str) -> Result<Vec<(String, Option<u64>)>, MirrorError> {
        let max_files = self.registry.limits.max_files;
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), 0usize)];
        while let Some((dir, depth)) = pending.pop() {
            let listed = if dir.is_empty() { root.to_owned() } else { format!("{root}/{dir}") };
            let answer = self.get_json("/api/2.0/mlflow-artifacts/artifacts", &[("path", listed.clone())]).await?;
            let files: Vec<UpFile> = serde_json::from_value(answer["files"].clone()).unwrap_or_default();
            for file in files {
                // MLflow lists names relative to the listed directory.
                let name = file.path.rsplit('/').next().unwrap_or(&file.path);
                let rel = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
                check_path(&rel)?;
                if file.is_dir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(RegistryError::InvalidManifest(format!("'{rel}' is nested too deep")).into());
                    }
                    pending.push((rel, depth + 1));
                } else {
                    out.push((rel, file.file_size));
                    if out.len() > max_files {
                        return Err(RegistryError::InvalidManifest(format!(
                            "the upstream version has more than {max_files} files, the most accepted per version"
                        ))
                        .into());
                    }
                }
            }
        }
        // MLflow lists a file, or nothing, as an empty directory: try the root as one file.
        if out.is_empty() {
            out.push((String::new(), None));
        }
        out.sort();
        Ok(out)
    }

    /// Streams one upstream artifact into the blob store; returns its digest and size.
    async fn download(&self, path: &str) -> Result<(crate::digest::Digest, u64), MirrorError> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{}", self.config.upstream, encode_path(path));
        let response = self.send(self.http.get(&url), &url).await?;
        let body = response.bytes_stream().map(|chunk| chunk.map_err(|e| e.to_string()));
        Ok(self.registry.blobs.put_hashing(body).await?)
    }

    // === upstream listings ===

    async fn upstream_models(&self) -> Result<Vec<UpModel>, MirrorError> {
        let pages = self.search("/api/2.0/mlflow/registered-models/search", None, "registered_models").await?;
        pages.into_iter().map(|v| self.decode(v, "registered model")).collect()
    }

    async fn upstream_versions(&self, model: &str) -> Result<Vec<(i64, UpVersion)>, MirrorError> {
        // `model` passed Name::parse: no quote can break out of the filter.
        let filter = format!("name='{model}'");
        let pages = self.search("/api/2.0/mlflow/model-versions/search", Some(filter), "model_versions").await?;
        pages
            .into_iter()
            .map(|v| {
                let version: UpVersion = self.decode(v, "model version")?;
                Ok((parse_number(&version.version, &self.config.upstream)?, version))
            })
            .collect()
    }

    /// Every page of an upstream search.
    async fn search(
        &self,
        endpoint: &str,
        filter: Option<String>,
        key: &str,
    ) -> Result<Vec<serde_json::Value>, MirrorError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("max_results", PAGE_SIZE.to_string())];
            if let Some(filter) = &filter {
                query.push(("filter", filter.clone()));
            }
            if let Some(token) = &token {
                query.push(("page_token", token.clone()));
            }
            let mut answer = self.get_json(endpoint, &query).await?;
            if let serde_json::Value::Array(items) = answer[key].take() {
                out.extend(items);
            }
            match answer["next_page_token"].as_str() {
                Some(next) if !next.is_empty() && token.as_deref() != Some(next) => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, value: serde_json::Value, what: &str) -> Result<T, MirrorError> {
        serde_json::from_value(value)
            .map_err(|e| MirrorError::Protocol { url: self.config.upstream.clone(), why: format!("a {what}: {e}") })
    }

    async fn get_json(&self, endpoint: &str, query: &[(&str, String)]) -> Result<serde_json::Value, MirrorError> {
        let url = format!("{}{endpoint}", self.config.upstream);
        let response = self.send(self.http.get(&url).query(query), &url).await?;
        response.json().await.map_err(|e| MirrorError::Protocol { url, why: e.to_string() })
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, MirrorError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response =
            request.send().await.map_err(|source| MirrorError::Unreachable { url: url.to_owned(), source })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(MirrorError::Status { url: url.to_owned(), status, body })
    }
}

fn parse_number(text: &str, upstream: &str) -> Result<i64, MirrorError> {
    text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| MirrorError::Protocol {
        url: upstream.to_owned(),
        why: format!("version '{text}' is not a positive integer"),
    })
}

/// Percent-encodes each segment of a checked artifact path for a URL.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_percent_encoded_per_segment() {
        assert_eq!(encode_path("1/abc/artifacts/model/a b+c.onnx"), "1/abc/artifacts/model/a%20b%2Bc.onnx");
    }

    #[test]
    fn mirror_flags_want_an_http_or_https_upstream_a_pem_ca_and_a_positive_interval() {
        let args = |url: &str, interval| MirrorArgs {
            mirror_mlflow: Some(url.into()),
            mirror_mlflow_ca: None,
            mirror_models: vec!["a".into(), " ".into()],
            mirror_interval: interval,
        };
        let config = args("http://127.0.0.1:5000/", 10).config().unwrap().unwrap();
        assert_eq!(config.upstream, "http://127.0.0.1:5000");
        assert_eq!(config.models, BTreeSet::from(["a".to_owned()]));
        assert_eq!(args("https://mlflow.example", 10).config().unwrap().unwrap().upstream, "https://mlflow.example");
        for bad in ["mlflow.example:5000", "https://", "ftp://mlflow.example"] {
            assert!(args(bad, 10).config().is_err(), "{bad}");
        }
        assert!(args("http://127.0.0.1:5000", 0).config().is_err());
        assert!(MirrorArgs::default().config().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "no certificate here").unwrap();
        for ca in [not_pem, dir.path().join("missing.pem")] {
            let flags = MirrorArgs { mirror_mlflow_ca: Some(ca.clone()), ..args("https://mlflow.example", 10) };
            let error = flags.config().unwrap_err().to_string();
            assert!(error.contains("--mirror-mlflow-ca") && error.contains(&*ca.to_string_lossy()), "{error}");
        }
    }

    #[test]
    fn only_versions_that_cannot_change_are_given_up_on() {
        assert!(MirrorError::Unsupported("runs:/".into()).is_permanent());
        assert!(MirrorError::Registry(RegistryError::TooLarge("big".into())).is_permanent());
        assert!(!MirrorError::Registry(RegistryError::Unavailable).is_permanent());
        let status = MirrorError::Status {
            url: "u".into(),
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
        };
        assert!(!status.is_permanent());
    }
}
