//! The contract between the control plane and the gateways that follow it
//! (`GET /cp/v1/sync`, `POST /cp/v1/gateways/{id}/report`).
//!
//! A gateway asks for the desired state and always receives the **whole** of
//! it: every registered model with its aliases and the versions they point
//! at, with their manifests. Applying a whole state twice changes nothing,
//! so a lost answer, a restart or a replayed snapshot is harmless (Consul's
//! blocking queries, Seldon's agent). The gateway reports back what it
//! applied and how its rollouts ended; the control plane never dials it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use modelgate_sketch::{FeatureSpec, Profile, Stat};

use crate::manifest::Entry;
use crate::types::Format;

/// The version tag that marks a version rolled back on its model: a gateway
/// never starts it as a canary again until an operator deletes the tag.
pub const ROLLED_BACK_TAG: &str = "modelgate.rolled_back";

/// The model tag that says a registered model was seeded from a gateway's model
/// repository directory (its canonical path): that gateway hands the model over
/// from the directory to the registry instead of calling the two a conflict.
pub const SEEDED_FROM_TAG: &str = "modelgate.seeded_from";

/// Everything a gateway should serve, as of one generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The registry's generation this state was read at (the next `since`).
    pub generation: i64,
    /// Registered models by name.
    pub models: BTreeMap<String, DesiredModel>,
    /// Follow rules set through the API (a gateway's own `[[follow]]` rules win).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow: Vec<FollowSpec>,
}

/// Which registered model to serve under which name and aliases: a gateway's
/// `[[follow]]` rule, as the control plane's API holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowSpec {
    /// The name it is served under.
    pub model: String,
    /// `models:/NAME@ALIAS`: the registered model and its stable alias.
    pub source: String,
    /// An alias whose version is released as a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_alias: Option<String>,
    /// What to do with the aliases on rollback.
    #[serde(default)]
    pub on_rollback: OnRollback,
    /// The rollout policy of the releases (a route's rollout keys without `canary`); the
    /// gateway checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Map<String, serde_json::Value>>,
}

impl FollowSpec {
    /// The registered model and the stable alias of `source` (`models:/NAME@ALIAS`).
    pub fn source_parts(&self) -> Option<(&str, &str)> {
        let ok = |n: &str| crate::name::Name::parse("name", n).is_ok();
        self.source.strip_prefix("models:/")?.split_once('@').filter(|(m, a)| ok(m) && ok(a))
    }

    /// Checks names, the source's form and the canary alias; the rollout keys are
    /// the gateway's to check.
    pub fn check(&self) -> Result<(), crate::RegistryError> {
        crate::name::Name::parse("model", &self.model)?;
        let (_, alias) = self.source_parts().ok_or_else(|| {
            crate::RegistryError::InvalidArgument(format!(
                "source '{}' must be models:/NAME@ALIAS (version numbers and stages are not followed)",
                self.source
            ))
        })?;
        if let Some(canary) = &self.canary_alias {
            crate::name::Name::parse("alias", canary)?;
            if canary == alias {
                return Err(crate::RegistryError::InvalidArgument(format!(
                    "canary_alias '{canary}' must be an alias other than the source's '{alias}' (the two must differ)"
                )));
            }
        }
        if self.rollout.as_ref().is_some_and(|r| r.contains_key("canary")) {
            return Err(crate::RegistryError::InvalidArgument(
                "rollout takes no 'canary': each release names it".into(),
            ));
        }
        Ok(())
    }
}

/// One registered model as the gateways need it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredModel {
    /// Alias → version.
    pub aliases: BTreeMap<String, i64>,
    /// The READY versions the aliases point at, by number, with their files.
    pub versions: BTreeMap<i64, DesiredVersion>,
    /// Every READY version's number (a gateway may keep serving one no alias
    /// names any more, e.g. the stable side of a release; its files it has).
    #[serde(default)]
    pub ready: BTreeSet<i64>,
    /// Versions tagged [`ROLLED_BACK_TAG`].
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub rolled_back: BTreeSet<i64>,
    /// The registered model's tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The control plane's latest drift evaluation of each version it has one for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drift: BTreeMap<i64, DriftStatus>,
}

/// A version to hold: its identity and its files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredVersion {
    /// The manifest's digest (`sha256:...`): the version's identity.
    pub manifest_digest: String,
    /// The backend it needs.
    pub format: Option<Format>,
    /// Its Triton `config.pbtxt`, if it came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_pbtxt: Option<String>,
    /// Every file, with size and sha256.
    pub files: Vec<Entry>,
    /// The features of its drift reference, when it has one: gateways profile its traffic on
    /// these (names, kinds, the reference's histogram edges) so windows compare with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_features: Option<BTreeMap<String, FeatureSpec>>,
}

