//! What a gateway serves of one followed model, given the registry's aliases
//! and what it serves now: a pure function, so every release, promotion and
//! rollback case is a unit test.
//!
//! - The **base** is what the gateway serves as stable: the version it
//!   served before (while the registry still has it), else the stable alias's.
//! - A **release** is the canary alias's version, else the stable alias's
//!   when it moved since the last plan (or names the canary already under
//!   release); never the base itself and never a version rolled back (here,
//!   or tagged so in the registry).
//!
//! So moving `champion` 3 → 4 releases 4 beside 3; setting `challenger` to 4
//! does too; once 4 is promoted here it is the base before the registry has
//! even moved its alias, and a rolled-back 4 is never started again, whether
//! the registry moved the alias back (`revert_alias`) or not (`hold`).

use std::collections::BTreeSet;

use modelgate_registry::sync::DesiredModel;
use serde::{Deserialize, Serialize};

use super::settings::Follow;

/// What a gateway serves of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The stable version.
    pub stable: u64,
    /// A canary under release beside it.
    pub canary: Option<u64>,
    /// The stable alias's version when this was planned: only a move of the
    /// alias releases its version (a champion left behind by a local
    /// promotion the registry has not recorded yet releases nothing).
    #[serde(default)]
    pub stable_alias_seen: Option<u64>,
}

/// Why a followed model cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The registry has no such model.
    #[error("registered model '{0}' does not exist")]
    NoModel(String),
    /// The model has no version under the stable alias.
    #[error("registered model '{model}' has no alias '{alias}'")]
    NoAlias {
        /// The registered model.
        model: String,
        /// The alias.
        alias: String,
    },
}

/// What to serve of `rule`'s model.
pub fn plan(
    rule: &Follow,
    model: Option<&DesiredModel>,
    served: Option<Served>,
    rolled_back_here: &BTreeSet<u64>,
) -> Result<Served, PlanError> {
    let model = model.ok_or_else(|| PlanError::NoModel(rule.registered.clone()))?;
    let stable_alias = alias(model, &rule.stable_alias)
        .ok_or_else(|| PlanError::NoAlias { model: rule.registered.clone(), alias: rule.stable_alias.clone() })?;
    let base = served.map(|s| s.stable).filter(|v| held(model, *v)).unwrap_or(stable_alias);
    let releasable = |v: &u64| {
        *v != base && held(model, *v) && !rolled_back_here.contains(v) && !model.rolled_back.contains(&(*v as i64))
    };
    let moved = served.is_none_or(|s| s.stable_alias_seen != Some(stable_alias));
    let continuing = served.and_then(|s| s.canary) == Some(stable_alias);
    let canary_alias = rule.canary_alias.as_deref().and_then(|a| alias(model, a));
    let release =
        canary_alias.filter(releasable).or(Some(stable_alias).filter(|v| (moved || continuing) && releasable(v)));
    Ok(Served { stable: base, canary: release, stable_alias_seen: Some(stable_alias) })
}

/// The version an alias points at, when the registry has it READY.
fn alias(model: &DesiredModel, name: &str) -> Option<u64> {
    model.aliases.get(name).and_then(|&v| u64::try_from(v).ok()).filter(|&v| held(model, v))
}

