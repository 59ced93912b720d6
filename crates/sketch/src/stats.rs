//! Two-sample statistics between a reference and a current profile.
//!
//! Pure functions on bin counts and quantile sketches; [`crate::drift`] picks one and its
//! threshold. Where a tool people trust defines a statistic, the definition here is that tool's
//! (named at each function), and `load-tests/drift/compare_stats.py` checks the numbers against
//! scipy and numpy.

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Quantile grid per sketch when reading a KLL sketch as a step CDF (see [`StepCdfs`]).
const CDF_GRID: u64 = 4096;

/// Bin proportions with Evidently's floor for empty bins (`get_binned_data(feel_zeroes=True)` in
/// evidently `src/evidently/legacy/calculations/stattests/utils.py`): each side separately, an
/// empty bin gets 0.0001, or the side's smallest non-zero proportion / 10^6 when that is itself
/// ≤ 0.0001. Without a floor PSI is infinite as soon as one bin is empty. NannyML has no PSI, and
/// its JS and Hellinger need no floor.
fn floored_proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    let mut p: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
    let smallest = p.iter().copied().filter(|&x| x > 0.0).fold(f64::INFINITY, f64::min);
    let floor = if smallest <= 1e-4 { smallest / 1e6 } else { 1e-4 };
    for x in &mut p {
        if *x == 0.0 {
            *x = floor;
        }
    }
    p
}

fn proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

/// Population stability index on shared bins: Σ (r − c) · ln(r / c) over floored proportions
/// (Evidently's `psi.py`). `None` when either side is empty or the bins differ in number.
pub fn psi(reference: &[u64], current: &[u64]) -> Option<f64> {
    if !comparable(reference, current) {
        return None;
    }
    let (r, c) = (floored_proportions(reference), floored_proportions(current));
    Some(r.iter().zip(&c).map(|(r, c)| (r - c) * (r / c).ln()).sum())
}

/// Jensen–Shannon distance (natural log, the square root of the divergence), as
/// `scipy.spatial.distance.jensenshannon` with its default base, which Evidently calls.
pub fn jensen_shannon(reference: &[u64], current: &[u64]) -> Option<f64> {
    if !comparable(reference, current) {
        return None;
    }
    let (p, q) = (proportions(reference), proportions(current));
    // x·ln(x/m) with 0·ln 0 = 0; m > 0 wherever x > 0.
    let kl = |x: f64, m: f64| if x > 0.0 { x * (x / m).ln() } else { 0.0 };
    let divergence: f64 = p
        .iter()
        .zip(&q)
        .map(|(&p, &q)| {
            let m = (p + q) / 2.0;
            (kl(p, m) + kl(q, m)) / 2.0
        })
        .sum();
    Some(divergence.max(0.0).sqrt())
}

/// Hellinger distance in [0, 1]: √(Σ (√p − √q)²) / √2, as NannyML's `HellingerDistance`.
pub fn hellinger(reference: &[u64], current: &[u64]) -> Option<f64> {
    if !comparable(reference, current) {
        return None;
    }
    let (p, q) = (proportions(reference), proportions(current));
    let sum: f64 = p.iter().zip(&q).map(|(p, q)| (p.sqrt() - q.sqrt()).powi(2)).sum();
    Some(sum.sqrt() / std::f64::consts::SQRT_2)
}

fn comparable(reference: &[u64], current: &[u64]) -> bool {
    reference.len() == current.len() && reference.iter().any(|&c| c > 0) && current.iter().any(|&c| c > 0)
}

/// Two KLL sketches read as right-continuous step CDFs on a common set of points.
///
/// The points are each sketch's quantiles on a grid of `min(n, 4096)` ranks plus its min and max.
/// Up to 4096 values the grid steps by at most one value's rank, so every retained item is a
/// point and the CDFs are the sketches' own; above, an item the grid skips moves the result by
/// under 1/4096 in rank, far inside KLL's own error (1.33 % at k = 200).
pub struct StepCdfs {
    points: Vec<f64>,
    reference: Vec<f64>,
    current: Vec<f64>,
}

