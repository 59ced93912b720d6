//! `[sync]` and `[[follow]]` in the gateway's config: which control plane to
//! follow, where the pulled versions live, and which registered models to
//! serve under which aliases.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `sync.enabled` | follow a control plane (the embedded one unless `sync.registry` names another) | true |
//! | `sync.registry` | `http://host:port` (or `https://`) of an external control plane (`modelgate control-plane`); replicas comma-separated (`http://a:8004,http://b:8004`), followed in turn when one cannot be reached | the embedded one |
//! | `sync.token_file` | its bearer token (else the admin token) | the admin token |
//! | `sync.ca_file` | PEM file of CA certificates trusted for an `https://` control plane, besides the system's | none |
//! | `sync.gateway_id` | this gateway's name in reports, `[A-Za-z0-9_.-]` | `$HOSTNAME`, else `gateway` |
//! | `sync.wait_secs` | how long one long poll waits for a change | 30 |
//! | `sync.keep_versions` | versions of a model kept on disk (so a rollback needs no download) | 3 |
//! | `sync.verify_on_start` | `size` or `full` (re-hash every file) when serving the last-known-good snapshot | `size` |
//! | `[[follow]]` | (else the rules set through the control plane's `PUT /cp/v1/follow/{model}`) `model`, `source = "models:/NAME@ALIAS"`, `canary_alias`, `on_rollback` (`revert_alias` or `hold`), `rollout = { ... }` (a route's rollout keys without `canary`) | every registered model with a `champion` alias, canary alias `challenger` |

use std::path::PathBuf;

use modelgate_registry::name::Name;
use modelgate_registry::sync::{FollowSpec, OnRollback};
use serde::Deserialize;

use crate::repository::validate_model_name;
use crate::routing::RolloutSpec;

/// How the gateway follows a control plane.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Follow a control plane at all.
    pub enabled: bool,
    /// An external control plane (`http://host:port`, or several replicas' URLs separated by
    /// commas); `None` follows the embedded one.
    pub registry: Option<String>,
    /// Its token (else the admin token).
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for an `https://` control plane, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// This gateway's id in its reports.
    pub gateway_id: Option<String>,
    /// The data directory (`--data-dir`, shared with the embedded control plane);
    /// pulled state lives under `DATA_DIR/gateway/`.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Seconds one long poll waits.
    pub wait_secs: u64,
    /// Versions of a model kept on disk.
    pub keep_versions: usize,
    /// How the last-known-good snapshot's files are checked before serving.
    pub verify_on_start: Verify,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            enabled: true,
            registry: None,
            token_file: None,
            ca_file: None,
            gateway_id: None,
            data_dir: PathBuf::from(".modelgate"),
            wait_secs: 30,
            keep_versions: 3,
            verify_on_start: Verify::Size,
        }
    }
}

impl SyncSettings {
    /// The gateway's id: configured, else `$HOSTNAME` (a pod's name), else `gateway`.
    pub fn gateway_id(&self) -> String {
        self.gateway_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|id| Name::parse("gateway", id).is_ok())
            .unwrap_or_else(|| "gateway".into())
    }

    /// Where pulled state lives.
    pub fn root(&self) -> PathBuf {
        self.data_dir.join("gateway")
    }

    /// Where pulled versions are laid out as a model repository.
    pub fn models_dir(&self) -> PathBuf {
        self.root().join("models")
    }
}

/// How files already on disk are checked.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Sizes only (cheap; the files were verified when downloaded).
    #[default]
    Size,
    /// Sizes and sha256 of every file.
    Full,
}

/// Which registered model to serve, under which aliases: a `[[follow]]` entry,
/// the same type the control plane's API holds (`PUT /cp/v1/follow/{model}`).
pub type FollowRule = FollowSpec;

/// A rollout policy without its canary, which each release fills in.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct RolloutTemplate(serde_json::Map<String, serde_json::Value>);

impl RolloutTemplate {
    /// The policy for a release of `canary`.
    pub fn for_canary(&self, canary: u64) -> Result<RolloutSpec, String> {
        let mut fields = self.0.clone();
        if fields.contains_key("canary") {
            return Err("a follow rule's rollout takes no 'canary': each release names it".into());
        }
        fields.insert("canary".into(), canary.into());
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| format!("rollout: {e}"))
    }
}

