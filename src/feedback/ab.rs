//! A/B results: each arm's metric against the baseline's, with the
//! difference's 95 % interval, and a verdict that may be read at any time.
//!
//! Two intervals are given. `fixed_ci` is the textbook one (two-proportion
//! Wald interval for accuracy, Welch's for means): valid only when read once,
//! at a sample size chosen up front. The verdict never reads it: it reads
//! `sequential_ci`, the always-valid interval of the mixture sequential
//! probability ratio test (mSPRT, Johari, Koomen, Pekelis and Walsh, "Always
//! Valid Inference: Continuous Monitoring of A/B Tests", Operations Research
//! 2022; the test behind Optimizely's Stats Engine). With the difference's
//! estimated variance `v` and a normal mixing distribution of variance `τ²`
//! over the true difference, the interval
//!
//! ```text
//! Δ̂ ± sqrt( v (v + τ²) / τ² · ln( (v + τ²) / (v α²) ) )
//! ```
//!
//! covers the true difference at every sample size at once with probability
//! at least 1 − α (Ville's inequality on the mixture likelihood ratio), so an
//! operator may look after every request and stop at the first verdict
//! without inflating the false-verdict rate past 5 %. The price is width:
//! about 1.5–2.5 times the fixed interval's. `τ` is the route's `min_effect`,
//! the difference worth detecting; the interval is tightest when the
//! estimate's standard error is near it.

use serde::Serialize;

use super::quality::Tally;

/// 1 − the confidence of both intervals.
pub const ALPHA: f64 = 0.05;
/// Samples each arm needs before a verdict: below it the normal approximation
/// both intervals rest on is poor.
pub const MIN_SAMPLES: u64 = 100;

/// Which figure the arms are compared on: the first the baseline has truths for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of labels matched (higher is better).
    Accuracy,
    /// Mean reward (higher is better).
    MeanReward,
    /// Mean absolute error (lower is better).
    Mae,
}

/// The plain reading of an arm against the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The always-valid interval lies wholly on the better side of 0.
    Better,
    /// It lies wholly on the worse side.
    Worse,
    /// It holds 0, or an arm has fewer than [`MIN_SAMPLES`].
    #[serde(rename = "not yet known")]
    NotYetKnown,
}

impl Verdict {
    /// As written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::NotYetKnown => "not yet known",
        }
    }
}

/// Mean, its variance estimate and the sample count of one arm on one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Samples.
    pub n: u64,
    /// The metric.
    pub mean: f64,
    /// Variance of one sample.
    pub variance: f64,
}

impl Estimate {
    /// The estimate of `metric` from a tally; `None` without samples.
    pub fn of(tally: &Tally, metric: Metric) -> Option<Estimate> {
        let (n, sum, squares) = match metric {
            Metric::Accuracy => {
                let n = tally.labelled;
                (n, tally.correct as f64, tally.correct as f64)
            }
            Metric::MeanReward => (tally.rewarded, tally.reward_sum, tally.reward_squares),
            Metric::Mae => {
                let (abs, squared) = tally.errors();
                (tally.valued, abs, squared)
            }
        };
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let mean = sum / nf;
        let variance = match metric {
            // Agresti–Coull's shrunk share: never 0 at p̂ = 0 or 1, where a plug-in
            // variance would claim certainty after a handful of samples.
            Metric::Accuracy => {
                let p = (sum + 2.0) / (nf + 4.0);
                p * (1.0 - p)
            }
            _ if n > 1 => ((squares - nf * mean * mean) / (nf - 1.0)).max(0.0),
            _ => 0.0,
        };
        Some(Estimate { n, mean, variance })
    }
}

/// One arm against the baseline.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    /// Arm − baseline.
    pub difference: f64,
    /// 95 % fixed-horizon interval of the difference (read once only).
    pub fixed_ci: [f64; 2],
    /// 95 % always-valid interval of the difference (the verdict's).
    pub sequential_ci: [f64; 2],
    /// The reading.
    pub verdict: Verdict,
}

/// z for a two-sided 95 % interval.
fn z95() -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(1.0 - ALPHA / 2.0)
}

/// The always-valid half width for a difference of estimated variance `v`,
/// with mixing variance `tau2`.
pub fn sequential_half_width(v: f64, tau2: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    (v * (v + tau2) / tau2 * ((v + tau2) / (v * ALPHA * ALPHA)).ln()).sqrt()
}

/// Compares `arm` with `baseline` on `metric`; `min_effect` is the mixing
/// standard deviation τ of the sequential interval.
pub fn compare(metric: Metric, baseline: &Estimate, arm: &Estimate, min_effect: f64) -> Comparison {
    let difference = arm.mean - baseline.mean;
    let v = baseline.variance / baseline.n as f64 + arm.variance / arm.n as f64;
    let fixed = z95() * v.sqrt();
    let sequential = sequential_half_width(v, min_effect * min_effect);
    let ci = |h: f64| [difference - h, difference + h];
    let sequential_ci = ci(sequential);
    let higher_is_better = metric != Metric::Mae;
    let verdict = if baseline.n < MIN_SAMPLES || arm.n < MIN_SAMPLES || v <= 0.0 {
        Verdict::NotYetKnown
    } else if sequential_ci[0] > 0.0 {
        if higher_is_better { Verdict::Better } else { Verdict::Worse }
    } else if sequential_ci[1] < 0.0 {
        if higher_is_better { Verdict::Worse } else { Verdict::Better }
    } else {
        Verdict::NotYetKnown
    };
    Comparison { difference, fixed_ci: ci(fixed), sequential_ci, verdict }
}

