//! The model repository: Triton's on-disk layout
//! (`<root>/<model>/[config.pbtxt]`, `<root>/<model>/<version>/model.onnx`),
//! the table of served versions, and their lifecycle.
//!
//! The table is an immutable snapshot behind `ArcSwap`: the request path loads
//! it without a lock. A load builds and warms the new versions off to the
//! side and publishes them in one swap; versions that leave the table drain
//! by reference count (in-flight requests hold an `Arc`), and their instance
//! threads exit once the last request is answered. A version that fails to
//! load is reported with its reason and never replaces one that serves.

pub mod config_message;
pub mod model_config;
mod overrides;
pub mod pbtxt;
mod settings;
mod version;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use modelgate_backend::ModelLoader;

pub use model_config::ModelConfig;
pub use overrides::{BatchingOverride, ModelOverrides};
pub use settings::RepositorySettings;
pub use version::{LoadError, ModelVersion};

use crate::drift::Profiler;
use crate::error::Error;
use model_config::{ConfigFile, parse_config_file};
use version::{VersionPlan, load_version};

/// The state of one version in the table.
#[derive(Clone, Debug)]
pub enum VersionState {
    /// Loading; not yet serving.
    Loading,
    /// Serving.
    Ready(Arc<ModelVersion>),
    /// Not serving: unloaded, or failed to load (`failed`).
    Unavailable {
        /// Why.
        reason: String,
        /// A load failure (counts against strict readiness) rather than an unload.
        failed: bool,
    },
}

impl VersionState {
    /// Triton's state name.
    pub fn name(&self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Ready(_) => "READY",
            VersionState::Unavailable { .. } => "UNAVAILABLE",
        }
    }
}

/// The versions of one model, or why the model could not be read at all.
#[derive(Clone, Debug, Default)]
pub struct ModelEntry {
    /// Versions by number.
    pub versions: BTreeMap<u64, VersionState>,
    /// A failure before any version was tried (bad config, no loader).
    pub error: Option<String>,
}

impl ModelEntry {
    /// The highest ready version.
    pub fn latest_ready(&self) -> Option<&Arc<ModelVersion>> {
        self.versions.values().rev().find_map(|s| match s {
            VersionState::Ready(v) => Some(v),
            _ => None,
        })
    }

    /// The state of `version` after a load that failed for `reason`: a ready
    /// instance of it keeps serving; otherwise it is failed.
    fn after_failed_load(&self, version: u64, reason: String) -> VersionState {
        match self.versions.get(&version) {
            Some(ready @ VersionState::Ready(_)) => ready.clone(),
            _ => VersionState::Unavailable { reason, failed: true },
        }
    }
}

/// A snapshot of every model the repository has tried to load.
#[derive(Clone, Debug, Default)]
pub struct ModelTable {
    /// Models by name.
    pub models: BTreeMap<String, ModelEntry>,
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, when the model has been loaded.
    pub version: Option<u64>,
    /// Triton state name, when known.
    pub state: Option<&'static str>,
    /// Why it is not ready.
    pub reason: String,
}

/// A platform the gateway was built for whose runtime could not be opened.
#[derive(Clone, Debug)]
pub struct MissingRuntime {
    /// Triton platform name.
    pub platform: &'static str,
    /// Triton backend name.
    pub backend: &'static str,
    /// Model file name it would serve.
    pub filename: &'static str,
    /// Why it is unavailable.
    pub reason: String,
}

/// The loaders the gateway has, and the ones it could not start.
#[derive(Clone, Default)]
pub struct Loaders {
    /// Working loaders.
    pub ready: Vec<Arc<dyn ModelLoader>>,
    /// Loaders whose runtime is missing: models for them fail with this reason.
    pub missing: Vec<MissingRuntime>,
}

impl std::fmt::Debug for Loaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready: Vec<&str> = self.ready.iter().map(|l| l.platform()).collect();
        f.debug_struct("Loaders").field("ready", &ready).field("missing", &self.missing).finish()
    }
}

