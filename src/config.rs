//! The gateway's configuration: a TOML file (every key optional, unknown keys
//! refused so typos fail), then command-line flags on top, then validation.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `server.address` | address of every data-plane listener | `0.0.0.0` |
//! | `server.http_port` | HTTP/REST (and gRPC on the same port) | 8000 |
//! | `server.grpc_port` | gRPC (and HTTP on the same port); 0 = off | 8001 |
//! | `server.metrics_port` | Prometheus `/metrics`; 0 = off | 8002 |
//! | `server.max_request_bytes` | largest body after decompression, HTTP and gRPC | 64 MiB |
//! | `server.max_inflight_bytes` | request data held at once, all requests together; past it 429 | 1 GiB |
//! | `server.max_connections` | open data-plane connections; past it new ones wait in the backlog | 10000 |
//! | `server.max_concurrent_streams` | HTTP/2 streams per connection | 1024 |
//! | `server.drain_timeout_secs` | longest wait for in-flight requests at shutdown | 30 |
//! | `server.body_idle_timeout_secs` | longest pause inside a request body before 408 | 60 |
//! | `server.body_timeout_secs` | longest time to receive a whole request body before 408 | 120 |
//! | `server.max_concurrent_decompressions` | compressed request bodies inflated at once; the others wait | 4 |
//! | `server.first_bytes_timeout_secs` | a new connection (any listener) that sends nothing this long is closed | 10 |
//! | `server.idle_timeout_secs` | a connection (any listener) with no request open this long is closed; GOAWAY for HTTP/2 | 60 |
//! | `server.write_timeout_secs` | a connection (any listener) whose pending write takes no byte this long (a client that does not read) is closed | 30 |
//! | `server.max_metrics_connections` | open connections of the metrics port; past it new ones wait | 64 |
//! | `server.worker_spin_micros` | a runtime worker with nothing to run polls this long for an answer from an instance before it parks (`batching::spin`); 0 = off | 30 |
//! | `repository.path` | model repository directory | `models` |
//! | `repository.load_models` | models to load at start (absent = all) | all |
//! | `repository.model_control` | allow the load/unload API (the data plane's is unauthenticated; Triton's default mode is `none`) | false |
//! | `repository.strict_readiness` | ready only when every model is ready | true |
//! | `repository.default_max_batch_size` | for models that can batch and do not say | 8 |
//! | `repository.default_max_queue_size` | queue bound when a config says 0 | 1024 |
//! | `repository.intra_op_threads` | threads inside one model instance | 1 |
//! | `repository.instance_spin_micros` | an instance whose queue empties polls this long for the next request before it parks (`batching::spin`); 0 = off | 100 |
//! | `onnxruntime.library` | path of `libonnxruntime.so` | `ORT_DYLIB_PATH`, else the one `scripts/setup.sh` fetched |
//! | `admin.address` | address of the admin listener | `127.0.0.1` |
//! | `admin.port` | admin API port; 0 = off (it is also off without a token) | 8003 |
//! | `admin.token_file` | file holding the admin bearer token (else env `MODELGATE_ADMIN_TOKEN`) | none |
//! | `admin.max_connections` | open connections of the admin port; past it new ones wait | 64 |
//! | `[models.<name>]` | per-model settings laid over `config.pbtxt`: `max_batch_size`, `dynamic_batching` (`false`, `true` or a table of Triton's fields), `instances`, `device` (keys in `repository::overrides`) | none |
//! | `[sync]`, `[[follow]]` | following a control plane: keys in `sync::settings` | the embedded control plane, every model with a `champion` alias |
//! | `[drift]` | profiling served traffic for drift checks: `enabled` (false), `window_seconds` (60), `keep_windows` (60), `queue` (64 batches) (keys in `drift::settings`) | off |
//! | `[[routes]]` | routes of public model names to versions: `model`, `targets`, `rules`, `sticky_header`, `shadow`, `rollout` (keys in `routing::spec` and `routing::policy`); re-read on SIGHUP | none |

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::admin::AdminConfig;
use crate::connection::Timeouts;
use crate::drift::DriftSettings;
use crate::gateway::Limits;
use crate::repository::{ModelOverrides, RepositorySettings, validate_model_name};
use crate::routing::RouteSpec;
use crate::sync::{Follow, FollowRule, SyncSettings};

/// The longest spin a config may ask for: past a few hundred microseconds a
/// parked thread's wake-up is cheap next to the time burnt polling.
const MAX_SPIN_MICROS: u64 = 10_000;

