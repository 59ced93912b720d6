//! Hostile clients on loopback (issue #15): connections that send nothing,
//! HTTP/2 connections that open no stream, listeners past their caps, bodies
//! without a length, bodies that trickle, compressed bodies that inflate past
//! the budget. Each case runs against a real server on port 0.
//!
//! Most cases run on paused time: the server's timers fire when every task
//! waits, so a 60 s idle timeout takes no wall time and is measured exactly.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{TempRepo, TestServer, config_for};
use modelgate::config::Config;
use modelgate::gateway::Gateway;
use modelgate::server::{Listeners, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A gateway without models (the cases here never reach one), `configure`d.
async fn empty_server(configure: impl FnOnce(&mut Config)) -> (TempRepo, TestServer) {
    let repo = TempRepo::new();
    let mut config = config_for(repo.path());
    configure(&mut config);
    config.validate().unwrap();
    (repo, TestServer::start(config).await)
}

/// Reads until the peer closes; `None` if it has not closed after `limit`.
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    match tokio::time::timeout(limit, socket.read_to_end(&mut seen)).await {
        Ok(_) => Some(seen),
        Err(_) => None,
    }
}

/// `GET /v2/health/live` on a fresh connection; the status line's code.
async fn live(addr: SocketAddr, path: &str) -> u16 {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    socket.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    reply.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

// === finding 1: connections that send nothing ===

#[tokio::test(start_paused = true)]
async fn connections_that_send_nothing_are_closed_and_free_their_slots() {
    let (_repo, server) = empty_server(|c| {
        c.server.max_connections = 2;
        c.server.first_bytes_timeout_secs = 10;
    })
    .await;
    let started = Instant::now();
    let mut silent = [TcpStream::connect(server.http).await.unwrap(), TcpStream::connect(server.http).await.unwrap()];
    // Both slots are taken: a well-behaved client waits in the backlog...
    let waiting = tokio::spawn(live(server.http, "/v2/health/live"));
    // ...until the silent ones are closed, 10 s after they connected.
    for socket in &mut silent {
        let seen = read_until_closed(socket, Duration::from_secs(120)).await.expect("a silent connection was kept");
        assert!(seen.is_empty(), "{seen:?}");
    }
    assert_eq!(started.elapsed().as_secs(), 10);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_partial_http2_preface_is_closed_after_the_idle_timeout() {
    let (_repo, server) = empty_server(|c| c.server.idle_timeout_secs = 60).await;
    let started = Instant::now();
    let mut socket = TcpStream::connect(server.http).await.unwrap();
    // The first 16 of the preface's 24 bytes: hyper waits for the rest to choose HTTP/2.
    socket.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    read_until_closed(&mut socket, Duration::from_secs(600)).await.expect("a partial preface kept its connection");
    assert_eq!(started.elapsed().as_secs(), 60);
}

#[tokio::test(start_paused = true)]
async fn an_http2_connection_without_open_streams_is_sent_goaway_after_the_idle_timeout() {
    let (_repo, server) = empty_server(|c| {
        c.server.idle_timeout_secs = 30;
        c.server.body_idle_timeout_secs = 60;
    })
    .await;
    let socket = TcpStream::connect(server.http).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    // The client's connection task answers the server's PINGs all along.
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    // A stream open longer than the idle timeout keeps the connection: an
    // upload that stalls is answered 408 after 60 s, on the same connection.
    let started = Instant::now();
    let upload = http::Request::post("/v2/repository/index").body(()).unwrap();
    let (response, mut body) = client.send_request(upload, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"{"), false).unwrap();
    let response = response.await.expect("the connection was closed under an open stream");
    assert_eq!(response.status(), 408);
    assert_eq!(started.elapsed().as_secs(), 60);
    let mut reply = response.into_body();
    while reply.data().await.is_some() {}

    // Then nothing: GOAWAY and close 30 s after the last stream ended.
    let idle_from = Instant::now();
    drop((client, body));
    tokio::time::timeout(Duration::from_secs(600), connection)
        .await
        .expect("an idle HTTP/2 connection was kept")
        .unwrap()
        .unwrap();
    assert_eq!(idle_from.elapsed().as_secs(), 30);
}

/// The gateway of `server` serving a metrics port and an admin port too,
/// each capped at one connection.
async fn side_listeners(gateway: Arc<Gateway>, config: &Config) -> (SocketAddr, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (metrics_addr, admin_addr) = (metrics.local_addr().unwrap(), admin.local_addr().unwrap());
    let options = ServerOptions { max_metrics_connections: 1, ..ServerOptions::from(&config.server) };
    let listeners = Listeners { http, grpc: None, metrics: Some(metrics) };
    tokio::spawn(modelgate::server::serve(gateway.clone(), listeners, options, std::future::pending()));
    let token = modelgate::admin::AdminToken::new("a-test-token-of-enough-length").unwrap();
    let auth = modelgate::admin::BearerAuthLayer::new(token, &[]);
    let limits = (1, config.server.timeouts());
    tokio::spawn(modelgate::admin::serve(gateway, Default::default(), admin, auth, limits, std::future::pending()));
    (metrics_addr, admin_addr)
}

#[tokio::test(start_paused = true)]
async fn the_metrics_and_admin_ports_are_capped_too() {
    let (repo, server) = empty_server(|_| {}).await;
    let config = config_for(repo.path());
    let (metrics, admin) = side_listeners(server.gateway.clone(), &config).await;
    for (addr, path, status) in [(metrics, "/metrics", 200), (admin, "/v1/routes", 401)] {
        // One connection holds the only slot (a keep-alive request, then nothing).
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        first.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[9..12], status.to_string().as_bytes(), "{addr}");
        let second = tokio::spawn(live(addr, path));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "{path}: a second connection was served past the cap");
        drop(first);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap(), status, "{path}");
    }
}

