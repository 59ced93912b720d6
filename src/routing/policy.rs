//! A rollout policy as written in config and admin JSON (Flagger's vocabulary
//! where it fits: `interval`, `threshold`, `step_weights`), its checks, and
//! the typed [`Policy`] the analyzer runs.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `canary` | the version being released; the route's other target is the baseline | required |
//! | `step_weights` | canary weights in percent, strictly increasing, each 1..=100 | `[5, 25, 50, 100]` |
//! | `interval` | time at each step before the next (`"30s"`, `"1m"`) | `"1m"` |
//! | `check_interval` | how often the SLOs are checked | `"500ms"` |
//! | `window` | sliding window the checks read | `"10s"` |
//! | `threshold` | consecutive failed checks that roll back (1 = at the first) | 2 |
//! | `min_requests` | canary requests a window needs before a check counts | 20 |
//! | `max_error_rate` | highest server-fault error rate, 0..=1 | 0.01 |
//! | `max_p99_latency` | highest p99 latency of successful requests; absent = not checked | `"500ms"` |
//! | `sequential` | decide per request: a sequential test (SPRT) of each canary outcome rolls back the moment the evidence crosses its bound; the checks above stay as a backstop | `true` |
//! | `false_rollback_rate` | α of the sequential tests: chance of rolling back a canary that meets its SLOs, in (0, 0.5) | 0.001 |
//! | `missed_breach_rate` | β: chance of passing a canary that breaches at `breach_factor` × the allowed rate, in (0, 0.5) | 0.01 |
//! | `breach_factor` | a "clear" breach is this many times the rate the SLO allows (`max_error_rate`; 1 % of answers over `max_p99_latency`), in (1, 1000] | 10 |
//! | `retry_on_baseline` | answer a canary's server fault by retrying the request once on the baseline, within its deadline | `true` |
//! | `retry_budget_percent` | retries add at most this share of the baseline's successful requests as extra load (plus a burst of 20), in (0, 100] | 10 |
//! | `hedge_on_baseline` | hedging for latency: a canary request still running after `hedge_after` is also sent to the baseline, and the client gets whichever answers first; the canary's answer still counts against it when it comes | `false` |
//! | `hedge_after` | when a canary request is hedged, 1ms..=24h; needs `hedge_on_baseline` | `max_p99_latency` |
//! | `hedge_budget_percent` | hedges add at most this share of the baseline's successful requests as extra load (plus a burst of 20), in (0, 100] | 10 |
//! | `min_accuracy_delta` | the lowest canary − baseline accuracy tolerated (e.g. -0.01), judged on ground truth (the route's `feedback`): when the always-valid 95 % interval of the difference lies wholly below it, the canary breaches; absent = not checked | none |
//! | `on_quality_breach` | what a breach does: `hold` (no step up while it lasts, checks go on) or `rollback` | `"hold"` |
//! | `drift` | while the control plane says the canary drifts (its inputs or predictions against its reference, or its predictions against the baseline's): `hold` (checks go on, no step up), `rollback`, or `ignore` | `"hold"` |

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest duration any rollout setting takes: a day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The rollout section of a route, as written.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The version being released.
    pub canary: u64,
    /// Canary weight at each step, in percent.
    #[serde(default = "default_steps")]
    pub step_weights: Vec<u32>,
    /// Time at each step.
    #[serde(default = "default_interval", with = "duration_text")]
    pub interval: Duration,
    /// Time between SLO checks.
    #[serde(default = "default_check_interval", with = "duration_text")]
    pub check_interval: Duration,
    /// The sliding window each check reads.
    #[serde(default = "default_window", with = "duration_text")]
    pub window: Duration,
    /// Consecutive failed checks that roll back.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Canary requests a window needs before a check counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Highest server-fault error rate (0..=1).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Highest p99 latency of successful requests; `None` skips the check.
    #[serde(default = "default_max_p99", with = "duration_text::option")]
    pub max_p99_latency: Option<Duration>,
    /// Per-request sequential tests in front of the interval checks.
    #[serde(default = "default_true")]
    pub sequential: bool,
    /// α of the sequential tests (false rollback).
    #[serde(default = "default_false_rollback_rate")]
    pub false_rollback_rate: f64,
    /// β of the sequential tests (missed breach).
    #[serde(default = "default_missed_breach_rate")]
    pub missed_breach_rate: f64,
    /// A clear breach, as a multiple of the allowed rate.
    #[serde(default = "default_breach_factor")]
    pub breach_factor: f64,
    /// Retry a canary's server faults once on the baseline.
    #[serde(default = "default_true")]
    pub retry_on_baseline: bool,
    /// Extra baseline load the retries may add, in percent.
    #[serde(default = "default_retry_budget_percent")]
    pub retry_budget_percent: f64,
    /// Also send a slow canary request to the baseline; the first answer wins.
    #[serde(default)]
    pub hedge_on_baseline: bool,
    /// When a canary request is hedged; `None`: at `max_p99_latency`.
    #[serde(default, with = "duration_text::option", skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<Duration>,
    /// Extra baseline load the hedges may add, in percent.
    #[serde(default = "default_retry_budget_percent")]
    pub hedge_budget_percent: f64,
    /// What a drifting canary does to the rollout.
    #[serde(default)]
    pub drift: DriftGate,
    /// Lowest canary − baseline accuracy tolerated (needs the route's `feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy_delta: Option<f64>,
    /// What an accuracy breach does to the rollout.
    #[serde(default)]
    pub on_quality_breach: QualityGate,
}

