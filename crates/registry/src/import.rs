//! Imports a version from a source already on this machine: the MLflow
//! artifact proxy's tree (`mlflow-artifacts:/...`) or an operator-allowed
//! directory (`file://...`). Every file is hashed into the blob store and the
//! manifest written in one transaction (`PENDING_REGISTRATION` → `READY`, or
//! `FAILED_REGISTRATION` with the reason). Imports left pending by a crash
//! restart when the registry opens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Registry;
use crate::error::RegistryError;
use crate::manifest::{Entry, Manifest, check_path};
use crate::types::{Format, Status};

/// Largest `config.pbtxt` read into the version record.
pub(crate) const MAX_CONFIG_PBTXT: u64 = 1 << 20;

/// Where a source's files are, refusing sources the registry does not import.
pub fn resolve_source(registry: &Registry, source: &str) -> Result<PathBuf, RegistryError> {
    if let Some(path) = mlflow_artifacts_path(source) {
        return Ok(registry.artifacts_root.join(path?));
    }
    if let Some(path) = source.strip_prefix("file://") {
        let canonical = std::fs::canonicalize(path).map_err(|_| {
            RegistryError::InvalidArgument(format!("source '{source}' does not exist on the control plane"))
        })?;
        if registry.file_roots.iter().any(|root| canonical.starts_with(root)) {
            return Ok(canonical);
        }
        return Err(RegistryError::Unsupported(format!(
            "source '{source}' is outside the directories the operator allows for file:// imports (--allow-file-root)"
        )));
    }
    if source.starts_with("runs:/") {
        return Err(RegistryError::Unsupported(format!(
            "source '{source}': runs:/ URIs are not supported (this registry has no tracking server); upload the files \
             through /api/2.0/mlflow-artifacts/artifacts and register mlflow-artifacts:/<path>"
        )));
    }
    Err(RegistryError::Unsupported(format!(
        "source '{source}': expected mlflow-artifacts:/<path> (uploaded through the artifact proxy) or an allowed file:// path"
    )))
}

/// The checked path inside the artifact store of an `mlflow-artifacts:/path` or
/// `mlflow-artifacts://host:port/path` URI; `None` for any other scheme.
pub(crate) fn mlflow_artifacts_path(source: &str) -> Option<Result<&str, RegistryError>> {
    let rest = source.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
        None => rest.trim_start_matches('/'),
    };
    let path = path.trim_end_matches('/');
    Some(check_path(path).map(|()| path).map_err(|e| RegistryError::InvalidArgument(format!("source '{source}': {e}"))))
}

/// Starts importing `version` of `model` from `source` in the background; the handle ends
/// when the outcome is recorded.
pub fn spawn(registry: Arc<Registry>, model: String, version: i64, source: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let outcome = import(&registry, &source).await.map_err(|e| e.to_string());
        if let Err(reason) = &outcome {
            tracing::warn!(model, version, source, reason, "import failed");
        }
        if let Err(error) = registry.store.finish_import(&model, version, outcome).await {
            // The version stays PENDING_REGISTRATION and is retried at the next start.
            tracing::error!(model, version, %error, "could not record the end of an import");
        }
    })
}

/// Registers every model directory of a Triton model repository (`dir/<model>/...`) as
/// version 1 with the alias `champion`, when the registry holds no model at all: a first
/// start of `modelgate serve` then shows its example models in the registry. Directories
/// that fail to import are logged and skipped. Returns the models registered.
pub async fn seed(registry: &Registry, dir: &Path) -> Result<Vec<String>, RegistryError> {
    if !registry.store.models().await?.is_empty() {
        return Ok(Vec::new());
    }
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| RegistryError::io("listing the model repository to seed from", e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| crate::name::Name::parse("model", name).is_ok() && !name.starts_with('.'))
        .collect();
    names.sort();
    let mut seeded = Vec::new();
    for (name, path) in names {
        let imported = hash_tree(registry, path.clone()).await;
        let (manifest, format, config_pbtxt) = match imported {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(model = name, %error, "not seeded into the registry");
                continue;
            }
        };
        let seeded_from = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let tags = [(crate::sync::SEEDED_FROM_TAG.to_owned(), seeded_from.display().to_string())].into();
        registry.store.create_model(&name, "seeded from the model repository at first start", &tags).await?;
        let version = crate::types::NewVersion {
            source: format!("file://{}", path.display()),
            format,
            config_pbtxt,
            manifest: Some(manifest),
            creator: "seed".into(),
            ..Default::default()
        };
        let created = registry.store.create_version(&name, version).await?;
        let write = crate::store::AliasWrite { if_match: None, actor: "seed".into(), reason: "first start".into() };
        registry.store.set_alias(&name, crate::types::CHAMPION, created.version, &write).await?;
        seeded.push(name);
    }
    Ok(seeded)
}

