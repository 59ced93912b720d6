//! Verified blobs in object storage (S3, GCS, Azure Blob) through the
//! `object_store` crate, under `<prefix>/sha256/<hex>`.
//!
//! The bucket only ever receives blobs the [`crate::blobs::BlobStore`] has
//! already verified in its local staging directory (size and sha256), so a
//! key holds the bytes its name promises from the moment it exists: a
//! multipart upload becomes visible only when it completes, and it completes
//! only after every part was sent. Replicas of the control plane share the
//! bucket; their staging directories stay their own.
//!
//! Settings are the providers' standard ones, so MinIO, moto or AWS work
//! unchanged: `s3://BUCKET[/PREFIX]` with `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` (any `AWS_*`
//! key object_store knows) from the environment, or the same keys as
//! `KEY=VALUE` options; `gs://` reads `GOOGLE_*`, `az://` reads `AZURE_*`.
//! Requests are path-style (`endpoint/bucket/key`) unless
//! `aws_virtual_hosted_style_request=true`, which is what non-AWS endpoints
//! expect; a configured `http://` endpoint allows plain HTTP.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::digest::Digest;
use crate::error::RegistryError;

/// Blobs up to this size go up in one PUT; larger ones in parts of this size (S3's smallest
/// part is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// Parts of one upload in flight at once: memory per upload is bounded by this many parts.
const PARTS_IN_FLIGHT: usize = 4;

/// How long the start-up check waits for the bucket to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Retries of a failed request (5xx, timeouts, resets), and how long one request may keep
/// retrying: bounded, so a bucket that went away fails an upload in seconds, not minutes
/// (object_store's default gives up after 3 minutes).
fn retry() -> RetryConfig {
    RetryConfig { max_retries: 4, retry_timeout: Duration::from_secs(30), ..RetryConfig::default() }
}

/// Where blobs live when they are not in the data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSettings {
    /// `s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]` or `az://CONTAINER[/PREFIX]`.
    pub url: String,
    /// object_store configuration keys (`aws_endpoint`, `aws_region`, ...) over the environment's.
    pub options: Vec<(String, String)>,
}

