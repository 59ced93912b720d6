//! The `modelgate` binary: `serve` runs the data plane (with the control
//! plane embedded); `admin` calls its admin API; `control-plane` runs the
//! control plane alone; `registry` calls the control plane's registry.

use std::net::SocketAddr;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: modelgate::memory::Allocator = modelgate::memory::Allocator;

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelgate::admin::AdminToken;
use modelgate::admin::client::AdminCommand;
use modelgate::config::Config;
use modelgate::server::{Listeners, ServerOptions};
// Ctrl-C or SIGTERM, the same wait for the gateway and the control plane.
use modelgate_registry::cli::shutdown_signal;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "modelgate", version, about = "A model-serving gateway: KServe V2 / Triton-compatible HTTP and gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of a repository over HTTP and gRPC.
    Serve(ServeArgs),
    /// Call the admin API of a running gateway: routes, weights, rollouts, versions.
    Admin(AdminArgs),
    /// Send the truth of earlier predictions (by request id) to a gateway's route.
    Feedback(FeedbackArgs),
    /// Run the control plane (model registry, MLflow-compatible API) alone, e.g. for a cluster.
    ControlPlane(modelgate_registry::cli::ControlPlaneArgs),
    /// Call the model registry: push, versions, show, alias, history, pull, reference.
    Registry(modelgate_registry::client::RegistryArgs),
    /// Build a drift reference profile from a `.npy` or `.csv` data file (JSON, for
    /// `modelgate registry reference` or `push --reference`).
    Profile(modelgate_registry::reference::ProfileArgs),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// host:port of the admin listener.
    #[arg(long, env = "MODELGATE_ADMIN_ADDRESS", default_value = "127.0.0.1:8003")]
    address: String,
    /// File holding the bearer token (default: env MODELGATE_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Who makes the change, for the audit log [default: $USER, else "unknown"].
    #[arg(long, env = "USER", hide_env = true, default_value = "unknown", hide_default_value = true)]
    actor: String,
    #[command(subcommand)]
    command: AdminCommand,
}

/// `modelgate feedback fraud 7f3a...-1c --label 1`, or many at once from a file.
#[derive(clap::Args)]
struct FeedbackArgs {
    /// host:port of the gateway's HTTP port.
    #[arg(long, env = "MODELGATE_HTTP_ADDRESS", default_value = "127.0.0.1:8000")]
    address: String,
    /// Public model name (its route keeps predictions: `feedback` in the route).
    model: String,
    /// The inference request's id (its response's `id` or `x-request-id`).
    #[arg(required_unless_present = "file")]
    id: Option<String>,
    /// The true class.
    #[arg(long, conflicts_with_all = ["value", "reward", "file"])]
    label: Option<u32>,
    /// The true value.
    #[arg(long, conflicts_with_all = ["reward", "file"])]
    value: Option<f64>,
    /// A reward for the answer.
    #[arg(long, conflicts_with = "file")]
    reward: Option<f64>,
    /// A file of JSON items, one per line (`{"id": "...", "label": 3}`), sent in batches of 1000.
    #[arg(long, conflicts_with = "id")]
    file: Option<PathBuf>,
}

