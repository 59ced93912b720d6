//! Content-addressed blobs on disk: `<data-dir>/blobs/sha256/<hex>`, or in
//! object storage ([`crate::bucket`]) with the data directory as staging.
//!
//! An upload streams into `blobs/tmp/<hex>.part` (named by the digest it
//! declares) while it is hashed and counted; it is refused as soon as it
//! passes its declared size, and at the end unless both the size and the
//! digest match. Only then is the file fsynced and renamed into place (then
//! the directory fsynced), so a reader never sees a partial blob: a crash
//! leaves at most a `.part` file, and those are removed when the store opens.
//! A blob already present is kept (same digest, same bytes): uploads are
//! idempotent.
//!
//! Resume: an upload whose body breaks off keeps its `.part`, and
//! [`BlobStore::put_range`] appends the rest to it (the digest is then checked
//! over the whole file). One upload per digest writes the part at a time;
//! a second plain upload of the same digest meanwhile goes to a
//! `<uuid>.tmp` file, as every upload did before resume existed. Parts no
//! one resumed within [`PART_TTL`] are removed.
//!
//! With a bucket, everything above happens the same in `blobs/tmp/`, and
//! the last step uploads the verified file to the bucket instead of renaming
//! it into `blobs/sha256/` (the temp file is removed after). Reads, sizes and
//! "is it there" all ask the bucket, so every replica sees the same blobs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::bucket::Bucket;
use crate::digest::Digest;
use crate::error::RegistryError;

/// Write buffer in front of the temp file: few, large writes.
const WRITE_BUFFER: usize = 1 << 20;

/// Write buffer in front of a resumable part. Smaller: if the server drops an upload's task
/// without flushing, at most this much of what arrived is lost to the resume.
const PART_BUFFER: usize = 64 << 10;

/// How long a part no one resumes is kept.
pub const PART_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest an upload's body may send nothing before the upload is cut, keeping what arrived
/// for a resume. A client gone without closing its connection (a half-open one) would
/// otherwise hold the digest's lock, and its own resume would find the upload in progress.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// How often uploads look for parts older than [`PART_TTL`].
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The blob directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    max_blob_size: u64,
    /// Digests whose part an upload is writing now.
    uploading: Arc<Mutex<HashSet<Digest>>>,
    /// Unix seconds of the last sweep of stale parts.
    last_sweep: Arc<AtomicU64>,
    /// Where verified blobs go instead of `sha256/` (`None`: the data directory).
    bucket: Option<Bucket>,
    /// [`UPLOAD_IDLE`] (shorter in tests).
    upload_idle: Duration,
}

/// What a resumable upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upload {
    /// The whole blob is verified and stored.
    Done(Stored),
    /// This many bytes of the blob are held; send the rest with [`BlobStore::put_range`].
    Partial(u64),
}

/// How much of a blob the store holds, for a client about to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The blob is stored (its size).
    Complete(u64),
    /// This many bytes of an interrupted upload (0: none).
    Part(u64),
    /// An upload of it is running now; ask again when it ends.
    InProgress,
}

