//! The accept loop out of file descriptors (issue #15, finding 1): it backs
//! off and accepts again once descriptors are given back, instead of
//! stopping. Its own test binary: it lowers the process's open-file limit.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TempRepo, TestServer, config_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_loop_out_of_file_descriptors_backs_off_and_recovers() {
    let repo = TempRepo::new();
    let server = TestServer::start(config_for(repo.path())).await;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, open_files() + 64, hard).unwrap();

    // Take every descriptor but one: the client's socket gets it, and the
    // server's accept of that connection fails with EMFILE.
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    hoard.pop();
    let mut client = tokio::net::TcpStream::connect(server.http).await.unwrap();
    client.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.unwrap();
    common::eventually("the accept loop backs off", || {
        server.gateway.metrics.render().lines().any(|line| line.starts_with("modelgate_accept_backoffs_total "))
    })
    .await;

    // Descriptors come back: the same listener accepts the waiting client.
    drop(hoard);
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut reply))
        .await
        .expect("the listener stopped accepting after running out of descriptors")
        .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}