/// One closed window of a served version's traffic, profiled by a gateway and shipped with
/// its next report (the control plane merges the windows of every gateway).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftWindow {
    /// The registered model.
    pub model: String,
    /// The version that answered.
    pub version: i64,
    /// The route arm it answered as: `stable` or `canary` while a release runs, else `stable`.
    pub arm: String,
    /// Window start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Window length in seconds (60 by default).
    pub seconds: u32,
    /// Rows (batch entries) profiled in the window.
    pub rows: u64,
    /// Per-feature summaries: inputs, outputs, a classifier's argmax.
    pub profile: Profile,
    /// The features that are predictions (outputs, argmax): a canary's are also tested
    /// against the stable version's.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub predictions: BTreeSet<String>,
}

/// The control plane's verdict on one version's recent traffic against its reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftStatus {
    /// When it was evaluated, milliseconds since the Unix epoch.
    pub evaluated_ms: i64,
    /// The span of windows merged, in seconds.
    pub span_seconds: u32,
    /// Rows in the span.
    pub rows: u64,
    /// Whether the share of drifted features reached the dataset bound.
    pub drifted: bool,
    /// Drifted features / features with a verdict.
    pub share: f64,
    /// Per feature with a verdict: the statistic and whether it drifted.
    pub features: BTreeMap<String, FeatureDrift>,
}

/// One feature's drift verdict, as the gateways export it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDrift {
    /// The statistic used (`ks`, `wasserstein`, `psi`, ...).
    pub stat: Stat,
    /// Its value.
    pub value: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// Whether it drifted.
    pub drifted: bool,
}

/// What a gateway tells the control plane after applying a state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The generation of the last state applied (in full or in part).
    pub applied_generation: i64,
    /// Versions verified and serving.
    #[serde(default)]
    pub loaded: Vec<LoadedVersion>,
    /// What could not be applied, and why.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Rollouts that ended since the last report.
    #[serde(default)]
    pub rollouts: Vec<RolloutOutcome>,
    /// Drift windows closed since the last report that reached the control plane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift_windows: Vec<DriftWindow>,
}

/// A version a gateway serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadedVersion {
    /// The model.
    pub model: String,
    /// The version.
    pub version: i64,
    /// The manifest digest it verified.
    pub manifest_digest: String,
}

/// Why a part of the desired state did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// A downloaded file's size or sha256 differs from the manifest.
    FailedVerification,
    /// The file could not be fetched (control plane gone, cut off, refused).
    Download,
    /// Writing it to disk failed (disk full, permissions).
    Disk,
    /// The runtime refused the model.
    Load,
    /// The name is taken by a model of the gateway's own repository directory.
    Conflict,
    /// A follow rule names a model or alias the registry does not have.
    Missing,
    /// A follow rule from the control plane that the gateway refuses (its rollout keys).
    Rule,
}

impl FailureReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::FailedVerification => "failed_verification",
            FailureReason::Download => "download",
            FailureReason::Disk => "disk",
            FailureReason::Load => "load",
            FailureReason::Conflict => "conflict",
            FailureReason::Missing => "missing",
            FailureReason::Rule => "rule",
        }
    }
}

/// One failure of a gateway to apply a version (or a whole model).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The model.
    pub model: String,
    /// The version, when one is concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The kind.
    pub reason: FailureReason,
    /// In words.
    pub message: String,
}

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The canary reached 100 %.
    Promoted,
    /// The canary broke its SLO and went to 0 %.
    RolledBack,
}

/// What the control plane does with the alias of a rolled-back version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRollback {
    /// Point the alias back at the stable version (or delete the canary
    /// alias), so no other gateway starts the bad version.
    #[default]
    RevertAlias,
    /// Leave the aliases; the version is only tagged rolled back.
    Hold,
}

/// A rollout a registry alias started, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutOutcome {
    /// The model.
    pub model: String,
    /// The version that served before.
    pub stable: i64,
    /// The version released.
    pub canary: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The alias that carries the stable version (`champion` by default).
    pub stable_alias: String,
    /// The alias that named the canary, when a canary alias started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_alias: Option<String>,
    /// What to do with the aliases on rollback.
    #[serde(default)]
    pub on_rollback: OnRollback,
    /// Why (the analyzer's words).
    pub reason: String,
}

/// A gateway as the control plane last heard from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Its id.
    pub id: String,
    /// The generation it applied.
    pub applied_generation: i64,
    /// Unix milliseconds of its last report.
    pub seen_ms: i64,
    /// Its last report.
    pub report: Report,
}