/// Everything `modelgate serve` needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and limits.
    pub server: ServerConfig,
    /// The model repository.
    pub repository: RepositorySettings,
    /// ONNX Runtime.
    pub onnxruntime: OnnxRuntimeConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Per-model settings laid over each model's `config.pbtxt`.
    pub models: BTreeMap<String, ModelOverrides>,
    /// Routes of public model names to versions.
    pub routes: Vec<RouteSpec>,
    /// Following a control plane.
    pub sync: SyncSettings,
    /// Registered models to serve, and under which aliases.
    pub follow: Vec<FollowRule>,
    /// Drift profiling of served traffic.
    pub drift: DriftSettings,
}

/// Listeners and limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every data-plane listener binds.
    pub address: IpAddr,
    /// HTTP port (serves gRPC too).
    pub http_port: u16,
    /// gRPC port (serves HTTP too); 0 turns it off.
    pub grpc_port: u16,
    /// Metrics port; 0 turns it off (`/metrics` stays on the HTTP port).
    pub metrics_port: u16,
    /// Largest request body after decompression, for HTTP and gRPC alike.
    pub max_request_bytes: usize,
    /// Request data held at once across every request; past it, 429.
    pub max_inflight_bytes: usize,
    /// Open data-plane connections at most; past it new ones wait.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Longest wait for in-flight requests at shutdown.
    pub drain_timeout_secs: u64,
    /// Longest pause between two pieces of a request body before 408.
    pub body_idle_timeout_secs: u64,
    /// Longest time to receive a whole request body before 408.
    pub body_timeout_secs: u64,
    /// Compressed request bodies inflated at once.
    pub max_concurrent_decompressions: usize,
    /// A new connection that sends nothing for this long is closed.
    pub first_bytes_timeout_secs: u64,
    /// A connection with no request open for this long is closed.
    pub idle_timeout_secs: u64,
    /// A connection whose pending write takes no byte for this long is closed.
    pub write_timeout_secs: u64,
    /// Open connections of the metrics port at most; past it new ones wait.
    pub max_metrics_connections: usize,
    /// How long a runtime worker with nothing to run polls for an answer
    /// from an instance before it parks (see `batching::spin`); 0: never.
    pub worker_spin_micros: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: IpAddr::from([0, 0, 0, 0]),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
            max_request_bytes: 64 << 20,
            max_inflight_bytes: 1 << 30,
            max_connections: 10_000,
            max_concurrent_streams: 1024,
            drain_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            body_timeout_secs: 120,
            max_concurrent_decompressions: 4,
            first_bytes_timeout_secs: 10,
            idle_timeout_secs: 60,
            write_timeout_secs: 30,
            max_metrics_connections: 64,
            worker_spin_micros: 30,
        }
    }
}

impl ServerConfig {
    /// First-bytes and idle timeouts of every connection, admin included.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            first_bytes: Duration::from_secs(self.first_bytes_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
            write: Duration::from_secs(self.write_timeout_secs),
        }
    }
}

impl From<&ServerConfig> for Limits {
    fn from(config: &ServerConfig) -> Limits {
        Limits {
            max_request_bytes: config.max_request_bytes,
            max_inflight_bytes: config.max_inflight_bytes,
            max_connections: config.max_connections,
            body_idle_timeout: Duration::from_secs(config.body_idle_timeout_secs),
            body_timeout: Duration::from_secs(config.body_timeout_secs),
            max_concurrent_decompressions: config.max_concurrent_decompressions,
        }
    }
}

