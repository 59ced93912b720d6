//! A route as written in the config file (`[[routes]]`) and in admin JSON,
//! and its checks. The same struct serves both, so a route read back from the
//! admin API can be sent back as is.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `model` | public model name; the targets are versions of this model | required |
//! | `targets` | `[{ version, weight, max_in_flight }]`: weights in percent summing to 100 (omitted when a rollout sets them); `max_in_flight` caps the requests one version holds at once | required |
//! | `rules` | `[{ header, value, version }]`: a request whose header equals `value` goes to `version`; `[{ header }]` alone: the header's value names the version | none |
//! | `sticky_header` | header whose value is hashed to pick the weighted target, so one key stays on one arm | none |
//! | `shadow` | `{ version, percent, max_in_flight }`: copy `percent` of routed requests to `version`, answer from the primary, compare the two | none |
//! | `rollout` | automatic canary release, see `routing::policy` | none |

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::policy::{Policy, RolloutSpec};
use crate::repository::validate_model_name;

/// Most targets a route may have.
pub const MAX_TARGETS: usize = 16;
/// Most header rules a route may have.
pub const MAX_RULES: usize = 32;
/// Default bound of shadow copies in flight per route.
pub const DEFAULT_SHADOW_IN_FLIGHT: u32 = 64;

/// One route: a public name, the versions behind it, and how to choose.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Public model name (and the repository model whose versions serve it).
    #[serde(default)]
    pub model: String,
    /// Target versions and their weights.
    pub targets: Vec<TargetSpec>,
    /// Header rules, tried in order before the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    /// Header whose hash picks the weighted target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// Shadow copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// Automatic release of a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// A version behind a route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Version number.
    pub version: u64,
    /// Percent of weighted traffic; omitted when a rollout sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Requests this version may hold at once through this route; more are
    /// refused with 503 and count as its failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// A header rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Header name (any case).
    pub header: String,
    /// Exact value to match; absent: the value itself names the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The version a match goes to; present exactly when `value` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Shadow copies of routed requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// Version that receives the copies.
    pub version: u64,
    /// Percent of routed requests copied, in (0, 100].
    pub percent: f64,
    /// Copies in flight at once; more are skipped (and counted).
    #[serde(default = "default_shadow_in_flight")]
    pub max_in_flight: u32,
}

fn default_shadow_in_flight() -> u32 {
    DEFAULT_SHADOW_IN_FLIGHT
}

/// A route whose values have been checked, with names parsed.
#[derive(Clone, Debug)]
pub struct ValidRoute {
    /// The spec as given (header names lower-cased).
    pub spec: RouteSpec,
    /// Parsed rules.
    pub rules: Vec<(HeaderName, Option<(HeaderValue, u64)>)>,
    /// Parsed sticky header.
    pub sticky: Option<HeaderName>,
    /// The rollout policy, paired with its baseline.
    pub policy: Option<Policy>,
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{key} {name:?} is not a valid HTTP header name"))?;
    if parsed.as_str().starts_with(':') {
        return Err(format!("{key} {name:?} is not a valid HTTP header name"));
    }
    Ok(parsed)
}

/// Checks a set of routes (a config file's): each one valid, one per model.
pub fn validate_all(specs: &[RouteSpec]) -> Result<Vec<ValidRoute>, String> {
    let mut valid: Vec<ValidRoute> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let checked = spec.validate().map_err(|e| format!("routes[{i}] ('{}'): {e}", spec.model))?;
        if valid.iter().any(|v| v.spec.model == spec.model) {
            return Err(format!("routes: two routes for model '{}'", spec.model));
        }
        valid.push(checked);
    }
    Ok(valid)
}

impl RouteSpec {
    /// A route of fixed weights.
    pub fn weighted(model: &str, targets: &[(u64, u32)]) -> RouteSpec {
        RouteSpec {
            model: model.to_owned(),
            targets: targets
                .iter()
                .map(|&(version, weight)| TargetSpec { version, weight: Some(weight), max_in_flight: None })
                .collect(),
            rules: Vec::new(),
            sticky_header: None,
            shadow: None,
            rollout: None,
        }
    }

