//! modelgate's model registry, the first part of the embedded control plane.
//!
//! Module map:
//! - [`name`], [`digest`], [`manifest`]: the checked values everything else trusts.
//! - [`types`]: models, versions, aliases, events as the API shows them.
//! - [`store`]: the metadata in SQLite or PostgreSQL (one code path, sqlx `Any`).
//! - [`blobs`]: content-addressed files under `<data-dir>/blobs/sha256/`, or in a
//!   [`bucket`] (S3, GCS, Azure through `object_store`).
//! - [`error`]: the one error type and its HTTP status mapping.
//! - [`import`]: hashing a version's source files into blobs in the background.
//! - [`mirror`]: mirror mode, following an external MLflow Model Registry.
//! - [`cli`]: the `control-plane` flags and runner; [`client`]: `modelgate registry ...`.
//! - [`drift`]: drift references, the evaluation of gateways' windows, the evaluator loop.
//! - [`feedback`]: predictions gateways share so that ground truth joins at any replica.
//! - [`sync`]: the desired state gateways pull and the reports they send back.
//! - [`api`]: `/cp/v1`, the MLflow subset and the artifact proxy, behind a bearer token.
#![forbid(unsafe_code)]

pub mod api;
pub mod blobs;
pub mod bucket;
pub mod cli;
pub mod client;
pub mod digest;
pub mod drift;
pub mod error;
pub mod feedback;
pub mod import;
pub mod manifest;
pub mod mirror;
pub mod name;
pub mod reference;
pub mod store;
pub mod sync;
pub mod tls;
pub mod types;

pub use error::RegistryError;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blobs::BlobStore;
use manifest::Limits;
use store::Store;

/// What the registry needs to open.
#[derive(Clone, Debug)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://...`.
    pub db_url: String,
    /// Holds `blobs/` and `artifacts/` (and `registry.db` by default).
    pub data_dir: PathBuf,
    /// Manifest and blob bounds.
    pub limits: Limits,
    /// Directories under which `file://` sources may be imported (none by default).
    pub file_roots: Vec<PathBuf>,
    /// How drift is evaluated.
    pub drift: drift::DriftSettings,
    /// Blobs in object storage instead of `<data_dir>/blobs/sha256/`.
    pub bucket: Option<bucket::BucketSettings>,
}

impl Config {
    /// The default database for a data directory: `sqlite://<data_dir>/registry.db`.
    pub fn default_db_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("registry.db").display())
    }
}

/// The registry: metadata store, blobs, and the settings the API needs.
#[derive(Debug)]
pub struct Registry {
    /// Metadata.
    pub store: Store,
    /// Content-addressed files.
    pub blobs: BlobStore,
    /// Bounds.
    pub limits: Limits,
    /// MLflow artifact proxy's tree (`<data-dir>/artifacts`).
    pub artifacts_root: PathBuf,
    /// Allowed `file://` roots, canonical.
    pub file_roots: Vec<PathBuf>,
    /// What mirror mode has done (empty when it is off).
    pub mirror: mirror::MirrorStatus,
    /// How drift is evaluated.
    pub drift: drift::DriftSettings,
    /// How long and how many shared feedback entries are kept.
    pub feedback: feedback::FeedbackSettings,
    /// When the last purge of feedback entries began (Unix ms).
    pub feedback_purged_ms: std::sync::atomic::AtomicI64,
    /// Cancelled when the API starts to shut down: long polls answer at once
    /// (so shutdown does not wait them out) and readiness turns 503.
    pub draining: tokio_util::sync::CancellationToken,
}

impl Registry {
    /// Opens the data directory and the database (migrating it), cleans stale uploads and
    /// restarts imports left pending by a previous run.
    pub async fn open(config: &Config) -> Result<Arc<Registry>, RegistryError> {
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .map_err(|e| RegistryError::io("creating the data directory", e))?;
        let artifacts_root = config.data_dir.join("artifacts");
        tokio::fs::create_dir_all(&artifacts_root)
            .await
            .map_err(|e| RegistryError::io("creating the artifact directory", e))?;
        let bucket = match &config.bucket {
            Some(settings) => {
                let bucket = bucket::Bucket::open(settings)?;
                bucket.check().await?;
                Some(bucket)
            }
            None => None,
        };
        let blobs = BlobStore::open(&config.data_dir, config.limits.max_blob_size, bucket).await?;
        let store = Store::connect(&config.db_url).await?;
        let file_roots = config.file_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
        let registry = Arc::new(Registry {
            store,
            blobs,
            limits: config.limits,
            artifacts_root,
            file_roots,
            mirror: mirror::MirrorStatus::default(),
            drift: config.drift.clone(),
            feedback: feedback::FeedbackSettings::from_env()?,
            // The first purge comes one interval after start, with the first writes.
            feedback_purged_ms: std::sync::atomic::AtomicI64::new(store::now_ms()),
            draining: tokio_util::sync::CancellationToken::new(),
        });
        import::resume_pending(&registry).await?;
        Ok(registry)
    }
}