// === finding 2: bodies without a length ===

/// An HTTP/1.1 upload to the repository index (which reads a body) without
/// Content-Length: `chunks` chunks of `size` bytes, then it stalls.
async fn chunked_upload(addr: SocketAddr, chunks: usize, size: usize) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v2/repository/index HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        socket.write_all(format!("{size:x}\r\n").as_bytes()).await.unwrap();
        socket.write_all(&vec![b' '; size]).await.unwrap();
        socket.write_all(b"\r\n").await.unwrap();
    }
    socket
}

#[tokio::test]
async fn a_chunked_body_is_held_against_the_budget_as_it_arrives() {
    let (_repo, server) = empty_server(|c| {
        c.server.max_request_bytes = 64 << 10;
        c.server.max_inflight_bytes = 100 << 10;
    })
    .await;
    let upload = chunked_upload(server.http, 6, 10_000).await;
    common::eventually("the chunked upload holds what arrived", || server.gateway.inflight.held() >= 60_000).await;
    // A request of 50 kB more does not fit next to it.
    let body = vec![b' '; 50_000];
    let reply = server.request(http::Method::POST, "/v2/repository/index", &[], body).await;
    reply.expect_error(429, "retry later");
    drop(upload);
    common::eventually("the departed upload gives its bytes back", || server.gateway.inflight.held() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_body_that_trickles_in_is_cut_off_at_the_whole_body_timeout() {
    let (_repo, server) = empty_server(|c| {
        c.server.body_idle_timeout_secs = 5;
        c.server.body_timeout_secs = 20;
    })
    .await;
    let mut socket = TcpStream::connect(server.http).await.unwrap();
    let head = "POST /v2/repository/index HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 4 s: never a 5 s pause, and 1000 bytes would take over an hour.
    let mut reply = Vec::new();
    for _ in 0..1000 {
        if socket.write_all(b" ").await.is_err() {
            break;
        }
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(4), socket.read_buf(&mut reply)).await
            && (read.unwrap_or(0) == 0 || !reply.is_empty())
        {
            break;
        }
    }
    let answered = started.elapsed();
    if let Some(rest) = read_until_closed(&mut socket, Duration::from_secs(5)).await {
        reply.extend(rest);
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("within 20 s"), "{reply}");
    assert!(answered <= Duration::from_secs(21), "answered after {answered:?}");
}

// === finding 3: compressed bodies ===

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn a_compressed_body_is_held_as_it_inflates_and_stopped_at_the_budget() {
    let (_repo, server) = empty_server(|c| {
        c.server.max_request_bytes = 4 << 20;
        c.server.max_inflight_bytes = 6 << 20;
    })
    .await;
    // 3 MiB held by an upload that stalls...
    let _upload = server.stalled_upload("/v2/repository/index", 3 << 20, "{").await;
    common::eventually("the upload holds its declared bytes", || server.gateway.inflight.held() == 3 << 20).await;
    // ...leaves less than the 4 MiB size limit: a bomb is stopped by the
    // budget while it inflates (429), not inflated whole first (413).
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 64 << 10);
    let reply = server.request(http::Method::POST, "/v2/repository/index", &[("content-encoding", "gzip")], bomb).await;
    reply.expect_error(429, "retry later");
    assert_eq!(server.gateway.inflight.held(), 3 << 20, "the refused bomb holds nothing");
    // With room, the same bomb meets the size limit.
    drop(_upload);
    common::eventually("the upload gives its bytes back", || server.gateway.inflight.held() == 0).await;
    let bomb = gzip(&vec![b' '; 16 << 20]);
    let reply = server.request(http::Method::POST, "/v2/repository/index", &[("content-encoding", "gzip")], bomb).await;
    reply.expect_error(413, "decompressed request body exceeds");
}

