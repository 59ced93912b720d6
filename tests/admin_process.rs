//! The `modelgate serve` process itself: the admin listener stays closed
//! without a token, and SIGHUP re-reads the routes of the config file.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // helpers of tests: a panic is the failure report

mod support_routing;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support_routing::{Http, Kind, Repo, TOKEN};

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
        let (http, admin) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_modelgate"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .arg("--model-repository")
            .arg(repo.path())
            .args(["--http-address", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"])
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
        Serve { child: command.spawn().unwrap(), http, admin, log }
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