/// Restarts the imports a previous run left pending.
pub async fn resume_pending(registry: &Arc<Registry>) -> Result<(), RegistryError> {
    for version in registry.store.versions(None).await? {
        if version.status == Status::PendingRegistration {
            tracing::info!(model = version.model, version = version.version, "resuming an import");
            drop(spawn(registry.clone(), version.model, version.version, version.source));
        }
    }
    Ok(())
}

async fn import(
    registry: &Registry,
    source: &str,
) -> Result<(Manifest, Option<Format>, Option<String>), RegistryError> {
    hash_tree(registry, resolve_source(registry, source)?).await
}

/// Hashes every file under `root` into the blob store: the manifest, the format it
/// suggests, and the `config.pbtxt` if there is one.
async fn hash_tree(
    registry: &Registry,
    root: PathBuf,
) -> Result<(Manifest, Option<Format>, Option<String>), RegistryError> {
    let max_files = registry.limits.max_files;
    let files = tokio::task::spawn_blocking(move || walk(&root, max_files))
        .await
        .map_err(|e| RegistryError::Internal(format!("import walk task: {e}")))??;
    let mut entries = Vec::with_capacity(files.len());
    let mut config = None;
    for (path, file) in files {
        let handle = tokio::fs::File::open(&file).await.map_err(|e| RegistryError::io("opening a source file", e))?;
        let (sha256, size) = registry.blobs.put_hashing(tokio_util::io::ReaderStream::new(handle)).await?;
        if path == "config.pbtxt" && size <= MAX_CONFIG_PBTXT {
            config = tokio::fs::read_to_string(&file).await.ok();
        }
        entries.push(Entry { path, size, sha256 });
    }
    let manifest = Manifest::new(entries, registry.limits)?;
    let format = Format::guess(manifest.files());
    Ok((manifest, format, config))
}

/// The regular files under `root` (or `root` itself), with their relative paths; links and
/// special files are refused.
fn walk(root: &Path, max_files: usize) -> Result<Vec<(String, PathBuf)>, RegistryError> {
    let meta = std::fs::symlink_metadata(root).map_err(|_| {
        RegistryError::InvalidArgument("the source holds no file or directory on the control plane".into())
    })?;
    if meta.is_file() {
        let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_owned();
        return Ok(vec![(name, root.to_owned())]);
    }
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), root.to_owned())];
    while let Some((prefix, dir)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| RegistryError::io("listing a source directory", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::io("listing a source directory", e))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| RegistryError::InvalidManifest(format!("file name {n:?} is not UTF-8")))?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type().map_err(|e| RegistryError::io("reading a source file's type", e))?;
            if kind.is_dir() {
                pending.push((rel, entry.path()));
            } else if kind.is_file() {
                out.push((rel, entry.path()));
                if out.len() > max_files {
                    return Err(RegistryError::InvalidManifest(format!(
                        "the source has more than {max_files} files, the most accepted per version"
                    )));
                }
            } else {
                return Err(RegistryError::InvalidManifest(format!(
                    "'{rel}' is a link or a special file; only regular files and directories are imported"
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(RegistryError::InvalidManifest("the source directory holds no files".into()));
    }
    Ok(out)
}
