//! [`FeatureProfile`]: one numeric feature over one window (or over the reference).

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};

use crate::{Histogram, SketchError};

/// KLL `k` for windows: rank error 1.33 % (2.296 / k^0.9723), about 5 KB after millions of values
/// (control-plane notes §2). A reference may use a larger `k`; sketches of different `k` merge.
pub const DEFAULT_K: u16 = 200;

/// KLL `k` for reference profiles: built once per version and feature, so ten times the window's
/// `k` costs ~50 KB once and takes the reference's share out of the sketch error of KS and
/// Wasserstein (rank error ~0.15 %). Measured by `load-tests/drift/compare_stats.py` (300 trials,
/// windows at k = 200): KS false positives at α = 0.05 were 7.7 % with a k = 200 reference and
/// 5.7–6.7 % with k = 1000–4000, scipy's exact KS 4.7 % on the same samples.
pub const REFERENCE_K: u16 = 2000;

/// The summary of one numeric feature over one window.
///
/// NaN and ±inf are counted but never enter the histogram, the KLL sketch or the moments: a NaN
/// has no rank, and one infinity would make the mean, the std and the Wasserstein distance
/// infinite. A rising NaN or inf share is drift of its own, visible in the counts.
#[derive(Debug, Clone)]
pub struct FeatureProfile {
    pub(crate) rows: u64,
    pub(crate) nan: u64,
    pub(crate) pos_inf: u64,
    pub(crate) neg_inf: u64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) sum: f64,
    // Welford's running mean and sum of squared deviations: a plain sum of squares loses the
    // variance to cancellation when the mean is large against the std.
    pub(crate) mean: f64,
    pub(crate) m2: f64,
    pub(crate) histogram: Histogram,
    pub(crate) kll: KllSketch<KllFloat<f64>>,
}

impl FeatureProfile {
    /// An empty profile with histogram `edges` and a KLL sketch of parameter `k` (8..=65535).
    pub fn new(edges: Vec<f64>, k: u16) -> Result<Self, SketchError> {
        let kll = KllSketch::new(k).map_err(|_| SketchError::BadParameter {
            name: "k",
            value: u64::from(k),
            reason: "KLL k must be at least 8",
        })?;
        Ok(Self {
            rows: 0,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            mean: 0.0,
            m2: 0.0,
            histogram: Histogram::new(edges)?,
            kll,
        })
    }

    /// Profiles a reference sample in two passes: its KLL quantiles at `i / bins` give the
    /// histogram edges (deduplicated, so a constant feature gets one edge), then every value is
    /// profiled on those edges.
    pub fn reference(values: &[f64], bins: usize, k: u16) -> Result<Self, SketchError> {
        let mut first = Self::new(Vec::new(), k)?;
        first.extend(values);
        let edges = first.quantile_edges(bins);
        let mut profile = Self::new(edges, k)?;
        profile.extend(values);
        Ok(profile)
    }

    /// Adds one value (one row of this feature).
    #[inline]
    pub fn update(&mut self, value: f64) {
        self.update_counts(value);
        self.update_sketch(value);
    }

    /// Adds one value to the counts, the moments and the histogram but not to the quantile
    /// sketch: a row that a sampled sketch leaves out (the data plane's profiler sketches a
    /// sample of its rows when traffic is high, see [`FeatureProfile::update_sketch`]).
    #[inline]
    pub fn update_counts(&mut self, value: f64) {
        self.rows += 1;
        if self.counted_non_finite(value) {
            return;
        }
        self.add_finite(value);
        let n = self.finite_count() as f64;
        let delta = value - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (value - self.mean);
    }

    /// The extremes, the sum and the histogram of a finite value (the moments are the caller's).
    #[inline]
    fn add_finite(&mut self, value: f64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.histogram.update(value);
    }

    /// [`FeatureProfile::update_counts`] for every value of a run (a batch's column): the same
    /// counts, extremes, sum and histogram, with the run's moments summed about its first value
    /// and merged once (Chan et al.), so that no value pays Welford's division. The data plane's
    /// profiler adds a batch's rows this way.
    pub fn update_counts_all(&mut self, values: impl IntoIterator<Item = f64>) {
        let before = self.finite_count();
        // Running values in locals, not fields: the histogram's counts are written through a
        // pointer the compiler cannot tell apart from `self`, so a field would be stored back
        // on every value.
        let (mut rows, mut min, mut max, mut sum) = (0u64, self.min, self.max, self.sum);
        // Sums of deviations from `shift` (the run's first finite value): no cancellation
        // when the values sit far from zero.
        let (mut shift, mut s1, mut s2) = (f64::NAN, 0.0, 0.0);
        for value in values {
            rows += 1;
            if self.counted_non_finite(value) {
                continue;
            }
            if shift.is_nan() {
                shift = value;
            }
            (min, max, sum) = (min.min(value), max.max(value), sum + value);
            self.histogram.update(value);
            let d = value - shift;
            s1 += d;
            s2 += d * d;
        }
        (self.rows, self.min, self.max, self.sum) = (self.rows + rows, min, max, sum);
        let added = (self.finite_count() - before) as f64;
        if added == 0.0 {
            return;
        }
        let (run_mean, run_m2) = (shift + s1 / added, (s2 - s1 * s1 / added).max(0.0));
        if before == 0 {
            (self.mean, self.m2) = (run_mean, run_m2);
        } else {
            let (na, n) = (before as f64, before as f64 + added);
            let delta = run_mean - self.mean;
            self.mean += delta * added / n;
            self.m2 += run_m2 + delta * delta * na * added / n;
        }
    }