/// What the rollout does while the canary is, with confidence, less accurate
/// than `min_accuracy_delta` allows.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QualityGate {
    /// No step up while it lasts (checks go on).
    #[default]
    Hold,
    /// Roll the canary back.
    Rollback,
}

/// What the rollout does while the control plane says the canary drifts.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriftGate {
    /// No step up while it drifts (checks go on; Flagger's confirm-promotion gate).
    #[default]
    Hold,
    /// Roll the canary back.
    Rollback,
    /// Drift does not touch the rollout.
    Ignore,
}

fn default_steps() -> Vec<u32> {
    vec![5, 25, 50, 100]
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_check_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_threshold() -> u32 {
    2
}
fn default_min_requests() -> u64 {
    20
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_max_p99() -> Option<Duration> {
    Some(Duration::from_millis(500))
}
fn default_true() -> bool {
    true
}
// α = 0.1 %: from a fresh start, at most one canary in a thousand that meets
// its SLO is rolled back; the floor at ln(β / (1 - α)) keeps a long healthy
// run far below that (see `routing::sprt`). Three failures in a row against a
// 1 % SLO suffice, since ln(10) × 3 > ln(0.99 / 0.001).
fn default_false_rollback_rate() -> f64 {
    0.001
}
// β = 1 %: how much evidence of health is banked. A canary that turns bad
// after a long healthy run needs ln((1-β)/α) - ln(β/(1-α)) = 11.5 nats: five
// failures in a row against a 1 % SLO.
fn default_missed_breach_rate() -> f64 {
    0.01
}
// 10 × the allowed rate (10 % against a 1 % SLO) is a breach nobody argues
// with; a closer p1 needs far more outcomes to tell apart from p0.
fn default_breach_factor() -> f64 {
    10.0
}
fn default_retry_budget_percent() -> f64 {
    10.0
}

/// The error rates of a test and how far over the SLO a breach is "clear".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// α: chance of rolling back a canary that meets its SLO (false rollback).
    pub false_rollback: f64,
    /// β: chance of passing a canary that breaches at `breach_factor × p0`.
    pub missed_breach: f64,
    /// `p1 / p0`.
    pub breach_factor: f64,
}

/// A checked policy: what the analyzer runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The version being released.
    pub canary: u64,
    /// The version it is compared with.
    pub baseline: u64,
    /// Canary weight per step, strictly increasing, in 1..=100.
    pub step_weights: Vec<u32>,
    /// Time at each step.
    pub interval: Duration,
    /// Time between checks.
    pub check_interval: Duration,
    /// Window span.
    pub window: Duration,
    /// Consecutive failed checks that roll back, at least 1.
    pub threshold: u32,
    /// Canary requests a window needs, at least 1.
    pub min_requests: u64,
    /// Highest error rate, in 0..=1.
    pub max_error_rate: f64,
    /// Highest p99 latency.
    pub max_p99_latency: Option<Duration>,
    /// The sequential tests' error rates; `None`: off.
    pub sequential: Option<Rates>,
    /// Retries of canary faults on the baseline: the budget as a fraction of
    /// baseline successes; `None`: off.
    pub retry_budget: Option<f64>,
    /// Hedging of slow canary requests on the baseline; `None`: off.
    pub hedge: Option<Hedging>,
    /// What a drifting canary does to the rollout.
    pub drift: DriftGate,
    /// Lowest canary − baseline accuracy tolerated; `None`: not checked.
    pub min_accuracy_delta: Option<f64>,
    /// What an accuracy breach does.
    pub on_quality_breach: QualityGate,
}

