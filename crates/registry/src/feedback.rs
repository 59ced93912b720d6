//! Predictions shared across gateways for ground truth: the wire types of
//! `/cp/v1/feedback/*` (the gateway sends and reads them too) and the
//! control plane's retention of them.
//!
//! A gateway route with `feedback = { shared = true, ... }` ships what each
//! request predicted here in batches (`POST /cp/v1/feedback/entries`), so that
//! feedback arriving at another replica, or after the gateway's own bounded
//! index pushed the entry out, still joins (`POST /cp/v1/feedback/lookup`).
//! A truth is accepted once fleet-wide: the gateway that accepts it first
//! claims the entry (`POST /cp/v1/feedback/claims`), later claims are told
//! it is `judged` (the gateway answers 409).
//!
//! Rows are bounded twice: each expires after its route's ttl (capped at
//! [`FeedbackSettings::max_ttl`]), and past [`FeedbackSettings::max_rows`]
//! the oldest go first. Expired and surplus rows are deleted by a purge that
//! runs at most every [`FeedbackSettings::purge_every`], started by a write.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// Most entries, ids or claims one call carries.
pub const MAX_BATCH: usize = 10_000;
/// Longest request id (as the gateway's own bound).
pub const MAX_ID_LEN: usize = 128;

/// What a gateway kept of one prediction.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Prediction {
    /// A classifier's choice: the class, how many classes the output has, and
    /// the winning score (`null` when it was not a finite number).
    Class {
        /// Index of the highest score.
        class: u32,
        /// Number of classes.
        classes: u32,
        /// The highest score.
        score: Option<f32>,
    },
    /// A regressor's value.
    Value {
        /// The predicted value.
        value: f32,
    },
}

/// One prediction as shipped.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The public model name (the route's).
    pub model: String,
    /// The request id.
    pub id: String,
    /// The version that answered.
    pub version: u64,
    /// When it answered, Unix milliseconds.
    pub at_ms: i64,
    /// How long it waits for its truth (the route's ttl), milliseconds.
    pub ttl_ms: i64,
    /// What it predicted.
    pub prediction: Prediction,
}

/// `POST /cp/v1/feedback/entries`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entries {
    /// At most [`MAX_BATCH`].
    pub entries: Vec<Entry>,
}

/// `POST /cp/v1/feedback/lookup`: the entries of `ids` of `model`, unchanged.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The public model name.
    pub model: String,
    /// At most [`MAX_BATCH`].
    pub ids: Vec<String>,
}

/// Where an entry stands.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Held, waiting for its truth.
    Open,
    /// Its truth came (to any gateway).
    Judged,
    /// Held, but older than its ttl.
    Expired,
    /// Never shipped, or purged.
    Unknown,
    /// Claimed by this call (claims only).
    Claimed,
}

/// One id's answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Found {
    /// The request id.
    pub id: String,
    /// Where it stands.
    pub state: State,
    /// The version that answered (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What it predicted (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

/// The answer to a lookup or a claim, one per id, in order.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    /// One per id asked.
    pub results: Vec<Found>,
}

/// One claim: the id, and the entry itself when the claiming gateway holds it
/// (it may not have been shipped yet: it is stored judged).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The request id.
    pub id: String,
    /// The claiming gateway's own entry (its model must be the claim's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
}

/// `POST /cp/v1/feedback/claims`: marks each open entry judged by `gateway`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The public model name.
    pub model: String,
    /// The claiming gateway's id.
    pub gateway: String,
    /// At most [`MAX_BATCH`].
    pub claims: Vec<Claim>,
}

/// How long and how many entries the control plane keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackSettings {
    /// Longest ttl honoured (a route asking more is cut to it).
    pub max_ttl: Duration,
    /// Most rows held; past it the oldest go at the next purge.
    pub max_rows: u64,
    /// Least time between two purges.
    pub purge_every: Duration,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        FeedbackSettings {
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_rows: 10_000_000,
            purge_every: Duration::from_secs(10),
        }
    }
}

