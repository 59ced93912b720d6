//! [`Profile`]: every feature of one model version over the same rows, as a reference or as one
//! window of served traffic; and [`FeatureSpec`], what a gateway needs to profile windows that a
//! reference can be compared with (each feature's kind and, for a numeric one, the reference's
//! histogram edges).
//!
//! The control plane hands the specs of a version's reference to the gateways with the desired
//! state; the gateways profile on them and ship closed windows back; the control plane merges the
//! windows of a span and tests each feature against the reference ([`Profile::evaluate`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drift::{evaluate_categorical, evaluate_numeric};
use crate::{CategoricalProfile, FeatureProfile, NoVerdict, Rule, SketchError, Verdict};

/// What one feature is, and how a window of it is binned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureSpec {
    /// A number per row, binned on the reference's `edges` (see [`crate::Histogram`]).
    Numeric {
        /// Finite, strictly increasing histogram edges (may be empty: one bin).
        edges: Vec<f64>,
    },
    /// A category per row (BYTES, low-cardinality integers, a classifier's argmax).
    Categorical,
}

/// One feature's summary: numeric or categorical.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "profile", rename_all = "snake_case")]
pub enum Summary {
    /// See [`FeatureProfile`].
    Numeric(FeatureProfile),
    /// See [`CategoricalProfile`].
    Categorical(CategoricalProfile),
}

impl Summary {
    /// An empty window summary for `spec`: the window sketch sizes (KLL k = 200, 64-entry
    /// frequent-items map), on the reference's edges.
    pub fn empty(spec: &FeatureSpec) -> Result<Self, SketchError> {
        Ok(match spec {
            FeatureSpec::Numeric { edges } => {
                Summary::Numeric(FeatureProfile::new(edges.clone(), crate::numeric::DEFAULT_K)?)
            }
            FeatureSpec::Categorical => {
                Summary::Categorical(CategoricalProfile::new(crate::categorical::DEFAULT_MAX_ITEMS)?)
            }
        })
    }

    /// The spec a window of this feature is profiled on.
    pub fn spec(&self) -> FeatureSpec {
        match self {
            Summary::Numeric(p) => FeatureSpec::Numeric { edges: p.histogram().edges().to_vec() },
            Summary::Categorical(_) => FeatureSpec::Categorical,
        }
    }

    /// Rows seen, including NaN, inf and missing ones.
    pub fn rows(&self) -> u64 {
        match self {
            Summary::Numeric(p) => p.rows(),
            Summary::Categorical(p) => p.count() + p.missing_count(),
        }
    }

    /// Adds another window of the same feature (same kind, same edges).
    pub fn merge(&mut self, other: &Summary) -> Result<(), SketchError> {
        match (self, other) {
            (Summary::Numeric(a), Summary::Numeric(b)) => a.merge(b),
            (Summary::Categorical(a), Summary::Categorical(b)) => {
                a.merge(b);
                Ok(())
            }
            _ => Err(SketchError::Inconsistent("a numeric and a categorical summary of one feature".into())),
        }
    }

    /// Heap bytes held (sketch buffers, bins).
    pub fn memory_bytes(&self) -> usize {
        match self {
            Summary::Numeric(p) => p.memory_bytes(),
            Summary::Categorical(p) => p.memory_bytes(),
        }
    }

    /// Tests `current` against this reference under `rule`.
    pub fn evaluate(&self, current: &Summary, rule: Rule, min_rows: u64) -> Result<Verdict, NoVerdict> {
        match (self, current) {
            (Summary::Numeric(r), Summary::Numeric(c)) => evaluate_numeric(r, c, rule, min_rows),
            (Summary::Categorical(r), Summary::Categorical(c)) => evaluate_categorical(r, c, rule, min_rows),
            _ => Err(NoVerdict::KindMismatch),
        }
    }
}

/// Summaries of a model version's features over the same rows, by feature name
/// (`INPUT0[3]`, `OUTPUT0.argmax`, or names a config gives).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Feature name → summary.
    pub features: BTreeMap<String, Summary>,
}