    /// Counts a NaN or an infinity and returns true; false for a finite value.
    #[inline]
    fn counted_non_finite(&mut self, value: f64) -> bool {
        if value.is_finite() {
            return false;
        }
        if value.is_nan() {
            self.nan += 1;
        } else if value > 0.0 {
            self.pos_inf += 1;
        } else {
            self.neg_inf += 1;
        }
        true
    }

    /// Adds a value to the KLL quantile sketch alone (NaN and ±inf never enter it). Every
    /// value goes through [`FeatureProfile::update_counts`] too; this may take only a sample
    /// of them, and the sketch then knows its own count (`kll().n()`), which is what the
    /// tests on it (KS, Wasserstein) use as the sample size.
    #[inline]
    pub fn update_sketch(&mut self, value: f64) {
        if value.is_finite()
            && let Ok(item) = KllFloat::<f64>::new(value)
        {
            self.kll.update(item);
        }
    }

    /// Adds every value of a slice.
    pub fn extend(&mut self, values: &[f64]) {
        for &value in values {
            self.update(value);
        }
    }

    /// Adds another profile of the same feature (another window or another gateway's window).
    /// The histograms must share their edges.
    pub fn merge(&mut self, other: &FeatureProfile) -> Result<(), SketchError> {
        // Every check before the first change, so that a refused merge leaves `self` as it was.
        self.histogram.check_same_edges(&other.histogram)?;
        self.kll.merge(&other.kll)?;
        self.histogram.merge(&other.histogram)?;
        let (na, nb) = (self.finite_count() as f64, other.finite_count() as f64);
        if nb > 0.0 {
            // Chan et al.'s pairwise update of mean and M2.
            let n = na + nb;
            let delta = other.mean - self.mean;
            self.mean += delta * nb / n;
            self.m2 += other.m2 + delta * delta * na * nb / n;
        }
        self.rows += other.rows;
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        Ok(())
    }

    /// Rows seen, NaN and inf included.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows that were NaN.
    pub fn nan_count(&self) -> u64 {
        self.nan
    }

    /// Rows that were +inf or -inf.
    pub fn inf_count(&self) -> u64 {
        self.pos_inf + self.neg_inf
    }

    /// Rows with a finite value: those in the histogram and the sketch.
    pub fn finite_count(&self) -> u64 {
        self.rows - self.nan - self.pos_inf - self.neg_inf
    }

    /// Smallest finite value, `None` before the first one.
    pub fn min(&self) -> Option<f64> {
        (self.finite_count() > 0).then_some(self.min)
    }

    /// Largest finite value, `None` before the first one.
    pub fn max(&self) -> Option<f64> {
        (self.finite_count() > 0).then_some(self.max)
    }

    /// Sum of the finite values.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Mean of the finite values, `None` before the first one.
    pub fn mean(&self) -> Option<f64> {
        (self.finite_count() > 0).then_some(self.mean)
    }

    /// Population standard deviation (ddof 0, as `numpy.std`, which Evidently norms by).
    pub fn std(&self) -> Option<f64> {
        let n = self.finite_count();
        (n > 0).then(|| (self.m2.max(0.0) / n as f64).sqrt())
    }

    /// The fixed-bin histogram.
    pub fn histogram(&self) -> &Histogram {
        &self.histogram
    }

    /// The KLL quantile sketch of the finite values.
    pub fn kll(&self) -> &KllSketch<KllFloat<f64>> {
        &self.kll
    }

    /// Approximate quantile at normalized `rank` in [0, 1]; `None` when empty or out of range.
    pub fn quantile(&self, rank: f64) -> Option<f64> {
        match self.kll.quantile(rank, SearchCriteria::Inclusive) {
            Ok(Some(item)) => Some(item.into_inner()),
            _ => None,
        }
    }

