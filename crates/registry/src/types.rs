//! The registry's records as the API shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::manifest::Entry;

/// Free string tags.
pub type Tags = BTreeMap<String, String>;

/// A registered model.
#[derive(Clone, Debug, Serialize)]
pub struct Model {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Free tags.
    pub tags: Tags,
    /// Alias → version number.
    pub aliases: BTreeMap<String, i64>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// The generation of its last change.
    pub generation: i64,
}

/// Where a version is in its registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Created from a source whose files are still being hashed.
    PendingRegistration,
    /// Every file is in the blob store and the manifest is final.
    Ready,
    /// The import failed; `status_message` says why.
    FailedRegistration,
}

impl Status {
    /// The stored and MLflow spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingRegistration => "PENDING_REGISTRATION",
            Status::Ready => "READY",
            Status::FailedRegistration => "FAILED_REGISTRATION",
        }
    }
}

impl FromStr for Status {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Status, RegistryError> {
        match s {
            "PENDING_REGISTRATION" => Ok(Status::PendingRegistration),
            "READY" => Ok(Status::Ready),
            "FAILED_REGISTRATION" => Ok(Status::FailedRegistration),
            other => Err(RegistryError::Internal(format!("unknown stored status {other}"))),
        }
    }
}

/// The artifact format, which picks the gateway's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ONNX Runtime.
    Onnx,
    /// libtorch.
    Torchscript,
}

impl Format {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Torchscript => "torchscript",
        }
    }

    /// Guesses the format from a manifest's file names (`*.onnx`, `*.pt`).
    pub fn guess(files: &[Entry]) -> Option<Format> {
        let has = |ext: &str| files.iter().any(|e| e.path.ends_with(ext));
        if has(".onnx") {
            Some(Format::Onnx)
        } else if has(".pt") || has(".torchscript") {
            Some(Format::Torchscript)
        } else {
            None
        }
    }
}

impl FromStr for Format {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Format, RegistryError> {
        match s {
            "onnx" => Ok(Format::Onnx),
            "torchscript" => Ok(Format::Torchscript),
            other => Err(RegistryError::InvalidArgument(format!("format '{other}': expected onnx or torchscript"))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a version came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lineage {
    /// The training run (MLflow run id or any id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The code's commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The training data's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
    /// Hyper-parameters.
    pub parameters: BTreeMap<String, String>,
    /// Training metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Free tags.
    pub tags: Tags,
}

/// A model version.
#[derive(Clone, Debug, Serialize)]
pub struct Version {
    /// The model's name.
    pub model: String,
    /// 1, 2, ... per model.
    pub version: i64,
    /// Registration status.
    pub status: Status,
    /// Why it failed, or empty.
    pub status_message: String,
    /// Where it came from (`modelgate:manifest`, `mlflow-artifacts:/...`, `file://...`).
    pub source: String,
    /// onnx or torchscript (`None` when an import found neither).
    pub format: Option<Format>,
    /// The model's Triton `config.pbtxt`, if any.
    pub config_pbtxt: Option<String>,
    /// The files (absent while pending).
    pub manifest: Option<Vec<Entry>>,
    /// The manifest's digest: the version's identity.
    pub manifest_digest: Option<String>,
    /// Lineage.
    pub lineage: Lineage,
    /// Free text.
    pub description: String,
    /// Free tags (MLflow's version tags).
    pub tags: Tags,
    /// Who registered it.
    pub creator: String,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// MLflow stage derived from the aliases (`Production` = champion, `Staging` = challenger).
    pub current_stage: &'static str,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// The generation of its last change.
    pub generation: i64,
}

/// An alias and the generation that last moved it (its ETag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alias {
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The version it points at.
    pub version: i64,
    /// The generation of its last change: send it back in `If-Match`.
    pub generation: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// Who moved it last.
    pub updated_by: String,
}

/// One move of an alias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AliasChange {
    /// The generation of the change.
    pub generation: i64,
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// Where it pointed before (`None`: it was created).
    pub from_version: Option<i64>,
    /// Where it points after (`None`: it was deleted).
    pub to_version: Option<i64>,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// One entry of the event log.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Its generation (unique, increasing).
    pub generation: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `model_created`, `version_ready`, `alias_set`, ...
    pub kind: String,
    /// The model concerned.
    pub model: String,
    /// Details.
    pub payload: serde_json::Value,
}

/// What a new version is made of.
#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    /// Where it came from.
    pub source: String,
    /// Its format, when known.
    pub format: Option<Format>,
    /// Its `config.pbtxt`.
    pub config_pbtxt: Option<String>,
    /// Its files, checked; `None` = created PENDING_REGISTRATION, to be imported.
    pub manifest: Option<crate::manifest::Manifest>,
    /// Lineage.
    pub lineage: Lineage,
    /// Free text.
    pub description: String,
    /// Free tags.
    pub tags: Tags,
    /// Who registers it.
    pub creator: String,
}

/// MLflow stages, kept for old clients; they map onto aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No alias of the two.
    None,
    /// `challenger`.
    Staging,
    /// `champion`.
    Production,
    /// Archived: neither alias, flagged.
    Archived,
}

impl Stage {
    /// Parses MLflow's stage names (case-insensitive, as MLflow does).
    pub fn parse(text: &str) -> Result<Stage, RegistryError> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(Stage::None),
            "staging" => Ok(Stage::Staging),
            "production" => Ok(Stage::Production),
            "archived" => Ok(Stage::Archived),
            _ => Err(RegistryError::InvalidArgument(format!(
                "stage '{text}': expected None, Staging, Production or Archived"
            ))),
        }
    }

    /// The alias a stage stands for.
    pub fn alias(self) -> Option<&'static str> {
        match self {
            Stage::Production => Some(CHAMPION),
            Stage::Staging => Some(CHALLENGER),
            Stage::None | Stage::Archived => None,
        }
    }
}

/// The alias MLflow's `Production` stage maps to.
pub const CHAMPION: &str = "champion";
/// The alias MLflow's `Staging` stage maps to.
pub const CHALLENGER: &str = "challenger";