impl Loaders {
    /// Picks the loader for a model: by the config's platform or backend, else
    /// by which model file its version directories hold.
    fn for_model(&self, file: &ConfigFile, version_dirs: &[(u64, PathBuf)]) -> Result<Arc<dyn ModelLoader>, String> {
        let wanted_platform = file.platform.as_deref();
        let wanted_backend = file.backend.as_deref();
        if wanted_platform.is_some() || wanted_backend.is_some() {
            if let Some(l) = self
                .ready
                .iter()
                .find(|l| wanted_platform == Some(l.platform()) || wanted_backend == Some(l.backend_name()))
            {
                return Ok(l.clone());
            }
            if let Some(m) =
                self.missing.iter().find(|m| wanted_platform == Some(m.platform) || wanted_backend == Some(m.backend))
            {
                return Err(m.reason.clone());
            }
            return Err(format!(
                "no backend for platform '{}' / backend '{}' in this build",
                wanted_platform.unwrap_or(""),
                wanted_backend.unwrap_or("")
            ));
        }
        let has = |filename: &str| version_dirs.iter().any(|(_, d)| d.join(filename).exists());
        let custom = file.default_model_filename.as_deref();
        if let Some(l) = self.ready.iter().find(|l| has(custom.unwrap_or(l.default_filename()))) {
            return Ok(l.clone());
        }
        if let Some(m) = self.missing.iter().find(|m| has(custom.unwrap_or(m.filename))) {
            return Err(m.reason.clone());
        }
        Err("no model file this gateway can serve (model.onnx, model.pt) and no platform in config.pbtxt".into())
    }
}

/// The repository and its table of served versions.
#[derive(Debug)]
pub struct Repository {
    settings: RepositorySettings,
    /// Per-model settings from the gateway's config, over `config.pbtxt`.
    overrides: BTreeMap<String, ModelOverrides>,
    loaders: Loaders,
    table: ArcSwap<ModelTable>,
    /// One load or unload at a time: racing loads of one model would publish
    /// in an arbitrary order.
    operations: tokio::sync::Mutex<()>,
    /// Versions loaded one by one ([`Repository::load_version`]) beyond the
    /// version policy, by model: a reload of the model keeps them. Changed
    /// only under `operations`.
    pinned: parking_lot::Mutex<HashMap<String, BTreeSet<u64>>>,
    started: AtomicBool,
    /// False from when a registry follower starts until its first desired state
    /// is applied (or found unreachable): a pod is not ready before its models are.
    synced: AtomicBool,
    /// Versions pulled from a registry, laid out as a second repository (`sync`);
    /// a model in the directory repository takes precedence unless adopted.
    pulled: Option<PathBuf>,
    /// Directory models handed over to the registry (seeded from this directory):
    /// read from the pulled repository from then on.
    adopted: parking_lot::RwLock<BTreeSet<String>>,
    /// The drift profiler every loaded version registers with, when `[drift]` is on.
    drift: Option<Arc<Profiler>>,
}