// === findings 5 and 10: what errors quote, framing, versions, protobuf ===

/// Sends raw `request` bytes and returns the whole reply (the server closes).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let reply = read_until_closed(&mut socket, Duration::from_secs(10)).await.expect("no reply");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn requests_without_one_host_or_with_a_transfer_coding_are_refused() {
    let (_repo, server) = empty_server(|_| {}).await;
    let no_host = raw(server.http, b"GET /v2/health/live HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains(r#"{"error":"an HTTP/1.1 request must carry exactly one Host header"}"#), "{no_host}");
    let two =
        raw(server.http, b"GET /v2/health/live HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n").await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let gzip_chunked = raw(
        server.http,
        b"POST /v2/repository/index HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(gzip_chunked.starts_with("HTTP/1.1 501"), "{gzip_chunked}");
    // HTTP/1.0 may leave Host out.
    let old = raw(server.http, b"GET /v2/health/live HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");
}

#[tokio::test]
async fn versions_must_be_plain_numbers_and_errors_quote_little_of_the_request() {
    let (_repo, server) = empty_server(|_| {}).await;
    for version in ["01", "+1", "%201", ""] {
        let reply = server.get(&format!("/v2/models/m/versions/{version}/ready")).await;
        assert_eq!(reply.status, 400, "version {version:?}: {:?}", reply.body);
    }
    // A 60 KB path and a 70 KB method are not repeated in full.
    let long_path = format!("/v2/models/m/{}", "p".repeat(60_000));
    let reply = server.get(&long_path).await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.len() < 400, "{} bytes", reply.body.len());
    let method = "M".repeat(70_000);
    let reply = raw(
        server.http,
        format!("{method} /v2/health/live HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{}", &reply[..reply.len().min(200)]);
    assert!(reply.len() < 600, "{} bytes", reply.len());
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let (_repo, server) = empty_server(|_| {}).await;
    let socket = TcpStream::connect(server.http).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // One uncompressed message of 3 bytes that are not protobuf.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]), true).unwrap();
    let response = response.await.unwrap();
    let status = match response.headers().get("grpc-status") {
        Some(status) => status.clone(),
        None => {
            let mut reply = response.into_body();
            while reply.data().await.is_some() {}
            reply.trailers().await.unwrap().unwrap()["grpc-status"].clone()
        }
    };
    assert_eq!(status, "3", "INVALID_ARGUMENT");
}

#[tokio::test]
async fn the_admin_api_refuses_two_host_headers() {
    let (repo, server) = empty_server(|_| {}).await;
    let (_, admin) = side_listeners(server.gateway.clone(), &config_for(repo.path())).await;
    let ask = |hosts: &'static str| async move {
        let request = format!(
            "GET /admin/v1/routes HTTP/1.1\r\n{hosts}authorization: Bearer a-test-token-of-enough-length\r\nconnection: close\r\n\r\n"
        );
        raw(admin, request.as_bytes()).await
    };
    let one = ask("host: localhost\r\n").await;
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let two = ask("host: localhost\r\nhost: attacker.example\r\n").await;
    assert!(two.starts_with("HTTP/1.1 403"), "{two}");
}

#[tokio::test]
async fn by_default_the_data_plane_cannot_load_or_unload_models() {
    // Finding 7: the unauthenticated repository API is off unless configured (Triton's `none`).
    let (_repo, server) = empty_server(|_| {}).await;
    for action in ["load", "unload"] {
        let reply = server.post_json(&format!("/v2/repository/models/m/{action}"), &serde_json::json!({})).await;
        reply.expect_error(400, "not allowed");
    }
}