/// When a canary request is hedged on the baseline, and the budget of hedges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hedging {
    /// Time since the request's arrival after which the baseline runs it too.
    pub after: Duration,
    /// The budget as a fraction of baseline successes.
    pub budget: f64,
}

impl RolloutSpec {
    /// A spec with the defaults for `canary`.
    pub fn new(canary: u64) -> RolloutSpec {
        RolloutSpec {
            canary,
            step_weights: default_steps(),
            interval: default_interval(),
            check_interval: default_check_interval(),
            window: default_window(),
            threshold: default_threshold(),
            min_requests: default_min_requests(),
            max_error_rate: default_max_error_rate(),
            max_p99_latency: default_max_p99(),
            sequential: true,
            false_rollback_rate: default_false_rollback_rate(),
            missed_breach_rate: default_missed_breach_rate(),
            breach_factor: default_breach_factor(),
            retry_on_baseline: true,
            retry_budget_percent: default_retry_budget_percent(),
            hedge_on_baseline: false,
            hedge_after: None,
            hedge_budget_percent: default_retry_budget_percent(),
            drift: DriftGate::default(),
            min_accuracy_delta: None,
            on_quality_breach: QualityGate::default(),
        }
    }

    /// Checks the values and pairs the canary with `baseline`.
    pub fn validate(&self, baseline: u64) -> Result<Policy, PolicyError> {
        if self.canary == 0 || self.canary == baseline {
            return Err(PolicyError::Canary(self.canary));
        }
        if self.step_weights.is_empty() || self.step_weights.len() > 100 {
            return Err(PolicyError::StepCount(self.step_weights.len()));
        }
        if let Some(&w) = self.step_weights.iter().find(|&&w| w == 0 || w > 100) {
            return Err(PolicyError::StepWeight(w));
        }
        if self.step_weights.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(PolicyError::StepsNotIncreasing(self.step_weights.clone()));
        }
        for (key, value) in
            [("interval", self.interval), ("check_interval", self.check_interval), ("window", self.window)]
        {
            if value < Duration::from_millis(10) || value > MAX_DURATION {
                return Err(PolicyError::Duration { key, value });
            }
        }
        if self.check_interval > self.interval {
            return Err(PolicyError::CheckLongerThanInterval {
                check_interval: self.check_interval,
                interval: self.interval,
            });
        }
        if self.threshold == 0 || self.threshold > 1000 {
            return Err(PolicyError::Threshold(self.threshold));
        }
        if self.min_requests == 0 || self.min_requests > 1_000_000_000 {
            return Err(PolicyError::MinRequests(self.min_requests));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(PolicyError::MaxErrorRate(self.max_error_rate));
        }
        if let Some(p99) = self.max_p99_latency
            && (p99.is_zero() || p99 > MAX_DURATION)
        {
            return Err(PolicyError::MaxP99Latency(p99));
        }
        for (key, value) in
            [("false_rollback_rate", self.false_rollback_rate), ("missed_breach_rate", self.missed_breach_rate)]
        {
            // Both below one half keeps Wald's bounds apart: ln((1-β)/α) > 0 > ln(β/(1-α)).
            if !(value > 0.0 && value < 0.5) {
                return Err(PolicyError::TestRate { key, value });
            }
        }
        if !(self.breach_factor > 1.0 && self.breach_factor <= 1000.0) {
            return Err(PolicyError::BreachFactor(self.breach_factor));
        }
        if !(self.retry_budget_percent > 0.0 && self.retry_budget_percent <= 100.0) {
            return Err(PolicyError::RetryBudget(self.retry_budget_percent));
        }
        if let Some(delta) = self.min_accuracy_delta
            && !(-1.0..=1.0).contains(&delta)
        {
            return Err(PolicyError::MinAccuracyDelta(delta));
        }
        let hedge = self.hedging()?;
        Ok(Policy {
            canary: self.canary,
            baseline,
            step_weights: self.step_weights.clone(),
            interval: self.interval,
            check_interval: self.check_interval,
            window: self.window,
            threshold: self.threshold,
            min_requests: self.min_requests,
            max_error_rate: self.max_error_rate,
            max_p99_latency: self.max_p99_latency,
            sequential: self.sequential.then_some(Rates {
                false_rollback: self.false_rollback_rate,
                missed_breach: self.missed_breach_rate,
                breach_factor: self.breach_factor,
            }),
            retry_budget: self.retry_on_baseline.then_some(self.retry_budget_percent / 100.0),
            hedge,
            drift: self.drift,
            min_accuracy_delta: self.min_accuracy_delta,
            on_quality_breach: self.on_quality_breach,
        })
    }

    /// The hedging settings, checked; `None` when hedging is off.
    fn hedging(&self) -> Result<Option<Hedging>, PolicyError> {
        if let Some(after) = self.hedge_after
            && (after.is_zero() || after > MAX_DURATION)
        {
            return Err(PolicyError::HedgeAfter(after));
        }
        if !(self.hedge_budget_percent > 0.0 && self.hedge_budget_percent <= 100.0) {
            return Err(PolicyError::HedgeBudget(self.hedge_budget_percent));
        }
        if !self.hedge_on_baseline {
            // A delay with hedging off is a mistake to point out, not a setting to ignore.
            return match self.hedge_after {
                Some(after) => Err(PolicyError::HedgeAfterWithoutHedging(after)),
                None => Ok(None),
            };
        }
        let after = self.hedge_after.or(self.max_p99_latency).ok_or(PolicyError::HedgeWithoutThreshold)?;
        Ok(Some(Hedging { after, budget: self.hedge_budget_percent / 100.0 }))
    }
}