/// Checks a model name: it becomes a directory name, so no separators, no
/// dot-names, no control characters.
pub fn validate_model_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid model name {:?}: use up to 128 letters, digits, '_', '-' or '.', not starting with '.'",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Triton ignores version directories that are not numbers or that start with 0.
fn parse_version_dir(name: &str) -> Option<u64> {
    if name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

impl Repository {
    /// A repository with an empty table; call [`Repository::load_startup_models`].
    pub fn new(
        settings: RepositorySettings,
        overrides: BTreeMap<String, ModelOverrides>,
        loaders: Loaders,
    ) -> Repository {
        Repository {
            settings,
            overrides,
            loaders,
            table: ArcSwap::from_pointee(ModelTable::default()),
            operations: tokio::sync::Mutex::new(()),
            pinned: parking_lot::Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            synced: AtomicBool::new(true),
            pulled: None,
            adopted: parking_lot::RwLock::new(BTreeSet::new()),
            drift: None,
        }
    }

    /// Registers every version loaded from now on with the drift profiler.
    pub fn with_drift(mut self, profiler: Arc<Profiler>) -> Repository {
        self.drift = Some(profiler);
        self
    }

    /// The drift profiler, when `[drift]` is on.
    pub fn drift(&self) -> Option<&Arc<Profiler>> {
        self.drift.as_ref()
    }

    /// Also serves the versions pulled from a registry under `root` (one directory
    /// per model, one per version, each with its own `config.pbtxt`).
    pub fn with_pulled_models(mut self, root: PathBuf) -> Repository {
        self.pulled = Some(root);
        self
    }

    /// Whether `name` is served from the directory repository (which a registry
    /// model must not shadow, unless the directory handed it over).
    pub fn in_directory(&self, name: &str) -> bool {
        validate_model_name(name).is_ok()
            && self.settings.path.join(name).is_dir()
            && !self.adopted.read().contains(name)
    }

    /// Hands a directory model over to the registry: its versions are read from
    /// the pulled repository from now on (the registry was seeded from it).
    pub fn adopt(&self, name: &str) {
        self.adopted.write().insert(name.to_owned());
    }

    /// The directory a model is read from: the directory repository's, else (or
    /// once adopted) the pulled one's.
    fn model_dir(&self, name: &str) -> PathBuf {
        let own = self.settings.path.join(name);
        match &self.pulled {
            Some(pulled) if !own.is_dir() || self.adopted.read().contains(name) => pulled.join(name),
            _ => own,
        }
    }

    /// The repository settings.
    pub fn settings(&self) -> &RepositorySettings {
        &self.settings
    }

    /// The current table.
    pub fn snapshot(&self) -> Arc<ModelTable> {
        self.table.load_full()
    }

    /// Loads the models the config names (all by default). Failures are
    /// recorded in the table; the server serves the rest.
    pub async fn load_startup_models(&self) {
        let names = match &self.settings.load_models {
            Some(names) => names.clone(),
            None => self.model_dirs().await,
        };
        for name in names {
            if let Err(e) = self.load(&name).await {
                tracing::error!(model = %name, error = %e, "model failed to load");
            }
        }
        self.started.store(true, Ordering::Release);
    }

    /// Model directories in the repository, sorted.
    async fn model_dirs(&self) -> Vec<String> {
        let root = self.settings.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut names: Vec<String> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| validate_model_name(n).is_ok())
                .collect();
            names.sort();
            names
        })
        .await
        .unwrap_or_default()
    }

    /// Holds readiness until [`Repository::first_sync_done`]: a registry
    /// follower is starting.
    pub fn await_first_sync(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// The follower applied its first desired state (or could not reach the
    /// control plane and served what it had).
    pub fn first_sync_done(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the server is ready: start-up loading (and a registry follower's
    /// first sync) is done and, with strict readiness, no model is loading or failed.
    pub fn is_ready(&self) -> bool {
        if !self.started.load(Ordering::Acquire) || !self.synced.load(Ordering::Acquire) {
            return false;
        }
        if !self.settings.strict_readiness {
            return true;
        }
        self.table.load().models.values().all(|entry| {
            entry.error.is_none()
                && entry.versions.values().all(|s| match s {
                    VersionState::Ready(_) => true,
                    VersionState::Loading => false,
                    VersionState::Unavailable { failed, .. } => !failed,
                })
        })
    }

    /// The version that serves `name` (the highest ready one unless `version`
    /// names one).
    pub fn resolve(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelVersion>, Error> {
        let table = self.table.load();
        let Some(entry) = table.models.get(name) else {
            return Err(Error::NotFound(format!("unknown model '{name}'")));
        };
        match version {
            Some(v) => match entry.versions.get(&v) {
                Some(VersionState::Ready(version)) => Ok(version.clone()),
                Some(VersionState::Loading) => {
                    Err(Error::Unavailable(format!("model '{name}' version {v} is loading")))
                }
                Some(VersionState::Unavailable { reason, .. }) => {
                    Err(Error::Unavailable(format!("model '{name}' version {v} is not ready: {reason}")))
                }
                None => Err(Error::NotFound(format!("unknown version {v} of model '{name}'"))),
            },
            None => entry.latest_ready().cloned().ok_or_else(|| {
                let why = entry.error.clone().or_else(|| {
                    entry.versions.values().rev().find_map(|s| match s {
                        VersionState::Unavailable { reason, .. } => Some(reason.clone()),
                        VersionState::Loading => Some("loading".into()),
                        VersionState::Ready(_) => None,
                    })
                });
                Error::Unavailable(format!(
                    "model '{name}' has no ready version{}",
                    why.map(|w| format!(": {w}")).unwrap_or_default()
                ))
            }),
        }
    }

    /// The ready versions of one model (`Some(name)`) or of every model, for
    /// metadata and statistics. An unknown model is NOT_FOUND.
    pub fn ready_versions(&self, model: Option<&str>) -> Result<Vec<Arc<ModelVersion>>, Error> {
        let table = self.table.load();
        let ready = |entry: &ModelEntry| -> Vec<Arc<ModelVersion>> {
            entry
                .versions
                .values()
                .filter_map(|s| match s {
                    VersionState::Ready(v) => Some(v.clone()),
                    _ => None,
                })
                .collect()
        };
        match model {
            None => Ok(table.models.values().flat_map(ready).collect()),
            Some(name) => {
                validate_model_name(name)?;
                let entry = table.models.get(name).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
                Ok(ready(entry))
            }
        }
    }

    /// Rows of the repository index: every model directory, with the state of
    /// each version tried. `ready_only` keeps READY rows alone.
    pub async fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.snapshot();
        let mut rows = Vec::new();
        let mut names = self.model_dirs().await;
        names.extend(table.models.keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            match table.models.get(&name) {
                None => rows.push(IndexEntry { name, version: None, state: None, reason: String::new() }),
                Some(entry) if entry.versions.is_empty() => rows.push(IndexEntry {
                    name,
                    version: None,
                    state: Some("UNAVAILABLE"),
                    reason: entry.error.clone().unwrap_or_default(),
                }),
                Some(entry) => {
                    for (&v, state) in &entry.versions {
                        let reason = match state {
                            VersionState::Unavailable { reason, .. } => reason.clone(),
                            _ => String::new(),
                        };
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(v),
                            state: Some(state.name()),
                            reason,
                        });
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == Some("READY"));
        }
        rows
    }

    fn publish(&self, name: &str, entry: ModelEntry) {
        for (&v, state) in &entry.versions {
            crate::metrics::model_state(name, v, state.name());
        }
        self.table.rcu(|table| {
            let mut next = ModelTable::clone(table);
            next.models.insert(name.to_owned(), entry.clone());
            next
        });
    }

    /// Reads a model's directory on a blocking thread: its config, loader and
    /// the version directories `wanted` selects. The outer error answers the
    /// caller (no such model); the inner one is why the model cannot load.
    async fn scan(&self, name: &str, wanted: BTreeSet<u64>) -> Result<Result<Scanned, String>, Error> {
        let dir = self.model_dir(name);
        let loaders = self.loaders.clone();
        // A pulled version is loaded one at a time, with its own config.
        let own_config = self.pulled.as_ref().is_some_and(|p| dir.starts_with(p));
        let scanned = tokio::task::spawn_blocking(move || scan_model(&dir, &loaders, &wanted, own_config))
            .await
            .map_err(|e| Error::Internal(format!("model scan task failed: {e}")))?;
        match scanned {
            Ok(mut plan) => {
                if let Some(overrides) = self.overrides.get(name) {
                    overrides.apply(&mut plan.0);
                    tracing::info!(model = name, ?overrides, "gateway config settings laid over config.pbtxt");
                }
                Ok(Ok(plan))
            }
            Err(ScanError::Missing) => Err(Error::NotFound(format!("model '{name}' is not in the model repository"))),
            Err(ScanError::Invalid(reason)) => Ok(Err(reason)),
        }
    }

    /// Builds one version on a blocking thread (loading and warming a model
    /// must not hold a runtime worker).
    async fn load_off_runtime(
        &self,
        name: &str,
        version: u64,
        dir: PathBuf,
        file: ConfigFile,
        loader: Arc<dyn ModelLoader>,
    ) -> Result<ModelVersion, LoadError> {
        let (settings, model, drift) = (self.settings.clone(), name.to_owned(), self.drift.clone());
        tokio::task::spawn_blocking(move || {
            load_version(VersionPlan {
                name: &model,
                version,
                dir: &dir,
                file: &file,
                loader: loader.as_ref(),
                settings: &settings,
                drift: drift.as_deref(),
            })
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::Task(e.to_string())))
    }

    /// Loads (or reloads) a model from its directory: reads its config, picks
    /// versions by policy, loads them, then publishes. Versions no longer
    /// selected are unloaded; a version that fails keeps an older instance of
    /// itself serving if there is one.
    pub async fn load(&self, name: &str) -> Result<(), Error> {
        validate_model_name(name)?;
        let _one_at_a_time = self.operations.lock().await;
        let pinned = self.pinned.lock().get(name).cloned().unwrap_or_default();
        let (file, loader, versions) = match self.scan(name, pinned).await? {
            Ok(plan) => plan,
            Err(reason) => {
                let mut entry = self.snapshot().models.get(name).cloned().unwrap_or_default();
                entry.error = Some(reason.clone());
                if entry.latest_ready().is_none() {
                    self.publish(name, entry);
                }
                return Err(Error::invalid(format!("failed to load '{name}': {reason}")));
            }
        };

        let previous = self.snapshot().models.get(name).cloned().unwrap_or_default();
        let mut loading = previous.clone();
        loading.error = None;
        for (v, _) in &versions {
            if !matches!(loading.versions.get(v), Some(VersionState::Ready(_))) {
                loading.versions.insert(*v, VersionState::Loading);
            }
        }
        self.publish(name, loading);

        let mut next = ModelEntry::default();
        let mut failures = Vec::new();
        for (v, version_dir) in versions {
            let loaded = self.load_off_runtime(name, v, version_dir, file.clone(), loader.clone()).await;
            let state = match loaded {
                Ok(version) => {
                    tracing::info!(model = %name, version = v, "model version ready");
                    VersionState::Ready(Arc::new(version))
                }
                Err(reason) => {
                    tracing::error!(model = %name, version = v, %reason, "model version failed to load");
                    failures.push(format!("version {v}: {reason}"));
                    previous.after_failed_load(v, reason.to_string())
                }
            };
            next.versions.insert(v, state);
        }
        if !file.ignored.is_empty() {
            tracing::info!(model = %name, ignored = ?file.ignored, "config fields accepted without effect");
        }
        if next.versions.is_empty() {
            next.error = Some("no version directory matches the version policy".into());
            failures.push("no version directory matches the version policy".into());
        }
        self.publish(name, next);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!("failed to load '{name}': {}", failures.join("; "))))
        }
    }

    /// Unloads every version of a model. In-flight requests finish.
    pub async fn unload(&self, name: &str) -> Result<(), Error> {
        validate_model_name(name)?;
        let _one_at_a_time = self.operations.lock().await;
        let table = self.snapshot();
        let Some(entry) = table.models.get(name) else {
            return Err(Error::NotFound(format!("model '{name}' is not loaded")));
        };
        let mut next = ModelEntry::default();
        for &v in entry.versions.keys() {
            next.versions.insert(v, VersionState::Unavailable { reason: "unloaded".into(), failed: false });
        }
        self.pinned.lock().remove(name);
        self.publish(name, next);
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }
}