/// The metric a route's arms are compared on: accuracy when the baseline has
/// labels, else mean reward, else mean absolute error.
pub fn metric_of(baseline: &Tally) -> Option<Metric> {
    if baseline.labelled > 0 {
        Some(Metric::Accuracy)
    } else if baseline.rewarded > 0 {
        Some(Metric::MeanReward)
    } else if baseline.valued > 0 {
        Some(Metric::Mae)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::quality::Truth;
    use crate::feedback::summary::Prediction;

    fn accuracy(n: u64, correct: u64) -> Estimate {
        let mut tally = Tally::default();
        for i in 0..n {
            let label = u32::from(i >= correct);
            tally.add(Prediction::Class { class: 0, classes: 2, score: 1.0 }, Truth::Label(label));
        }
        Estimate::of(&tally, Metric::Accuracy).unwrap()
    }

    #[test]
    fn the_fixed_interval_is_the_textbook_two_proportion_interval() {
        let z = z95();
        assert!((z - 1.959_964).abs() < 1e-5, "{z}");
        let (a, b) = (accuracy(1000, 900), accuracy(1000, 870));
        let c = compare(Metric::Accuracy, &a, &b, 0.02);
        assert!((c.difference + 0.03).abs() < 1e-12);
        // Agresti–Coull shares differ from the raw ones by less than 0.001 here.
        let se = (0.9f64 * 0.1 / 1000.0 + 0.87 * 0.13 / 1000.0).sqrt();
        assert!((c.fixed_ci[1] - (-0.03 + z * se)).abs() < 5e-4, "{:?}", c.fixed_ci);
        assert!(c.sequential_ci[1] - c.difference > c.fixed_ci[1] - c.difference, "the sequential interval is wider");
    }

    #[test]
    fn a_clear_difference_is_called_and_a_small_sample_is_not() {
        let worse = compare(Metric::Accuracy, &accuracy(10_000, 9000), &accuracy(10_000, 8700), 0.02);
        assert_eq!(worse.verdict, Verdict::Worse);
        let better = compare(Metric::Accuracy, &accuracy(10_000, 8700), &accuracy(10_000, 9000), 0.02);
        assert_eq!(better.verdict, Verdict::Better);
        let small = compare(Metric::Accuracy, &accuracy(99, 99), &accuracy(99, 0), 0.02);
        assert_eq!(small.verdict, Verdict::NotYetKnown);
        let equal = compare(Metric::Accuracy, &accuracy(10_000, 9000), &accuracy(10_000, 9000), 0.02);
        assert_eq!(equal.verdict, Verdict::NotYetKnown);
    }

    #[test]
    fn lower_error_is_better() {
        let baseline = Estimate { n: 1000, mean: 2.0, variance: 1.0 };
        let arm = Estimate { n: 1000, mean: 1.0, variance: 1.0 };
        assert_eq!(compare(Metric::Mae, &baseline, &arm, 0.1).verdict, Verdict::Better);
        assert_eq!(compare(Metric::MeanReward, &baseline, &arm, 0.1).verdict, Verdict::Worse);
    }

    /// Peeking after every sample of two equal arms: the always-valid
    /// interval calls a difference in at most about α of the runs, where the
    /// fixed interval read the same way calls one in most of them.
    #[test]
    fn peeking_at_equal_arms_rarely_gives_a_false_verdict() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let runs = 200;
        let (mut sequential_false, mut fixed_false) = (0, 0);
        for _ in 0..runs {
            let (mut a, mut b) = ((0u64, 0u64), (0u64, 0u64));
            let (mut seq_called, mut fixed_called) = (false, false);
            for i in 0..4000u64 {
                let arm = if i % 2 == 0 { &mut a } else { &mut b };
                arm.0 += 1;
                arm.1 += u64::from(uniform() < 0.9);
                if i % 10 == 0 && a.0 >= MIN_SAMPLES && b.0 >= MIN_SAMPLES {
                    let est = |(n, c): (u64, u64)| {
                        let p = (c as f64 + 2.0) / (n as f64 + 4.0);
                        Estimate { n, mean: c as f64 / n as f64, variance: p * (1.0 - p) }
                    };
                    let c = compare(Metric::Accuracy, &est(a), &est(b), 0.02);
                    seq_called |= c.verdict != Verdict::NotYetKnown;
                    fixed_called |= c.fixed_ci[0] > 0.0 || c.fixed_ci[1] < 0.0;
                }
            }
            sequential_false += u32::from(seq_called);
            fixed_false += u32::from(fixed_called);
        }
        assert!(sequential_false <= runs * 6 / 100, "{sequential_false} of {runs}");
        assert!(fixed_false > sequential_false * 3, "fixed {fixed_false}, sequential {sequential_false}");
    }
}
