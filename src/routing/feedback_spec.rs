//! The `feedback` section of a route as written, and its checks: whether the
//! route keeps its predictions for ground truth, for how long, how many, and
//! how a prediction is read.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `ttl` | how long a prediction waits for its truth (`"24h"`); later truths get 410 | `"24h"` |
//! | `max_entries` | predictions held at once (oldest out first), 1..=100000000 | 1000000 |
//! | `window` | sliding window of the quality metrics (`modelgate_model_accuracy`, ...) | `"10m"` |
//! | `output` | the output summarized | the first |
//! | `kind` | `auto` (a row of several numbers is a classifier's scores, one number a value), `classifier`, `regressor` | `"auto"` |
//! | `shared` | ship predictions to the control plane (batched, off the request path), so feedback sent to another replica, or after this one's index pushed the entry out, still joins, and a truth is accepted once fleet-wide (needs a followed control plane) | false |
//! | `min_effect` | the difference between arms worth detecting, in the metric's units (accuracy: 0.02 = 2 points): the A/B interval is tightest there | 0.02 |

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::duration_text;
use crate::feedback::{OutputKind, Settings};

/// Most predictions one route may hold.
pub const MAX_ENTRIES: usize = 100_000_000;
/// Longest ttl and window.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A route's `feedback` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSpec {
    /// How long a prediction waits for its truth.
    #[serde(default = "default_ttl", with = "duration_text")]
    pub ttl: Duration,
    /// Predictions held at once.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Sliding window of the quality metrics.
    #[serde(default = "default_window", with = "duration_text")]
    pub window: Duration,
    /// The output summarized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// How the output is read.
    #[serde(default)]
    pub kind: OutputKind,
    /// The difference worth detecting between arms.
    #[serde(default = "default_min_effect")]
    pub min_effect: f64,
    /// Ship predictions to the control plane for the other replicas.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_entries() -> usize {
    1_000_000
}
fn default_window() -> Duration {
    Duration::from_secs(600)
}
fn default_min_effect() -> f64 {
    0.02
}

/// Why a `feedback` section is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    /// `ttl` or `window` out of range.
    #[error("feedback.{key} must be between 1s and 30 days, got {}", duration_text::format(*.value))]
    Duration {
        /// The key.
        key: &'static str,
        /// Its value.
        value: Duration,
    },
    /// `max_entries` out of range.
    #[error("feedback.max_entries must be in 1..={MAX_ENTRIES}, got {0}")]
    MaxEntries(usize),
    /// `min_effect` not a positive finite number.
    #[error("feedback.min_effect must be a positive number, got {0}")]
    MinEffect(f64),
    /// `output` empty.
    #[error("feedback.output must name an output")]
    Output,
}

impl FeedbackSpec {
    /// Checks every value.
    pub fn validate(&self) -> Result<Settings, FeedbackError> {
        for (key, value) in [("ttl", self.ttl), ("window", self.window)] {
            if value < Duration::from_secs(1) || value > MAX_TTL {
                return Err(FeedbackError::Duration { key, value });
            }
        }
        if !(1..=MAX_ENTRIES).contains(&self.max_entries) {
            return Err(FeedbackError::MaxEntries(self.max_entries));
        }
        if !(self.min_effect.is_finite() && self.min_effect > 0.0) {
            return Err(FeedbackError::MinEffect(self.min_effect));
        }
        if self.output.as_deref().is_some_and(str::is_empty) {
            return Err(FeedbackError::Output);
        }
        Ok(Settings {
            ttl: self.ttl,
            max_entries: self.max_entries,
            window: self.window,
            output: self.output.clone(),
            kind: self.kind,
            min_effect: self.min_effect,
            shared: self.shared,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FeedbackSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_the_issue_example() {
        let spec = parse(
            r#"ttl = "24h"
max_entries = 1000000"#,
        );
        let settings = spec.validate().unwrap();
        assert_eq!(settings.ttl, Duration::from_secs(86_400));
        assert_eq!(settings.max_entries, 1_000_000);
        assert_eq!(settings.window, Duration::from_secs(600));
        assert_eq!(settings.kind, OutputKind::Auto);
        assert!(!settings.shared);
        assert!(parse("shared = true").validate().unwrap().shared);
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let refused = |text: &str| parse(text).validate().unwrap_err().to_string();
        assert!(refused(r#"ttl = "0s""#).contains("feedback.ttl"));
        assert!(refused("max_entries = 0").contains("feedback.max_entries"));
        assert!(refused("min_effect = -1.0").contains("feedback.min_effect"));
        assert!(refused(r#"output = """#).contains("feedback.output"));
        assert!(toml::from_str::<FeedbackSpec>("bogus = 1").is_err());
        assert!(toml::from_str::<FeedbackSpec>(r#"kind = "ranker""#).is_err());
    }
}
