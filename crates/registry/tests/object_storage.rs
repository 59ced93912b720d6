//! Blobs in object storage: the control plane against a real S3-compatible
//! server (moto's server mode, started here on a free port).
//!
//! moto comes from `scripts/setup.sh moto` (`.venv/moto/bin/moto_server`), else
//! `moto_server` on PATH, else `MODELGATE_TEST_MOTO_SERVER`. Without it the
//! tests say so and pass, unless `MODELGATE_REQUIRE_MOTO=1` (scripts/test.sh
//! sets it when moto is installed), which makes its absence a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, Server, error_of, fresh_db};
use modelgate_registry::bucket::BucketSettings;
use modelgate_registry::digest::Digest;
use modelgate_registry::manifest::Limits;
use modelgate_registry::{Config, Registry};
use reqwest::StatusCode;
use serde_json::json;

const BUCKET: &str = "modelgate-test";

/// A moto S3 server on 127.0.0.1, killed when dropped.
struct Moto {
    endpoint: String,
    child: std::process::Child,
    /// The ETag of the object [`Moto::object`] read last (S3 gives multipart objects
    /// `"<md5 of the parts' md5s>-<parts>"`).
    last_etag: std::sync::Mutex<Option<String>>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("MODELGATE_TEST_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/moto/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("moto_server")).find(|path| path.is_file()))
}

impl Moto {
    /// Starts moto, or `None` (with a note) when it is not installed.
    async fn start() -> Option<Moto> {
        let Some(binary) = moto_binary() else {
            assert!(
                std::env::var("MODELGATE_REQUIRE_MOTO").as_deref() != Ok("1"),
                "MODELGATE_REQUIRE_MOTO=1 but no moto_server: run scripts/setup.sh moto"
            );
            eprintln!("note: object-storage tests skipped: moto_server not found (scripts/setup.sh moto)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { endpoint: endpoint.clone(), child, last_etag: Default::default() };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if http.get(&endpoint).send().await.is_ok() {
                let created = http.put(format!("{endpoint}/{BUCKET}")).send().await.unwrap();
                assert!(created.status().is_success(), "create bucket: {}", created.status());
                return Some(moto);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto did not answer on {endpoint} within 15 s");
    }

    /// Settings as an operator writes them for MinIO: endpoint, region, keys.
    fn settings(&self, bucket: &str) -> BucketSettings {
        let options = [
            format!("aws_endpoint={}", self.endpoint),
            "aws_region=us-east-1".into(),
            "aws_access_key_id=test".into(),
            "aws_secret_access_key=test".into(),
        ];
        BucketSettings::new(&format!("s3://{bucket}/blobs"), &options).unwrap()
    }

    /// The object's bytes as the S3 server holds them, read with object_store's own client
    /// (not the registry's code) at the key the registry promises: `PREFIX/sha256/HEX`.
    async fn object(&self, digest: &Digest) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let key = object_store::path::Path::from(format!("blobs/sha256/{}", digest.hex()));
        let _ = s3.head(&key).await.map(|meta| self.last_etag.lock().unwrap().clone_from(&meta.e_tag));
        match s3.get(&key).await {
            Ok(found) => Some(found.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {key} from moto: {e}"),
        }
    }
}

/// A control plane on SQLite with its blobs in `moto`'s bucket; blobs up to 64 MiB.
async fn server_on(moto: &Moto) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_db(Backend::Sqlite, dir.path()).await;
    let mut config = Server::config(&dir, db_url, Default::default(), Some(moto.settings(BUCKET)));
    config.limits = Limits { max_files: 8, max_blob_size: 64 << 20 };
    Server::start_config(Backend::Sqlite, dir, config).await
}

/// Bytes no compressor or deduplicator shortens.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn files_in(dir: PathBuf) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn verified_blobs_go_to_the_bucket_big_ones_in_parts_and_come_back_through_the_control_plane() {
    let Some(moto) = Moto::start().await else { return };
    let server = server_on(&moto).await;

    let small = b"config text".to_vec();
    // Over the 8 MiB part size: a multipart upload of three parts.
    let big = noise(20 << 20, 7);
    let small_digest = server.put_blob(&small).await;
    let big_digest = server.put_blob(&big).await;
    assert_eq!(moto.object(&small_digest).await.as_deref(), Some(small.as_slice()));
    assert!(moto.object(&big_digest).await.as_deref() == Some(big.as_slice()), "the 20 MiB object differs");
    let etag = moto.last_etag.lock().unwrap().clone().unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "20 MiB in 8 MiB parts is a 3-part upload, ETag {etag}");
    assert_eq!(files_in(server.data_dir().join("blobs/sha256")), 0, "no blob stays in the data directory");
    assert_eq!(files_in(server.data_dir().join("blobs/tmp")), 0, "staging files are removed once uploaded");

