//! How many heap blocks the gateway allocates to answer one request, counted
//! by a global allocator that wraps the gateway's own (issue #16: every
//! allocation on the request path costs a malloc and a free on the runtime
//! workers or the instance thread, with their cache misses). Each budget is
//! what the path takes today plus a small margin: a change that adds
//! allocations per request fails here and has to say why, or raise the
//! budget in the same commit.
//!
//! Only the gateway's threads count: the clients run on threads that switch
//! counting off, so the tonic client's own allocations are not charged to
//! the server. Requests go one at a time on one connection (every batch is
//! one request), after a warm-up that fills the lazily built parts (metric
//! handles, buffers, the model's first run).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure
#![allow(unsafe_code)] // a global allocator is an unsafe trait

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TestServer, mlp_grpc_request, mlp_request, serve_example};
use modelgate::memory::Allocator;
use modelgate::proto::inference as pb;

/// Blocks allocated (or moved by a resize) on counted threads.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Off on the clients' threads.
    static COUNTED: Cell<bool> = const { Cell::new(true) };
}

struct Counting;

impl Counting {
    fn count(&self) {
        // `try_with`: a thread's allocations after its thread-locals are gone still count.
        if COUNTED.try_with(Cell::get).unwrap_or(true) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed unchanged to `Allocator`, whose contract this
// shares; counting touches neither the block nor the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller keeps `alloc`'s contract.
        unsafe { Allocator.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller keeps `alloc_zeroed`'s contract.
        unsafe { Allocator.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller keeps `dealloc`'s contract.
        unsafe { Allocator.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: the caller keeps `realloc`'s contract.
        unsafe { Allocator.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const WARM_UP: u64 = 200;
const MEASURED: u64 = 2_000;

/// One test at a time, from before its gateway starts: the count is the
/// whole process's, and another test's model load would land in it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `client` on a thread whose own allocations are not counted, and
/// returns the gateway's allocations per request over its measured requests.
/// `client(n)` sends `n` requests one after another and checks each answer.
async fn allocations_per_request(client: impl FnMut(u64) + Send + 'static) -> f64 {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        COUNTED.with(|c| c.set(false));
        let mut client = client;
        client(WARM_UP);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        client(MEASURED);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        let _ = tx.send(after - before);
    });
    let allocations = rx.await.expect("the client thread finished");
    allocations as f64 / MEASURED as f64
}

/// A blocking HTTP/1.1 keep-alive client that sends one request text over
/// and over and reads each reply into a fixed buffer: it allocates nothing
/// per request (not that it would count).
struct RawHttp {
    socket: TcpStream,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl RawHttp {
    fn new(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> RawHttp {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let socket = TcpStream::connect(address).expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        RawHttp { socket, request, reply: vec![0; 64 << 10] }
    }

    /// Sends the request `n` times; each reply must be a 200 carrying `expect`.
    fn send(&mut self, n: u64, expect: &[u8]) {
        for _ in 0..n {
            self.socket.write_all(&self.request).expect("write");
            let length = self.read_reply();
            let reply = &self.reply[..length];
            assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(reply));
            assert!(reply.windows(expect.len()).any(|w| w == expect), "{}", String::from_utf8_lossy(reply));
        }
    }

    /// Reads one whole reply (head and `content-length` body); its length.
    fn read_reply(&mut self) -> usize {
        let mut read = 0;
        loop {
            let n = self.socket.read(&mut self.reply[read..]).expect("read");
            assert!(n > 0, "the gateway closed the connection");
            read += n;
            let Some(head_end) = self.reply[..read].windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = std::str::from_utf8(&self.reply[..head_end]).expect("an ASCII head");
            let body_length: usize = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse()))
                .expect("a content-length")
                .expect("a numeric content-length");
            if read >= head_end + 4 + body_length {
                assert_eq!(read, head_end + 4 + body_length, "one reply per request");
                return read;
            }
        }
    }
}

/// Serves the example MLP alone, measures the allocations per request of the
/// client `client_for` makes for it, and holds them to `budget`.
async fn assert_within_budget<C>(what: &str, budget: f64, client_for: impl FnOnce(&TestServer) -> C)
where
    C: FnMut(u64) + Send + 'static,
{
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_repo, server) = serve_example("mlp", |_| {}).await;
    let per_request = allocations_per_request(client_for(&server)).await;
    eprintln!("{what}: {per_request:.2} allocations per request (budget {budget})");
    assert!(per_request <= budget, "{what}: {per_request:.2} allocations per request, over the budget of {budget}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_json_inference_allocates_within_its_budget() {
    let body = serde_json::to_vec(&mlp_request(1, 7)).unwrap();
    assert_within_budget("HTTP JSON inference (batch 1)", 38.0, |server| {
        let mut client = RawHttp::new(server.http, "POST", "/v2/models/mlp/infer", &body);
        move |n| client.send(n, b"\"outputs\"")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_health_check_allocates_within_its_budget() {
    // The HTTP stack alone.
    assert_within_budget("HTTP GET /v2/health/ready", 8.0, |server| {
        let mut client = RawHttp::new(server.http, "GET", "/v2/health/ready", b"");
        move |n| client.send(n, b"HTTP/1.1 200")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_inference_allocates_within_its_budget() {
    let request = mlp_grpc_request("mlp");
    assert_within_budget("gRPC inference (raw input contents, batch 1)", 70.0, |server| {
        let address = server.grpc;
        move |n| {
            // The client's runtime lives on the client's uncounted thread.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap();
                let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                    channel.connect().await.unwrap(),
                );
                for _ in 0..n {
                    let reply = client.model_infer(request.clone()).await.expect("an answer").into_inner();
                    assert_eq!(reply.raw_output_contents[0].len(), 10 * 4);
                }
            });
        }
    })
    .await;
}