impl FeedbackSettings {
    /// The defaults, with `MODELGATE_CP_FEEDBACK_MAX_ROWS` and
    /// `MODELGATE_CP_FEEDBACK_MAX_TTL_SECS` from the environment when set.
    pub fn from_env() -> Result<FeedbackSettings, RegistryError> {
        let mut settings = FeedbackSettings::default();
        let number = |key: &str| -> Result<Option<u64>, RegistryError> {
            match std::env::var(key) {
                Ok(text) => text.trim().parse::<u64>().ok().filter(|n| *n > 0).map(Some).ok_or_else(|| {
                    RegistryError::InvalidArgument(format!("{key} must be a positive whole number, got '{text}'"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(rows) = number("MODELGATE_CP_FEEDBACK_MAX_ROWS")? {
            settings.max_rows = rows;
        }
        if let Some(secs) = number("MODELGATE_CP_FEEDBACK_MAX_TTL_SECS")? {
            settings.max_ttl = Duration::from_secs(secs);
        }
        Ok(settings)
    }
}

/// Checks a request id as gateways do: 1 to [`MAX_ID_LEN`] visible ASCII characters.
pub fn check_id(id: &str) -> Result<(), RegistryError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RegistryError::InvalidArgument(format!(
            "request id '{}' must be 1 to {MAX_ID_LEN} visible ASCII characters",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Checks a batch's size.
pub fn check_batch(what: &str, len: usize) -> Result<(), RegistryError> {
    if len > MAX_BATCH {
        return Err(RegistryError::TooLarge(format!("a feedback call holds at most {MAX_BATCH} {what}, got {len}")));
    }
    Ok(())
}

impl Entry {
    /// Checks every field; `ttl_ms` is cut to `max_ttl`.
    pub fn checked(mut self, max_ttl: Duration) -> Result<Entry, RegistryError> {
        crate::name::Name::parse("model", &self.model)?;
        check_id(&self.id)?;
        if i64::try_from(self.version).is_err() {
            return Err(RegistryError::InvalidArgument(format!("version {} is out of range", self.version)));
        }
        if self.ttl_ms <= 0 {
            return Err(RegistryError::InvalidArgument(format!("ttl_ms must be positive, got {}", self.ttl_ms)));
        }
        self.ttl_ms = self.ttl_ms.min(i64::try_from(max_ttl.as_millis()).unwrap_or(i64::MAX));
        match self.prediction {
            Prediction::Class { class, classes, .. } if class >= classes => {
                Err(RegistryError::InvalidArgument(format!("class {class} is not below classes {classes}")))
            }
            Prediction::Value { value } if !value.is_finite() => {
                Err(RegistryError::InvalidArgument("a predicted value must be a finite number".into()))
            }
            _ => Ok(self),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn predictions_read_as_a_class_or_a_value() {
        let class: Prediction = serde_json::from_str(r#"{"class":2,"classes":3,"score":0.5}"#).unwrap();
        assert_eq!(class, Prediction::Class { class: 2, classes: 3, score: Some(0.5) });
        let value: Prediction = serde_json::from_str(r#"{"value":1.5}"#).unwrap();
        assert_eq!(value, Prediction::Value { value: 1.5 });
        assert!(serde_json::from_str::<Prediction>(r#"{"label":1}"#).is_err());
    }

    #[test]
    fn entries_are_checked_and_their_ttl_cut() {
        let entry = Entry {
            model: "fraud".into(),
            id: "req-1".into(),
            version: 2,
            at_ms: 1,
            ttl_ms: i64::MAX,
            prediction: Prediction::Class { class: 1, classes: 2, score: None },
        };
        assert_eq!(entry.clone().checked(Duration::from_secs(10)).unwrap().ttl_ms, 10_000);
        let bad_class = Entry { prediction: Prediction::Class { class: 2, classes: 2, score: None }, ..entry.clone() };
        assert!(bad_class.checked(Duration::from_secs(10)).is_err());
        assert!(Entry { id: "a b".into(), ..entry.clone() }.checked(Duration::from_secs(10)).is_err());
        assert!(Entry { model: "../x".into(), ..entry.clone() }.checked(Duration::from_secs(10)).is_err());
        assert!(Entry { ttl_ms: 0, ..entry }.checked(Duration::from_secs(10)).is_err());
    }
}