    /// Histogram edges at this profile's quantiles `1/bins, …, (bins-1)/bins`, deduplicated:
    /// `bins` equal-mass bins on data like this one (fewer for ties, none when empty).
    pub fn quantile_edges(&self, bins: usize) -> Vec<f64> {
        let mut edges: Vec<f64> = (1..bins).filter_map(|i| self.quantile(i as f64 / bins as f64)).collect();
        edges.dedup();
        edges
    }

    /// Bytes this profile holds: the struct, the histogram's vectors and the sketch's retained
    /// items. Approximate: allocator slack and the sketch's per-level vectors are not counted.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.histogram.heap_bytes() + self.kll.num_retained() * size_of::<KllFloat<f64>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::normal;

    fn rank(p: &FeatureProfile, x: f64) -> f64 {
        KllFloat::<f64>::new(x).ok().and_then(|x| p.kll().rank(&x, SearchCriteria::Inclusive)).unwrap_or(f64::NAN)
    }

    #[test]
    fn nan_and_inf_are_counted_but_never_sketched() -> Result<(), SketchError> {
        let mut p = FeatureProfile::new(vec![0.0], DEFAULT_K)?;
        p.extend(&[1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, f64::NAN]);
        assert_eq!((p.rows(), p.nan_count(), p.inf_count(), p.finite_count()), (6, 2, 2, 2));
        assert_eq!(p.histogram().total(), 2);
        assert_eq!(p.kll().n(), 2);
        assert_eq!((p.min(), p.max(), p.sum(), p.mean()), (Some(-1.0), Some(1.0), 0.0, Some(0.0)));
        Ok(())
    }