/// A follow rule, checked: the registered model and its aliases.
#[derive(Clone, Debug, PartialEq)]
pub struct Follow {
    /// Served under this name.
    pub model: String,
    /// The registered model.
    pub registered: String,
    /// Alias of the stable version.
    pub stable_alias: String,
    /// Alias of a canary, if any.
    pub canary_alias: Option<String>,
    /// Rollback handling.
    pub on_rollback: OnRollback,
    /// Rollout policy template.
    pub rollout: RolloutTemplate,
}

/// The alias a model is served from when no rule says.
pub const DEFAULT_STABLE_ALIAS: &str = "champion";
/// The alias released as a canary when no rule says.
pub const DEFAULT_CANARY_ALIAS: &str = "challenger";

impl Follow {
    /// The rule for a registered model that no `[[follow]]` names: served under its
    /// own name from `champion`, with `challenger` released as a canary.
    pub fn default_for(model: &str) -> Follow {
        Follow {
            model: model.to_owned(),
            registered: model.to_owned(),
            stable_alias: DEFAULT_STABLE_ALIAS.into(),
            canary_alias: Some(DEFAULT_CANARY_ALIAS.into()),
            on_rollback: OnRollback::RevertAlias,
            rollout: RolloutTemplate::default(),
        }
    }
}

impl Follow {
    /// Checks a rule: a valid served name, a `models:/NAME@ALIAS` source and canary
    /// alias (the registry's own checks), a rollout template that makes a valid policy.
    pub fn from_rule(rule: &FollowRule) -> Result<Follow, String> {
        let refused = |e: &dyn std::fmt::Display| format!("follow rule for '{}': {e}", rule.model);
        validate_model_name(&rule.model).map_err(|e| format!("follow rule: {}", e.message()))?;
        rule.check().map_err(|e| refused(&e))?;
        let (registered, alias) = rule.source_parts().ok_or_else(|| refused(&"source does not parse"))?;
        let rollout = RolloutTemplate(rule.rollout.clone().unwrap_or_default());
        rollout.for_canary(2).map_err(|e| refused(&e))?;
        Ok(Follow {
            model: rule.model.clone(),
            registered: registered.to_owned(),
            stable_alias: alias.to_owned(),
            canary_alias: rule.canary_alias.clone(),
            on_rollback: rule.on_rollback,
            rollout,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(text: &str) -> FollowRule {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_follow_rule_names_an_mlflow_alias_uri_and_an_optional_canary_alias() {
        let follow = Follow::from_rule(&rule(
            "model = \"fraud\"\nsource = \"models:/fraud-detector@champion\"\ncanary_alias = \"challenger\"\n\
             on_rollback = \"hold\"\nrollout = { step_weights = [10, 100], interval = \"5s\" }",
        ))
        .unwrap();
        assert_eq!(follow.registered, "fraud-detector");
        assert_eq!(follow.stable_alias, "champion");
        assert_eq!(follow.on_rollback, OnRollback::Hold);
        let policy = follow.rollout.for_canary(7).unwrap();
        assert_eq!((policy.canary, policy.step_weights.clone()), (7, vec![10, 100]));
    }

    #[test]
    fn bad_follow_rules_are_refused_with_the_model_named() {
        for (text, expected) in [
            ("model = \"m\"\nsource = \"models:/m/3\"", "must be models:/NAME@ALIAS"),
            ("model = \"m\"\nsource = \"runs:/abc/model\"", "must be models:/NAME@ALIAS"),
            ("model = \"../m\"\nsource = \"models:/m@champion\"", "invalid model name"),
            ("model = \"m\"\nsource = \"models:/m@champion\"\ncanary_alias = \"champion\"", "other than"),
            ("model = \"m\"\nsource = \"models:/m@a\"\nrollout = { canary = 3 }", "takes no 'canary'"),
            ("model = \"m\"\nsource = \"models:/m@a\"\nrollout = { step_weights = \"x\" }", "rollout:"),
        ] {
            let error = Follow::from_rule(&rule(text)).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(toml::from_str::<FollowRule>("model = \"m\"\nsource = \"models:/m@a\"\ntypo = 1").is_err());
    }
}