impl Repository {
    /// Loads one version of a model beside the versions it serves, whatever
    /// the version policy says (a canary, typically); a reload of the model
    /// keeps it. The other versions are left as they are. Build, warm, then
    /// publish; on failure a ready instance of the same version keeps serving.
    pub async fn load_version(&self, name: &str, version: u64) -> Result<(), Error> {
        validate_model_name(name)?;
        let _one_at_a_time = self.operations.lock().await;
        let (file, loader, versions) = match self.scan(name, BTreeSet::from([version])).await? {
            Ok(plan) => plan,
            Err(reason) => {
                return Err(Error::invalid(format!("failed to load '{name}' version {version}: {reason}")));
            }
        };
        let Some((_, version_dir)) = versions.into_iter().find(|(v, _)| *v == version) else {
            return Err(Error::NotFound(format!("model '{name}' has no version directory {version}")));
        };
        let previous = self.snapshot().models.get(name).cloned().unwrap_or_default();
        let mut loading = previous.clone();
        if !matches!(loading.versions.get(&version), Some(VersionState::Ready(_))) {
            loading.versions.insert(version, VersionState::Loading);
            self.publish(name, loading);
        }
        let loaded = self.load_off_runtime(name, version, version_dir, file, loader).await;
        let mut next = self.snapshot().models.get(name).cloned().unwrap_or_default();
        let result = match loaded {
            Ok(loaded) => {
                tracing::info!(model = %name, version, "model version ready");
                next.versions.insert(version, VersionState::Ready(Arc::new(loaded)));
                self.pinned.lock().entry(name.to_owned()).or_default().insert(version);
                Ok(())
            }
            Err(reason) => {
                tracing::error!(model = %name, version, %reason, "model version failed to load");
                next.versions.insert(version, previous.after_failed_load(version, reason.to_string()));
                Err(Error::invalid(format!("failed to load '{name}' version {version}: {reason}")))
            }
        };
        self.publish(name, next);
        result
    }

