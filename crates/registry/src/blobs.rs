//! Content-addressed blobs on disk: `<data-dir>/blobs/sha256/<hex>`.
//!
//! An upload streams into `blobs/tmp/<uuid>.part` while it is hashed and
//! counted; it is refused as soon as it passes its declared size, and at the
//! end unless both the size and the digest match. Only then is the file
//! fsynced and renamed into place (then the directory fsynced), so a reader
//! never sees a partial blob: a crash leaves at most a `.part` file, and
//! those are removed when the store opens. A blob already present is kept
//! (same digest, same bytes): uploads are idempotent.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::error::RegistryError;

/// Write buffer in front of the temp file: few, large writes.
const WRITE_BUFFER: usize = 1 << 20;

/// The blob directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    max_blob_size: u64,
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The blob is new.
    Created,
    /// The blob was there already; the upload was verified and dropped.
    Existed,
}

/// Removes the temp file unless disarmed: runs when an upload fails or its
/// task is dropped (client gone).
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl BlobStore {
    /// Opens (creating) `<data_dir>/blobs` and removes temp files left by a crash.
    pub async fn open(data_dir: &Path, max_blob_size: u64) -> Result<BlobStore, RegistryError> {
        let root = data_dir.join("blobs");
        let io = |e| RegistryError::io("creating the blob directories", e);
        tokio::fs::create_dir_all(root.join("sha256")).await.map_err(io)?;
        tokio::fs::create_dir_all(root.join("tmp")).await.map_err(io)?;
        let mut stale = tokio::fs::read_dir(root.join("tmp")).await.map_err(io)?;
        let mut removed = 0usize;
        while let Some(entry) = stale.next_entry().await.map_err(io)? {
            tokio::fs::remove_file(entry.path()).await.map_err(|e| RegistryError::io("removing a stale upload", e))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed stale partial uploads");
        }
        Ok(BlobStore { root, max_blob_size })
    }

    /// Where a blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// The blob's size, `None` when it is absent.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        match tokio::fs::metadata(self.path(digest)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::io("reading a blob's size", e)),
        }
    }

    /// The largest blob accepted.
    pub fn max_blob_size(&self) -> u64 {
        self.max_blob_size
    }

    /// Stores `body`, which the client declared to be `declared_size` bytes hashing to `declared`.
    pub async fn put<S, E>(&self, declared: &Digest, declared_size: u64, body: S) -> Result<Stored, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        if declared_size > self.max_blob_size {
            return Err(RegistryError::TooLarge(format!(
                "blob of {declared_size} bytes refused: at most {} bytes per blob",
                self.max_blob_size
            )));
        }
        let (temp, actual, _) = self.receive(Some(declared_size), body).await?;
        if actual != *declared {
            return Err(RegistryError::DigestMismatch { declared: declared.to_string(), actual: actual.to_string() });
        }
        self.place(temp, &actual).await
    }

    /// Stores `body` under whatever digest it has (imports of files already on this machine);
    /// returns the digest and size.
    pub async fn put_hashing<S, E>(&self, body: S) -> Result<(Digest, u64), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let (temp, digest, size) = self.receive(None, body).await?;
        self.place(temp, &digest).await?;
        Ok((digest, size))
    }

    /// Writes `body` to `target` (a plain file outside the blob tree, e.g. the MLflow artifact
    /// proxy's), through a synced temp file and a rename, within the blob size limit.
    pub async fn write_file<S, E>(&self, target: &Path, body: S) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let (mut temp, _, size) = self.receive(None, body).await?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RegistryError::io("creating an artifact directory", e))?;
        }
        let Some(path) = temp.0.take() else {
            return Err(RegistryError::Internal("upload file already moved".into()));
        };
        if let Err(e) = tokio::fs::rename(&path, target).await {
            temp.0 = Some(path);
            return Err(RegistryError::io("moving an artifact into place", e));
        }
        Ok(size)
    }

    /// Streams `body` into a synced temp file while hashing; at most `expected` bytes (exactly
    /// that many when given), else at most the blob limit.
    async fn receive<S, E>(&self, expected: Option<u64>, body: S) -> Result<(TempGuard, Digest, u64), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = expected.unwrap_or(self.max_blob_size);
        let temp = self.root.join("tmp").join(format!("{}.part", uuid::Uuid::new_v4()));
        let guard = TempGuard(Some(temp.clone()));
        let file = tokio::fs::File::create(&temp).await.map_err(|e| RegistryError::io("creating an upload file", e))?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Incomplete { received, reason: e.to_string() })?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(match expected {
                    Some(declared) => RegistryError::SizeMismatch { declared, received },
                    None => RegistryError::TooLarge(format!("a file is over the limit of {limit} bytes per blob")),
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| RegistryError::io("writing an upload", e))?;
        }
        if let Some(declared) = expected
            && received != declared
        {
            return Err(RegistryError::SizeMismatch { declared, received });
        }
        out.flush().await.map_err(|e| RegistryError::io("writing an upload", e))?;
        out.into_inner().sync_all().await.map_err(|e| RegistryError::io("syncing an upload", e))?;
        Ok((guard, Digest::from_hasher(hasher), received))
    }

    /// Renames a verified temp file into place, unless the blob exists already.
    async fn place(&self, mut temp: TempGuard, digest: &Digest) -> Result<Stored, RegistryError> {
        if self.size(digest).await?.is_some() {
            return Ok(Stored::Existed);
        }
        let Some(path) = temp.0.take() else {
            return Err(RegistryError::Internal("upload file already moved".into()));
        };
        if let Err(e) = tokio::fs::rename(&path, self.path(digest)).await {
            temp.0 = Some(path);
            return Err(RegistryError::io("moving an upload into place", e));
        }
        sync_dir(self.root.join("sha256")).await?;
        Ok(Stored::Created)
    }
}