type Kll = KllSketch<KllFloat<f64>>;

impl StepCdfs {
    /// Both CDFs on the union of both sketches' points; `None` when either sketch is empty.
    pub fn new(reference: &Kll, current: &Kll) -> Option<Self> {
        if reference.is_empty() || current.is_empty() {
            return None;
        }
        let (ref_view, cur_view) = (reference.sorted_view(), current.sorted_view());
        let mut points = Vec::new();
        for (view, n) in [(&ref_view, reference.n()), (&cur_view, current.n())] {
            let grid = n.min(CDF_GRID);
            let ranks: Vec<f64> = (0..=grid).map(|i| i as f64 / grid as f64).collect();
            let quantiles = view.quantiles(&ranks, SearchCriteria::Inclusive).ok()??;
            points.extend(quantiles);
        }
        points.sort_unstable();
        points.dedup();
        let at = |view: &datasketches::kll::SortedView<KllFloat<f64>>| -> Option<Vec<f64>> {
            let mut cdf = view.cdf(&points, SearchCriteria::Inclusive).ok()??;
            cdf.pop(); // the trailing 1.0 past the last point
            Some(cdf)
        };
        let (reference, current) = (at(&ref_view)?, at(&cur_view)?);
        let points = points.into_iter().map(KllFloat::into_inner).collect();
        Some(Self { points, reference, current })
    }

    /// Kolmogorov–Smirnov statistic D = sup |F_ref − F_cur|.
    pub fn ks_statistic(&self) -> f64 {
        self.reference.iter().zip(&self.current).map(|(r, c)| (r - c).abs()).fold(0.0, f64::max)
    }

    /// Wasserstein-1 distance ∫ |F_ref − F_cur| dx (scipy's `wasserstein_distance`).
    pub fn wasserstein(&self) -> f64 {
        let mut total = 0.0;
        for i in 0..self.points.len().saturating_sub(1) {
            let width = self.points[i + 1] - self.points[i];
            total += (self.reference[i] - self.current[i]).abs() * width;
        }
        total
    }
}

/// Survival function of the Kolmogorov distribution, P(K > λ).
///
/// Two series, each where it converges in a few terms: for small λ the Jacobi-transformed
/// √(2π)/λ · Σ exp(−(2j−1)²π²/(8λ²)) gives P(K ≤ λ); for large λ the alternating
/// 2 Σ (−1)^(j−1) exp(−2j²λ²) gives P(K > λ) directly without cancellation.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.0 {
        let k = -std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda);
        let cdf: f64 = (1..=20).map(|j: i32| (k * f64::from((2 * j - 1).pow(2))).exp()).sum::<f64>()
            * (2.0 * std::f64::consts::PI).sqrt()
            / lambda;
        (1.0 - cdf).clamp(0.0, 1.0)
    } else {
        let sf: f64 = (1..=100)
            .map(|j: i32| {
                let sign = if j % 2 == 1 { 1.0 } else { -1.0 };
                sign * (-2.0 * f64::from(j * j) * lambda * lambda).exp()
            })
            .sum::<f64>()
            * 2.0;
        sf.clamp(0.0, 1.0)
    }
}

/// Two-sample KS p-value from the asymptotic Kolmogorov distribution with the effective sample
/// size n·m/(n+m). scipy's `ks_2samp` uses the exact distribution up to 10,000 rows; at a
/// 1,000-row window the two differ by well under a percentage point of false-positive rate.
pub fn ks_p_value(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let (n, m) = (n as f64, m as f64);
    let effective = n * m / (n + m);
    kolmogorov_sf(effective.sqrt() * d)
}

/// The KLL's a-priori single-rank error bound (99 % confidence, `normalized_rank_error`) over the
/// standard deviation of its rank estimates, measured: 0.0023–0.0030 for k = 200 at 300 to 20,000
/// items against a bound of 0.0133, and 0.00024 for k = 2,000 against 0.0014.
const RANK_BOUND_PER_SD: f64 = 5.3;