/// Flags take Triton's names where the concept is the same; they override the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; config/modelgate.toml lists every key with its default. Flags override it.
    #[arg(long, env = "MODELGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Model repository directory [default: models].
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// Address the data-plane listeners bind [default: 0.0.0.0].
    #[arg(long)]
    http_address: Option<std::net::IpAddr>,
    /// HTTP port (gRPC is served there too) [default: 8000].
    #[arg(long)]
    http_port: Option<u16>,
    /// gRPC port (HTTP is served there too); 0 turns it off [default: 8001].
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Prometheus metrics port; 0 turns it off (/metrics stays on the HTTP port) [default: 8002].
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Largest request body in bytes, after decompression, for HTTP and gRPC [default: 67108864 (64 MiB)].
    #[arg(long)]
    max_input_size: Option<usize>,
    /// `none` (the default) refuses the repository load/unload API; `explicit` allows it.
    #[arg(long, value_parser = ["none", "explicit"])]
    model_control_mode: Option<String>,
    /// Load only these models at start (repeatable); default: all.
    #[arg(long = "load-model")]
    load_model: Vec<String>,
    /// Ready only when every model is ready [default: true].
    #[arg(long)]
    strict_readiness: Option<bool>,
    /// Seconds to wait for in-flight requests at shutdown [default: 30].
    #[arg(long)]
    exit_timeout_secs: Option<u64>,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, else .native/ from scripts/setup.sh).
    #[arg(long)]
    onnxruntime_library: Option<PathBuf>,
    /// Address the admin listener binds [default: 127.0.0.1: keep it off public interfaces].
    #[arg(long)]
    admin_address: Option<std::net::IpAddr>,
    /// Admin API port; 0 turns it off. It is off anyway without a token [default: 8003].
    #[arg(long)]
    admin_port: Option<u16>,
    /// File holding the admin bearer token (else env MODELGATE_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Follow this control plane (`http://host:port`, or replicas as `http://a:8004,http://b:8004`,
    /// failed over in turn; token: `sync.token_file` or the admin token) instead of the embedded one.
    #[arg(long)]
    registry: Option<String>,
    /// This gateway's id in its reports to the control plane (default: $HOSTNAME).
    #[arg(long)]
    gateway_id: Option<String>,
    #[command(flatten)]
    control_plane: modelgate_registry::cli::EmbeddedArgs,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let s = &mut config.server;
        if let Some(v) = self.http_address {
            s.address = v;
        }
        if let Some(v) = self.http_port {
            s.http_port = v;
        }
        if let Some(v) = self.grpc_port {
            s.grpc_port = v;
        }
        if let Some(v) = self.metrics_port {
            s.metrics_port = v;
        }
        if let Some(v) = self.max_input_size {
            s.max_request_bytes = v;
        }
        if let Some(v) = self.exit_timeout_secs {
            s.drain_timeout_secs = v;
        }
        let r = &mut config.repository;
        if let Some(v) = self.model_repository {
            r.path = v;
        }
        if let Some(mode) = self.model_control_mode {
            r.model_control = mode == "explicit";
        }
        if !self.load_model.is_empty() {
            r.load_models = Some(self.load_model);
        }
        if let Some(v) = self.strict_readiness {
            r.strict_readiness = v;
        }
        if let Some(v) = self.onnxruntime_library {
            config.onnxruntime.library = Some(v);
        }
        let a = &mut config.admin;
        if let Some(v) = self.admin_address {
            a.address = v;
        }
        if let Some(v) = self.admin_port {
            a.port = v;
        }
        if let Some(v) = self.admin_token_file {
            a.token_file = Some(v);
        }
        let sync = &mut config.sync;
        if let Some(v) = self.registry {
            sync.registry = Some(v);
        }
        if let Some(v) = self.gateway_id {
            sync.gateway_id = Some(v);
        }
        sync.data_dir = self.control_plane.data_dir;
        config.validate()?;
        Ok(config)
    }
}

