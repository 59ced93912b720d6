//! `modelgate registry push` over a connection cut mid-upload: the push resumes
//! from what the control plane kept, sends only the rest, and the stored blob
//! is the file's bytes. The cut is real: a TCP relay between client and server
//! closes both sockets after a number of the client's bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Server, TOKEN, backends};
use modelgate_registry::api::auth::Token;
use modelgate_registry::client::{Client, PushOptions};
use modelgate_registry::digest::Digest;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to `target`, counting the bytes clients send; the first connection
/// to pass `cut_after` of them (all connections together) is closed at that byte.
struct Relay {
    addr: SocketAddr,
    forwarded: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr, cut_after: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarded = Arc::new(AtomicU64::new(0));
        let cut_at = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (f, c, done) = (forwarded.clone(), cut_at.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = TcpStream::connect(target).await.unwrap();
                tokio::spawn(relay(client, server, cut_after, f.clone(), c.clone(), done.clone()));
            }
        });
        Relay { addr, forwarded, cut_at }
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    cut_after: u64,
    forwarded: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let n = match from_client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n as u64,
        };
        let before = forwarded.load(Ordering::SeqCst);
        if !cut.load(Ordering::SeqCst) && before + n > cut_after {
            let allowed = (cut_after - before) as usize;
            let _ = to_server.write_all(&buffer[..allowed]).await;
            forwarded.fetch_add(allowed as u64, Ordering::SeqCst);
            cut_at.store(cut_after, Ordering::SeqCst);
            cut.store(true, Ordering::SeqCst);
            // Both sockets close here: the client's write fails, the server's body ends early.
            back.abort();
            return;
        }
        if to_server.write_all(&buffer[..n as usize]).await.is_err() {
            break;
        }
        forwarded.fetch_add(n, Ordering::SeqCst);
    }
    let _ = to_server.shutdown().await;
    let _ = back.await;
}

#[tokio::test]
async fn a_push_cut_mid_upload_resumes_and_sends_only_the_rest() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let size = 700_000usize;
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7919 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), &bytes).unwrap();
        let cut_after = 250_000u64;
        let relay = Relay::start(server.addr, cut_after).await;

        let client = Client::new(&relay.addr.to_string(), Token::new(TOKEN).unwrap());
        let options = PushOptions { actor: "test".into(), ..PushOptions::default() };
        let version = client.push("fraud", dir.path(), options).await.unwrap();

        assert_eq!(relay.cut_at.load(Ordering::SeqCst), cut_after, "{backend:?}: the connection was cut");
        let after_cut = relay.forwarded.load(Ordering::SeqCst) - cut_after;
        // What the server kept before the cut is not sent again: the bytes after the cut are the
        // rest of the file (under 450 KB) plus a few requests' headers, far from a whole upload.
        let rest = size as u64 - cut_after;
        assert!(after_cut > rest, "{backend:?}: {after_cut} bytes after the cut");
        assert!(after_cut < rest + 20_000, "{backend:?}: {after_cut} bytes after the cut, the rest is {rest}");

        let digest = Digest::of(&bytes);
        assert_eq!(version["manifest"][0]["sha256"], digest.to_string());
        let stored = server.http.get(server.url(&format!("/cp/v1/blobs/{digest}"))).send().await.unwrap();
        assert_eq!(stored.status(), StatusCode::OK);
        assert!(stored.bytes().await.unwrap() == bytes, "{backend:?}: the stored blob is the file");
        let (_, held) = server.get(&format!("/cp/v1/uploads/{digest}")).await;
        assert_eq!((held["received"].as_u64(), held["complete"].as_bool()), (Some(size as u64), Some(true)));
        assert_eq!(std::fs::read_dir(server.data_dir().join("blobs/tmp")).unwrap().count(), 0, "no part is left");
        server.stop().await;
    }
}