/// Why a rollout policy is refused. Messages name the key, the bound and the
/// value given.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `min_accuracy_delta` is not a difference of accuracies.
    #[error("rollout.min_accuracy_delta must be in -1..=1, got {0}")]
    MinAccuracyDelta(f64),
    /// The canary is 0 or the baseline.
    #[error("rollout.canary must be a version of the route other than the baseline, got {0}")]
    Canary(u64),
    /// No steps, or too many.
    #[error("rollout.step_weights must have 1 to 100 steps, got {0}")]
    StepCount(usize),
    /// A step's weight is not a percentage above 0.
    #[error("rollout.step_weights must each be in 1..=100, got {0}")]
    StepWeight(u32),
    /// The steps do not go up.
    #[error("rollout.step_weights must be strictly increasing, got {0:?}")]
    StepsNotIncreasing(Vec<u32>),
    /// `interval`, `check_interval` or `window` out of range.
    #[error("rollout.{key} must be between 10ms and 24h, got {}", duration_text::format(*.value))]
    Duration {
        /// The key.
        key: &'static str,
        /// The value given.
        value: Duration,
    },
    /// Checks less often than steps.
    #[error(
        "rollout.check_interval ({}) must not be longer than rollout.interval ({})",
        duration_text::format(*.check_interval),
        duration_text::format(*.interval)
    )]
    CheckLongerThanInterval {
        /// `check_interval` given.
        check_interval: Duration,
        /// `interval` given.
        interval: Duration,
    },
    /// `threshold` out of range.
    #[error("rollout.threshold must be in 1..=1000, got {0}")]
    Threshold(u32),
    /// `min_requests` out of range.
    #[error("rollout.min_requests must be in 1..=1000000000, got {0}")]
    MinRequests(u64),
    /// `max_error_rate` not a fraction.
    #[error("rollout.max_error_rate must be in 0..=1, got {0}")]
    MaxErrorRate(f64),
    /// `max_p99_latency` out of range.
    #[error("rollout.max_p99_latency must be between 1ms and 24h, got {}", duration_text::format(*.0))]
    MaxP99Latency(Duration),
    /// `false_rollback_rate` or `missed_breach_rate` out of range.
    #[error("rollout.{key} must be above 0 and below 0.5, got {value}")]
    TestRate {
        /// The key.
        key: &'static str,
        /// The value given.
        value: f64,
    },
    /// `breach_factor` out of range.
    #[error("rollout.breach_factor must be above 1 and at most 1000, got {0}")]
    BreachFactor(f64),
    /// `retry_budget_percent` out of range.
    #[error("rollout.retry_budget_percent must be above 0 and at most 100, got {0}")]
    RetryBudget(f64),
    /// `hedge_after` out of range.
    #[error("rollout.hedge_after must be between 1ms and 24h, got {}", duration_text::format(*.0))]
    HedgeAfter(Duration),
    /// `hedge_budget_percent` out of range.
    #[error("rollout.hedge_budget_percent must be above 0 and at most 100, got {0}")]
    HedgeBudget(f64),
    /// `hedge_after` given while hedging is off.
    #[error(
        "rollout.hedge_after ({}) is set but rollout.hedge_on_baseline is false: set hedge_on_baseline = true to hedge",
        duration_text::format(*.0)
    )]
    HedgeAfterWithoutHedging(Duration),
    /// Hedging on with no time to hedge at.
    #[error(
        "rollout.hedge_on_baseline needs a time to hedge at: set rollout.hedge_after, or rollout.max_p99_latency (the default)"
    )]
    HedgeWithoutThreshold,
}