impl Profile {
    /// Empty window summaries for every feature of `specs`.
    pub fn empty(specs: &BTreeMap<String, FeatureSpec>) -> Result<Self, SketchError> {
        let features = specs
            .iter()
            .map(|(name, spec)| Ok((name.clone(), Summary::empty(spec)?)))
            .collect::<Result<_, SketchError>>()?;
        Ok(Self { features })
    }

    /// Each feature's spec: what windows comparable with this (reference) profile are made on.
    pub fn specs(&self) -> BTreeMap<String, FeatureSpec> {
        self.features.iter().map(|(name, s)| (name.clone(), s.spec())).collect()
    }

    /// The most rows any feature saw (features of one profile see the same rows).
    pub fn rows(&self) -> u64 {
        self.features.values().map(Summary::rows).max().unwrap_or(0)
    }

    /// Adds another window: features present in both are merged, features only in `other` are
    /// taken over.
    pub fn merge(&mut self, other: &Profile) -> Result<(), SketchError> {
        for (name, summary) in &other.features {
            match self.features.get_mut(name) {
                Some(mine) => mine.merge(summary).map_err(|e| SketchError::Inconsistent(format!("{name}: {e}")))?,
                None => {
                    self.features.insert(name.clone(), summary.clone());
                }
            }
        }
        Ok(())
    }

    /// Heap bytes held by all summaries.
    pub fn memory_bytes(&self) -> usize {
        self.features.values().map(Summary::memory_bytes).sum()
    }

    /// Tests every feature of `current` that this reference has; features without a verdict
    /// carry the reason.
    pub fn evaluate(
        &self,
        current: &Profile,
        rule: Rule,
        min_rows: u64,
    ) -> BTreeMap<String, Result<Verdict, NoVerdict>> {
        self.features
            .iter()
            .map(|(name, reference)| {
                let verdict = match current.features.get(name) {
                    Some(window) => reference.evaluate(window, rule, min_rows),
                    None => Err(NoVerdict::TooFewRows { rows: 0, min: min_rows.max(1), nan: 0, inf: 0, missing: 0 }),
                };
                (name.clone(), verdict)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> BTreeMap<String, FeatureSpec> {
        BTreeMap::from([
            ("x".to_string(), FeatureSpec::Numeric { edges: vec![-1.0, 0.0, 1.0] }),
            ("c".to_string(), FeatureSpec::Categorical),
        ])
    }

    #[test]
    fn a_profile_round_trips_through_json_with_its_specs() {
        let mut p = Profile::empty(&specs()).unwrap();
        if let Some(Summary::Numeric(x)) = p.features.get_mut("x") {
            x.extend(&[0.5, -0.5, 2.0, f64::NAN]);
        }
        if let Some(Summary::Categorical(c)) = p.features.get_mut("c") {
            c.update("a");
        }
        let text = serde_json::to_string(&p).unwrap();
        let back: Profile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.specs(), specs());
        assert_eq!(back.rows(), 4);
    }

    #[test]
    fn merging_a_numeric_window_into_a_categorical_feature_is_refused() {
        let mut a = Profile::empty(&specs()).unwrap();
        let mut b = Profile::empty(&specs()).unwrap();
        let numeric = b.features.remove("x").unwrap();
        b.features.insert("c".into(), numeric);
        assert!(a.merge(&b).is_err());
    }

    #[test]
    fn a_feature_missing_from_the_window_gets_no_verdict() {
        let mut reference = Profile::empty(&specs()).unwrap();
        if let Some(Summary::Numeric(x)) = reference.features.get_mut("x") {
            x.extend(&[0.1, 0.2, 0.3]);
        }
        let window = Profile::default();
        let verdicts = reference.evaluate(&window, Rule::Auto, 1);
        assert!(matches!(verdicts["x"], Err(NoVerdict::TooFewRows { rows: 0, .. })));
    }
}
