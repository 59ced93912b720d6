//! The `modelgate` binary: `serve` runs the data plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelgate::config::Config;
use modelgate::server::{Listeners, ServerOptions};
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
}

/// Flags take Triton's names where the concept is the same; they override the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see src/config.rs for every key).
    #[arg(long, env = "MODELGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Model repository directory.
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// Address the data-plane listeners bind.
    #[arg(long)]
    http_address: Option<std::net::IpAddr>,
    /// HTTP port (gRPC is served there too).
    #[arg(long)]
    http_port: Option<u16>,
    /// gRPC port (HTTP is served there too); 0 turns it off.
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Prometheus metrics port; 0 turns it off (/metrics stays on the HTTP port).
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Largest request body in bytes, after decompression, for HTTP and gRPC.
    #[arg(long)]
    max_input_size: Option<usize>,
    /// `none` refuses the repository load/unload API; `explicit` allows it.
    #[arg(long, value_parser = ["none", "explicit"])]
    model_control_mode: Option<String>,
    /// Load only these models at start (repeatable); default: all.
    #[arg(long = "load-model")]
    load_model: Vec<String>,
    /// Ready only when every model is ready.
    #[arg(long)]
    strict_readiness: Option<bool>,
    /// Seconds to wait for in-flight requests at shutdown.
    #[arg(long)]
    exit_timeout_secs: Option<u64>,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, else .native/ from scripts/setup.sh).
    #[arg(long)]
    onnxruntime_library: Option<PathBuf>,
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let s = &config.server;
    let http = bind(s.address, s.http_port, "HTTP").await?.context("the HTTP port cannot be 0")?;
    let grpc = bind(s.address, s.grpc_port, "gRPC").await?;
    let metrics = bind(s.address, s.metrics_port, "metrics").await?;
    let loaders = modelgate::loaders(&config);
    let gateway = modelgate::start(&config, loaders).await;
    let options =
        ServerOptions { max_concurrent_streams: s.max_concurrent_streams, drain_timeout: config.drain_timeout() };
    modelgate::server::serve(gateway, Listeners { http, grpc, metrics }, options, shutdown_signal()).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("mg-io").build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    }
}