    /// The target of `version`.
    pub fn target(&self, version: u64) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.version == version)
    }

    /// Checks every value; messages name the key, the bound and the value.
    pub fn validate(&self) -> Result<ValidRoute, String> {
        validate_model_name(&self.model).map_err(|e| format!("route model: {}", e.message()))?;
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            return Err(format!("targets must list 1 to {MAX_TARGETS} versions, got {}", self.targets.len()));
        }
        for (i, target) in self.targets.iter().enumerate() {
            if target.version == 0 {
                return Err("targets: versions are positive integers, got 0".into());
            }
            if self.targets[..i].iter().any(|t| t.version == target.version) {
                return Err(format!("targets: version {} is listed twice", target.version));
            }
            if let Some(limit) = target.max_in_flight
                && !(1..=1_000_000).contains(&limit)
            {
                return Err(format!("targets: max_in_flight must be in 1..=1000000, got {limit}"));
            }
        }
        let policy = match &self.rollout {
            None => {
                let mut total: u64 = 0;
                for target in &self.targets {
                    let weight = target.weight.ok_or_else(|| {
                        format!(
                            "targets: version {} needs a weight (only a rollout sets weights itself)",
                            target.version
                        )
                    })?;
                    if weight > 100 {
                        return Err(format!(
                            "targets: weights are percentages, version {} has {weight}",
                            target.version
                        ));
                    }
                    total += u64::from(weight);
                }
                if total != 100 {
                    return Err(format!("targets: weights must sum to 100, got {total}"));
                }
                None
            }
            Some(rollout) => {
                if self.targets.len() != 2 {
                    return Err(format!(
                        "a route with a rollout has exactly two targets (baseline and canary), got {}",
                        self.targets.len()
                    ));
                }
                if let Some(t) = self.targets.iter().find(|t| t.weight.is_some()) {
                    return Err(format!(
                        "targets: version {} has a weight, but the rollout sets the weights: leave them out",
                        t.version
                    ));
                }
                if self.target(rollout.canary).is_none() {
                    return Err(format!("rollout.canary {} is not one of the targets", rollout.canary));
                }
                let baseline = self.targets.iter().find(|t| t.version != rollout.canary).map_or(0, |t| t.version);
                Some(rollout.validate(baseline)?)
            }
        };
        if self.rules.len() > MAX_RULES {
            return Err(format!("rules: at most {MAX_RULES}, got {}", self.rules.len()));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let name = header_name("rules: header", &rule.header)?;
            let matcher = match (&rule.value, rule.version) {
                (Some(value), Some(version)) => {
                    if self.target(version).is_none() {
                        return Err(format!("rules: version {version} is not one of the targets"));
                    }
                    let value = HeaderValue::from_str(value)
                        .map_err(|_| format!("rules: value {value:?} is not a valid header value"))?;
                    Some((value, version))
                }
                (None, None) => None,
                _ => return Err(format!("rules: header {:?} needs both value and version, or neither", rule.header)),
            };
            rules.push((name, matcher));
        }
        let sticky = self.sticky_header.as_deref().map(|h| header_name("sticky_header", h)).transpose()?;
        if let Some(shadow) = &self.shadow {
            if shadow.version == 0 {
                return Err("shadow.version: versions are positive integers, got 0".into());
            }
            if !(shadow.percent > 0.0 && shadow.percent <= 100.0) {
                return Err(format!("shadow.percent must be in (0, 100], got {}", shadow.percent));
            }
            if !(1..=10_000).contains(&shadow.max_in_flight) {
                return Err(format!("shadow.max_in_flight must be in 1..=10000, got {}", shadow.max_in_flight));
            }
        }
        let mut spec = self.clone();
        for (rule, (name, _)) in spec.rules.iter_mut().zip(&rules) {
            rule.header = name.as_str().to_owned();
        }
        if let Some(name) = &sticky {
            spec.sticky_header = Some(name.as_str().to_owned());
        }
        Ok(ValidRoute { spec, rules, sticky, policy })
    }

    /// Every version the route sends traffic to (targets and shadow).
    pub fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.targets.iter().map(|t| t.version).chain(self.shadow.as_ref().map(|s| s.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RouteSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_full_route_parses_and_validates() {
        let route = parse(
            r#"
            model = "mlp"
            targets = [{ version = 1, weight = 90 }, { version = 2, weight = 10, max_in_flight = 8 }]
            rules = [{ header = "X-Variant", value = "b", version = 2 }, { header = "x-model-version" }]
            sticky_header = "X-User-Id"
            shadow = { version = 3, percent = 12.5 }
            "#,
        );
        let valid = route.validate().unwrap();
        assert_eq!(valid.sticky.unwrap().as_str(), "x-user-id");
        assert_eq!(valid.spec.rules[0].header, "x-variant");
        assert_eq!(valid.rules.len(), 2);
        assert_eq!(route.shadow.as_ref().unwrap().max_in_flight, DEFAULT_SHADOW_IN_FLIGHT);
        assert_eq!(route.versions().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_rollout_route_takes_no_weights_and_two_targets() {
        let route = parse(
            r#"
            model = "mlp"
            targets = [{ version = 1 }, { version = 2 }]
            rollout = { canary = 2, step_weights = [10, 100], interval = "30s" }
            "#,
        );
        let policy = route.validate().unwrap().policy.unwrap();
        assert_eq!((policy.baseline, policy.canary), (1, 2));
        let mut weighted = route.clone();
        weighted.targets[0].weight = Some(100);
        assert!(weighted.validate().unwrap_err().contains("leave them out"));
        let mut three = route.clone();
        three.targets.push(TargetSpec { version: 3, weight: None, max_in_flight: None });
        assert!(three.validate().unwrap_err().contains("exactly two"));
        let mut stranger = route;
        stranger.rollout.as_mut().unwrap().canary = 7;
        assert!(stranger.validate().unwrap_err().contains("not one of the targets"));
    }

    #[test]
    fn bad_routes_are_refused_with_the_key_named() {
        let cases: &[(&str, &str)] = &[
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 60 }, { version = 2, weight = 30 }]"#,
                "sum to 100",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 50 }, { version = 1, weight = 50 }]"#,
                "twice",
            ),
            (
                r#"model = "m"
                targets = []"#,
                "1 to 16",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1 }]"#,
                "needs a weight",
            ),
            (
                r#"model = "m"
                targets = [{ version = 0, weight = 100 }]"#,
                "positive",
            ),
            (
                r#"model = "../x"
                targets = [{ version = 1, weight = 100 }]"#,
                "invalid model name",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x v", value = "b", version = 1 }]"#,
                "header name",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x-v", value = "b", version = 9 }]"#,
                "not one of the targets",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x-v", value = "b" }]"#,
                "both value and version",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                shadow = { version = 2, percent = 0 }"#,
                "shadow.percent",
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100, max_in_flight = 0 }]"#,
                "max_in_flight",
            ),
        ];
        for (text, needle) in cases {
            let error = parse(text).validate().unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
        assert!(toml::from_str::<RouteSpec>("model = \"m\"\ntargets = []\nweights = 1").is_err());
    }
}