/// Durations written as text: `"250ms"`, `"30s"`, `"5m"`, `"1h"` (a whole
/// number and a unit), so config files and admin JSON read the same.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h)"))?;
        let millis = match unit {
            "ms" => Some(number),
            "s" => number.checked_mul(1000),
            "m" => number.checked_mul(60_000),
            "h" => number.checked_mul(3_600_000),
            _ => return Err(format!("invalid duration {text:?}: the unit must be ms, s, m or h")),
        };
        millis.map(Duration::from_millis).ok_or_else(|| format!("duration {text:?} is too long"))
    }

    /// Writes a duration in the largest unit that keeps it whole.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if ms == 0 || !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else {
            format!("{}s", ms / 1000)
        }
    }

    /// serde: deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// serde: serialize.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*d))
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// serde: deserialize.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(text) => super::parse(&text).map(Some).map_err(serde::de::Error::custom),
            }
        }

        /// serde: serialize.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => serializer.serialize_str(&super::format(*d)),
                None => serializer.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_as_text() {
        assert_eq!(duration_text::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration_text::parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration_text::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_text::parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "10", "1.5s", "-1s", "10 d", "99999999999999999999h"] {
            assert!(duration_text::parse(bad).is_err(), "{bad:?}");
        }
        for d in [Duration::from_millis(1500), Duration::from_secs(90), Duration::from_secs(7200), Duration::ZERO] {
            assert_eq!(duration_text::parse(&duration_text::format(d)), Ok(d));
        }
    }

    #[test]
    fn a_minimal_rollout_takes_the_defaults() {
        let spec: RolloutSpec = toml::from_str("canary = 2").unwrap();
        assert_eq!(spec, RolloutSpec::new(2));
        let policy = spec.validate(1).unwrap();
        assert_eq!((policy.canary, policy.baseline, policy.threshold), (2, 1, 2));
        let rates = Rates { false_rollback: 0.001, missed_breach: 0.01, breach_factor: 10.0 };
        assert_eq!((policy.sequential, policy.retry_budget), (Some(rates), Some(0.1)));
        assert_eq!(policy.hedge, None, "hedging is off by default");
    }

    #[test]
    fn hedging_waits_for_the_latency_slo_unless_hedge_after_says_otherwise() {
        let spec: RolloutSpec =
            toml::from_str("canary = 2\nmax_p99_latency = \"40ms\"\nhedge_on_baseline = true").unwrap();
        let hedge = spec.validate(1).unwrap().hedge;
        assert_eq!(hedge, Some(Hedging { after: Duration::from_millis(40), budget: 0.1 }));
        let spec: RolloutSpec = toml::from_str(
            "canary = 2\nhedge_on_baseline = true\nhedge_after = \"15ms\"\nhedge_budget_percent = 5\nmax_p99_latency = \"1s\"",
        )
        .unwrap();
        let hedge = spec.validate(1).unwrap().hedge;
        assert_eq!(hedge, Some(Hedging { after: Duration::from_millis(15), budget: 0.05 }));
        // It survives the admin API's JSON both ways.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["hedge_after"], "15ms");
        assert_eq!(serde_json::from_value::<RolloutSpec>(json).unwrap(), spec);
    }

    #[test]
    fn bad_hedging_settings_are_refused_with_the_key_named() {
        let refuse = |edit: &dyn Fn(&mut RolloutSpec)| {
            let mut spec = RolloutSpec::new(2);
            spec.hedge_on_baseline = true;
            edit(&mut spec);
            spec.validate(1).unwrap_err()
        };
        let zero = Some(Duration::ZERO);
        assert_eq!(refuse(&|s| s.hedge_after = zero), PolicyError::HedgeAfter(Duration::ZERO));
        let long = Duration::from_secs(25 * 3600);
        assert_eq!(refuse(&|s| s.hedge_after = Some(long)), PolicyError::HedgeAfter(long));
        assert_eq!(refuse(&|s| s.hedge_budget_percent = 0.0), PolicyError::HedgeBudget(0.0));
        assert_eq!(refuse(&|s| s.hedge_budget_percent = 150.0), PolicyError::HedgeBudget(150.0));
        assert!(matches!(refuse(&|s| s.hedge_budget_percent = f64::NAN), PolicyError::HedgeBudget(r) if r.is_nan()));
        assert_eq!(refuse(&|s| s.max_p99_latency = None), PolicyError::HedgeWithoutThreshold);
        let after = Duration::from_millis(30);
        let off = refuse(&|s| (s.hedge_on_baseline, s.hedge_after) = (false, Some(after)));
        assert_eq!(off, PolicyError::HedgeAfterWithoutHedging(after));
        assert_eq!(
            off.to_string(),
            "rollout.hedge_after (30ms) is set but rollout.hedge_on_baseline is false: set hedge_on_baseline = true to hedge"
        );
        assert_eq!(
            refuse(&|s| s.hedge_after = zero).to_string(),
            "rollout.hedge_after must be between 1ms and 24h, got 0ms"
        );
        // Text that is no duration is refused by the parser, naming what it expected.
        let error = toml::from_str::<RolloutSpec>("canary = 2\nhedge_on_baseline = true\nhedge_after = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid duration \"soon\""), "{error}");
        assert!(toml::from_str::<RolloutSpec>("canary = 2\nhedge_on_baseline = \"yes\"").is_err());
    }

    #[test]
    fn the_stopping_rule_and_the_retries_can_be_turned_off() {
        let spec: RolloutSpec = toml::from_str(
            "canary = 2
sequential = false
retry_on_baseline = false",
        )
        .unwrap();
        let policy = spec.validate(1).unwrap();
        assert_eq!((policy.sequential, policy.retry_budget), (None, None));
    }

    #[test]
    fn bad_policies_are_refused_with_the_key_named() {
        let refuse = |edit: &dyn Fn(&mut RolloutSpec)| {
            let mut spec = RolloutSpec::new(2);
            edit(&mut spec);
            spec.validate(1).unwrap_err()
        };
        assert_eq!(refuse(&|s| s.step_weights = vec![5, 5, 50]), PolicyError::StepsNotIncreasing(vec![5, 5, 50]));
        assert_eq!(refuse(&|s| s.step_weights = vec![]), PolicyError::StepCount(0));
        assert_eq!(refuse(&|s| s.step_weights = vec![0, 50]), PolicyError::StepWeight(0));
        assert_eq!(refuse(&|s| s.step_weights = vec![50, 101]), PolicyError::StepWeight(101));
        assert_eq!(refuse(&|s| s.threshold = 0), PolicyError::Threshold(0));
        assert_eq!(refuse(&|s| s.min_requests = 0), PolicyError::MinRequests(0));
        assert_eq!(refuse(&|s| s.max_error_rate = 1.5), PolicyError::MaxErrorRate(1.5));
        assert!(matches!(refuse(&|s| s.max_error_rate = f64::NAN), PolicyError::MaxErrorRate(r) if r.is_nan()));
        let short = Duration::from_millis(1);
        assert_eq!(refuse(&|s| s.interval = short), PolicyError::Duration { key: "interval", value: short });
        assert!(matches!(
            refuse(&|s| s.check_interval = Duration::from_secs(120)),
            PolicyError::CheckLongerThanInterval { .. }
        ));
        assert_eq!(refuse(&|s| s.max_p99_latency = Some(Duration::ZERO)), PolicyError::MaxP99Latency(Duration::ZERO));
        assert_eq!(refuse(&|s| s.canary = 1), PolicyError::Canary(1));
        assert_eq!(
            refuse(&|s| s.false_rollback_rate = 0.0),
            PolicyError::TestRate { key: "false_rollback_rate", value: 0.0 }
        );
        assert_eq!(
            refuse(&|s| s.missed_breach_rate = 0.5),
            PolicyError::TestRate { key: "missed_breach_rate", value: 0.5 }
        );
        assert_eq!(refuse(&|s| s.breach_factor = 1.0), PolicyError::BreachFactor(1.0));
        assert_eq!(refuse(&|s| s.retry_budget_percent = 0.0), PolicyError::RetryBudget(0.0));
        // The message names the key, the bound and the value.
        assert_eq!(refuse(&|s| s.threshold = 0).to_string(), "rollout.threshold must be in 1..=1000, got 0");
        assert!(toml::from_str::<RolloutSpec>("canary = 2\nintervall = \"1m\"").is_err());
        assert!(toml::from_str::<RolloutSpec>("canary = 2\ninterval = \"1 minute\"").is_err());
    }
}
