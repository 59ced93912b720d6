//! Pulled versions laid out as a model repository the gateway loads from:
//! `models/<model>/<version>/...`, each directory built whole in
//! `models/.staging/` from verified blobs and renamed into place, so a
//! version is never loaded from a directory still being written (Triton's
//! warning about polled directories).
//!
//! Where the files go: a version pushed as a Triton model directory holds
//! `config.pbtxt` and `<n>/model.onnx`; its files under the one numbered
//! directory move to the version's directory, and `config.pbtxt` sits beside
//! them (the repository reads a pulled version's own config, since two
//! versions of one model may differ). Anything else keeps its path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use modelgate_registry::manifest::Entry;
use modelgate_registry::sync::DesiredVersion;

use super::cache::{BlobCache, FetchError, sync_dir};

/// The file in a version directory that names the manifest it was built from.
const MANIFEST_MARK: &str = ".modelgate-manifest";

/// The pulled model repository.
#[derive(Debug)]
pub struct VersionDirs {
    models: PathBuf,
    staging: PathBuf,
}

impl VersionDirs {
    /// Opens (creating) `models` and empties its staging area (leftovers of a crash).
    pub fn open(models: &Path) -> std::io::Result<VersionDirs> {
        let staging = models.join(".staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        Ok(VersionDirs { models: models.to_owned(), staging })
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.models
    }

    fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.models.join(model).join(version.to_string())
    }

    /// Whether `model`/`version` is on disk, built from `manifest_digest`.
    pub async fn holds(&self, model: &str, version: u64, manifest_digest: &str) -> bool {
        let mark = self.version_dir(model, version).join(MANIFEST_MARK);
        tokio::fs::read_to_string(mark).await.is_ok_and(|text| text.trim() == manifest_digest)
    }

    /// Builds `model`/`version` from the cached blobs of `desired` (all fetched
    /// first) and renames it into place, replacing a directory of another manifest.
    pub async fn materialize(
        &self,
        cache: &BlobCache,
        model: &str,
        version: u64,
        desired: &DesiredVersion,
    ) -> Result<(), FetchError> {
        if self.holds(model, version, &desired.manifest_digest).await {
            return Ok(());
        }
        let staged = self.staging.join(format!("{model}-{version}-{}", std::process::id()));
        let disk = |path: &Path| {
            let path = path.display().to_string();
            move |source| FetchError::Disk { path, source }
        };
        let _ = tokio::fs::remove_dir_all(&staged).await;
        for (relative, entry) in layout(&desired.files) {
            let target = staged.join(&relative);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(disk(parent))?;
            }
            let blob = cache.path(&entry.sha256);
            // A hard link costs no space; another file system needs a copy.
            if tokio::fs::hard_link(&blob, &target).await.is_err() {
                tokio::fs::copy(&blob, &target).await.map_err(disk(&target))?;
            }
        }
        tokio::fs::write(staged.join(MANIFEST_MARK), &desired.manifest_digest).await.map_err(disk(&staged))?;
        let target = self.version_dir(model, version);
        let parent = self.models.join(model);
        tokio::fs::create_dir_all(&parent).await.map_err(disk(&parent))?;
        if tokio::fs::metadata(&target).await.is_ok() {
            // Another manifest under the same number (a registry recreated): set it aside
            // first, so the rename below never lands inside it.
            let old = self.staging.join(format!("{model}-{version}-replaced-{}", std::process::id()));
            tokio::fs::rename(&target, &old).await.map_err(disk(&target))?;
            let _ = tokio::fs::remove_dir_all(&old).await;
        }
        tokio::fs::rename(&staged, &target).await.map_err(disk(&target))?;
        sync_dir(&parent).await;
        Ok(())
    }

    /// Deletes the version directories of `model` beyond the newest `keep`, never
    /// one of `wanted`.
    pub async fn collect(&self, model: &str, wanted: &BTreeSet<u64>, keep: usize) {
        let dir = self.models.join(model);
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return };
        let mut versions = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            if let Some(v) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                versions.push(v);
            }
        }
        versions.sort_unstable_by(|a, b| b.cmp(a));
        for old in versions.into_iter().filter(|v| !wanted.contains(v)).skip(keep.saturating_sub(wanted.len())) {
            tracing::info!(model, version = old, "deleting an old pulled version from disk");
            let _ = tokio::fs::remove_dir_all(dir.join(old.to_string())).await;
        }
    }
}

/// Where each file of a version goes inside its directory.
fn layout(files: &[Entry]) -> Vec<(String, &Entry)> {
    let numbered: BTreeSet<&str> = files
        .iter()
        .filter_map(|e| e.path.split_once('/').map(|(first, _)| first))
        .filter(|first| !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let strip = match numbered.len() {
        1 => numbered.into_iter().next(),
        _ => None,
    };
    files
        .iter()
        .map(|entry| {
            let relative = strip
                .and_then(|n| entry.path.strip_prefix(n).and_then(|rest| rest.strip_prefix('/')))
                .unwrap_or(&entry.path);
            (relative.to_owned(), entry)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelgate_registry::digest::Digest;

    fn entry(path: &str) -> Entry {
        Entry { path: path.into(), size: 1, sha256: Digest::of(path.as_bytes()) }
    }

    #[test]
    fn a_pushed_triton_model_directory_lands_as_one_version_directory() {
        let files = [entry("1/model.onnx"), entry("config.pbtxt"), entry("labels.txt")];
        let placed: Vec<String> = layout(&files).into_iter().map(|(p, _)| p).collect();
        assert_eq!(placed, ["model.onnx", "config.pbtxt", "labels.txt"]);
        let single = [entry("model.pt")];
        assert_eq!(layout(&single)[0].0, "model.pt");
        // Two numbered directories are not one version: paths stay as they are.
        let two = [entry("1/model.onnx"), entry("2/model.onnx")];
        assert_eq!(layout(&two)[1].0, "2/model.onnx");
    }
}