/// The share of the two sketches' combined rank-noise sd taken off a KS statistic measured on
/// sketches before its p-value (see [`ks_sketch_p_value`]).
const KS_NOISE_SHARE: f64 = 0.5;

/// Standard deviation of a KLL sketch's rank estimates: 0 while it holds every item it was given
/// (no compaction yet), else about its a-priori bound / [`RANK_BOUND_PER_SD`]; it hardly depends on
/// the item count once the sketch compacts.
pub fn kll_rank_sd(sketch: &Kll) -> f64 {
    if sketch.is_estimation_mode() { sketch.normalized_rank_error() / RANK_BOUND_PER_SD } else { 0.0 }
}

/// Two-sample KS p-value for a statistic `d` read off two KLL sketches ([`StepCdfs`]), with the
/// sketches' own counts. Each sketch's step CDF carries rank noise, and a supremum over noisy
/// differences only gains from it: exact KS's rejection rates were exceeded by up to 4.9 points
/// (scale ×1.2, 1,000-row windows at k = 200), and the false positives by 1.6–1.8. So the test is
/// run on `d` less half the two sketches' combined noise sd (the statistic reported stays `d`):
/// over 1,000 trials per scenario of `load-tests/drift/compare_stats.py`'s data, that brought
/// every rejection rate within 1.4 points of scipy's exact `ks_2samp` (a whole sd, 2.3 points
/// under it). Exact sketches (no compaction) are tested on `d` as it is.
pub fn ks_sketch_p_value(d: f64, reference: &Kll, current: &Kll) -> f64 {
    let noise = kll_rank_sd(reference).hypot(kll_rank_sd(current));
    ks_p_value((d - KS_NOISE_SHARE * noise).max(0.0), reference.n(), current.n())
}

/// Pearson's chi-squared test of homogeneity on a 2 × K table (reference and current counts per
/// category), as `scipy.stats.chi2_contingency(table, correction=False)` and NannyML's `chi2`.
/// Categories empty on both sides are dropped (their expected count is 0). Returns the
/// statistic, the degrees of freedom and the p-value; `None` when either side is empty.
pub fn chi_squared(table: &[(u64, u64)]) -> Option<(f64, u64, f64)> {
    let table: Vec<(f64, f64)> = table.iter().filter(|(r, c)| r + c > 0).map(|&(r, c)| (r as f64, c as f64)).collect();
    let ref_total: f64 = table.iter().map(|t| t.0).sum();
    let cur_total: f64 = table.iter().map(|t| t.1).sum();
    if ref_total == 0.0 || cur_total == 0.0 {
        return None;
    }
    let total = ref_total + cur_total;
    let mut stat = 0.0;
    for &(r, c) in &table {
        let column = r + c;
        let (er, ec) = (column * ref_total / total, column * cur_total / total);
        stat += (r - er).powi(2) / er + (c - ec).powi(2) / ec;
    }
    let dof = table.len() as u64 - 1;
    if dof == 0 {
        return Some((0.0, 0, 1.0));
    }
    let p = ChiSquared::new(dof as f64).map_or(f64::NAN, |chi| chi.sf(stat));
    Some((stat, dof, p))
}

/// NannyML's standard-deviation threshold (`nannyml/thresholds.py`): the statistic's mean ± 3
/// population standard deviations over reference chunks. Returns `(lower, upper)`; `None` with
/// no chunks.
pub fn adaptive_threshold(chunk_values: &[f64]) -> Option<(f64, f64)> {
    if chunk_values.is_empty() {
        return None;
    }
    let n = chunk_values.len() as f64;
    let mean = chunk_values.iter().sum::<f64>() / n;
    let var = chunk_values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let spread = 3.0 * var.sqrt();
    Some((mean - spread, mean + spread))
}

#[cfg(test)]
mod tests;
