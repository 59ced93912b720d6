//! `modelgate control-plane`: the flags and the function that runs the
//! control plane alone. The gateway binary embeds these flags; this crate's
//! own `modelgate-control-plane` binary uses them too.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::api::auth::{Auth, TOKEN_ENV, Token};
use crate::drift::DriftSettings;
use crate::manifest::Limits;
use crate::mirror::{MirrorArgs, MirrorError};
use crate::{Config, Registry, RegistryError};

/// Flags of `modelgate control-plane`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControlPlaneArgs {
    /// Database: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (default: sqlite://DATA_DIR/registry.db).
    #[arg(long, env = "MODELGATE_CP_DB")]
    pub db: Option<String>,
    /// Directory for blobs, uploaded artifacts and the default SQLite database.
    #[arg(long, default_value = ".modelgate")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8004)]
    pub port: u16,
    /// File holding the bearer token (else env MODELGATE_ADMIN_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Host names, beyond loopback and the listener's address, that clients may use.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// Directory under which `file://` sources may be imported (repeatable; none by default).
    #[arg(long = "allow-file-root")]
    pub file_roots: Vec<PathBuf>,
    /// Largest blob (one file of a version), in bytes.
    #[arg(long, default_value_t = Limits::default().max_blob_size)]
    pub max_blob_size: u64,
    /// Most files in one version.
    #[arg(long, default_value_t = Limits::default().max_files)]
    pub max_files: usize,
    /// Blobs in object storage: s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or
    /// az://CONTAINER[/PREFIX] (default: DATA_DIR/blobs). Credentials, region and endpoint come
    /// from the provider's usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT_URL, ...) or --blob-store-option. DATA_DIR/blobs/tmp still
    /// stages uploads while they are verified.
    #[arg(long, env = "MODELGATE_CP_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// An object_store setting KEY=VALUE over the environment's, e.g. aws_endpoint=http://minio:9000
    /// or aws_region=eu-west-1 (repeatable).
    #[arg(long = "blob-store-option")]
    pub blob_store_options: Vec<String>,
    /// Mirror mode.
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Drift evaluation.
    #[command(flatten)]
    pub drift: DriftSettings,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable token.
    #[error("the control plane needs a token: set {TOKEN_ENV} or --token-file ({0})")]
    Token(String),
    /// The registry would not open.
    #[error("cannot open the registry: {0}")]
    Registry(#[from] RegistryError),
    /// The mirror flags are wrong.
    #[error("{0}")]
    Mirror(#[from] MirrorError),
    /// The drift flags are wrong.
    #[error("{0}")]
    Drift(String),
    /// The port would not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl ControlPlaneArgs {
    /// The token from the file or the environment.
    pub fn token(&self) -> Result<Token, StartError> {
        let text = match &self.token_file {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| StartError::Token(format!("{}: {e}", path.display())))?
            }
            None => std::env::var(TOKEN_ENV).map_err(|_| StartError::Token("not set".into()))?,
        };
        Token::new(&text).map_err(|e| StartError::Token(e.to_string()))
    }

    /// The registry's configuration.
    pub fn config(&self) -> Result<Config, RegistryError> {
        let bucket = match &self.blob_store {
            Some(url) => Some(crate::bucket::BucketSettings::new(url, &self.blob_store_options)?),
            None if !self.blob_store_options.is_empty() => {
                return Err(RegistryError::InvalidArgument("--blob-store-option given without --blob-store".into()));
            }
            None => None,
        };
        Ok(Config {
            db_url: self.db.clone().unwrap_or_else(|| Config::default_db_url(&self.data_dir)),
            data_dir: self.data_dir.clone(),
            limits: Limits { max_files: self.max_files, max_blob_size: self.max_blob_size },
            file_roots: self.file_roots.clone(),
            drift: self.drift.clone(),
            bucket,
        })
    }
}

/// Runs the control plane until `shutdown` completes. Prints `control plane listening on ADDR`
/// on stdout once bound (with the real port when `--port 0`).
pub async fn run(
    args: ControlPlaneArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let token = args.token()?;
    let mirror = args.mirror.config()?;
    args.drift.check().map_err(StartError::Drift)?;
    let registry = Registry::open(&args.config()?).await?;
    let addr = SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    println!("control plane listening on {bound}");
    let auth = Auth::new(token, &args.allowed_hosts);
    let mirror = mirror.map(|config| crate::mirror::spawn(registry.clone(), config));
    let evaluator = crate::drift::spawn_evaluator(registry.clone(), args.drift.clone());
    let served = crate::api::serve(listener, registry.clone(), auth, shutdown).await;
    evaluator.abort();
    if let Some(mirror) = mirror {
        mirror.abort();
    }
    registry.store.close().await;
    served.map_err(|source| StartError::Bind { addr: bound, source })
}

