//! `kill -9` of the control plane during an upload: after a restart no
//! partial blob is visible and the stale temp file is gone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modelgate_registry::digest::Digest;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "kill-nine-token-0123456789";

fn start(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate-control-plane"))
        .args(["--port", "0", "--data-dir"])
        .arg(data)
        .env("MODELGATE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.contains("listening on"), "{line}");
    (child, addr)
}

fn parts(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("blobs/tmp")).unwrap().count()
}

#[tokio::test]
async fn a_killed_upload_leaves_nothing_visible_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start(&data);
    let bytes = vec![9u8; 4 << 20];
    let digest = Digest::of(&bytes);
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /cp/v1/blobs/{digest} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n",
        bytes.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&bytes[..2 << 20]).await.unwrap();
    let mut started = false;
    for _ in 0..100 {
        if parts(&data) > 0 {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started, "the upload reached the temp file before the kill");
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert_eq!(parts(&data), 1, "the crash left its temp file");
    assert!(!data.join("blobs/sha256").join(digest.hex()).exists());

    let (mut child, addr) = start(&data);
    assert_eq!(parts(&data), 0, "stale temp files are removed at start");
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/cp/v1/blobs/{digest}");
    let got = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(got.status(), reqwest::StatusCode::NOT_FOUND);
    let put = http.put(&url).bearer_auth(TOKEN).body(bytes.clone()).send().await.unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::CREATED);
    child.kill().unwrap();
    child.wait().unwrap();
}