/// Marks a digest as being uploaded until dropped.
struct UploadLock {
    set: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.digest);
    }
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
    /// Opens (creating) `<data_dir>/blobs` and removes temp files left by a crash; verified
    /// blobs go to `bucket` when one is given.
    pub async fn open(data_dir: &Path, max_blob_size: u64, bucket: Option<Bucket>) -> Result<BlobStore, RegistryError> {
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
        Ok(BlobStore {
            root,
            max_blob_size,
            uploading: Arc::default(),
            last_sweep: Arc::new(AtomicU64::new(unix_seconds())),
            bucket,
            upload_idle: UPLOAD_IDLE,
        })
    }

    /// Where a blob lives in the data directory (whether or not it exists); only meaningful
    /// without a [`BlobStore::bucket`].
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// The bucket verified blobs live in, if not the data directory.
    pub fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_ref()
    }

    /// A small blob (a `config.pbtxt`) as text; `None` when absent, over `limit` bytes or not
    /// UTF-8.
    pub async fn read_text(&self, digest: &Digest, limit: u64) -> Result<Option<String>, RegistryError> {
        if self.size(digest).await?.is_none_or(|size| size > limit) {
            return Ok(None);
        }
        let bytes = match &self.bucket {
            None => match tokio::fs::read(self.path(digest)).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(RegistryError::io("reading a blob", e)),
            },
            Some(bucket) => {
                let Some(read) = bucket.read(digest, None).await? else { return Ok(None) };
                let chunks: Vec<Bytes> = read.body.try_collect().await?;
                chunks.concat()
            }
        };
        Ok(String::from_utf8(bytes).ok())
    }

    /// The blob's size, `None` when it is absent.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        if let Some(bucket) = &self.bucket {
            return bucket.size(digest).await;
        }
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
        self.check_size(declared_size)?;
        let Some(lock) = self.lock(declared) else {
            // Another upload of this digest holds its part: this one is not resumable.
            let (temp, actual, _) = self.receive(Some(declared_size), body).await?;
            if actual != *declared {
                return Err(RegistryError::DigestMismatch {
                    declared: declared.to_string(),
                    actual: actual.to_string(),
                });
            }
            return self.place(temp, &actual).await;
        };
        match self.append(&lock, 0, declared_size, declared_size, body).await? {
            Upload::Done(stored) => Ok(stored),
            Upload::Partial(held) => Err(RegistryError::Internal(format!("a whole upload ended partial at {held}"))),
        }
    }

    /// Appends `body`, bytes `start..start + len` of a blob of `total` bytes hashing to
    /// `declared`, to the part an interrupted upload left. `start` must be what the part holds
    /// ([`BlobStore::held`]); when the part reaches `total` the whole file is verified and
    /// stored. A body that breaks off leaves the part holding what arrived.
    pub async fn put_range<S, E>(
        &self,
        declared: &Digest,
        start: u64,
        len: u64,
        total: u64,
        body: S,
    ) -> Result<Upload, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        self.check_size(total)?;
        if self.size(declared).await?.is_some() {
            return Ok(Upload::Done(Stored::Existed));
        }
        let lock = self.lock(declared).ok_or_else(|| busy(declared))?;
        self.append(&lock, start, len, total, body).await
    }

    /// How much of `digest` the store holds.
    pub async fn held(&self, digest: &Digest) -> Result<Held, RegistryError> {
        if let Some(size) = self.size(digest).await? {
            return Ok(Held::Complete(size));
        }
        let Some(_lock) = self.lock(digest) else { return Ok(Held::InProgress) };
        match tokio::fs::metadata(self.part_path(digest)).await {
            Ok(meta) => Ok(Held::Part(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Held::Part(0)),
            Err(e) => Err(RegistryError::io("reading an upload's size", e)),
        }
    }

    /// Refuses a blob over the size limit before a byte of it is read.
    fn check_size(&self, size: u64) -> Result<(), RegistryError> {
        if size > self.max_blob_size {
            return Err(RegistryError::TooLarge(format!(
                "blob of {size} bytes refused: at most {} bytes per blob",
                self.max_blob_size
            )));
        }
        Ok(())
    }

    fn part_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("tmp").join(format!("{}.part", digest.hex()))
    }

    /// Claims `digest`'s part, unless an upload holds it.
    fn lock(&self, digest: &Digest) -> Option<UploadLock> {
        let mut set = self.uploading.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(*digest).then(|| UploadLock { set: self.uploading.clone(), digest: *digest })
    }

    /// Writes `body` at `start` of the locked digest's part (truncating it when `start` is 0);
    /// verifies and places the blob once the part holds `total` bytes.
    async fn append<S, E>(
        &self,
        lock: &UploadLock,
        start: u64,
        len: u64,
        total: u64,
        body: S,
    ) -> Result<Upload, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        self.sweep_stale_parts(lock).await;
        let digest = &lock.digest;
        let path = self.part_path(digest);
        let io = |what| move |e| RegistryError::io(what, e);
        let file = if start == 0 {
            tokio::fs::File::create(&path).await.map_err(io("creating an upload file"))?
        } else {
            let held = match tokio::fs::metadata(&path).await {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(RegistryError::io("reading an upload's size", e)),
            };
            if held != start {
                return Err(RegistryError::UploadOffset { given: start, held });
            }
            tokio::fs::OpenOptions::new().append(true).open(&path).await.map_err(io("opening an upload file"))?
        };
        // The digest covers the whole blob: a resumed upload re-reads what is held (the body
        // of one request cannot be trusted to continue a hash state from another).
        let finishing = start + len == total;
        let mut hasher = Sha256::new();
        if finishing && start > 0 {
            hasher = hash_prefix(path.clone(), hasher).await?;
        }
        let mut out = tokio::io::BufWriter::with_capacity(PART_BUFFER, file);
        let mut received: u64 = 0;
        let mut body = std::pin::pin!(body);
        loop {
            let chunk = match tokio::time::timeout(self.upload_idle, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                // Keep what arrived for the resume.
                Ok(Some(Err(e))) => {
                    let _ = out.flush().await;
                    return Err(RegistryError::Incomplete { received, reason: e.to_string() });
                }
                Err(_) => {
                    let _ = out.flush().await;
                    let reason = format!("no byte for {} s: the upload is cut, resume it", self.upload_idle.as_secs());
                    return Err(RegistryError::Incomplete { received, reason });
                }
            };
            received += chunk.len() as u64;
            if received > len {
                drop(out);
                remove_part(&path).await;
                return Err(RegistryError::SizeMismatch { declared: len, received });
            }
            if finishing {
                hasher.update(&chunk);
            }
            out.write_all(&chunk).await.map_err(io("writing an upload"))?;
        }
        out.flush().await.map_err(io("writing an upload"))?;
        if received != len {
            // The body ended cleanly but short: the client's sizes are wrong, nothing to resume.
            drop(out);
            remove_part(&path).await;
            return Err(RegistryError::SizeMismatch { declared: len, received });
        }
        if !finishing {
            return Ok(Upload::Partial(start + len));
        }
        out.into_inner().sync_all().await.map_err(io("syncing an upload"))?;
        let actual = Digest::from_hasher(hasher);
        if actual != *digest {
            remove_part(&path).await;
            return Err(RegistryError::DigestMismatch { declared: digest.to_string(), actual: actual.to_string() });
        }
        self.place(TempGuard(Some(path)), &actual).await.map(Upload::Done)
    }

    /// Removes parts untouched for [`PART_TTL`], at most once per [`SWEEP_EVERY`]; never the
    /// part `current` holds, nor one another upload holds.
    async fn sweep_stale_parts(&self, current: &UploadLock) {
        let now = unix_seconds();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_secs()
            || self.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let Ok(mut entries) = tokio::fs::read_dir(self.root.join("tmp")).await else { return };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(Ok(digest)) = name.strip_suffix(".part").map(str::parse::<Digest>) else { continue };
            let stale = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > PART_TTL);
            if stale
                && digest != current.digest
                && let Some(_lock) = self.lock(&digest)
            {
                tracing::info!(%digest, "removing an upload part no one resumed");
                remove_part(&entry.path()).await;
            }
        }
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
        let temp = self.root.join("tmp").join(format!("{}.tmp", uuid::Uuid::new_v4()));
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
        if let Some(bucket) = &self.bucket {
            let Some(path) = temp.0.as_deref() else {
                return Err(RegistryError::Internal("upload file already moved".into()));
            };
            let size =
                tokio::fs::metadata(path).await.map_err(|e| RegistryError::io("reading an upload's size", e))?.len();
            // The temp file goes when `temp` drops, uploaded or not.
            bucket.upload(digest, path, size).await?;
            return Ok(Stored::Created);
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

/// The error for a second upload of a digest while one runs.
fn busy(digest: &Digest) -> RegistryError {
    RegistryError::Conflict(format!(
        "an upload of {digest} is in progress; ask GET /cp/v1/uploads/{digest} again later"
    ))
}

/// Feeds the file at `path` into `hasher`.
async fn hash_prefix(path: PathBuf, mut hasher: Sha256) -> Result<Sha256, RegistryError> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        std::io::copy(&mut file, &mut hasher)?;
        Ok::<_, std::io::Error>(hasher)
    })
    .await
    .map_err(|e| RegistryError::Internal(format!("hash task: {e}")))?
    .map_err(|e| RegistryError::io("reading an upload to hash it", e))
}

