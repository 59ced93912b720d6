//! A gateway following a real control plane (SQLite, loopback), end to end
//! with real ONNX Runtime: an alias set in the registry is fetched, verified,
//! loaded and released as a canary; the rollout's end moves the aliases; a
//! corrupted blob is refused while the previous version serves; a gateway
//! restarted while the control plane is down serves its last-known-good state.
#![allow(clippy::unwrap_used)] // helpers of tests: a panic is the failure report

mod support_routing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use modelgate::config::Config;
use modelgate::gateway::Gateway;
use modelgate::server::{Listeners, ServerOptions};
use modelgate::sync::client::ControlPlane;
use modelgate::sync::{Follow, FollowRule, Follower};
use modelgate_registry::Registry;
use modelgate_registry::api::auth::Token;
use modelgate_registry::client::{Client, PushOptions};
use modelgate_registry::manifest::Entry;
use support_routing::{Http, Kind, Repo, TOKEN, infer_body};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A control plane on loopback over SQLite.
struct Plane {
    addr: SocketAddr,
    registry: Arc<Registry>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Plane {
    async fn start(dir: &Path) -> Plane {
        Plane::start_on(dir, "127.0.0.1:0").await
    }

    /// On `addr` (a restart takes the port it had).
    async fn start_on(dir: &Path, addr: &str) -> Plane {
        let data_dir = dir.join("cp");
        let plane = support_routing::start_control_plane(&data_dir, addr).await;
        Plane { addr: plane.addr, registry: plane.registry, data_dir, stop: Some(plane.stop), task: plane.task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = (&mut self.task).await;
        self.registry.store.close().await;
    }

    /// Goes away without draining, as a killed replica: the listener closes at once, and the
    /// connections still open answer 503 from then on (their database pool is closed).
    async fn kill(self) {
        self.task.abort();
        self.registry.store.close().await;
    }

    fn client(&self) -> Client {
        Client::new(&self.addr.to_string(), Token::new(TOKEN).unwrap())
    }

    /// Pushes `path` as a new version of `model`, with `alias` set; returns its number.
    async fn push(&self, model: &str, path: &Path, alias: Option<&str>) -> i64 {
        let options = PushOptions { alias: alias.map(str::to_owned), actor: "test".into(), ..Default::default() };
        self.client().push(model, path, options).await.unwrap()["version"].as_i64().unwrap()
    }

    async fn set_alias(&self, model: &str, alias: &str, version: i64) {
        self.client().set_alias(model, alias, version, None, "test", "release").await.unwrap();
    }

    async fn alias(&self, model: &str, alias: &str) -> Option<i64> {
        self.registry.store.alias(model, alias).await.unwrap().map(|a| a.version)
    }
}

/// A gateway following `control_plane`, with its pulled state under `data_dir`.
struct Follows {
    gateway: Arc<Gateway>,
    /// The admin API's link to the control plane, as `modelgate serve` connects it.
    registry: modelgate::admin::RegistryLink,
    http: String,
    stop: Option<oneshot::Sender<()>>,
    stop_following: CancellationToken,
    follower: tokio::task::JoinHandle<()>,
    _repo: tempfile::TempDir,
}

impl Follows {
    async fn start(data_dir: &Path, control_plane: &str, rules: &[&str]) -> Follows {
        Follows::start_over(data_dir, control_plane, rules, None).await
    }

    /// With `directory` as its model repository (else an empty one).
    async fn start_over(data_dir: &Path, control_plane: &str, rules: &[&str], directory: Option<&Path>) -> Follows {
        Follows::start_with(data_dir, control_plane, rules, directory, |_| {}).await
    }

    /// With `tweak` applied to its config.
    async fn start_with(
        data_dir: &Path,
        control_plane: &str,
        rules: &[&str],
        directory: Option<&Path>,
        tweak: impl FnOnce(&mut Config),
    ) -> Follows {
        let repo = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        tweak(&mut config);
        config.repository.path = directory.unwrap_or(repo.path()).to_owned();
        config.repository.strict_readiness = false;
        config.sync.data_dir = data_dir.to_owned();
        // Each gateway reports under its own id (the name of its data directory).
        config.sync.gateway_id = data_dir.file_name().map(|n| n.to_string_lossy().into_owned());
        config.follow = rules.iter().map(|r| toml::from_str::<FollowRule>(r).unwrap()).collect();
        config.validate().unwrap();
        let follow: Vec<Follow> = config.follow_rules().unwrap();
        let gateway = modelgate::start(&config, modelgate::loaders(&config)).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServerOptions { drain_timeout: Duration::from_secs(2), ..ServerOptions::from(&config.server) };
        tokio::spawn(modelgate::server::serve(
            gateway.clone(),
            Listeners { http: listener, grpc: None, metrics: None },
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let client =
            ControlPlane::configured(control_plane, Token::new(TOKEN).unwrap(), config.sync.ca_file.as_deref())
                .unwrap();
        let registry = modelgate::admin::RegistryLink::default();
        registry.connect(client.clone());
        let follower = Follower::new(gateway.clone(), config.sync.clone(), follow, client).unwrap();
        let stop_following = CancellationToken::new();
        let follower = tokio::spawn(follower.run(stop_following.clone()));
        Follows { gateway, registry, http, stop: Some(stop), stop_following, follower, _repo: repo }
    }

    async fn infer(&self, model: &str, seed: u32) -> (StatusCode, Option<u64>) {
        let url = format!("http://{}/v2/models/{model}/infer", self.http);
        let reply = Http::default().send(Method::POST, url, &[], Some(infer_body(seed))).await;
        (reply.status, reply.version())
    }

    /// Waits until `model` answers from `version`.
    async fn serves(&self, model: &str, version: u64, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.infer(model, 1).await.1 == Some(version) {
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "{model} never answered from version {version}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Follows {
    fn drop(&mut self) {
        self.stop_following.cancel();
        self.follower.abort();
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// Waits for `check` to hold, polling.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A model directory of one version of `kind` (config.pbtxt + 1/model.onnx).
fn model_dir(kind: Kind) -> Repo {
    Repo::new("m", &[(1, kind)])
}

/// A fast rollout, so a release ends within seconds.
const FAST: &str = "rollout = { step_weights = [50, 100], interval = \"1s\", check_interval = \"100ms\", \
                    window = \"2s\", min_requests = 5, threshold = 1, max_p99_latency = \"5s\" }";

fn rule(model: &str, canary_alias: Option<&str>) -> String {
    let canary = canary_alias.map(|a| format!("canary_alias = \"{a}\"\n")).unwrap_or_default();
    format!("model = \"{model}\"\nsource = \"models:/{model}@champion\"\n{canary}{FAST}")
}

/// Sends requests to `model` from a few tasks until `stop`; counts failures.
fn drive(
    gateway: &Arc<Follows>,
    model: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let failed = Arc::new(AtomicU64::new(0));
    let tasks = (0..4)
        .map(|c| {
            let (gateway, stop, failed) = (gateway.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut seed = c * 1000;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    if gateway.infer(model, seed).await.0 != StatusCode::OK {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (failed, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_challenger_set_in_the_registry_is_released_as_a_canary_and_its_promotion_moves_the_champion() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let gateway = Arc::new(Follows::start(&dir.path().join("gw"), &cp, &[&rule("fraud", Some("challenger"))]).await);
    let (one, two) = (model_dir(Kind::Mlp), model_dir(Kind::Mlp));
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;

    // The same bytes as version 1: nothing to download, the load alone.
    let set = Instant::now();
    plane.push("fraud", &two.path().join("m"), Some("challenger")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, tasks) = drive(&gateway, "fraud", stop.clone());
    let canary_after = gateway.serves("fraud", 2, Duration::from_secs(20)).await;
    eprintln!("challenger set -> canary traffic: {:?}", set.elapsed().min(canary_after + Duration::from_secs(1)));
    eventually("the champion moved to 2", Duration::from_secs(30), || async {
        plane.alias("fraud", "champion").await == Some(2)
    })
    .await;
    assert_eq!(plane.alias("fraud", "challenger").await, None, "promotion clears the challenger");
    eventually("version 1 unloaded", Duration::from_secs(10), || async {
        gateway.gateway.repository.resolve("fraud", Some(1)).is_err()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a healthy release fails no request");
    let history = plane.registry.store.alias_history("fraud", Some("champion")).await.unwrap();
    assert_eq!(history.last().unwrap().actor, "rollout");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_follower_ends_at_once_and_polls_the_control_plane_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let addr = plane.addr;
    let mut gateway = Follows::start(&dir.path().join("gw"), &format!("http://{addr}"), &[&rule("fraud", None)]).await;
    let one = model_dir(Kind::Mlp);
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;

    // Cancelled while its poller waits in a long poll: both end, the poll dropped.
    gateway.stop_following.cancel();
    tokio::time::timeout(Duration::from_secs(2), &mut gateway.follower).await.expect("the follower ended").unwrap();
    plane.stop().await;
    // A poller still running would reconnect within its first backoff (250 ms) to the port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let connected = tokio::time::timeout(Duration::from_millis(1500), listener.accept()).await;
    assert!(connected.is_err(), "the stopped follower polled again");
    assert_eq!(gateway.infer("fraud", 1).await, (StatusCode::OK, Some(1)), "what it loaded still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_champion_that_fails_is_rolled_back_and_the_alias_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let gateway = Arc::new(Follows::start(&dir.path().join("gw"), &cp, &[&rule("fraud", None)]).await);
    let (good, bad) = (model_dir(Kind::Mlp), model_dir(Kind::Failing));
    plane.push("fraud", &good.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    plane.push("fraud", &bad.path().join("m"), Some("champion")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (_failed, tasks) = drive(&gateway, "fraud", stop.clone());
    eventually("the champion moved back to 1", Duration::from_secs(30), || async {
        plane.alias("fraud", "champion").await == Some(1)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let state = plane.registry.store.desired_state().await.unwrap();
    assert!(state.models["fraud"].rolled_back.contains(&2), "version 2 is tagged rolled back");
    // Nothing starts version 2 again: a minute of requests would show it; a burst is enough here.
    for seed in 0..50 {
        assert_eq!(gateway.infer("fraud", seed).await, (StatusCode::OK, Some(1)));
    }
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_corrupted_in_the_store_is_refused_and_the_serving_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let data_dir = dir.path().join("gw");
    let gateway = Follows::start(&data_dir, &cp, &[&rule("fraud", None)]).await;
    let (good, other) = (model_dir(Kind::Mlp), model_dir(Kind::Slow));
    plane.push("fraud", &good.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    let v2 = plane.push("fraud", &other.path().join("m"), None).await;
    let version = plane.registry.store.require_version("fraud", v2).await.unwrap();
    let model_file: &Entry = version.manifest.as_ref().unwrap().iter().find(|e| e.path.ends_with(".onnx")).unwrap();
    let blob = plane.data_dir.join("blobs").join("sha256").join(model_file.sha256.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    plane.set_alias("fraud", "champion", v2).await;

    eventually("the gateway reports failed_verification", Duration::from_secs(20), || async {
        plane.registry.store.gateways().await.unwrap().iter().any(|g| {
            g.report.failures.iter().any(|f| f.reason == modelgate_registry::sync::FailureReason::FailedVerification)
        })
    })
    .await;
    assert_eq!(gateway.infer("fraud", 7).await, (StatusCode::OK, Some(1)), "version 1 keeps serving");
    assert!(gateway.gateway.repository.resolve("fraud", Some(2)).is_err(), "version 2 was never loaded");
    let cached = data_dir.join("gateway/cache/blobs/sha256").join(model_file.sha256.hex());
    assert!(!cached.exists(), "unverified bytes never reach the cache");
    assert!(!data_dir.join("gateway/models/fraud/2").exists(), "nor a version directory");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_restarted_while_the_control_plane_is_down_serves_its_last_known_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let data_dir = dir.path().join("gw");
    let good = model_dir(Kind::Mlp);
    plane.push("fraud", &good.path().join("m"), Some("champion")).await;
    let first = Follows::start(&data_dir, &cp, &[]).await;
    first.serves("fraud", 1, Duration::from_secs(20)).await;
    eventually("the snapshot is written", Duration::from_secs(10), || async {
        data_dir.join("gateway/state/snapshot.json").exists()
    })
    .await;
    drop(first);
    plane.stop().await;

    let started = Instant::now();
    let second = Follows::start(&data_dir, &cp, &[]).await;
    let ready = second.serves("fraud", 1, Duration::from_secs(10)).await;
    eprintln!("restart with the control plane down -> serving the last-known-good state: {:?}", started.elapsed());
    assert!(ready < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_cannot_load_or_does_not_exist_is_reported_while_the_others_apply() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let good = model_dir(Kind::Mlp);
    plane.push("good", &good.path().join("m"), Some("champion")).await;
    let broken = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(broken.path().join("1")).unwrap();
    std::fs::write(broken.path().join("1/model.onnx"), b"not an onnx model").unwrap();
    plane.push("broken", broken.path(), Some("champion")).await;
    let rules = [rule("good", None), rule("broken", None), rule("ghost", None)];
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    let gateway = Follows::start(&dir.path().join("gw"), &cp, &rules).await;
    gateway.serves("good", 1, Duration::from_secs(20)).await;
    eventually("both failures reported", Duration::from_secs(20), || async {
        let gateways = plane.registry.store.gateways().await.unwrap();
        let Some(report) = gateways.first().map(|g| &g.report) else { return false };
        let reason = |model: &str| report.failures.iter().find(|f| f.model == model).map(|f| f.reason);
        use modelgate_registry::sync::FailureReason::{Load, Missing};
        reason("broken") == Some(Load) && reason("ghost") == Some(Missing)
    })
    .await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_the_bytes_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let file = dir.path().join("weights.bin");
    std::fs::write(&file, &data).unwrap();
    plane.registry.store.create_model("big", "", &Default::default()).await.unwrap();
    let digest = modelgate_registry::digest::Digest::of(&data);
    let entry = Entry { path: "weights.bin".into(), size: data.len() as u64, sha256: digest };
    // The blob goes in through the registry's own store.
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data.clone()))]);
    plane.registry.blobs.put(&digest, data.len() as u64, stream).await.unwrap();

    let cache_root = dir.path().join("cache");
    let cache = modelgate::sync::cache::BlobCache::open(&cache_root).unwrap();
    // A download cut off after 1 MB left this behind.
    let part = cache_root.join("tmp").join(format!("{}.part", digest.hex()));
    std::fs::write(&part, &data[..1_000_000]).unwrap();
    let control_plane = ControlPlane::new(&format!("http://{}", plane.addr), Token::new(TOKEN).unwrap()).unwrap();
    let downloaded = cache.fetch(&control_plane, &entry).await.unwrap();
    assert_eq!(downloaded, 2_000_000, "only the missing bytes are fetched");
    assert_eq!(std::fs::read(cache.path(&digest)).unwrap(), data);
    assert!(!part.exists());

    // A .part whose bytes are wrong verifies wrong at the end: deleted, never renamed into place.
    std::fs::remove_file(cache.path(&digest)).unwrap();
    let mut wrong = data[..1_000_000].to_vec();
    wrong[10] ^= 0xff;
    std::fs::write(&part, &wrong).unwrap();
    let refused = cache.fetch(&control_plane, &entry).await.unwrap_err();
    assert_eq!(refused.reason(), modelgate_registry::sync::FailureReason::FailedVerification, "{refused}");
    assert!(!part.exists() && !cache.path(&digest).exists());
    assert_eq!(cache.fetch(&control_plane, &entry).await.unwrap(), 3_000_000, "a fresh download then succeeds");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_never_fail_while_the_control_plane_is_gone_and_the_gateway_resyncs_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let addr = plane.addr.to_string();
    let cp = format!("http://{addr}");
    let gateway = Arc::new(Follows::start(&dir.path().join("gw"), &cp, &[&rule("fraud", None)]).await);
    let (one, two) = (model_dir(Kind::Mlp), model_dir(Kind::Slow));
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, tasks) = drive(&gateway, "fraud", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    plane.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plane = Plane::start_on(dir.path(), &addr).await;
    let version = plane.push("fraud", &two.path().join("m"), None).await;
    let back = Instant::now();
    plane.set_alias("fraud", "champion", version).await;
    gateway.serves("fraud", 2, Duration::from_secs(40)).await;
    eprintln!("control plane back -> its change served: {:?}", back.elapsed());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed while the control plane was gone");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_following_two_replicas_moves_to_the_other_when_one_dies_and_serves_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    // Two replicas on one database and one blob directory.
    let a = Plane::start(dir.path()).await;
    let b = Plane::start(dir.path()).await;
    let replicas = format!("http://{},http://{}", a.addr, b.addr);
    let gateway = Arc::new(Follows::start(&dir.path().join("gw"), &replicas, &[&rule("fraud", None)]).await);
    let (one, two) = (model_dir(Kind::Mlp), model_dir(Kind::Slow));
    a.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, tasks) = drive(&gateway, "fraud", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().await;
    let version = b.push("fraud", &two.path().join("m"), None).await;
    let moved = Instant::now();
    b.set_alias("fraud", "champion", version).await;
    gateway.serves("fraud", 2, Duration::from_secs(20)).await;
    let took = moved.elapsed();
    eprintln!("replica A killed; alias moved at B -> served by the gateway: {took:?}");
    // No backoff on the way: the waiting poll at A fails within its one-second re-read, and the
    // same call goes to B at once (plus the load of version 2).
    assert!(took < Duration::from_secs(8), "{took:?}");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed while the gateway changed replicas");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_seeded_from_the_gateways_own_directory_is_handed_over_to_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let directory = model_dir(Kind::Mlp);
    let seeded = modelgate_registry::import::seed(&plane.registry, directory.path()).await.unwrap();
    assert_eq!(seeded, ["m"]);
    let data_dir = dir.path().join("gw");
    let gateway = Follows::start_over(&data_dir, &cp, &[], Some(directory.path())).await;
    eventually("m served from the pulled repository", Duration::from_secs(20), || async {
        data_dir.join("gateway/models/m/1/model.onnx").exists()
            && gateway.gateway.routes.get("m").is_some_and(|r| r.targets.len() == 1)
    })
    .await;
    assert_eq!(gateway.infer("m", 3).await, (StatusCode::OK, Some(1)));
    // Released through the registry like any registry model.
    let next = model_dir(Kind::Mlp);
    plane.push("m", &next.path().join("m"), Some("challenger")).await;
    eventually("version 2 released as a canary", Duration::from_secs(20), || async {
        gateway.gateway.routes.get("m").is_some_and(|r| r.spec.rollout.as_ref().is_some_and(|p| p.canary == 2))
    })
    .await;
    // A registry model of a directory model's name that was not seeded from it stays a conflict.
    let other = model_dir(Kind::Mlp);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(other.path().join("m"), elsewhere.path().join("mine")).unwrap();
    let conflict = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(conflict.path().join("mine")).unwrap();
    plane.push("mine", &elsewhere.path().join("mine"), Some("champion")).await;
    let rule = rule("mine", None);
    let second = Follows::start_over(&dir.path().join("gw2"), &cp, &[&rule], Some(conflict.path())).await;
    eventually("the conflict reported", Duration::from_secs(20), || async {
        plane.registry.store.gateways().await.unwrap().iter().any(|g| {
            g.report
                .failures
                .iter()
                .any(|f| f.model == "mine" && f.reason == modelgate_registry::sync::FailureReason::Conflict)
        })
    })
    .await;
    drop(second);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_while_downloading_is_reported_the_old_version_serves_and_a_retry_finishes_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let data_dir = dir.path().join("gw");
    let gateway = Follows::start(&data_dir, &cp, &[&rule("fraud", None)]).await;
    let (one, two) = (model_dir(Kind::Mlp), model_dir(Kind::Slow));
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    let v2 = plane.push("fraud", &two.path().join("m"), None).await;
    let version = plane.registry.store.require_version("fraud", v2).await.unwrap();
    let model_file = version.manifest.as_ref().unwrap().iter().find(|e| e.path.ends_with(".onnx")).unwrap().clone();
    // The download of version 2's model writes where every write fails with ENOSPC.
    let part = data_dir.join("gateway/cache/tmp").join(format!("{}.part", model_file.sha256.hex()));
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    plane.set_alias("fraud", "champion", v2).await;
    eventually("the gateway reports a full disk", Duration::from_secs(20), || async {
        plane.registry.store.gateways().await.unwrap().iter().any(|g| {
            g.report.failures.iter().any(|f| {
                f.reason == modelgate_registry::sync::FailureReason::Disk && f.message.contains("No space left")
            })
        })
    })
    .await;
    assert_eq!(gateway.infer("fraud", 5).await, (StatusCode::OK, Some(1)), "version 1 keeps serving");
    // Space again: the retry (backoff, no new state needed) finishes the release.
    std::fs::remove_file(&part).unwrap();
    eventually("version 2 released after the retry", Duration::from_secs(40), || async {
        gateway.gateway.routes.get("fraud").is_some_and(|r| r.spec.rollout.as_ref().is_some_and(|p| p.canary == 2))
    })
    .await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_rule_set_through_the_control_planes_api_serves_a_model_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    let gateway = Follows::start(&dir.path().join("gw"), &cp, &[]).await;
    let model = model_dir(Kind::Mlp);
    plane.push("fraud-detector", &model.path().join("m"), Some("prod")).await;
    let spec = modelgate_registry::sync::FollowSpec {
        model: "fraud".into(),
        source: "models:/fraud-detector@prod".into(),
        canary_alias: None,
        on_rollback: Default::default(),
        rollout: None,
    };
    plane.registry.store.put_follow(&spec).await.unwrap();
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    assert!(gateway.gateway.repository.resolve("fraud-detector", None).is_err(), "only the rule's name serves");
    plane.stop().await;
}

/// A registry read through the admin API's handler (authenticated already): its JSON answer.
async fn admin_read(gateway: &Follows, path: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let request = http::Request::get(path).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let response = modelgate::admin::api::handle(gateway.gateway.clone(), &gateway.registry, request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {value}");
    value
}

/// A reference far from what `infer_body` sends (inputs near 100 instead of in ±0.5), so the
/// control plane's evaluation of any window says the version drifted.
fn far_reference() -> modelgate_registry::drift::Reference {
    use modelgate_sketch::{FeatureProfile, Profile, Summary};
    let values: Vec<f64> = (0..2000).map(|i| 100.0 + f64::from(i % 50) / 50.0).collect();
    let features = (0..64)
        .map(|f| (format!("input[{f}]"), Summary::Numeric(FeatureProfile::reference(&values, 10, 200).unwrap())))
        .collect();
    modelgate_registry::drift::Reference { profile: Profile { features }, rules: Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_windows_reach_the_control_plane_and_its_verdict_holds_a_drifting_canary() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::start(dir.path()).await;
    let cp = format!("http://{}", plane.addr);
    // Steps 10 s apart: the control plane's verdict on the canary (1 s windows, shipped and
    // evaluated within a few seconds) lands inside its first step on a loaded machine too.
    let hold = "rollout = { step_weights = [50, 100], interval = \"10s\", check_interval = \"100ms\", \
                window = \"2s\", min_requests = 5, threshold = 1, max_p99_latency = \"5s\", drift = \"hold\" }";
    let rule = format!("model = \"fraud\"\nsource = \"models:/fraud@champion\"\ncanary_alias = \"challenger\"\n{hold}");
    let gateway = Arc::new(
        Follows::start_with(&dir.path().join("gw"), &cp, &[&rule], None, |c| {
            c.drift.enabled = true;
            c.drift.window_seconds = 1;
        })
        .await,
    );
    let (one, two) = (model_dir(Kind::Mlp), model_dir(Kind::Mlp));
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    plane.registry.store.put_drift_reference("fraud", 1, &far_reference(), "test").await.unwrap();

    // Traffic: windows of one second close and ship with the follower's reports.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, tasks) = drive(&gateway, "fraud", stop.clone());
    let settings = modelgate_registry::drift::DriftSettings { min_rows: 20, ..Default::default() };
    eventually("version 1 evaluated as drifted", Duration::from_secs(20), || async {
        modelgate_registry::drift::evaluate_all(&plane.registry, &settings).await.unwrap();
        let statuses = plane.registry.store.latest_drift_statuses().await.unwrap();
        statuses.get(&("fraud".to_owned(), 1)).is_some_and(|s| s.drifted)
    })
    .await;
    // The verdict reaches the gateway with the desired state: metric and route state.
    eventually("the gateway learned of the drift", Duration::from_secs(10), || async {
        gateway.gateway.routes.drifted("fraud", 1)
    })
    .await;
    // The admin API's route status carries it, with the feature furthest past its bound.
    let status = gateway.gateway.rollouts.status("fraud").await.unwrap();
    let mark = status.targets.iter().find(|t| t.version == 1).and_then(|t| t.drift.clone()).expect("a drift mark");
    let worst = mark.worst.expect("features with verdicts");
    assert!(mark.drifted && worst.drifted && worst.feature.starts_with("input["), "{worst:?}");
    assert_eq!((worst.stat, mark.share), ("wasserstein", 1.0), "{worst:?}");
    // The admin API reads the same evaluations, and one feature's distributions, from the
    // control plane this gateway follows (the operations page's drift panel).
    let drift = admin_read(&gateway, "/admin/v1/registry/models/fraud/drift?history=2").await;
    let latest = &drift["versions"]["1"]["evaluations"][0];
    assert_eq!(latest["dataset"]["drifted"], true, "{drift}");
    let feature = &worst.feature;
    let shown = admin_read(
        &gateway,
        &format!(
            "/admin/v1/registry/models/fraud/versions/1/drift/distribution?feature={}",
            feature.replace('[', "%5B").replace(']', "%5D")
        ),
    )
    .await;
    assert_eq!(shown["feature"], feature.as_str(), "{shown}");
    assert!(shown["current"]["rows"].as_u64().is_some_and(|rows| rows > 0), "{shown}");
    // Every value sent is below the reference's lowest edge: all of it in the first bin.
    assert_eq!(shown["current"]["counts"][0], shown["current"]["rows"], "{shown}");
    let metrics = modelgate::metrics::install().render();
    assert!(metrics.contains("modelgate_drift_status{model=\"fraud\",version=\"1\"} 1"), "{metrics}");
    assert!(metrics.contains(
        "modelgate_drift_statistic{model=\"fraud\",version=\"1\",feature=\"input[0]\",stat=\"wasserstein\"}"
    ));

    // A challenger whose traffic drifts as well: its release holds at the first step.
    plane.push("fraud", &two.path().join("m"), Some("challenger")).await;
    plane.registry.store.put_drift_reference("fraud", 2, &far_reference(), "test").await.unwrap();
    gateway.serves("fraud", 2, Duration::from_secs(20)).await;
    let canary_started = Instant::now();
    eventually("the canary evaluated as drifted", Duration::from_secs(10), || async {
        modelgate_registry::drift::evaluate_all(&plane.registry, &settings).await.unwrap();
        gateway.gateway.routes.drifted("fraud", 2)
    })
    .await;
    // Past the first step's interval: without the hold the canary would be at 100 %.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(canary_started.elapsed())).await;
    let status = gateway.gateway.rollouts.status("fraud").await.unwrap();
    let status = serde_json::to_value(&status).unwrap();
    assert_eq!(plane.alias("fraud", "champion").await, Some(1), "{status}");
    assert!(status.to_string().contains("drift_hold"), "{status}");
    let weights: Vec<u64> =
        status["targets"].as_array().unwrap().iter().map(|t| t["weight"].as_u64().unwrap()).collect();
    assert_eq!(weights, [50, 50], "held at the first step: {status}");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    plane.stop().await;
}

/// A test CA and a certificate it signs for `localhost` and 127.0.0.1 (openssl, ECDSA P-256),
/// written in `dir`: the CA's PEM, the server's certificate and its key.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
    openssl(
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=modelgate test CA"]]
            .concat(),
    );
    openssl(
        &[&["req"][..], &ec[..5], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// Terminates TLS with `cert` and `key` on a port of its own and forwards each connection
/// to `upstream` in plain HTTP, as an ingress in front of the control plane does.
async fn tls_proxy(cert: &Path, key: &Path, upstream: SocketAddr) -> SocketAddr {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto};
    let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_follows_a_control_plane_over_https_trusting_its_ca_file_and_names_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let plane = Plane::start(dir.path()).await;
    let https = format!("https://localhost:{}", tls_proxy(&cert, &key, plane.addr).await.port());

    // Without the CA file the system's roots do not know the test CA: refused, and said why.
    let untrusting = ControlPlane::new(&https, Token::new(TOKEN).unwrap()).unwrap();
    let error = untrusting.poll("gw", 0, Duration::ZERO).await.unwrap_err().to_string();
    assert!(error.contains("certificate"), "{error}");

    let gateway = Follows::start_with(&dir.path().join("gw"), &https, &[&rule("fraud", None)], None, |config| {
        config.sync.ca_file = Some(ca.clone());
    })
    .await;
    let one = model_dir(Kind::Mlp);
    plane.push("fraud", &one.path().join("m"), Some("champion")).await;
    gateway.serves("fraud", 1, Duration::from_secs(20)).await;
    plane.stop().await;
}