/// Makes a rename durable.
async fn sync_dir(dir: PathBuf) -> Result<(), RegistryError> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| RegistryError::Internal(format!("directory sync task: {e}")))?
        .map_err(|e| RegistryError::io("syncing the blob directory", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(parts: Vec<Result<&'static [u8], &'static str>>) -> impl Stream<Item = Result<Bytes, &'static str>> {
        futures_util::stream::iter(parts.into_iter().map(|p| p.map(Bytes::from_static)))
    }

    fn parts_in(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("blobs/tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn a_blob_is_stored_once_under_its_digest_and_only_when_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).await.unwrap();
        let d = Digest::of(b"hello world");
        assert_eq!(store.put(&d, 11, body(vec![Ok(b"hello "), Ok(b"world")])).await.unwrap(), Stored::Created);
        assert_eq!(store.put(&d, 11, body(vec![Ok(b"hello world")])).await.unwrap(), Stored::Existed);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello world");

        let other = Digest::of(b"hello WORLD");
        let e = store.put(&other, 11, body(vec![Ok(b"hello world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
        let e = store.put(&other, 11, body(vec![Ok(b"hello"), Err("connection reset")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::Incomplete { received: 5, .. }), "{e}");
        let e = store.put(&other, 5, body(vec![Ok(b"hello world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::SizeMismatch { declared: 5, received: 11 }), "{e}");
        let e = store.put(&other, 12, body(vec![Ok(b"hello WORLD")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::SizeMismatch { declared: 12, received: 11 }), "{e}");
        let e = store.put(&other, 2 << 20, body(vec![])).await.unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge(_)), "{e}");
        assert!(store.size(&other).await.unwrap().is_none());
        assert_eq!(parts_in(dir.path()), 0, "failed uploads leave no temp file");
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path(), 1024).await.unwrap();
        std::fs::write(dir.path().join("blobs/tmp/crashed.part"), b"half").unwrap();
        BlobStore::open(dir.path(), 1024).await.unwrap();
        assert_eq!(parts_in(dir.path()), 0);
    }
}