    #[test]
    fn runs_added_at_once_give_the_counts_and_moments_of_values_added_one_by_one() -> Result<(), SketchError> {
        // Far from zero against its spread (where a plain sum of squares cancels), with NaN and
        // infinities mixed in, in runs of uneven length (batches), the first a run of NaN alone.
        let mut values = normal(4, 20_000, 1.0e9, 0.5);
        for (i, odd) in [(3, f64::NAN), (70, f64::INFINITY), (71, f64::NEG_INFINITY), (5000, f64::NAN)] {
            values[i] = odd;
        }
        let edges: Vec<f64> = (-20..=20).map(|i| 1.0e9 + f64::from(i) * 0.05).collect();
        let mut one_by_one = FeatureProfile::new(edges.clone(), DEFAULT_K)?;
        let mut in_runs = FeatureProfile::new(edges, DEFAULT_K)?;
        one_by_one.update_counts(f64::NAN);
        in_runs.update_counts_all([f64::NAN]);
        for run in values.chunks(37) {
            run.iter().for_each(|&v| one_by_one.update_counts(v));
            in_runs.update_counts_all(run.iter().copied());
        }
        in_runs.update_counts_all([]);
        let counts = |p: &FeatureProfile| (p.rows(), p.nan_count(), p.inf_count(), p.min(), p.max(), p.sum());
        assert_eq!(counts(&in_runs), counts(&one_by_one));
        assert_eq!(in_runs.histogram(), one_by_one.histogram());
        // The sample's own moments, from deviations about 1e9 (exact to well under 1e-9 here).
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).map(|v| v - 1.0e9).collect();
        let n = finite.len() as f64;
        let exact_mean = finite.iter().sum::<f64>() / n;
        let exact_std = (finite.iter().map(|d| (d - exact_mean).powi(2)).sum::<f64>() / n).sqrt();
        for (how, p) in [("in runs", &in_runs), ("one by one", &one_by_one)] {
            let (mean, std) = (p.mean().unwrap() - 1.0e9, p.std().unwrap());
            // A mean near 1e9 is good to its last bits: an ulp there is 1.2e-7, and each update
            // (of a value, or of a run) may round by half of one.
            assert!((mean - exact_mean).abs() < 1e-5, "{how}: mean {mean} vs {exact_mean}");
            assert!((std - exact_std).abs() < 1e-6 * exact_std, "{how}: std {std} vs {exact_std}");
        }
        Ok(())
    }

    #[test]
    fn an_empty_profile_has_no_extremes_or_moments() -> Result<(), SketchError> {
        let mut p = FeatureProfile::new(vec![], DEFAULT_K)?;
        p.update(f64::NAN);
        assert_eq!((p.min(), p.max(), p.mean(), p.std()), (None, None, None, None));
        assert_eq!(p.quantile(0.5), None);
        assert!(p.quantile_edges(10).is_empty());
        Ok(())
    }

    #[test]
    fn a_constant_reference_gets_a_single_edge() -> Result<(), SketchError> {
        let p = FeatureProfile::reference(&[3.0; 500], 10, DEFAULT_K)?;
        assert_eq!(p.histogram().edges(), &[3.0]);
        assert_eq!(p.histogram().counts(), &[0, 500]);
        assert_eq!(p.std(), Some(0.0));
        Ok(())
    }

    #[test]
    fn reference_edges_split_the_sample_into_equal_bins() -> Result<(), SketchError> {
        let p = FeatureProfile::reference(&normal(1, 10_000, 0.0, 1.0), 10, DEFAULT_K)?;
        assert_eq!(p.histogram().edges().len(), 9);
        for &c in p.histogram().counts() {
            // KLL rank error at k = 200 is 1.33 %, so each decile bin holds 10 % ± ~2.7 %.
            assert!((730..=1270).contains(&c), "bin of {c}");
        }
        Ok(())
    }

    #[test]
    fn merge_equals_the_profile_of_the_concatenated_data() -> Result<(), SketchError> {
        let (a, b) = (normal(2, 30_000, 0.0, 1.0), normal(3, 20_000, 0.5, 2.0));
        let edges = vec![-1.0, 0.0, 1.0];
        let mut merged = FeatureProfile::new(edges.clone(), DEFAULT_K)?;
        merged.extend(&a);
        merged.update(f64::NAN);
        let mut other = FeatureProfile::new(edges.clone(), DEFAULT_K)?;
        other.extend(&b);
        other.update(f64::INFINITY);
        merged.merge(&other)?;

        let mut whole = FeatureProfile::new(edges, DEFAULT_K)?;
        whole.extend(&a);
        whole.extend(&b);
        whole.update(f64::NAN);
        whole.update(f64::INFINITY);

        assert_eq!(merged.rows(), whole.rows());
        assert_eq!((merged.nan_count(), merged.inf_count()), (1, 1));
        assert_eq!(merged.histogram(), whole.histogram());
        assert_eq!((merged.min(), merged.max()), (whole.min(), whole.max()));
        let close = |x: Option<f64>, y: Option<f64>| (x.unwrap_or(0.0) - y.unwrap_or(1.0)).abs() < 1e-9;
        assert!(close(Some(merged.sum()), Some(whole.sum())));
        assert!(close(merged.mean(), whole.mean()));
        assert!(close(merged.std(), whole.std()));
        assert_eq!(merged.kll().n(), whole.kll().n());
        for x in [-2.0, -0.5, 0.0, 0.7, 3.0] {
            let (rm, rw) = (rank(&merged, x), rank(&whole, x));
            // Each sketch is within ~1.33 % of the true rank; allow both errors.
            assert!((rm - rw).abs() < 0.03, "rank({x}): merged {rm}, whole {rw}");
        }
        Ok(())
    }

    #[test]
    fn merge_refuses_a_profile_on_other_edges() -> Result<(), SketchError> {
        let mut a = FeatureProfile::new(vec![0.0], DEFAULT_K)?;
        let b = FeatureProfile::new(vec![1.0], DEFAULT_K)?;
        assert!(matches!(a.merge(&b), Err(SketchError::EdgesMismatch { .. })));
        Ok(())
    }

    #[test]
    fn json_round_trip_keeps_every_field_and_the_sketch() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = FeatureProfile::reference(&normal(4, 5_000, 10.0, 3.0), 10, DEFAULT_K)?;
        p.extend(&[f64::NAN, f64::NEG_INFINITY]);
        let json = serde_json::to_string(&p)?;
        let back: FeatureProfile = serde_json::from_str(&json)?;
        assert_eq!(serde_json::to_string(&back)?, json);
        assert_eq!((back.rows(), back.nan_count(), back.inf_count()), (5_002, 1, 1));
        assert_eq!(back.histogram(), p.histogram());
        assert_eq!((back.min(), back.max(), back.std()), (p.min(), p.max(), p.std()));
        for r in [0.0, 0.1, 0.5, 0.99, 1.0] {
            assert_eq!(back.quantile(r), p.quantile(r));
        }

        let empty = FeatureProfile::new(vec![], DEFAULT_K)?;
        let back: FeatureProfile = serde_json::from_str(&serde_json::to_string(&empty)?)?;
        assert_eq!(back.min(), None);
        Ok(())
    }

    #[test]
    fn a_serialized_profile_whose_counts_disagree_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = FeatureProfile::new(vec![0.0], DEFAULT_K)?;
        p.extend(&[1.0, 2.0]);
        let mut json: serde_json::Value = serde_json::to_value(&p)?;
        json["rows"] = 3.into();
        let err = serde_json::from_value::<FeatureProfile>(json).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("inconsistent")));
        Ok(())
    }

    #[test]
    fn a_window_profile_stays_under_8_kib_after_a_million_values() -> Result<(), SketchError> {
        let mut p = FeatureProfile::new(vec![-1.0, 0.0, 1.0], DEFAULT_K)?;
        p.extend(&normal(5, 1_000_000, 0.0, 1.0));
        assert!(p.memory_bytes() < 8 * 1024, "{} bytes", p.memory_bytes());
        Ok(())
    }
}
