//! Per-feature drift verdicts and dataset drift.
//!
//! [`Rule::Auto`] is Evidently's default choice of test (`get_default_stattest` in evidently's
//! `stattests/registry.py`, control-plane notes §2): with at most 1,000 reference rows a numeric
//! feature is tested by KS (p < 0.05) and a categorical one by chi-squared (p < 0.05); above,
//! by Wasserstein normed by the reference std (≥ 0.1) and Jensen–Shannon distance (≥ 0.1). A
//! large reference makes p-values flag differences too small to matter (evidently#50), hence the
//! switch to distances.

use serde::{Deserialize, Serialize};

use crate::stats::{self, StepCdfs};
use crate::{CategoricalProfile, FeatureProfile};

/// Reference rows up to which [`Rule::Auto`] uses a test with a p-value (Evidently's cut).
pub const AUTO_SMALL_REFERENCE: u64 = 1000;

/// A drift statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    /// Kolmogorov–Smirnov (numeric): drift when p < threshold.
    Ks,
    /// Wasserstein-1 normed by the reference std (numeric): drift when ≥ threshold.
    Wasserstein,
    /// Population stability index on the reference's bins: drift when ≥ threshold.
    Psi,
    /// Jensen–Shannon distance on bins or categories: drift when ≥ threshold.
    JensenShannon,
    /// Hellinger distance on bins or categories: drift when ≥ threshold.
    Hellinger,
    /// Chi-squared test of homogeneity on bins or categories: drift when p < threshold.
    ChiSquared,
}

impl Stat {
    /// Its name, as serde and the API spell it (`ks`, `jensen_shannon`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::Ks => "ks",
            Stat::Wasserstein => "wasserstein",
            Stat::Psi => "psi",
            Stat::JensenShannon => "jensen_shannon",
            Stat::Hellinger => "hellinger",
            Stat::ChiSquared => "chi_squared",
        }
    }

    /// The usual threshold: α = 0.05 for tests, 0.1 for distances (Evidently's defaults; PSI 0.1
    /// is the "minor shift" line, 0.25 "major").
    pub fn default_threshold(self) -> f64 {
        match self {
            Stat::Ks | Stat::ChiSquared => 0.05,
            Stat::Wasserstein | Stat::Psi | Stat::JensenShannon | Stat::Hellinger => 0.1,
        }
    }

    /// Whether the threshold is a significance level on a p-value (else a distance bound).
    pub fn is_test(self) -> bool {
        matches!(self, Stat::Ks | Stat::ChiSquared)
    }
}

/// How a feature's statistic and threshold are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Rule {
    /// Evidently's `auto`: see the module documentation.
    Auto,
    /// One statistic with a fixed threshold. For NannyML's adaptive threshold, pass the upper
    /// bound from [`stats::adaptive_threshold`] over reference chunks.
    Fixed {
        /// The statistic.
        stat: Stat,
        /// α for tests, the bound for distances.
        threshold: f64,
    },
}

/// The outcome of testing one feature's window against its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The statistic used.
    pub stat: Stat,
    /// Its value (the distance, or the test statistic: KS D, chi-squared).
    pub value: f64,
    /// The p-value, for tests.
    pub p_value: Option<f64>,
    /// The threshold it was held to (α for tests).
    pub threshold: f64,
    /// Whether the feature drifted.
    pub drifted: bool,
    /// Reference rows that entered the statistic (finite or non-missing).
    pub reference_rows: u64,
    /// Current rows that entered the statistic.
    pub current_rows: u64,
}