async fn remove_part(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "could not remove an upload part");
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        let store = BlobStore::open(dir.path(), 1 << 20, None).await.unwrap();
        let d = Digest::of(b"hello world");
        assert_eq!(store.put(&d, 11, body(vec![Ok(b"hello "), Ok(b"world")])).await.unwrap(), Stored::Created);
        assert_eq!(store.put(&d, 11, body(vec![Ok(b"hello world")])).await.unwrap(), Stored::Existed);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello world");

        let other = Digest::of(b"hello WORLD");
        let e = store.put(&other, 11, body(vec![Ok(b"hello world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
        let e = store.put(&other, 11, body(vec![Ok(b"hello"), Err("connection reset")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::Incomplete { received: 5, .. }), "{e}");
        assert_eq!(store.held(&other).await.unwrap(), Held::Part(5), "what arrived is kept to resume");
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
    async fn an_interrupted_upload_resumes_where_it_broke_off_and_is_verified_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20, None).await.unwrap();
        let d = Digest::of(b"hello world");
        assert_eq!(store.held(&d).await.unwrap(), Held::Part(0));
        let e = store.put(&d, 11, body(vec![Ok(b"hello "), Err("connection reset")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::Incomplete { received: 6, .. }), "{e}");
        assert_eq!(store.held(&d).await.unwrap(), Held::Part(6));

        let e = store.put_range(&d, 3, 8, 11, body(vec![Ok(b"lo world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::UploadOffset { given: 3, held: 6 }), "{e}");
        assert_eq!(store.held(&d).await.unwrap(), Held::Part(6), "a refused range changes nothing");
        // A range may stop short of the end: the part grows and the blob waits.
        assert_eq!(store.put_range(&d, 6, 2, 11, body(vec![Ok(b"wo")])).await.unwrap(), Upload::Partial(8));
        let done = store.put_range(&d, 8, 3, 11, body(vec![Ok(b"rld")])).await.unwrap();
        assert_eq!(done, Upload::Done(Stored::Created));
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello world");
        assert_eq!(store.held(&d).await.unwrap(), Held::Complete(11));
        assert_eq!(parts_in(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_resumed_upload_whose_whole_file_hashes_wrong_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20, None).await.unwrap();
        let d = Digest::of(b"hello world");
        let _ = store.put(&d, 11, body(vec![Ok(b"HELLO "), Err("connection reset")])).await.unwrap_err();
        let e = store.put_range(&d, 6, 5, 11, body(vec![Ok(b"world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
        assert_eq!(store.held(&d).await.unwrap(), Held::Part(0), "the next try starts over");
        assert!(store.size(&d).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn one_upload_per_digest_writes_its_part_and_a_second_plain_one_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20, None).await.unwrap();
        let d = Digest::of(b"hello world");
        let running = store.lock(&d).unwrap();
        assert_eq!(store.held(&d).await.unwrap(), Held::InProgress);
        let e = store.put_range(&d, 0, 11, 11, body(vec![Ok(b"hello world")])).await.unwrap_err();
        assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
        assert_eq!(store.put(&d, 11, body(vec![Ok(b"hello world")])).await.unwrap(), Stored::Created);
        drop(running);
        assert_eq!(store.held(&d).await.unwrap(), Held::Complete(11));
        assert_eq!(parts_in(dir.path()), 0);
    }

    #[tokio::test]
    async fn an_upload_whose_body_goes_silent_is_cut_keeping_its_bytes_and_frees_its_digest_for_the_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = BlobStore::open(dir.path(), 1 << 20, None).await.unwrap();
        store.upload_idle = Duration::from_millis(200);
        let d = Digest::of(b"hello world");
        // Six bytes, then nothing, ever: a client gone without closing its connection.
        let silent = body(vec![Ok(b"hello ")]).chain(futures_util::stream::pending());
        let e = store.put_range(&d, 0, 11, 11, silent).await.unwrap_err();
        assert!(matches!(e, RegistryError::Incomplete { received: 6, .. }), "{e}");
        assert!(e.to_string().contains("no byte"), "{e}");
        assert_eq!(store.held(&d).await.unwrap(), Held::Part(6), "the lock is gone and the bytes kept");
        assert_eq!(
            store.put_range(&d, 6, 5, 11, body(vec![Ok(b"world")])).await.unwrap(),
            Upload::Done(Stored::Created)
        );
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path(), 1024, None).await.unwrap();
        std::fs::write(dir.path().join("blobs/tmp/crashed.part"), b"half").unwrap();
        std::fs::write(dir.path().join("blobs/tmp/crashed.tmp"), b"half").unwrap();
        BlobStore::open(dir.path(), 1024, None).await.unwrap();
        assert_eq!(parts_in(dir.path()), 0);
    }
}