/// Where ONNX Runtime comes from.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`.
    pub library: Option<PathBuf>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A route is refused.
    #[error(transparent)]
    Routes(#[from] crate::routing::RoutesError),
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The `[[follow]]` rules, checked.
    pub fn follow_rules(&self) -> Result<Vec<Follow>, ConfigError> {
        let rules: Vec<Follow> =
            self.follow.iter().map(Follow::from_rule).collect::<Result<_, _>>().map_err(ConfigError::Invalid)?;
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].iter().any(|r| r.model == rule.model) {
                return Err(ConfigError::Invalid(format!("two [[follow]] rules serve model '{}'", rule.model)));
            }
            if self.routes.iter().any(|r| r.model == rule.model) {
                return Err(ConfigError::Invalid(format!(
                    "model '{}' has a [[routes]] entry and a [[follow]] rule: a followed model's route comes from the registry",
                    rule.model
                )));
            }
        }
        if self.sync.wait_secs == 0 || self.sync.wait_secs > 60 {
            return Err(ConfigError::Invalid(format!(
                "sync.wait_secs must be between 1 and 60, got {}",
                self.sync.wait_secs
            )));
        }
        if self.sync.keep_versions < 2 {
            return Err(ConfigError::Invalid(format!(
                "sync.keep_versions must be at least 2 (a stable and a canary), got {}",
                self.sync.keep_versions
            )));
        }
        Ok(rules)
    }

    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.follow_rules()?;
        let s = &self.server;
        if s.max_request_bytes == 0 || s.max_request_bytes > (2 << 30) {
            return Err(ConfigError::Invalid(format!(
                "server.max_request_bytes must be between 1 and 2 GiB, got {}",
                s.max_request_bytes
            )));
        }
        if s.max_inflight_bytes < s.max_request_bytes {
            return Err(ConfigError::Invalid(format!(
                "server.max_inflight_bytes ({}) must be at least server.max_request_bytes ({}): \
                 one request of the largest size must fit",
                s.max_inflight_bytes, s.max_request_bytes
            )));
        }
        if s.body_idle_timeout_secs == 0 || s.body_idle_timeout_secs > 3600 {
            return Err(ConfigError::Invalid(format!(
                "server.body_idle_timeout_secs must be between 1 and 3600, got {}",
                s.body_idle_timeout_secs
            )));
        }
        if s.body_timeout_secs < s.body_idle_timeout_secs || s.body_timeout_secs > 86_400 {
            return Err(ConfigError::Invalid(format!(
                "server.body_timeout_secs must be between server.body_idle_timeout_secs ({}) and 86400, got {}",
                s.body_idle_timeout_secs, s.body_timeout_secs
            )));
        }
        if s.max_concurrent_decompressions == 0 || s.max_concurrent_decompressions > 65_536 {
            return Err(ConfigError::Invalid(format!(
                "server.max_concurrent_decompressions must be between 1 and 65536, got {}",
                s.max_concurrent_decompressions
            )));
        }
        for (key, secs) in [
            ("server.first_bytes_timeout_secs", s.first_bytes_timeout_secs),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
            ("server.write_timeout_secs", s.write_timeout_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(ConfigError::Invalid(format!("{key} must be between 1 and 86400, got {secs}")));
            }
        }
        if s.max_connections == 0 || s.max_metrics_connections == 0 || self.admin.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections, server.max_metrics_connections and admin.max_connections must be at least 1"
                    .into(),
            ));
        }
        for (key, micros) in [
            ("server.worker_spin_micros", s.worker_spin_micros),
            ("repository.instance_spin_micros", self.repository.instance_spin_micros),
        ] {
            if micros > MAX_SPIN_MICROS {
                return Err(ConfigError::Invalid(format!("{key} must be at most {MAX_SPIN_MICROS}, got {micros}")));
            }
        }
        if s.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid("server.max_concurrent_streams must be at least 1".into()));
        }
        let ports = [
            ("server.http_port", s.http_port),
            ("server.grpc_port", s.grpc_port),
            ("server.metrics_port", s.metrics_port),
            ("admin.port", self.admin.port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if *pa != 0 && pa == pb {
                    return Err(ConfigError::Invalid(format!("{a} and {b} are both {pa}")));
                }
            }
        }
        for (name, overrides) in &self.models {
            validate_model_name(name).map_err(|e| ConfigError::Invalid(format!("models.{name}: {e}")))?;
            overrides.validate().map_err(|e| ConfigError::Invalid(format!("models.{name}: {e}")))?;
        }
        crate::routing::validate_all(&self.routes)?;
        self.drift.validate().map_err(ConfigError::Invalid)?;
        let r = &self.repository;
        if r.default_max_queue_size == 0 {
            return Err(ConfigError::Invalid("repository.default_max_queue_size must be at least 1".into()));
        }
        if r.intra_op_threads > 256 {
            return Err(ConfigError::Invalid(format!(
                "repository.intra_op_threads must be at most 256, got {}",
                r.intra_op_threads
            )));
        }
        Ok(())
    }

    /// Longest wait for in-flight requests at shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.server.drain_timeout_secs)
    }

    /// The ONNX Runtime library: config, then `ORT_DYLIB_PATH` at run time,
    /// then the path `.cargo/config.toml` set when this binary was built.
    pub fn onnxruntime_library(&self) -> PathBuf {
        self.onnxruntime
            .library
            .clone()
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".native/onnxruntime/lib/libonnxruntime.so"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_tritons_ports_and_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.http_port, 8000);
        assert_eq!(config.server.grpc_port, 8001);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Config::from_toml("[server]\nhttp_prot = 1").unwrap_err().contains("unknown field"));
        assert!(Config::from_toml("[server]\nhttp_port = \"x\"").is_err());
        let mut config = Config::default();
        config.server.grpc_port = 8000;
        assert!(config.validate().unwrap_err().to_string().contains("both 8000"));
        let mut config = Config::default();
        config.server.max_request_bytes = 0;
        assert!(config.validate().is_err());
        let spins =
            Config::from_toml("[server]\nworker_spin_micros = 0\n[repository]\ninstance_spin_micros = 10000").unwrap();
        assert!(spins.validate().is_ok());
        let mut config = Config::default();
        config.server.worker_spin_micros = 10_001;
        assert!(config.validate().unwrap_err().to_string().contains("server.worker_spin_micros must be at most 10000"));
        let mut config = Config::default();
        config.repository.instance_spin_micros = u64::MAX;
        assert!(config.validate().unwrap_err().to_string().contains("repository.instance_spin_micros"));
    }

    #[test]
    fn routes_and_the_admin_listener_are_read_and_checked() {
        let config = Config::from_toml(
            r#"
            [admin]
            port = 9003
            token_file = "/run/secrets/admin-token"
            [[routes]]
            model = "mlp"
            targets = [{ version = 1, weight = 90 }, { version = 2, weight = 10 }]
            sticky_header = "x-user-id"
            [[routes]]
            model = "simple"
            targets = [{ version = 1 }, { version = 2 }]
            rollout = { canary = 2, step_weights = [10, 50, 100], interval = "30s", max_p99_latency = "50ms" }
            "#,
        )
        .unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.admin.address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[1].rollout.as_ref().unwrap().interval, Duration::from_secs(30));

        let mut bad = config.clone();
        bad.routes[0].targets[1].weight = Some(20);
        assert!(bad.validate().unwrap_err().to_string().contains("sum to 100"));
        let mut twice = config.clone();
        twice.routes[1].model = "mlp".into();
        twice.routes[1].rollout = None;
        twice.routes[1].targets = twice.routes[0].targets.clone();
        assert!(twice.validate().unwrap_err().to_string().contains("two routes"));
        let mut clash = config;
        clash.admin.port = clash.server.http_port;
        assert!(clash.validate().unwrap_err().to_string().contains("admin.port"));
        assert!(Config::from_toml("[[routes]]\nmodel = \"m\"\ntargets = []\nweight = 3").is_err());
    }

    #[test]
    fn a_full_file_sets_every_section() {
        let config = Config::from_toml(
            r#"
            [server]
            http_port = 9000
            grpc_port = 0
            max_request_bytes = 1024
            [repository]
            path = "/srv/models"
            load_models = ["mlp"]
            model_control = false
            [onnxruntime]
            library = "/opt/ort/libonnxruntime.so"
            "#,
        )
        .unwrap();
        assert_eq!(config.server.http_port, 9000);
        assert_eq!(config.repository.load_models, Some(vec!["mlp".to_owned()]));
        assert_eq!(config.onnxruntime_library(), PathBuf::from("/opt/ort/libonnxruntime.so"));
    }

    #[test]
    fn per_model_settings_are_read_and_checked() {
        let config = Config::from_toml(
            r#"
            [models.mlp]
            max_batch_size = 32
            instances = 2
            dynamic_batching = { max_queue_delay_microseconds = 100, preferred_batch_size = [16, 32] }
            [models.simple]
            dynamic_batching = false
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.models["mlp"].instances, Some(2));
        assert_eq!(config.models["simple"].dynamic_batching, Some(crate::repository::BatchingOverride::Switch(false)));
        assert!(
            Config::from_toml(
                "[models.mlp]
batch = 1"
            )
            .unwrap_err()
            .contains("unknown field")
        );
        let bad_name = Config::from_toml("[models.\"../etc\"]\ninstances = 1").unwrap();
        assert!(bad_name.validate().unwrap_err().to_string().contains("models.../etc"));
        let bad_device = Config::from_toml("[models.mlp]\ninstances = 1\ndevice = \"tpu\"").unwrap();
        assert!(bad_device.validate().unwrap_err().to_string().contains("cuda:N"));
    }

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/modelgate.toml");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config, Config::default(), "config/modelgate.toml documents the defaults");
    }

    #[test]
    fn the_kubernetes_configs_are_valid() {
        // The modelgate.toml of each gateway in deploy/kubernetes/base (mounted from a ConfigMap).
        // tests/deploy/test_manifests.py starts the binary with them; this keeps the check in
        // `cargo test` as well.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base");
        for piece in ["gateway", "sidecar", "single-node"] {
            let path = base.join(piece).join("modelgate.toml");
            let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            config.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config.repository.path, PathBuf::from("/models"), "{}", path.display());
            assert!(config.server.drain_timeout_secs <= 25, "{}: below the pods' grace period", path.display());
        }
    }

    #[test]
    fn the_canary_example_is_a_valid_route() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/canary.toml");
        let config = Config::from_file(&path).unwrap();
        config.validate().unwrap();
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].model, "fraud");
    }
}