/// Why a feature got no verdict: a data condition, not a fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoVerdict {
    /// The reference holds no usable value.
    #[error("the reference has no finite or non-missing values")]
    EmptyReference,
    /// The window holds too few usable values to test.
    #[error("the window has {rows} usable rows (need {min}); {nan} NaN, {inf} inf, {missing} missing")]
    TooFewRows {
        /// Usable rows in the window.
        rows: u64,
        /// The minimum asked for.
        min: u64,
        /// NaN rows (numeric).
        nan: u64,
        /// ±inf rows (numeric).
        inf: u64,
        /// Missing rows (categorical).
        missing: u64,
    },
    /// The window was not profiled on the reference's histogram edges.
    #[error("the window's histogram edges differ from the reference's")]
    EdgesMismatch,
    /// The window's feature is of another kind (numeric vs categorical) than the reference's.
    #[error("the window's feature is numeric where the reference's is categorical, or the reverse")]
    KindMismatch,
    /// The statistic does not apply to this kind of feature.
    #[error("{stat:?} does not apply to a categorical feature")]
    NotApplicable {
        /// The statistic asked for.
        stat: Stat,
    },
}

fn verdict(stat: Stat, value: f64, p_value: Option<f64>, threshold: f64, rows: (u64, u64)) -> Verdict {
    let drifted = match p_value {
        Some(p) => p < threshold,
        None => value >= threshold,
    };
    Verdict { stat, value, p_value, threshold, drifted, reference_rows: rows.0, current_rows: rows.1 }
}

/// Refuses a verdict on an empty reference, or on a window with fewer than `min_rows`
/// (at least 1) usable rows; `(nan, inf, missing)` say what the window held instead.
fn check_rows(rows: (u64, u64), min_rows: u64, (nan, inf, missing): (u64, u64, u64)) -> Result<(), NoVerdict> {
    if rows.0 == 0 {
        return Err(NoVerdict::EmptyReference);
    }
    let min = min_rows.max(1);
    if rows.1 < min {
        return Err(NoVerdict::TooFewRows { rows: rows.1, min, nan, inf, missing });
    }
    Ok(())
}

/// Tests a numeric window against its reference. `min_rows` is the fewest finite window values
/// worth a verdict (at least 1).
pub fn evaluate_numeric(
    reference: &FeatureProfile,
    current: &FeatureProfile,
    rule: Rule,
    min_rows: u64,
) -> Result<Verdict, NoVerdict> {
    let rows = (reference.finite_count(), current.finite_count());
    check_rows(rows, min_rows, (current.nan_count(), current.inf_count(), 0))?;
    let (stat, threshold) = match rule {
        Rule::Auto if rows.0 <= AUTO_SMALL_REFERENCE => (Stat::Ks, Stat::Ks.default_threshold()),
        Rule::Auto => (Stat::Wasserstein, Stat::Wasserstein.default_threshold()),
        Rule::Fixed { stat, threshold } => (stat, threshold),
    };
    let (ref_bins, cur_bins) = (reference.histogram(), current.histogram());
    if matches!(stat, Stat::Psi | Stat::JensenShannon | Stat::Hellinger | Stat::ChiSquared)
        && ref_bins.check_same_edges(cur_bins).is_err()
    {
        return Err(NoVerdict::EdgesMismatch);
    }
    let (r, c) = (ref_bins.counts(), cur_bins.counts());
    // Both sides hold finite values, so every statistic below is defined.
    let cdfs = || StepCdfs::new(reference.kll(), current.kll()).ok_or(NoVerdict::EmptyReference);
    let (value, p_value) = match stat {
        Stat::Ks => {
            let d = cdfs()?.ks_statistic();
            // The sketches' own counts (a window's sketch may hold a sample of its rows), and their noise.
            (d, Some(stats::ks_sketch_p_value(d, reference.kll(), current.kll())))
        }
        Stat::Wasserstein => {
            // Evidently floors the norm at 0.001 so that a constant reference does not divide by 0.
            let norm = reference.std().unwrap_or(0.0).max(0.001);
            (cdfs()?.wasserstein() / norm, None)
        }
        Stat::Psi => (stats::psi(r, c).unwrap_or(0.0), None),
        Stat::JensenShannon => (stats::jensen_shannon(r, c).unwrap_or(0.0), None),
        Stat::Hellinger => (stats::hellinger(r, c).unwrap_or(0.0), None),
        Stat::ChiSquared => {
            let table: Vec<(u64, u64)> = r.iter().copied().zip(c.iter().copied()).collect();
            let (value, _, p) = stats::chi_squared(&table).unwrap_or((0.0, 0, 1.0));
            (value, Some(p))
        }
    };
    Ok(verdict(stat, value, p_value, threshold, rows))
}

