//! The control plane alone (the same as `modelgate control-plane`), without
//! the gateway: what the MLflow-client tests run.

use clap::Parser;
use modelgate_registry::cli::{ControlPlaneArgs, run, shutdown_signal};

/// modelgate's control plane: model registry, MLflow-compatible API.
#[derive(Parser)]
#[command(name = "modelgate-control-plane", version)]
struct Cli {
    #[command(flatten)]
    args: ControlPlaneArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().args, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("modelgate-control-plane: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