    /// Unloads one version of a model; the others keep serving, and in-flight
    /// requests of this one finish. A reload of the model brings it back only
    /// if the version policy selects it.
    pub async fn unload_version(&self, name: &str, version: u64) -> Result<(), Error> {
        validate_model_name(name)?;
        let _one_at_a_time = self.operations.lock().await;
        let mut entry = self
            .snapshot()
            .models
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not loaded")))?;
        if !entry.versions.contains_key(&version) {
            return Err(Error::NotFound(format!("model '{name}' has no version {version} loaded")));
        }
        entry.versions.insert(version, VersionState::Unavailable { reason: "unloaded".into(), failed: false });
        if let Some(pinned) = self.pinned.lock().get_mut(name) {
            pinned.remove(&version);
        }
        self.publish(name, entry);
        tracing::info!(model = %name, version, "model version unloaded");
        Ok(())
    }
}

enum ScanError {
    Missing,
    Invalid(String),
}

type Scanned = (ConfigFile, Arc<dyn ModelLoader>, Vec<(u64, PathBuf)>);

/// Reads a model directory: config, loader, and the versions the policy
/// selects, plus the `pinned` ones that exist.
fn scan_model(dir: &Path, loaders: &Loaders, pinned: &BTreeSet<u64>, own_config: bool) -> Result<Scanned, ScanError> {
    if !dir.is_dir() {
        return Err(ScanError::Missing);
    }
    let config_path = dir.join("config.pbtxt");
    let file = if config_path.exists() {
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| ScanError::Invalid(format!("cannot read config.pbtxt: {e}")))?;
        parse_config_file(&text).map_err(|e| ScanError::Invalid(e.0))?
    } else {
        ConfigFile::default()
    };
    let mut available: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| ScanError::Invalid(format!("cannot list the model directory: {e}")))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((parse_version_dir(e.file_name().to_str()?)?, e.path())))
        .collect();
    available.sort();
    let file = match own_config.then(|| own_version_config(&available, pinned)).transpose()?.flatten() {
        Some(own) => own,
        None => file,
    };
    let loader = loaders.for_model(&file, &available).map_err(ScanError::Invalid)?;
    let numbers: Vec<u64> = available.iter().map(|(v, _)| *v).collect();
    let policy = file.version_policy.clone().unwrap_or(model_config::VersionPolicy::Latest(1));
    let selected = policy.select(&numbers);
    let versions = available.into_iter().filter(|(v, _)| selected.contains(v) || pinned.contains(v)).collect();
    Ok((file, loader, versions))
}