async fn bind(address: std::net::IpAddr, port: u16, what: &str) -> anyhow::Result<Option<TcpListener>> {
    if port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(address, port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot bind the {what} port {addr}"))?;
    tracing::info!(%addr, "{what} listening");
    Ok(Some(listener))
}

/// Raises the open-file limit to the hard limit: the connection caps, not a
/// soft limit of 1024, must be what bounds the listeners. Warns when even the
/// hard limit is below what the caps allow (plus room for models and logs).
fn raise_fd_limit(config: &Config) {
    let wanted =
        config.server.max_connections + config.server.max_metrics_connections + config.admin.max_connections + 256;
    match modelgate::connection::raise_fd_limit() {
        Ok(limit) if limit < wanted as u64 => tracing::warn!(
            limit,
            wanted,
            "the open-file limit is below the connection caps: lower server.max_connections or raise the hard limit"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The admin listener, when a port and a token are configured.
async fn bind_admin(config: &Config) -> anyhow::Result<Option<(TcpListener, AdminToken)>> {
    let a = &config.admin;
    if a.port == 0 {
        tracing::info!("admin API off: admin.port is 0");
        return Ok(None);
    }
    let Some(token) = AdminToken::configured(a.token_file.as_deref())? else {
        tracing::warn!("admin API off: no token (set --admin-token-file or MODELGATE_ADMIN_TOKEN)");
        return Ok(None);
    };
    if !a.address.is_loopback() {
        tracing::warn!(address = %a.address, "the admin API listens beyond loopback: only the token protects it");
    }
    Ok(bind(a.address, a.port, "admin").await?.map(|l| (l, token)))
}

/// Re-reads `[[routes]]` from the config file on SIGHUP (other keys need a restart).
fn reload_routes_on_hangup(path: PathBuf, gateway: std::sync::Arc<modelgate::gateway::Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            // An empty file is a file caught mid-write (or truncated), not an
            // operator removing every route: keep what serves.
            if std::fs::read_to_string(&path).is_ok_and(|text| text.trim().is_empty()) {
                tracing::error!(path = %path.display(), "SIGHUP: the config file is empty; routes not reloaded");
                continue;
            }
            let config = match Config::from_file(&path).and_then(|c| c.validate().map(|()| c)) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: config not reloaded");
                    continue;
                }
            };
            match gateway.rollouts.apply_file(&config.routes).await {
                Ok(summary) => tracing::info!(
                    applied = ?summary.applied, removed = ?summary.removed, unchanged = ?summary.unchanged,
                    "SIGHUP: routes reloaded (other settings need a restart)"
                ),
                Err(e) => tracing::error!(error = %e, "SIGHUP: routes not reloaded"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (path, gateway);
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config_path = args.config.clone();
    let control_plane = args.control_plane.clone();
    let config = args.into_config()?;
    modelgate::batching::spin::set_worker_bound(std::time::Duration::from_micros(config.server.worker_spin_micros));
    // Before anything listens: a SIGTERM from then on drains (see shutdown_signal).
    let shutdown_requested = shutdown_signal();
    let s = &config.server;
    raise_fd_limit(&config);
    let http = bind(s.address, s.http_port, "HTTP").await?.context("the HTTP port cannot be 0")?;
    let grpc = bind(s.address, s.grpc_port, "gRPC").await?;
    let metrics = bind(s.address, s.metrics_port, "metrics").await?;
    let admin = bind_admin(&config).await?;
    let loaders = modelgate::loaders(&config);
    let gateway = modelgate::start(&config, loaders).await;
    if let Some(path) = config_path {
        reload_routes_on_hangup(path, gateway.clone());
    }
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(());
    let registry = modelgate::admin::RegistryLink::default();
    let admin_task = admin.map(|(listener, token)| {
        let mut stopped = admin_stopped.clone();
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        let auth = modelgate::admin::BearerAuthLayer::new(token, &config.admin.allowed_hosts);
        let limits = (config.admin.max_connections, config.server.timeouts());
        tokio::spawn(modelgate::admin::serve(gateway.clone(), registry.clone(), listener, auth, limits, shutdown))
    });
    let mut stopped = admin_stopped.clone();
    // A gateway that follows an external control plane runs no embedded one, unless a port
    // for it is given explicitly (a push to an embedded registry nobody follows is lost).
    let mut control_plane = control_plane;
    if config.sync.registry.is_some() && control_plane.control_plane_port.is_none() {
        tracing::info!("embedded control plane off: following the control plane of --registry");
        control_plane.control_plane_port = Some(0);
    }
    let control_plane_task = modelgate_registry::cli::spawn_embedded(
        &control_plane,
        config.admin.token_file.clone(),
        Some(&config.repository.path),
        async move {
            let _ = stopped.changed().await;
        },
    )
    .await?;
    let embedded_port = control_plane_task
        .as_ref()
        .map(|_| control_plane.control_plane_port.unwrap_or(modelgate_registry::cli::DEFAULT_PORT));
    let stop_following = tokio_util::sync::CancellationToken::new();
    follow_control_plane(&config, &gateway, &registry, embedded_port, stop_following.clone())?;
    let options = ServerOptions::from(&config.server);
    let shutdown = async move {
        shutdown_requested.await;
        // The follower first: it would poll the embedded control plane as that stops.
        stop_following.cancel();
        let _ = stop_admin.send(());
    };
    modelgate::server::serve(gateway, Listeners { http, grpc, metrics }, options, shutdown).await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(task) = control_plane_task {
        let _ = task.await;
    }
    Ok(())
}

/// Follows the control plane: an external one (`sync.registry`), else the embedded one
/// when it runs (on `embedded_port`), until `stop` is cancelled. Off with `sync.enabled = false`.
fn follow_control_plane(
    config: &Config,
    gateway: &std::sync::Arc<modelgate::gateway::Gateway>,
    registry: &modelgate::admin::RegistryLink,
    embedded_port: Option<u16>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if !config.sync.enabled {
        tracing::info!("not following a control plane: sync.enabled is false");
        return Ok(());
    }
    let rules = config.follow_rules()?;
    let (base, token_file) = match (&config.sync.registry, embedded_port) {
        (Some(url), _) => (url.clone(), config.sync.token_file.clone().or_else(|| config.admin.token_file.clone())),
        (None, Some(port)) => (format!("http://127.0.0.1:{port}"), config.admin.token_file.clone()),
        (None, None) => {
            tracing::info!("not following a control plane: the embedded one is off and sync.registry is not set");
            return Ok(());
        }
    };
    let token = AdminToken::configured(token_file.as_deref())?
        .context("following a control plane needs its token: set sync.token_file or MODELGATE_ADMIN_TOKEN")?;
    let token = modelgate_registry::api::auth::Token::new(token.expose())
        .map_err(|e| anyhow::anyhow!("the control plane token: {e}"))?;
    let control_plane =
        modelgate::sync::client::ControlPlane::configured(&base, token, config.sync.ca_file.as_deref())?;
    // The admin API's registry reads (drift, alias history) go through the same client.
    registry.connect(control_plane.clone());
    let follower = modelgate::sync::Follower::new(gateway.clone(), config.sync.clone(), rules, control_plane)
        .with_context(|| format!("cannot open the pulled-model directory under {}", config.sync.root().display()))?;
    tracing::info!(control_plane = %base, gateway_id = %config.sync.gateway_id(), "following the control plane");
    tokio::spawn(follower.run(stop));
    Ok(())
}

async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let token = AdminToken::configured(args.token_file.as_deref())?
        .context("no admin token: pass --token-file or set MODELGATE_ADMIN_TOKEN")?;
    let (method, path, body) = modelgate::admin::client::request_for(&args.command)?;
    let answer = modelgate::admin::client::call(&args.address, &token, &args.actor, method, &path, body).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn feedback(args: FeedbackArgs) -> anyhow::Result<()> {
    let path = format!("/v2/models/{}/feedback", args.model);
    let send = |body| modelgate::admin::client::post_data_plane(&args.address, &path, body);
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let item: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", file.display(), n + 1))?;
            items.push(item);
        }
        let (mut accepted, mut refused) = (0u64, 0u64);
        for chunk in items.chunks(1000) {
            let answer = send(serde_json::json!({ "feedback": chunk })).await?;
            accepted += answer["accepted"].as_u64().unwrap_or(0);
            for result in answer["results"].as_array().into_iter().flatten().filter(|r| r["status"] != 200) {
                refused += 1;
                eprintln!("{result}");
            }
        }
        println!("{}", serde_json::json!({ "accepted": accepted, "refused": refused }));
        return Ok(());
    }
    let mut body = serde_json::json!({ "id": args.id });
    match (args.label, args.value, args.reward) {
        (Some(label), None, None) => body["label"] = label.into(),
        (None, Some(value), None) => body["value"] = value.into(),
        (None, None, Some(reward)) => body["reward"] = reward.into(),
        _ => anyhow::bail!("give exactly one of --label, --value, --reward"),
    }
    println!("{}", serde_json::to_string_pretty(&send(body).await?)?);
    Ok(())
}

/// Text logs for a terminal, without colour codes when written to a file;
/// `MODELGATE_LOG_FORMAT=json` for one JSON object per line (log shippers).
/// `RUST_LOG` filters as usual.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("MODELGATE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mg-io")
        .on_thread_park(|| {
            // Latency first: an answer about to come is worth more than housekeeping.
            modelgate::batching::spin::on_worker_park();
            modelgate::memory::collect_if_due();
        })
        .build()?;
    if matches!(cli.command, Command::Serve(_) | Command::ControlPlane(_)) {
        modelgate::memory::tune_allocator()?;
    }
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Admin(args) => runtime.block_on(admin(args)),
        Command::Feedback(args) => runtime.block_on(feedback(args)),
        Command::ControlPlane(args) => {
            // shutdown_signal inside the runtime: it installs its handlers when called.
            runtime.block_on(async { modelgate_registry::cli::run(args, shutdown_signal()).await }).map_err(Into::into)
        }
        Command::Registry(args) => {
            runtime.block_on(modelgate_registry::client::run_with(args, Some(reference_fits_model))).map_err(Into::into)
        }
        Command::Profile(args) => profile(&args),
    }
}