    // Uploading it again is idempotent.
    let again = server.http.put(server.url(&format!("/cp/v1/blobs/{small_digest}"))).body(small.clone());
    assert_eq!(again.send().await.unwrap().status(), StatusCode::OK);

    // Downloads stream from the bucket through the control plane, whole or from an offset.
    let whole = server.http.get(server.url(&format!("/cp/v1/blobs/{big_digest}"))).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.content_length(), Some(big.len() as u64));
    assert!(whole.bytes().await.unwrap() == big.as_slice(), "downloaded bytes differ");
    let tail = server
        .http
        .get(server.url(&format!("/cp/v1/blobs/{big_digest}")))
        .header("range", "bytes=15000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    let expected_range = format!("bytes 15000000-{}/{}", big.len() - 1, big.len());
    assert_eq!(tail.headers()["content-range"].to_str().unwrap(), expected_range);
    assert!(tail.bytes().await.unwrap() == big[15_000_000..], "range bytes differ");
    let past_end = server
        .http
        .get(server.url(&format!("/cp/v1/blobs/{small_digest}")))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A version's manifest is checked against the bucket's sizes.
    server.create_model("fraud").await;
    let files = json!([
        { "path": "model.onnx", "size": big.len(), "sha256": big_digest },
        { "path": "config.pbtxt", "size": small.len(), "sha256": small_digest },
    ]);
    let (status, body) = server.post("/cp/v1/models/fraud/versions", json!({ "format": "onnx", "files": files })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let missing = Digest::of(b"never uploaded");
    let files = json!([{ "path": "model.onnx", "size": 14, "sha256": missing }]);
    let (status, body) = server.post("/cp/v1/models/fraud/versions", json!({ "format": "onnx", "files": files })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = server.get(&format!("/cp/v1/blobs/{missing}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("not found"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn bytes_that_do_not_match_their_digest_never_reach_the_bucket() {
    let Some(moto) = Moto::start().await else { return };
    let server = server_on(&moto).await;
    for size in [1000usize, 9 << 20] {
        let bytes = noise(size, size as u64);
        let claimed = Digest::of(b"something else");
        let response =
            server.http.put(server.url(&format!("/cp/v1/blobs/{claimed}"))).body(bytes.clone()).send().await.unwrap();
        let (status, body) = common::answer(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&body).contains("digest mismatch"), "{body}");
        assert_eq!(moto.object(&claimed).await, None, "{size} bytes: nothing stored under the claimed digest");
        assert_eq!(moto.object(&Digest::of(&bytes)).await, None, "{size} bytes: nor under their own");
    }
    assert_eq!(files_in(server.data_dir().join("blobs/tmp")), 0);
    server.stop().await;
}

#[tokio::test]
async fn replicas_sharing_a_bucket_serve_each_others_blobs() {
    let Some(moto) = Moto::start().await else { return };
    let first = server_on(&moto).await;
    let second = server_on(&moto).await;
    let bytes = noise(100_000, 3);
    let digest = first.put_blob(&bytes).await;
    let fetched = second.http.get(second.url(&format!("/cp/v1/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(fetched.bytes().await.unwrap() == bytes.as_slice());
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_control_plane_whose_bucket_does_not_answer_refuses_to_start() {
    let Some(moto) = Moto::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = |bucket: BucketSettings| Config {
        db_url: Config::default_db_url(dir.path()),
        data_dir: dir.path().to_owned(),
        limits: Limits::default(),
        file_roots: Vec::new(),
        drift: Default::default(),
        bucket: Some(bucket),
    };
    let error = Registry::open(&config(moto.settings("no-such-bucket"))).await.unwrap_err();
    assert!(error.to_string().contains("does not answer"), "{error}");
    let mut unreachable = moto.settings(BUCKET);
    unreachable.options[0].1 = "http://127.0.0.1:1".into();
    let error = Registry::open(&config(unreachable)).await.unwrap_err();
    assert!(error.to_string().contains("does not answer"), "{error}");
}
