//! The repository's settings, deserialised straight from the gateway's
//! config (`[repository]`): one type from the file to each version's load.

use std::path::PathBuf;

use serde::Deserialize;

/// The model repository: where it is, what loads at start, and the
/// settings every version gets when its config leaves them open. Read
/// straight from `[repository]` in the gateway's config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RepositorySettings {
    /// Directory of models.
    pub path: PathBuf,
    /// Models to load at start; `None` loads every model directory.
    pub load_models: Option<Vec<String>>,
    /// Allow the load/unload API (off by default, as Triton's `none` mode:
    /// the data plane's repository API has no authentication).
    pub model_control: bool,
    /// Ready only when every model is ready.
    pub strict_readiness: bool,
    /// `max_batch_size` for models that can batch and whose config does not say (Triton: 4).
    pub default_max_batch_size: u32,
    /// The queue bound of a batcher whose `max_queue_size` is 0. Triton reads 0
    /// as "unbounded"; here every queue is bounded, and the config endpoints
    /// show the bound in force.
    pub default_max_queue_size: u32,
    /// Intra-op threads per instance unless the config's
    /// `intra_op_thread_count` parameter says otherwise.
    pub intra_op_threads: usize,
    /// How long an instance whose queue empties polls for the next request
    /// before it parks (see `batching::spin`); 0: never.
    pub instance_spin_micros: u64,
}

impl Default for RepositorySettings {
    fn default() -> Self {
        RepositorySettings {
            path: PathBuf::from("models"),
            load_models: None,
            model_control: false,
            strict_readiness: true,
            default_max_batch_size: 8,
            default_max_queue_size: 1024,
            intra_op_threads: 1,
            instance_spin_micros: 100,
        }
    }
}