/// Tests a categorical window against its reference: chi-squared (p < 0.05) up to 1,000
/// reference rows, Jensen–Shannon (≥ 0.1) above. Chi-squared without continuity correction on
/// two categories is the two-proportion Z test Evidently uses for binary features (χ² = z²).
///
/// Categories are the union of both profiles' held categories, plus one "other" column for the
/// counts the sketches no longer attribute (empty until a sketch purges).
pub fn evaluate_categorical(
    reference: &CategoricalProfile,
    current: &CategoricalProfile,
    rule: Rule,
    min_rows: u64,
) -> Result<Verdict, NoVerdict> {
    let rows = (reference.count(), current.count());
    check_rows(rows, min_rows, (0, 0, current.missing_count()))?;
    let (stat, threshold) = match rule {
        Rule::Auto if rows.0 <= AUTO_SMALL_REFERENCE => (Stat::ChiSquared, Stat::ChiSquared.default_threshold()),
        Rule::Auto => (Stat::JensenShannon, Stat::JensenShannon.default_threshold()),
        Rule::Fixed { stat, threshold } => (stat, threshold),
    };
    let table = category_table(reference, current);
    let (r, c): (Vec<u64>, Vec<u64>) = table.iter().copied().unzip();
    let (value, p_value) = match stat {
        Stat::Ks | Stat::Wasserstein => return Err(NoVerdict::NotApplicable { stat }),
        Stat::Psi => (stats::psi(&r, &c).unwrap_or(0.0), None),
        Stat::JensenShannon => (stats::jensen_shannon(&r, &c).unwrap_or(0.0), None),
        Stat::Hellinger => (stats::hellinger(&r, &c).unwrap_or(0.0), None),
        Stat::ChiSquared => {
            let (value, _, p) = stats::chi_squared(&table).unwrap_or((0.0, 0, 1.0));
            (value, Some(p))
        }
    };
    Ok(verdict(stat, value, p_value, threshold, rows))
}

/// (reference, current) counts per category, in a stable order, "other" last when non-empty.
pub fn category_table(reference: &CategoricalProfile, current: &CategoricalProfile) -> Vec<(u64, u64)> {
    let (ref_counts, ref_other) = reference.counts();
    let (cur_counts, cur_other) = current.counts();
    let mut table: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (name, count) in ref_counts {
        table.entry(name).or_default().0 += count;
    }
    for (name, count) in cur_counts {
        table.entry(name).or_default().1 += count;
    }
    let mut rows: Vec<(u64, u64)> = table.into_values().collect();
    if ref_other + cur_other > 0 {
        rows.push((ref_other, cur_other));
    }
    rows
}

/// Dataset drift: whether the share of drifted features reaches a bound (Evidently's
/// `drift_share`, 0.5 by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    /// Features with a verdict.
    pub features: usize,
    /// Of those, how many drifted.
    pub drifted_features: usize,
    /// drifted_features / features (0 with no features).
    pub share: f64,
    /// The bound the share was held to.
    pub threshold: f64,
    /// Whether the dataset drifted: share ≥ threshold, and at least one feature drifted.
    pub drifted: bool,
}

/// Evidently's default drift share.
pub const DEFAULT_DRIFT_SHARE: f64 = 0.5;

impl DatasetDrift {
    /// Summarizes the verdicts of one window's features (features with no verdict are left out).
    pub fn from_verdicts(verdicts: &[Verdict], threshold: f64) -> Self {
        let features = verdicts.len();
        let drifted_features = verdicts.iter().filter(|v| v.drifted).count();
        let share = if features == 0 { 0.0 } else { drifted_features as f64 / features as f64 };
        Self { features, drifted_features, share, threshold, drifted: drifted_features > 0 && share >= threshold }
    }
}

#[cfg(test)]
mod tests;
