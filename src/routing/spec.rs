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
//! | `feedback` | keep each request's prediction for ground truth, see `routing::feedback_spec` | none |

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::feedback_spec::{FeedbackError, FeedbackSpec};
use super::policy::{Policy, PolicyError, RolloutSpec};
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
    /// Predictions kept for ground truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackSpec>,
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
    pub rules: Vec<Rule>,
    /// Parsed sticky header.
    pub sticky: Option<HeaderName>,
    /// The rollout policy, paired with its baseline.
    pub policy: Option<Policy>,
    /// The feedback settings.
    pub feedback: Option<crate::feedback::Settings>,
}

/// Why a route is refused. Messages name the key, the bound and the value given.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// The public model name cannot be a model name.
    #[error("route model: {0}")]
    ModelName(String),
    /// No targets, or too many.
    #[error("targets must list 1 to {MAX_TARGETS} versions, got {0}")]
    TargetCount(usize),
    /// A target or the shadow names version 0.
    #[error("{0}: versions are positive integers, got 0")]
    VersionZero(&'static str),
    /// A version is a target twice.
    #[error("targets: version {0} is listed twice")]
    DuplicateTarget(u64),
    /// A target's `max_in_flight` is out of range.
    #[error("targets: max_in_flight must be in 1..=1000000, got {0}")]
    TargetInFlight(u32),
    /// A fixed-weight route leaves a weight out.
    #[error("targets: version {0} needs a weight (only a rollout sets weights itself)")]
    MissingWeight(u64),
    /// A weight over 100 %.
    #[error("targets: weights are percentages, version {version} has {weight}")]
    WeightOver100 {
        /// The target.
        version: u64,
        /// Its weight.
        weight: u32,
    },
    /// The weights do not add up.
    #[error("targets: weights must sum to 100, got {0}")]
    WeightSum(u64),
    /// A rollout route without exactly a baseline and a canary.
    #[error("a route with a rollout has exactly two targets (baseline and canary), got {0}")]
    RolloutTargets(usize),
    /// A rollout route sets a weight, which the rollout owns.
    #[error("targets: version {0} has a weight, but the rollout sets the weights: leave them out")]
    RolloutWeight(u64),
    /// The rollout's canary is not a target.
    #[error("rollout.canary {0} is not one of the targets")]
    CanaryNotATarget(u64),
    /// The rollout policy itself.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The feedback section.
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    /// An accuracy gate on a route that keeps no predictions to judge it by.
    #[error("rollout.min_accuracy_delta needs ground truth: add a `feedback` section to the route")]
    AccuracyGateWithoutFeedback,
    /// Too many rules.
    #[error("rules: at most {MAX_RULES}, got {0}")]
    RuleCount(usize),
    /// A header name that HTTP does not allow.
    #[error("{key} {name:?} is not a valid HTTP header name")]
    HeaderName {
        /// The key that holds it.
        key: &'static str,
        /// The name given.
        name: String,
    },
    /// A rule sends traffic to a version that is not a target.
    #[error("rules: version {0} is not one of the targets")]
    RuleVersion(u64),
    /// A rule's header value that HTTP does not allow.
    #[error("rules: value {0:?} is not a valid header value")]
    RuleValue(String),
    /// A rule with a value and no version, or the other way round.
    #[error("rules: header {0:?} needs both value and version, or neither")]
    RuleHalf(String),
    /// The shadow's share is not a percentage above 0.
    #[error("shadow.percent must be in (0, 100], got {0}")]
    ShadowPercent(f64),
    /// The shadow's `max_in_flight` is out of range.
    #[error("shadow.max_in_flight must be in 1..=10000, got {0}")]
    ShadowInFlight(u32),
}

/// Why a set of routes (a config file's) is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RoutesError {
    /// One route is invalid.
    #[error("routes[{index}] ('{model}'): {error}")]
    Invalid {
        /// Its place in the list.
        index: usize,
        /// Its model.
        model: String,
        /// What is wrong.
        error: RouteError,
    },
    /// Two routes for one model.
    #[error("routes: two routes for model '{0}'")]
    Duplicate(String),
}

/// A parsed rule: the header it reads, and the value that sends a request to
/// a version (`None`: the header's value names the version).
pub type Rule = (HeaderName, Option<(HeaderValue, u64)>);

