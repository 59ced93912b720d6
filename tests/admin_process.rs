//! The `modelgate serve` process itself: the admin listener stays closed
//! without a token and opens with a token file, every admin change writes an
//! audit line, SIGHUP re-reads the routes of the config file, SIGTERM drains
//! requests in flight (for at most `--exit-timeout-secs`), the metrics
//! listener is where `--metrics-port` says (nowhere for 0), and
//! `MODELGATE_LOG_FORMAT=json` writes one JSON object a line.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // helpers of tests: a panic is the failure report

mod support_routing;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support_routing::{Http, Kind, Repo, TOKEN, infer_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `modelgate serve` child; killed when dropped.
struct Serve {
    child: Child,
    http: u16,
    admin: u16,
    /// Where its stderr goes: the log lines say what it did with a signal or why it stopped.
    log: PathBuf,
}

impl Serve {
    fn start(repo: &Repo, config: &Path, token: Option<&str>) -> Serve {
        Serve::start_with(repo, config, token, |command| {
            command.args(["--metrics-port", "0"]);
        })
    }

    /// [`Serve::start`], with `more` adding to the command line (flags the
    /// base command leaves out, such as `--metrics-port`) or the environment.
    fn start_with(repo: &Repo, config: &Path, token: Option<&str>, more: impl FnOnce(&mut Command)) -> Serve {
        let (http, admin) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_modelgate"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .arg("--model-repository")
            .arg(repo.path())
            .args(["--http-address", "127.0.0.1", "--grpc-port", "0"])
            .args(["--http-port", &http.to_string(), "--admin-port", &admin.to_string()])
            .args(["--strict-readiness", "false"])
            // Tests run side by side: none takes the embedded control plane's fixed port.
            .args(["--control-plane-port", "0"])
            .env_remove("MODELGATE_ADMIN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        // Beside the repository, not in it: a file there would be read as a model.
        let log = std::env::temp_dir().join(format!("modelgate-admin-process-{}-{http}.log", std::process::id()));
        command.stderr(std::fs::File::create(&log).unwrap());
        if let Some(token) = token {
            command.env("MODELGATE_ADMIN_TOKEN", token);
        }
        more(&mut command);
        Serve { child: command.spawn().unwrap(), http, admin, log }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits for the process to exit (at most `limit`): its status and when it exited.
    async fn exited(&mut self, limit: Duration) -> (ExitStatus, Instant) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, Instant::now());
            }
            assert!(started.elapsed() < limit, "still running {limit:?} later:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `times` times: the server has finished handling
    /// the signal that writes it, so a check that nothing changed is not a guess.
    async fn wait_log(&self, needle: &str, times: usize) {
        let started = Instant::now();
        while self.log_text().matches(needle).count() < times {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no '{needle}' (x{times}) in the log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self) {
        let http = Http::default();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.http)).await.is_ok() {
                let url = format!("http://127.0.0.1:{}/v2/health/ready", self.http);
                if http.send(Method::GET, url, &[], None).await.status == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("modelgate serve did not become ready");
    }

    async fn weights(&self) -> (u64, u64) {
        let url = format!("http://127.0.0.1:{}/admin/v1/routes/m", self.admin);
        let reply =
            Http::default().send(Method::GET, url, &[("authorization", &format!("Bearer {TOKEN}"))], None).await;
        let targets = &reply.body["targets"];
        (targets[0]["weight"].as_u64().unwrap(), targets[1]["weight"].as_u64().unwrap())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_routes(path: &Path, a: u32, b: u32) {
    let text = format!(
        "[[routes]]\nmodel = \"m\"\ntargets = [{{ version = 1, weight = {a} }}, {{ version = 2, weight = {b} }}]\n"
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_routes_of_the_config_file() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let config = repo.path().join("modelgate.toml");
    write_routes(&config, 90, 10);
    let serve = Serve::start(&repo, &config, Some(TOKEN));
    serve.wait_ready().await;
    assert_eq!(serve.weights().await, (90, 10));
    write_routes(&config, 20, 80);
    let hup = Command::new("kill").args(["-HUP", &serve.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let started = Instant::now();
    while serve.weights().await != (20, 80) {
        assert!(started.elapsed() < Duration::from_secs(10), "SIGHUP did not apply the new weights");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file changes nothing.
    std::fs::write(&config, "[[routes]]\nmodel = \"m\"\ntargets = [{ version = 1, weight = 7 }]\n").unwrap();
    Command::new("kill").args(["-HUP", &serve.child.id().to_string()]).status().unwrap();
    serve.wait_log("not reloaded", 1).await;
    assert_eq!(serve.weights().await, (20, 80));
    // Issue #15, finding 9: a route to a version that is not loaded is
    // refused as the admin API refuses it, and an empty file removes nothing.
    std::fs::write(
        &config,
        "[[routes]]\nmodel = \"m\"\ntargets = [{ version = 1, weight = 50 }, { version = 3, weight = 50 }]\n",
    )
    .unwrap();
    Command::new("kill").args(["-HUP", &serve.child.id().to_string()]).status().unwrap();
    serve.wait_log("not reloaded", 2).await;
    assert_eq!(serve.weights().await, (20, 80), "a route to a missing version was applied");
    std::fs::write(&config, "").unwrap();
    Command::new("kill").args(["-HUP", &serve.child.id().to_string()]).status().unwrap();
    serve.wait_log("the config file is empty", 1).await;
    assert_eq!(serve.weights().await, (20, 80), "an empty file removed the route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_port_stays_closed() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let config = repo.path().join("modelgate.toml");
    write_routes(&config, 90, 10);
    let serve = Serve::start(&repo, &config, None);
    serve.wait_ready().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", serve.admin)).await.is_err());
    // A token too short to be safe stops the server at start instead.
    let mut weak = Serve::start(&repo, &config, Some("short"));
    let log = weak.log.clone();
    let status = tokio::task::spawn_blocking(move || weak.child.wait().unwrap()).await.unwrap();
    assert!(!status.success());
    // Stopped for the token's sake, not for any other start-up failure.
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("admin token must be at least"), "{text}");
}

/// An MLP inference whose body the server is waiting for, on HTTP/1.1 with
/// `Expect: 100-continue`: the server's `100 Continue` is sent when the
/// handler reads the body, so the request is in flight, not in a socket buffer.
async fn request_in_flight(port: u16, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v2/models/m/versions/1/infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
        assert_eq!(read.expect("no 100 Continue within 10 s").unwrap(), 1, "closed: {seen:?}");
        seen.push(byte[0]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&seen));
    stream
}

/// Everything the server writes until it closes the connection (at most 10 s).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    // A reset after the drain gave up reads as an error: what came before it is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.expect("not closed");
    String::from_utf8_lossy(&answer).into_owned()
}

fn mlp_repo() -> (Repo, PathBuf) {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let config = repo.path().join("modelgate.toml");
    write_routes(&config, 90, 10);
    (repo, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_listeners_and_answers_the_request_in_flight_before_exiting() {
    let (repo, config) = mlp_repo();
    let mut serve = Serve::start(&repo, &config, None);
    serve.wait_ready().await;
    let body = infer_body(3);
    let mut stream = request_in_flight(serve.http, &body).await;
    serve.signal("TERM");
    // Draining: no new connection is accepted...
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", serve.http)).await.is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "still accepting connections 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the request already in flight is still answered, in full.
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"outputs\""), "{answer}");
    let (status, _) = serve.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}:\n{}", serve.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_exit_timeout_secs_the_drain_gives_up_on_a_request_in_flight() {
    let (repo, config) = mlp_repo();
    let mut serve = Serve::start_with(&repo, &config, None, |command| {
        command.args(["--metrics-port", "0", "--exit-timeout-secs", "1"]);
    });
    serve.wait_ready().await;
    // A request whose body never comes: the drain cannot finish on its own.
    let mut stream = request_in_flight(serve.http, &infer_body(4)).await;
    let signalled = Instant::now();
    serve.signal("TERM");
    let (status, at) = serve.exited(Duration::from_secs(20)).await;
    let took = at - signalled;
    // It waited for the request (the drain's whole second), then stopped waiting (not the default 30 s).
    assert!(took >= Duration::from_secs(1), "exited {took:?} after SIGTERM, before --exit-timeout-secs 1");
    assert!(took < Duration::from_secs(15), "exited {took:?} after SIGTERM, with --exit-timeout-secs 1");
    assert!(status.success(), "{status}:\n{}", serve.log_text());
    assert!(serve.log_text().contains("drain timed out"), "{}", serve.log_text());
    let answer = read_to_close(&mut stream).await;
    assert!(!answer.contains("200"), "answered after the drain gave up: {answer}");
}

/// TCP ports `pid` listens on, from its socket descriptors and /proc/net/tcp{,6}.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let columns: Vec<&str> = line.split_whitespace().collect();
            if columns.len() > 9 && columns[3] == "0A" && inodes.contains(columns[9]) {
                let port = columns[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_port_0_turns_it_off() {
    let (repo, config) = mlp_repo();
    let metrics = free_port();
    let serve = Serve::start_with(&repo, &config, None, |command| {
        command.args(["--metrics-port", &metrics.to_string()]);
    });
    serve.wait_ready().await;
    let reply = Http::default().send(Method::GET, format!("http://127.0.0.1:{metrics}/metrics"), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.body.as_str().unwrap_or_default();
    assert!(text.contains("modelgate_model_state{"), "{text}");
    assert!(text.contains("nv_inference_count{"), "{text}");
    assert_eq!(listening_ports(serve.child.id()), BTreeSet::from([serve.http, metrics]));
    // The same with --metrics-port 0 (gRPC 0, no admin token, no control plane): the HTTP port alone.
    let off = Serve::start(&repo, &config, None);
    off.wait_ready().await;
    assert_eq!(listening_ports(off.child.id()), BTreeSet::from([off.http]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_opens_the_admin_api_and_each_change_or_refusal_writes_one_audit_line() {
    let (repo, config) = mlp_repo();
    let token_file = repo.path().join("../admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let serve = Serve::start_with(&repo, &config, None, |command| {
        command.args(["--metrics-port", "0", "--admin-token-file"]).arg(&token_file);
        command.env("RUST_LOG", "warn,modelgate::audit=info");
    });
    serve.wait_ready().await;
    let url = format!("http://127.0.0.1:{}/admin/v1/routes/m/weights", serve.admin);
    let http = Http::default();
    let bearer = format!("Bearer {TOKEN}");
    let weights = r#"{"weights": [{"version": 1, "weight": 60}, {"version": 2, "weight": 40}]}"#.to_owned();
    let refused = http.send(Method::PUT, url.clone(), &[], Some(weights.clone())).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let headers = [("authorization", bearer.as_str()), ("x-modelgate-actor", "alice")];
    let applied = http.send(Method::PUT, url, &headers, Some(weights)).await;
    assert_eq!(applied.status, StatusCode::OK, "{:?}", applied.body);
    assert_eq!(serve.weights().await, (60, 40));
    serve.wait_log("admin change", 1).await;
    let log = serve.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("modelgate::audit")).collect();
    // The refused attempt and the change; the reads of the weights write none.
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("admin request refused") && lines[0].contains("missing bearer token"), "{}", lines[0]);
    for field in
        ["admin change", "actor=\"alice\"", "method=PUT", "path=\"/admin/v1/routes/m/weights\"", "outcome=\"applied\""]
    {
        assert!(lines[1].contains(field), "{field} not in {}", lines[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_json_objects_with_modelgate_log_format_json() {
    let (repo, config) = mlp_repo();
    let mut serve = Serve::start_with(&repo, &config, None, |command| {
        command.args(["--metrics-port", "0"]).env("MODELGATE_LOG_FORMAT", "json").env("RUST_LOG", "info");
    });
    serve.wait_ready().await;
    serve.signal("TERM");
    serve.exited(Duration::from_secs(20)).await;
    let log = serve.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(line["level"].is_string() && line["timestamp"].is_string(), "{line}");
    }
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    assert!(messages.contains(&"shutting down: readiness off, draining connections"), "{messages:?}");
}