// === finding 4: a client that does not read ===

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_its_responses_is_cut_off_at_the_write_timeout() {
    let (_repo, server) = empty_server(|c| c.server.write_timeout_secs = 10).await;
    let socket = TcpStream::connect(server.http).await.unwrap();
    let (_read_half, mut write_half) = socket.into_split();
    // Pipelined requests for /metrics (kilobytes each) and never a read: the
    // replies fill the socket buffers, then the server's writes wait for room.
    let writer = tokio::spawn(async move {
        let requests = b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n".repeat(1000);
        // 72 MB of requests: more than every socket buffer on the way holds.
        for _ in 0..2000 {
            write_half.write_all(&requests).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // hyper's own 30 s header-read timeout ends a pipelined HTTP/1.1
    // connection too, in the end; the write timeout (10 s here) comes first.
    let started = Instant::now();
    let written = tokio::time::timeout(Duration::from_secs(600), writer)
        .await
        .expect("the server kept a connection whose client never reads")
        .unwrap();
    assert!(written.is_err(), "2 million requests went through without the client reading a reply");
    let cut_after = started.elapsed();
    assert!(cut_after <= Duration::from_secs(11), "cut off after {cut_after:?}, not at the write timeout");
    assert_eq!(live(server.http, "/v2/health/live").await, 200, "others are served");
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_stream_window_is_cut_off_at_the_write_timeout() {
    let (_repo, server) = identity_server(|c| c.server.write_timeout_secs = 1).await;
    // 1 MB asks for a 5 MB JSON response; the client's window is 0 and it
    // never sends a WINDOW_UPDATE, while its connection task keeps the
    // socket itself busy (it reads, answers PINGs).
    let (body, length) = int8_json_request(1 << 20);
    let socket = TcpStream::connect(server.http).await.unwrap();
    let (client, connection) = h2::client::Builder::new().initial_window_size(0).handshake(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("/v2/models/identity/infer")
        .header("inference-header-content-length", length)
        .body(())
        .unwrap();
    let (response, mut upload) = client.send_request(request, false).unwrap();
    upload.reserve_capacity(body.len());
    upload.send_data(bytes::Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let budget = &server.gateway.inflight;
    assert!(budget.held() > 0, "the unsent response is held against the budget");
    // Without a cut-off the connection (and the response's bytes) stayed for ever.
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("an HTTP/2 client that never opened its window was kept");
    assert!(started.elapsed() < Duration::from_secs(10), "cut off after {:?}", started.elapsed());
    common::eventually("the cut-off response gives its bytes back", || budget.held() == 0).await;
    assert_eq!(live(server.http, "/v2/health/live").await, 200, "others are served");
}

// === finding 4: responses are held against the budget until written ===

/// An identity inference as one binary body: `n` INT8 elements of -100 in
/// `IN_INT8` (every other input one element), asking for `OUT_INT8` as JSON,
/// which writes `-100,` (5 bytes) for each byte sent.
fn int8_json_request(n: usize) -> (Vec<u8>, String) {
    let mut inputs = Vec::new();
    let mut binary = Vec::new();
    for &(name, dtype, size) in common::IDENTITY_FIXED_INPUTS.iter().chain([&("IN_BYTES", "BYTES", 5)]) {
        let (count, data) = match name {
            "IN_INT8" => (n, vec![0x9c; n]),
            "IN_BYTES" => (1, vec![1, 0, 0, 0, b'x']),
            _ => (1, vec![0; size]),
        };
        inputs.push(serde_json::json!({
            "name": name, "datatype": dtype, "shape": [1, count], "parameters": {"binary_data_size": data.len()}
        }));
        binary.extend(data);
    }
    let header = serde_json::json!({"inputs": inputs, "outputs": [{"name": "OUT_INT8"}]}).to_string();
    let length = header.len().to_string();
    let mut body = header.into_bytes();
    body.extend(binary);
    (body, length)
}

async fn identity_server(configure: impl FnOnce(&mut Config)) -> (TempRepo, TestServer) {
    let repo = TempRepo::new();
    repo.add("identity", "identity", 1, Some("max_batch_size: 0"));
    let mut config = config_for(repo.path());
    configure(&mut config);
    config.validate().unwrap();
    (repo, TestServer::start(config).await)
}

#[tokio::test]
async fn a_response_nobody_reads_is_held_against_the_budget_until_written() {
    let (_repo, server) = identity_server(|c| {
        c.server.max_request_bytes = 16 << 20;
        c.server.max_inflight_bytes = 64 << 20;
    })
    .await;
    // 8 MB asks for a 40 MB JSON response, and its client never reads it.
    let (body, length) = int8_json_request(8 << 20);
    let mut silent = TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST /v2/models/identity/infer HTTP/1.1\r\nhost: t\r\ninference-header-content-length: {length}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    silent.write_all(head.as_bytes()).await.unwrap();
    silent.write_all(&body).await.unwrap();
    let budget = &server.gateway.inflight;
    // What the socket buffers took is given back only with the last slice:
    // tens of megabytes stay held while the client does not read.
    common::eventually("the unread response holds its bytes", || budget.held() >= 30 << 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(budget.held() >= 30 << 20, "given back before it was written: {}", budget.held());
    // The same request again does not fit beside it: refused before its
    // response is encoded.
    let headers = [("inference-header-content-length", length.as_str())];
    let reply = server.request(http::Method::POST, "/v2/models/identity/infer", &headers, body.clone()).await;
    reply.expect_error(429, "retry later");
    drop(silent);
    common::eventually("the departed client's response is given back", || budget.held() == 0).await;
    let reply = server.request(http::Method::POST, "/v2/models/identity/infer", &headers, body).await;
    assert_eq!(reply.status, 200, "{}", reply.error());
    assert_eq!(budget.held(), 0, "a response read to its end holds nothing");
}

/// A `ModelInferRequest` for identity: `fp32` bytes of `IN_FP32`, every
/// other input one element, all in `raw_input_contents`.
fn identity_raw(fp32: usize) -> modelgate::proto::inference::ModelInferRequest {
    use modelgate::proto::inference::model_infer_request::InferInputTensor;
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    for &(name, dtype, size) in common::IDENTITY_FIXED_INPUTS.iter().chain([&("IN_BYTES", "BYTES", 5)]) {
        let data = match name {
            "IN_FP32" => vec![0; fp32],
            "IN_BYTES" => vec![1, 0, 0, 0, b'x'],
            _ => vec![0; size],
        };
        let count = if name == "IN_FP32" { fp32 / 4 } else { 1 };
        let shape = vec![1, count as i64];
        inputs.push(InferInputTensor { name: name.into(), datatype: dtype.into(), shape, ..Default::default() });
        raw.push(bytes::Bytes::from(data));
    }
    modelgate::proto::inference::ModelInferRequest {
        model_name: "identity".into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stream_nobody_reads_holds_its_responses_against_the_budget() {
    let (_repo, server) = identity_server(|c| {
        c.server.max_request_bytes = 4 << 20;
        c.server.max_inflight_bytes = 24 << 20;
    })
    .await;
    let mut client = server.grpc().await;
    // 40 requests of 2 MiB, 80 MiB of responses, and the client reads none.
    let requests = (0..40).map(|_| identity_raw(2 << 20)).collect::<Vec<_>>();
    let unread = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let budget = &server.gateway.inflight;
    common::eventually("the unread responses hold their bytes", || budget.held() >= 16 << 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = budget.held();
    assert!((16 << 20..=24 << 20).contains(&held), "{held} bytes held by a stream nobody reads");
    drop(unread);
    drop(client);
    common::eventually("the departed stream gives its bytes back", || budget.held() == 0).await;
}

// === finding 6: gRPC decoding ===

#[tokio::test]
async fn a_message_of_millions_of_empty_elements_is_refused_before_it_is_built() {
    use modelgate::proto::inference::InferTensorContents;
    let (_repo, server) = identity_server(|c| c.server.max_request_bytes = 16 << 20).await;
    let mut client = server.grpc().await;
    // 12 MB on the wire, 6 million `Bytes` (192 MB) decoded.
    let mut message = identity_raw(4);
    message.raw_input_contents.clear();
    for input in &mut message.inputs {
        let elements = if input.name == "IN_BYTES" { 6_000_000 } else { 0 };
        input.contents =
            Some(InferTensorContents { bytes_contents: vec![bytes::Bytes::new(); elements], ..Default::default() });
    }
    let status = client.model_infer(message).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too many elements"), "{status:?}");
    // A large message within the bound decodes (off the worker) and is served.
    let response = client.model_infer(identity_raw(8 << 20)).await.unwrap().into_inner();
    let fp32 = response.outputs.iter().position(|o| o.name == "OUT_FP32").unwrap();
    assert_eq!(response.raw_output_contents[fp32].len(), 8 << 20);
}

#[tokio::test]
async fn an_inference_holds_its_inputs_batch_copy_and_outputs_while_it_runs() {
    let (_repo, server) = identity_server(|c| {
        c.server.max_request_bytes = 16 << 20;
        c.server.max_inflight_bytes = 30 << 20;
    })
    .await;
    let mut client = server.grpc().await;
    // 8 MiB of inputs run with 24 MiB held; 12 MiB would need 36 MiB.
    client.model_infer(identity_raw(8 << 20)).await.unwrap();
    let status = client.model_infer(identity_raw(12 << 20)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry later"), "{status:?}");
    assert_eq!(server.gateway.inflight.held(), 0);
}