fn header_name(key: &'static str, name: &str) -> Result<HeaderName, RouteError> {
    let refused = || RouteError::HeaderName { key, name: name.to_owned() };
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| refused())?;
    if parsed.as_str().starts_with(':') {
        return Err(refused());
    }
    Ok(parsed)
}

/// Checks a set of routes (a config file's): each one valid, one per model.
pub fn validate_all(specs: &[RouteSpec]) -> Result<Vec<ValidRoute>, RoutesError> {
    let mut valid: Vec<ValidRoute> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let checked =
            spec.validate().map_err(|error| RoutesError::Invalid { index, model: spec.model.clone(), error })?;
        if valid.iter().any(|v| v.spec.model == spec.model) {
            return Err(RoutesError::Duplicate(spec.model.clone()));
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
            feedback: None,
        }
    }

    /// A route of `stable` and the canary of `rollout`, whose steps set the weights.
    pub fn canary_release(model: &str, stable: u64, rollout: RolloutSpec) -> RouteSpec {
        let target = |version| TargetSpec { version, weight: None, max_in_flight: None };
        RouteSpec {
            model: model.to_owned(),
            targets: vec![target(stable), target(rollout.canary)],
            rules: Vec::new(),
            sticky_header: None,
            shadow: None,
            rollout: Some(rollout),
            feedback: None,
        }
    }

    /// The target of `version`.
    pub fn target(&self, version: u64) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.version == version)
    }

    /// Checks every value: targets, then weights (or the rollout that sets
    /// them), rules, the sticky header and the shadow.
    pub fn validate(&self) -> Result<ValidRoute, RouteError> {
        validate_model_name(&self.model).map_err(|e| RouteError::ModelName(e.message().to_owned()))?;
        self.check_targets()?;
        let policy = match &self.rollout {
            None => {
                self.check_weights()?;
                None
            }
            Some(rollout) => Some(self.check_rollout(rollout)?),
        };
        let rules = self.check_rules()?;
        let sticky = self.sticky_header.as_deref().map(|h| header_name("sticky_header", h)).transpose()?;
        self.check_shadow()?;
        let feedback = self.feedback.as_ref().map(FeedbackSpec::validate).transpose()?;
        if feedback.is_none() && self.rollout.as_ref().is_some_and(|r| r.min_accuracy_delta.is_some()) {
            return Err(RouteError::AccuracyGateWithoutFeedback);
        }
        let mut spec = self.clone();
        for (rule, (name, _)) in spec.rules.iter_mut().zip(&rules) {
            rule.header = name.as_str().to_owned();
        }
        if let Some(name) = &sticky {
            spec.sticky_header = Some(name.as_str().to_owned());
        }
        Ok(ValidRoute { spec, rules, sticky, policy, feedback })
    }

    fn check_targets(&self) -> Result<(), RouteError> {
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            return Err(RouteError::TargetCount(self.targets.len()));
        }
        for (i, target) in self.targets.iter().enumerate() {
            if target.version == 0 {
                return Err(RouteError::VersionZero("targets"));
            }
            if self.targets[..i].iter().any(|t| t.version == target.version) {
                return Err(RouteError::DuplicateTarget(target.version));
            }
            if let Some(limit) = target.max_in_flight
                && !(1..=1_000_000).contains(&limit)
            {
                return Err(RouteError::TargetInFlight(limit));
            }
        }
        Ok(())
    }

    /// A route without a rollout: every target has a weight, and they make 100 %.
    fn check_weights(&self) -> Result<(), RouteError> {
        let mut total: u64 = 0;
        for target in &self.targets {
            let weight = target.weight.ok_or(RouteError::MissingWeight(target.version))?;
            if weight > 100 {
                return Err(RouteError::WeightOver100 { version: target.version, weight });
            }
            total += u64::from(weight);
        }
        if total != 100 {
            return Err(RouteError::WeightSum(total));
        }
        Ok(())
    }

    /// A route with a rollout: a baseline and a canary, no weights, a valid policy.
    fn check_rollout(&self, rollout: &RolloutSpec) -> Result<Policy, RouteError> {
        if self.targets.len() != 2 {
            return Err(RouteError::RolloutTargets(self.targets.len()));
        }
        if let Some(t) = self.targets.iter().find(|t| t.weight.is_some()) {
            return Err(RouteError::RolloutWeight(t.version));
        }
        if self.target(rollout.canary).is_none() {
            return Err(RouteError::CanaryNotATarget(rollout.canary));
        }
        let baseline = self.targets.iter().find(|t| t.version != rollout.canary).map_or(0, |t| t.version);
        Ok(rollout.validate(baseline)?)
    }

    fn check_rules(&self) -> Result<Vec<Rule>, RouteError> {
        if self.rules.len() > MAX_RULES {
            return Err(RouteError::RuleCount(self.rules.len()));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let name = header_name("rules: header", &rule.header)?;
            let matcher = match (&rule.value, rule.version) {
                (Some(value), Some(version)) => {
                    if self.target(version).is_none() {
                        return Err(RouteError::RuleVersion(version));
                    }
                    let value = HeaderValue::from_str(value).map_err(|_| RouteError::RuleValue(value.clone()))?;
                    Some((value, version))
                }
                (None, None) => None,
                _ => return Err(RouteError::RuleHalf(rule.header.clone())),
            };
            rules.push((name, matcher));
        }
        Ok(rules)
    }

    fn check_shadow(&self) -> Result<(), RouteError> {
        let Some(shadow) = &self.shadow else {
            return Ok(());
        };
        if shadow.version == 0 {
            return Err(RouteError::VersionZero("shadow.version"));
        }
        if !(shadow.percent > 0.0 && shadow.percent <= 100.0) {
            return Err(RouteError::ShadowPercent(shadow.percent));
        }
        if !(1..=10_000).contains(&shadow.max_in_flight) {
            return Err(RouteError::ShadowInFlight(shadow.max_in_flight));
        }
        Ok(())
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
        assert_eq!(weighted.validate().unwrap_err(), RouteError::RolloutWeight(1));
        let mut three = route.clone();
        three.targets.push(TargetSpec { version: 3, weight: None, max_in_flight: None });
        assert_eq!(three.validate().unwrap_err(), RouteError::RolloutTargets(3));
        let mut stranger = route;
        stranger.rollout.as_mut().unwrap().canary = 7;
        assert_eq!(stranger.validate().unwrap_err(), RouteError::CanaryNotATarget(7));
    }

    #[test]
    fn bad_routes_are_refused_with_the_key_named() {
        let header = |name: &str| RouteError::HeaderName { key: "rules: header", name: name.into() };
        let cases: Vec<(&str, RouteError)> = vec![
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 60 }, { version = 2, weight = 30 }]"#,
                RouteError::WeightSum(90),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 50 }, { version = 1, weight = 50 }]"#,
                RouteError::DuplicateTarget(1),
            ),
            (
                r#"model = "m"
                targets = []"#,
                RouteError::TargetCount(0),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1 }]"#,
                RouteError::MissingWeight(1),
            ),
            (
                r#"model = "m"
                targets = [{ version = 0, weight = 100 }]"#,
                RouteError::VersionZero("targets"),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x v", value = "b", version = 1 }]"#,
                header("x v"),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x-v", value = "b", version = 9 }]"#,
                RouteError::RuleVersion(9),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                rules = [{ header = "x-v", value = "b" }]"#,
                RouteError::RuleHalf("x-v".into()),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100 }]
                shadow = { version = 2, percent = 0 }"#,
                RouteError::ShadowPercent(0.0),
            ),
            (
                r#"model = "m"
                targets = [{ version = 1, weight = 100, max_in_flight = 0 }]"#,
                RouteError::TargetInFlight(0),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).validate().unwrap_err(), expected, "{text}");
        }
        let bad_name = parse("model = \"../x\"\ntargets = [{ version = 1, weight = 100 }]").validate().unwrap_err();
        assert!(matches!(&bad_name, RouteError::ModelName(m) if m.contains("invalid model name")), "{bad_name}");
        // The message names the key, the bound and the value.
        assert_eq!(RouteError::WeightSum(90).to_string(), "targets: weights must sum to 100, got 90");
        assert!(toml::from_str::<RouteSpec>("model = \"m\"\ntargets = []\nweights = 1").is_err());
    }
}
