//! The gateway's blob cache: verified files under `cache/blobs/sha256/<hex>`,
//! downloads in progress under `cache/tmp/<hex>.part`.
//!
//! A download writes to its `.part` while hashing, never past the manifest's
//! size, then fsyncs, compares the digest, and renames into place: a file in
//! `blobs/` has always been verified. A download cut off keeps its `.part`,
//! and the next try asks for the rest with `Range` (after hashing what it
//! has). A `.part` that verifies wrong is deleted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use modelgate_registry::digest::Digest;
use modelgate_registry::manifest::Entry;
use modelgate_registry::sync::FailureReason;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::client::{CallError, ControlPlane};
use super::settings::Verify;

/// A `.part` untouched this long is dropped at start rather than resumed.
const STALE_PART: Duration = Duration::from_secs(24 * 3600);

/// Why a blob could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bytes are not the manifest's.
    #[error("{path}: {why}")]
    Verification {
        /// The manifest path.
        path: String,
        /// What differed.
        why: String,
    },
    /// The download failed (it resumes next time).
    #[error("{path}: {source}")]
    Download {
        /// The manifest path.
        path: String,
        /// Why.
        source: CallError,
    },
    /// The disk refused (full, permissions).
    #[error("{path}: {source}")]
    Disk {
        /// The file concerned.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl FetchError {
    /// The report's and the metric's reason.
    pub fn reason(&self) -> FailureReason {
        match self {
            FetchError::Verification { .. } => FailureReason::FailedVerification,
            FetchError::Download { .. } => FailureReason::Download,
            FetchError::Disk { .. } => FailureReason::Disk,
        }
    }
}

fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Disk { path: path.display().to_string(), source }
}

/// Verified blobs on the gateway's disk.
#[derive(Debug)]
pub struct BlobCache {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl BlobCache {
    /// Opens (creating) `root/blobs/sha256` and `root/tmp`, and deletes `.part` files
    /// that are not resumable downloads (not named by a digest, or stale).
    pub fn open(root: &Path) -> std::io::Result<BlobCache> {
        let cache = BlobCache { blobs: root.join("blobs").join("sha256"), tmp: root.join("tmp") };
        std::fs::create_dir_all(&cache.blobs)?;
        std::fs::create_dir_all(&cache.tmp)?;
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&cache.tmp)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let resumable =
                name.strip_suffix(".part").is_some_and(|hex| format!("sha256:{hex}").parse::<Digest>().is_ok());
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < STALE_PART);
            if !(resumable && fresh) {
                tracing::info!(file = %entry.path().display(), "deleting a stale partial download");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(cache)
    }

    /// Where a verified blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    fn part(&self, digest: &Digest) -> PathBuf {
        self.tmp.join(format!("{}.part", digest.hex()))
    }

    /// Whether the blob of `entry` is here: the right size, and with [`Verify::Full`]
    /// the right sha256 (a mismatch deletes it, so it is fetched again).
    pub async fn has(&self, entry: &Entry, verify: Verify) -> bool {
        let path = self.path(&entry.sha256);
        let size_ok = tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() == entry.size);
        if !size_ok || verify == Verify::Size {
            return size_ok;
        }
        let (expected, to_hash) = (entry.sha256, path.clone());
        let same = tokio::task::spawn_blocking(move || hash_file(&to_hash).is_ok_and(|d| d == expected))
            .await
            .unwrap_or(false);
        if !same {
            tracing::error!(file = %path.display(), "a cached blob does not match its digest; it is fetched again");
            let _ = tokio::fs::remove_file(&path).await;
        }
        same
    }

    /// Makes sure the blob of `entry` is here and verified, downloading what is
    /// missing. Returns the bytes downloaded.
    pub async fn fetch(&self, control_plane: &ControlPlane, entry: &Entry) -> Result<u64, FetchError> {
        if self.has(entry, Verify::Size).await {
            return Ok(0);
        }
        let part = self.part(&entry.sha256);
        let mut held = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
        if held > entry.size {
            held = 0;
        }
        // Resuming: what the .part holds is hashed first (on a blocking thread).
        let mut hasher = if held > 0 {
            let (path, len) = (part.clone(), held);
            tokio::task::spawn_blocking(move || hash_prefix(&path, len))
                .await
                .map_err(|e| FetchError::Disk { path: entry.path.clone(), source: std::io::Error::other(e) })?
                .map_err(disk(&part))?
        } else {
            Sha256::new()
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(disk(&part))?;
        // Drop anything past what was hashed (only then: truncating is not free of
        // errors on every file system), then append from there.
        if file.metadata().await.is_ok_and(|m| m.len() > held) {
            file.set_len(held).await.map_err(disk(&part))?;
        }
        file.seek(std::io::SeekFrom::Start(held)).await.map_err(disk(&part))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let download = |source| FetchError::Download { path: entry.path.clone(), source };
        let mut stream = std::pin::pin!(control_plane.blob(&entry.sha256, held).await.map_err(download)?);
        let mut written = held;
        let mut downloaded = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    // Keep what arrived: the next try resumes from it.
                    let _ = file.flush().await;
                    crate::metrics::artifact_bytes_downloaded(downloaded);
                    return Err(download(source));
                }
            };
            if written + chunk.len() as u64 > entry.size {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                crate::metrics::artifact_bytes_downloaded(downloaded);
                return Err(FetchError::Verification {
                    path: entry.path.clone(),
                    why: format!("the control plane sent more than the manifest's {} bytes", entry.size),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(disk(&part))?;
            written += chunk.len() as u64;
            downloaded += chunk.len() as u64;
        }
        crate::metrics::artifact_bytes_downloaded(downloaded);
        file.flush().await.map_err(disk(&part))?;
        let file = file.into_inner();
        if written < entry.size {
            return Err(download(CallError::Malformed(format!(
                "the blob ended after {written} of {} bytes",
                entry.size
            ))));
        }
        let digest = Digest::from_hasher(hasher);
        if digest != entry.sha256 {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(FetchError::Verification {
                path: entry.path.clone(),
                why: format!("sha256 is {digest}, the manifest says {}", entry.sha256),
            });
        }
        file.sync_all().await.map_err(disk(&part))?;
        drop(file);
        let target = self.path(&entry.sha256);
        tokio::fs::rename(&part, &target).await.map_err(disk(&target))?;
        sync_dir(&self.blobs).await;
        Ok(downloaded)
    }
}

/// Fsyncs a directory, so a rename in it survives a crash (best effort: some
/// file systems refuse to open directories for it).
pub async fn sync_dir(dir: &Path) {
    if let Ok(handle) = tokio::fs::File::open(dir).await {
        let _ = handle.sync_all().await;
    }
}

fn hash_prefix(path: &Path, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buffer[..n]);
    }
}

/// The sha256 of a whole file.
pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    hash_prefix(path, u64::MAX).map(Digest::from_hasher)
}