/// Checks a drift reference against the model directory it is pushed with: its
/// `config.pbtxt` (inputs, outputs, feature-name parameters) gives the features the gateway
/// will profile. A directory without a complete config is completed from the model file only
/// at load, so the reference is then checked by the control plane's evaluation alone.
fn reference_fits_model(dir: &std::path::Path, reference: &modelgate_registry::drift::Reference) -> Result<(), String> {
    use modelgate::drift::schema::{Schema, Source};
    let Ok(text) = std::fs::read_to_string(dir.join("config.pbtxt")) else { return Ok(()) };
    let config = modelgate::repository::model_config::parse_config_file(&text)
        .map_err(|e| format!("{}: {e}", dir.join("config.pbtxt").display()))?;
    if config.inputs.is_empty() || config.outputs.is_empty() {
        return Ok(());
    }
    let schema =
        Schema::from_config(config.max_batch_size.unwrap_or(0), &config.inputs, &config.outputs, &config.parameters)
            .map_err(|e| e.to_string())?;
    let names = |source: Source| match source {
        Source::Input(i) => config.inputs.get(i).map(|s| s.name.clone()).unwrap_or_default(),
        Source::Output(j) => config.outputs.get(j).map(|s| s.name.clone()).unwrap_or_default(),
    };
    modelgate::drift::fit::check(&schema, &names, &reference.profile)
}

/// `modelgate profile`: writes the reference as JSON and says what it holds on stderr.
fn profile(args: &modelgate_registry::reference::ProfileArgs) -> anyhow::Result<()> {
    let reference = modelgate_registry::reference::build(args)?;
    let text = serde_json::to_string(&reference)?;
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    eprintln!(
        "{}: {} features, {} rows{}",
        args.data.display(),
        reference.profile.features.len(),
        reference.profile.rows(),
        if reference.rules.is_empty() {
            String::new()
        } else {
            format!(", {} adaptive thresholds", reference.rules.len())
        }
    );
    Ok(())
}