/// Whether the registry offers `version` (READY, with a manifest).
fn held(model: &DesiredModel, version: u64) -> bool {
    i64::try_from(version).is_ok_and(|v| model.versions.contains_key(&v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelgate_registry::sync::DesiredVersion;

    fn model(aliases: &[(&str, i64)], versions: &[i64], rolled_back: &[i64]) -> DesiredModel {
        let version = DesiredVersion {
            manifest_digest: String::new(),
            format: None,
            config_pbtxt: None,
            files: Vec::new(),
            drift_features: None,
        };
        DesiredModel {
            aliases: aliases.iter().map(|(a, v)| ((*a).to_owned(), *v)).collect(),
            versions: versions.iter().map(|v| (*v, version.clone())).collect(),
            ready: versions.iter().copied().collect(),
            rolled_back: rolled_back.iter().copied().collect(),
            tags: Default::default(),
            drift: Default::default(),
        }
    }

    /// What a gateway serves, planned when the champion was `seen`.
    fn served(stable: u64, canary: Option<u64>, seen: u64) -> Option<Served> {
        Some(Served { stable, canary, stable_alias_seen: Some(seen) })
    }

    fn plain(stable: u64, canary: Option<u64>) -> (u64, Option<u64>) {
        (stable, canary)
    }

    fn run(m: &DesiredModel, now: Option<Served>, here: &[u64]) -> (u64, Option<u64>) {
        let planned = plan(&Follow::default_for("m"), Some(m), now, &here.iter().copied().collect()).unwrap();
        (planned.stable, planned.canary)
    }

    #[test]
    fn a_first_sync_serves_the_champion_and_releases_a_challenger_beside_it() {
        let m = model(&[("champion", 3)], &[3], &[]);
        assert_eq!(run(&m, None, &[]), plain(3, None));
        let m = model(&[("champion", 3), ("challenger", 4)], &[3, 4], &[]);
        assert_eq!(run(&m, None, &[]), plain(3, Some(4)));
    }

    #[test]
    fn moving_the_champion_releases_the_new_version_beside_the_one_served() {
        let m = model(&[("champion", 4)], &[3, 4], &[]);
        assert_eq!(run(&m, served(3, None, 3), &[]), plain(3, Some(4)));
        // The same state again (a replay): the same plan.
        assert_eq!(run(&m, served(3, Some(4), 4), &[]), plain(3, Some(4)));
    }

    #[test]
    fn a_version_promoted_here_is_the_base_before_the_registry_moves_its_alias() {
        // Promoted through the challenger: the champion still names 3, as when planned.
        let challenger = model(&[("champion", 3), ("challenger", 4)], &[3, 4], &[]);
        assert_eq!(run(&challenger, served(4, None, 3), &[]), plain(4, None));
        // The registry caught up: champion 4, challenger gone.
        let caught_up = model(&[("champion", 4)], &[3, 4], &[]);
        assert_eq!(run(&caught_up, served(4, None, 3), &[]), plain(4, None));
        // Promoted after the champion moved to 4.
        assert_eq!(run(&caught_up, served(4, None, 4), &[]), plain(4, None));
        // Later the champion moves again: that is a release.
        let next = model(&[("champion", 5)], &[4, 5], &[]);
        assert_eq!(run(&next, served(4, None, 4), &[]), plain(4, Some(5)));
    }

    #[test]
    fn a_rolled_back_version_is_never_released_again_whatever_the_aliases_say() {
        // revert_alias not yet carried out (or `hold`): the alias still names 4.
        let m = model(&[("champion", 4)], &[3, 4], &[]);
        assert_eq!(run(&m, served(3, None, 4), &[4]), plain(3, None));
        // Tagged in the registry by another gateway's rollback.
        let tagged = model(&[("champion", 3), ("challenger", 4)], &[3, 4], &[4]);
        assert_eq!(run(&tagged, served(3, None, 3), &[]), plain(3, None));
        // Reverted: the champion is 3 again.
        let reverted = model(&[("champion", 3)], &[3, 4], &[4]);
        assert_eq!(run(&reverted, served(3, Some(4), 4), &[]), plain(3, None));
    }

    #[test]
    fn a_served_version_the_registry_no_longer_has_gives_way_to_the_champion() {
        let m = model(&[("champion", 5)], &[5], &[]);
        assert_eq!(run(&m, served(3, None, 3), &[]), plain(5, None));
    }

    #[test]
    fn a_model_or_alias_the_registry_lacks_is_an_error_naming_it() {
        let rule = Follow::default_for("fraud");
        assert_eq!(plan(&rule, None, None, &BTreeSet::new()), Err(PlanError::NoModel("fraud".into())));
        let no_alias = model(&[("challenger", 2)], &[2], &[]);
        assert!(matches!(plan(&rule, Some(&no_alias), None, &BTreeSet::new()), Err(PlanError::NoAlias { .. })));
    }
}