impl BucketSettings {
    /// Parses `KEY=VALUE` option texts.
    pub fn new(url: &str, options: &[String]) -> Result<BucketSettings, RegistryError> {
        let options = options
            .iter()
            .map(|text| {
                text.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.to_owned())).ok_or_else(|| {
                    RegistryError::InvalidArgument(format!("blob store option '{text}': expected KEY=VALUE"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(BucketSettings { url: url.to_owned(), options })
    }
}

/// A bucket holding verified blobs.
#[derive(Clone, Debug)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    /// The URL, for messages (never credentials: those are not in it).
    url: String,
}

/// A blob's bytes on their way out of the bucket.
pub struct BlobRead {
    /// The blob's whole size.
    pub size: u64,
    /// The bytes sent (all of them, or the range asked for).
    pub range: Range<u64>,
    /// The bytes.
    pub body: BoxStream<'static, Result<Bytes, RegistryError>>,
}

impl Bucket {
    /// Builds the client for `settings` (nothing is contacted yet; see [`Bucket::check`]).
    pub fn open(settings: &BucketSettings) -> Result<Bucket, RegistryError> {
        let bad = |why: String| RegistryError::InvalidArgument(format!("blob store '{}': {why}", settings.url));
        let (scheme, rest) =
            settings.url.split_once("://").ok_or_else(|| bad("expected SCHEME://BUCKET[/PREFIX]".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named".into()));
        }
        let prefix = Key::parse(prefix.trim_matches('/')).map_err(|e| bad(format!("prefix: {e}")))?;
        let root = format!("{scheme}://{bucket}");
        let option_error = |key: &str, e: object_store::Error| bad(format!("option '{key}': {e}"));
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut builder = AmazonS3Builder::from_env().with_url(root).with_retry(retry());
                for (key, value) in &settings.options {
                    let key_parsed: AmazonS3ConfigKey = key.parse().map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                // Someone who configured an http:// endpoint (MinIO, moto on a private network)
                // meant plain HTTP; AWS's own endpoints are https.
                if builder.get_config_value(&AmazonS3ConfigKey::Endpoint).is_some_and(|e| e.starts_with("http://")) {
                    builder = builder.with_allow_http(true);
                }
                Arc::new(builder.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut builder = GoogleCloudStorageBuilder::from_env().with_url(root).with_retry(retry());
                for (key, value) in &settings.options {
                    let key_parsed: GoogleConfigKey = key.parse().map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                Arc::new(builder.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "azure" | "abfs" => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut builder = MicrosoftAzureBuilder::from_env().with_url(root).with_retry(retry());
                for (key, value) in &settings.options {
                    let key_parsed: AzureConfigKey = key.parse().map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                Arc::new(builder.build().map_err(|e| bad(e.to_string()))?)
            }
            other => return Err(bad(format!("scheme '{other}' not supported: use s3://, gs:// or az://"))),
        };
        Ok(Bucket { store, prefix, url: settings.url.clone() })
    }

    /// Fails unless the bucket answers (a listing of the prefix): a wrong endpoint, bucket or
    /// credential stops the control plane at start, not at the first upload.
    pub async fn check(&self) -> Result<(), RegistryError> {
        let mut listing = self.store.list(Some(&self.prefix));
        match tokio::time::timeout(CHECK_TIMEOUT, listing.next()).await {
            Ok(None | Some(Ok(_))) => Ok(()),
            Ok(Some(Err(e))) => Err(RegistryError::Internal(format!("blob store {} does not answer: {e}", self.url))),
            Err(_) => Err(RegistryError::Internal(format!(
                "blob store {} does not answer: no reply within {} s",
                self.url,
                CHECK_TIMEOUT.as_secs()
            ))),
        }
    }

    fn key(&self, digest: &Digest) -> Key {
        self.prefix.clone().join("sha256").join(digest.hex())
    }

    /// The blob's size, `None` when it is absent.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fault("reading a blob's size", &e)),
        }
    }

    /// Uploads the verified file at `path` as `digest`: one PUT up to [`PART_SIZE`], else a
    /// multipart upload read from the file part by part (never the whole blob in memory).
    pub async fn upload(&self, digest: &Digest, path: &Path, size: u64) -> Result<(), RegistryError> {
        let key = self.key(digest);
        let mut file =
            tokio::fs::File::open(path).await.map_err(|e| RegistryError::io("opening a verified blob", e))?;
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(PART_SIZE));
            file.read_to_end(&mut bytes).await.map_err(|e| RegistryError::io("reading a verified blob", e))?;
            self.store.put(&key, PutPayload::from(bytes)).await.map_err(|e| self.fault("uploading a blob", &e))?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&key).await.map_err(|e| self.fault("starting a multipart upload", &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buffer = vec![0u8; PART_SIZE];
        loop {
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let fault = self.fault("uploading a blob part", &e);
                let _ = writer.abort().await;
                return Err(fault);
            }
            let read = match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(RegistryError::io("reading a verified blob", e));
                }
            };
            writer.write(&buffer[..read]);
        }
        writer.finish().await.map_err(|e| self.fault("finishing a multipart upload", &e))?;
        Ok(())
    }

    /// The blob's bytes from `range` (`None`: all of them); `None` when the blob is absent.
    pub async fn read(&self, digest: &Digest, range: Option<GetRange>) -> Result<Option<BlobRead>, RegistryError> {
        let options = GetOptions { range, ..GetOptions::default() };
        let result = match self.store.get_opts(&self.key(digest), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fault("reading a blob", &e)),
        };
        let (size, range) = (result.meta.size, result.range.clone());
        let url = self.url.clone();
        let body = result
            .into_stream()
            .map_err(move |e| {
                tracing::error!(error = %e, store = %url, "blob read broke off");
                RegistryError::Internal("blob store read broke off".into())
            })
            .boxed();
        Ok(Some(BlobRead { size, range, body }))
    }

    /// A fault of the store, logged in full; the client sees the operation only.
    fn fault(&self, what: &str, error: &object_store::Error) -> RegistryError {
        tracing::error!(%error, store = %self.url, what, "blob store error");
        RegistryError::Internal(format!("blob store error ({what})"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_blob_store_settings_are_refused_with_the_reason() {
        for (url, options, expected) in [
            ("bucket-without-scheme", vec![], "expected SCHEME://BUCKET"),
            ("s3://", vec![], "no bucket named"),
            ("ftp://bucket", vec![], "scheme 'ftp' not supported"),
            ("s3://bucket", vec!["aws_no_such_key=1".to_owned()], "option 'aws_no_such_key'"),
        ] {
            let error = BucketSettings::new(url, &options).and_then(|s| Bucket::open(&s)).unwrap_err();
            assert!(error.to_string().contains(expected), "{url}: {error}");
        }
        let error = BucketSettings::new("s3://b", &["novalue".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("expected KEY=VALUE"), "{error}");
    }

    #[test]
    fn keys_are_the_digest_under_the_prefix() {
        let settings = BucketSettings::new(
            "s3://models/prod/blobs/",
            &["aws_endpoint=http://127.0.0.1:1".into(), "aws_region=us-east-1".into()],
        )
        .unwrap();
        let bucket = Bucket::open(&settings).unwrap();
        let digest = Digest::of(b"x");
        assert_eq!(bucket.key(&digest).as_ref(), format!("prod/blobs/sha256/{}", digest.hex()));
    }
}