/// The control plane embedded in `modelgate serve` (single node, zero set-up).
#[derive(Clone, Debug, clap::Args)]
pub struct EmbeddedArgs {
    /// Port of the embedded control plane (model registry) on 127.0.0.1; 0 turns it off
    /// [default: 8004]. Off anyway without a token (the admin token). When the default port is
    /// taken the gateway starts without it (warning); an explicit port must bind.
    #[arg(long)]
    pub control_plane_port: Option<u16>,
    /// The embedded control plane's state: registry.db (SQLite) and blobs/.
    #[arg(long, default_value = ".modelgate")]
    pub data_dir: PathBuf,
    /// Do not register the model repository's models in an empty embedded registry at start.
    #[arg(long)]
    pub no_seed: bool,
    /// Mirror mode for the embedded control plane.
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Drift evaluation in the embedded control plane.
    #[command(flatten)]
    pub drift: DriftSettings,
}

/// The default port of the embedded control plane.
pub const DEFAULT_PORT: u16 = 8004;

/// Starts the embedded control plane on 127.0.0.1 in the background, with `token_file` (else
/// env MODELGATE_ADMIN_TOKEN); `None` when it is off. The task ends after `shutdown`.
pub async fn spawn_embedded(
    args: &EmbeddedArgs,
    token_file: Option<PathBuf>,
    seed_from: Option<&std::path::Path>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let port = args.control_plane_port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        tracing::info!("embedded control plane off: --control-plane-port 0");
        return Ok(None);
    }
    let full = ControlPlaneArgs {
        db: None,
        data_dir: args.data_dir.clone(),
        address: IpAddr::from([127, 0, 0, 1]),
        port,
        token_file,
        allowed_hosts: Vec::new(),
        file_roots: Vec::new(),
        max_blob_size: Limits::default().max_blob_size,
        max_files: Limits::default().max_files,
        blob_store: None,
        blob_store_options: Vec::new(),
        mirror: args.mirror.clone(),
        drift: args.drift.clone(),
    };
    let mirror = full.mirror.config()?;
    full.drift.check().map_err(StartError::Drift)?;
    let token = match full.token() {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "embedded control plane off");
            return Ok(None);
        }
    };
    // Bind before touching the data directory, so a second gateway on this machine that loses
    // the default port never opens the first one's database.
    let addr = SocketAddr::new(full.address, port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(source) if args.control_plane_port.is_none() => {
            tracing::warn!(%addr, error = %source, "embedded control plane off: its default port is taken");
            return Ok(None);
        }
        Err(source) => return Err(StartError::Bind { addr, source }),
    };
    let registry = Registry::open(&full.config()?).await?;
    if let Some(dir) = seed_from.filter(|_| !args.no_seed) {
        match crate::import::seed(&registry, dir).await {
            Ok(seeded) if !seeded.is_empty() => {
                tracing::info!(models = ?seeded, "the empty registry was seeded from the model repository (alias champion)")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "the registry was not seeded from the model repository"),
        }
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "embedded control plane listening");
    let auth = Auth::new(token, &[]);
    let mirror = mirror.map(|config| crate::mirror::spawn(registry.clone(), config));
    let evaluator = crate::drift::spawn_evaluator(registry.clone(), full.drift.clone());
    Ok(Some(tokio::spawn(async move {
        if let Err(error) = crate::api::serve(listener, registry.clone(), auth, shutdown).await {
            tracing::error!(%error, "embedded control plane stopped");
        }
        evaluator.abort();
        if let Some(mirror) = mirror {
            mirror.abort();
        }
        registry.store.close().await;
    })))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: called before the listeners serve, a SIGTERM that comes as
/// soon as the server answers (a rolling update that follows readiness at
/// once) starts the drain instead of killing the process with the signal's
/// default action (tests/admin_process.rs caught that window). Call it inside
/// a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        async fn received(signal: Option<&mut Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! { () = received(term.as_mut()) => {}, () = received(interrupt.as_mut()) => {} }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