/// A pulled version's own `config.pbtxt` (`<model>/<version>/config.pbtxt`),
/// when one version alone is asked for: versions of a registry model may
/// differ, and its `name` is the registry's business, not this gateway's (the
/// served name comes from the follow rule).
fn own_version_config(available: &[(u64, PathBuf)], pinned: &BTreeSet<u64>) -> Result<Option<ConfigFile>, ScanError> {
    let [version] = pinned.iter().collect::<Vec<_>>()[..] else { return Ok(None) };
    let Some((_, dir)) = available.iter().find(|(v, _)| v == version) else { return Ok(None) };
    let path = dir.join("config.pbtxt");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ScanError::Invalid(format!("cannot read version {version}'s config.pbtxt: {e}")))?;
    let mut file = parse_config_file(&text).map_err(|e| ScanError::Invalid(format!("version {version}: {}", e.0)))?;
    file.name = None;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_that_could_escape_the_repository_are_refused() {
        for bad in
            ["", "..", ".", "../etc", "a/b", "a\\b", "/etc/passwd", " ..", "a b", "a\0b", ".hidden", &"x".repeat(200)]
        {
            assert!(validate_model_name(bad).is_err(), "{bad:?}");
        }
        for good in ["simple", "mlp_v2", "resnet-50", "a.b", "Model1"] {
            assert!(validate_model_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn version_directories_follow_tritons_rules() {
        assert_eq!(parse_version_dir("1"), Some(1));
        assert_eq!(parse_version_dir("42"), Some(42));
        assert_eq!(parse_version_dir("0"), None);
        assert_eq!(parse_version_dir("01"), None);
        assert_eq!(parse_version_dir("v1"), None);
        assert_eq!(parse_version_dir("1.0"), None);
    }
}
