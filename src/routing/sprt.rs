//! Per-request rollback decisions: Wald's sequential probability ratio test
//! (SPRT) on a Bernoulli outcome, updated by every canary answer and read by
//! the rollout analyzer the moment it crosses its bound.
//!
//! Each outcome is a breach (a server fault; an answer slower than the
//! latency SLO) or not. The test weighs two hypotheses about the canary's
//! breach rate `p`: H0, `p = p0`, the rate the SLO allows (`max_error_rate`;
//! 1 % for a p99 latency SLO), against H1, `p = p1`, a clearly breaching
//! rate (`breach_factor × p0`). The log-likelihood ratio of H1 over H0 moves
//! by `ln(p1/p0)` on a breach and by `ln((1-p1)/(1-p0))` (negative) on a good
//! outcome. Wald's bounds: H1 is accepted (roll back) when the ratio reaches
//! `A = ln((1-β)/α)`, H0 when it falls to `B = ln(β/(1-α))`, where `α` is the
//! chance of rolling back a canary that meets its SLO and `β` the chance of
//! passing one that breaches at `p1`.
//!
//! A canary is watched for as long as it takes traffic, so accepting H0 does
//! not end the test: the ratio is held at `B` (a floor) and the test goes on.
//! A bad canary from the start needs `A` of evidence (3 breaches in a row
//! with the defaults); one that turns bad later needs `A - B`. The floor also
//! makes long healthy runs safe: to roll back, the ratio must climb `A - B`
//! from the floor without falling back, which for a rate under `p0` is rarer
//! than `e^-(A-B)` per attempt (see the simulation in the tests).
//!
//! The ratio is fixed point in one `AtomicI64`. Healthy traffic keeps it at
//! the floor, where a good outcome changes nothing and writes nothing, so the
//! common case is one relaxed load.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::overdue::{OverdueWatch, Started};
use super::policy::{Policy, Rates};
use super::window::Outcome;

/// Fixed-point units per nat of log-likelihood ratio.
const SCALE: f64 = (1u64 << 20) as f64;

/// One sequential test of a Bernoulli breach rate.
#[derive(Debug)]
pub struct Sprt {
    /// Ratio added by a breach.
    breach: i64,
    /// Ratio added by a good outcome (≤ 0).
    pass: i64,
    /// `B`: the ratio never goes lower.
    floor: i64,
    /// `A`: the ratio at which the canary is judged in breach.
    bound: i64,
    llr: AtomicI64,
}

impl Sprt {
    /// A test of `allowed` (p0) against `breach_factor × allowed` (p1, at most
    /// halfway from p0 to 1). `None` when every rate is allowed (p0 ≥ 1):
    /// nothing can breach. With `allowed == 0` a single breach decides.
    pub fn new(allowed: f64, rates: Rates) -> Option<Sprt> {
        if allowed.is_nan() || allowed >= 1.0 {
            return None;
        }
        let (alpha, beta) = (rates.false_rollback, rates.missed_breach);
        let bound = ((1.0 - beta) / alpha).ln();
        let floor = (beta / (1.0 - alpha)).ln();
        let p0 = allowed.max(0.0);
        let p1 = (p0 * rates.breach_factor).min((1.0 + p0) / 2.0);
        let (breach, pass) = if p0 == 0.0 {
            // Any breach of a zero-tolerance SLO is proof; good outcomes prove nothing.
            (bound, 0.0)
        } else {
            ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln())
        };
        let fixed = |x: f64| (x * SCALE).round() as i64;
        Some(Sprt {
            breach: fixed(breach).max(1),
            pass: fixed(pass).min(0),
            floor: fixed(floor),
            bound: fixed(bound),
            llr: AtomicI64::new(0),
        })
    }

    /// Adds one outcome. True for the outcome that crosses the bound (once:
    /// the test stays crossed, and ignores outcomes, until [`Sprt::reset`]).
    #[inline]
    pub fn observe(&self, breach: bool) -> bool {
        let step = if breach { self.breach } else { self.pass };
        let mut current = self.llr.load(Ordering::Relaxed);
        loop {
            if current >= self.bound {
                return false;
            }
            let next = current.saturating_add(step).max(self.floor);
            if next == current {
                return false;
            }
            match self.llr.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next >= self.bound,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether the evidence has crossed the bound.
    pub fn crossed(&self) -> bool {
        self.llr.load(Ordering::Relaxed) >= self.bound
    }

    /// Starts over from no evidence either way.
    pub fn reset(&self) {
        self.llr.store(0, Ordering::Relaxed);
    }

    /// The log-likelihood ratio now, in nats.
    pub fn ratio(&self) -> f64 {
        self.llr.load(Ordering::Relaxed) as f64 / SCALE
    }

    /// `A`, in nats.
    pub fn upper(&self) -> f64 {
        self.bound as f64 / SCALE
    }
}

/// Share of answers a p99 latency SLO allows over its threshold.
pub const P99_ALLOWED_SHARE: f64 = 0.01;

/// A canary's sequential tests (server faults; answers over the latency
/// threshold), updated by every outcome the canary's arm records, and the
/// bell that wakes the analyzer when one crosses its bound.
#[derive(Debug)]
pub struct Sequential {
    /// Server faults against `max_error_rate`.
    pub errors: Option<Sprt>,
    /// Answers slower than `max_p99_latency` against the 1 % a p99 allows.
    pub latency: Option<(Duration, Sprt)>,
    /// The canary's running requests, for counting them slow as they pass the latency threshold.
    overdue: Option<OverdueWatch>,
    /// Rung once per crossing; the analyzer waits on it.
    pub crossed: Notify,
}

impl Sequential {
    /// The tests of `policy`; `None` when it turns them off.
    pub fn new(policy: &Policy) -> Option<Sequential> {
        let rates = policy.sequential?;
        let latency = policy.max_p99_latency.and_then(|t| Some((t, Sprt::new(P99_ALLOWED_SHARE, rates)?)));
        Some(Sequential {
            errors: Sprt::new(policy.max_error_rate, rates),
            overdue: latency.as_ref().map(|(threshold, _)| OverdueWatch::new(*threshold)),
            latency,
            crossed: Notify::new(),
        })
    }

    /// Adds one outcome of the canary. `slow_counted`: the request's
    /// slowness was already counted while it ran (see [`LatencyWatch::end`]).
    #[inline]
    pub fn observe(&self, outcome: Outcome, slow_counted: bool) {
        let (failed, latency) = match outcome {
            Outcome::Failure => (true, None),
            Outcome::Success(latency) => (false, Some(latency)),
        };
        let mut crossed = self.errors.as_ref().is_some_and(|t| t.observe(failed));
        if let (Some((threshold, test)), Some(latency), false) = (&self.latency, latency, slow_counted) {
            crossed |= test.observe(latency > *threshold);
        }
        if crossed {
            self.crossed.notify_one();
        }
    }

    /// Adds `n` breaches of the latency threshold by requests still running:
    /// they will answer too late whatever they answer, and the evidence counts now.
    pub fn observe_slow(&self, n: u64) {
        if let Some((_, test)) = &self.latency {
            let mut crossed = false;
            for _ in 0..n {
                crossed |= test.observe(true);
            }
            if crossed {
                self.crossed.notify_one();
            }
        }
    }

    /// Starts watching a canary request that started at `started` for
    /// passing the latency threshold; `None` when latency is not tested.
    #[inline]
    pub fn watch(&self, started: tokio::time::Instant) -> Option<LatencyWatch<'_>> {
        let watch = self.overdue.as_ref()?;
        let started = watch.start(started, |n| self.observe_slow(n));
        Some(LatencyWatch { watch, started: Some(started) })
    }

    /// Counts the watched requests that pass the latency threshold while they
    /// run, a slot of time at a time, for as long as it is polled (the
    /// rollout's analyzer polls it beside its checks). Never ends; pending
    /// at once without a latency test.
    pub async fn sweep_overdue(&self, in_flight: impl Fn() -> u32) {
        let Some(watch) = self.overdue.as_ref() else {
            return std::future::pending().await;
        };
        let mut next = 0;
        loop {
            let wake = watch.next_sweep(tokio::time::Instant::now(), in_flight() == 0);
            tokio::time::sleep_until(wake).await;
            next = watch.sweep(tokio::time::Instant::now(), next, |n| self.observe_slow(n));
        }
    }
}

/// A canary request under watch for passing the latency threshold. Ended
/// with [`LatencyWatch::end`] when it answers; dropped unanswered (the client
/// left), it leaves the watch too, so that a cancelled request is not later
/// counted slow.
#[derive(Debug)]
pub struct LatencyWatch<'a> {
    watch: &'a OverdueWatch,
    started: Option<Started>,
}

impl LatencyWatch<'_> {
    /// Ends the watch; true when the request's slowness was already counted
    /// (pass it to [`Sequential::observe`] as `slow_counted`).
    #[inline]
    pub fn end(mut self) -> bool {
        self.started.take().is_some_and(|started| self.watch.end(started))
    }
}

impl Drop for LatencyWatch<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            self.watch.end(started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Rates = Rates { false_rollback: 0.001, missed_breach: 0.01, breach_factor: 10.0 };

    /// xorshift64*: a seeded, reproducible stream of uniforms in [0, 1).
    struct Seeded(u64);

    impl Seeded {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Outcomes (breach with probability `rate`) until the bound is crossed;
    /// `None` if `limit` outcomes never cross it. Returns (outcomes, breaches).
    fn run_until_crossed(test: &Sprt, rate: f64, limit: u64, rng: &mut Seeded) -> Option<(u64, u64)> {
        let mut breaches = 0;
        for n in 1..=limit {
            let breach = rng.uniform() < rate;
            breaches += u64::from(breach);
            if test.observe(breach) {
                return Some((n, breaches));
            }
        }
        None
    }

    #[test]
    fn the_bounds_are_walds() {
        let test = Sprt::new(0.01, DEFAULTS).unwrap();
        assert!((test.upper() - (0.99f64 / 0.001).ln()).abs() < 1e-5);
        assert!((test.floor as f64 / SCALE - (0.01f64 / 0.999).ln()).abs() < 1e-5);
        assert!((test.breach as f64 / SCALE - 10f64.ln()).abs() < 1e-5);
        assert!((test.pass as f64 / SCALE - (0.9f64 / 0.99).ln()).abs() < 1e-5);
        assert!(Sprt::new(1.0, DEFAULTS).is_none(), "a 100 % error budget cannot be breached");
    }

    #[test]
    fn three_failures_in_a_row_roll_back_a_canary_against_a_one_percent_slo() {
        let test = Sprt::new(0.01, DEFAULTS).unwrap();
        assert!(!test.observe(true));
        assert!(!test.observe(true));
        assert!(test.observe(true), "ln(10) × 3 = 6.9 ≥ ln(0.99 / 0.001) = 6.898");
        // Crossed once: later outcomes neither report it again nor undo it.
        assert!(!test.observe(true));
        assert!(!test.observe(false));
        assert!(test.crossed());
        test.reset();
        assert!(!test.crossed());
    }

    #[test]
    fn a_zero_error_budget_rolls_back_at_the_first_failure() {
        let test = Sprt::new(0.0, DEFAULTS).unwrap();
        for _ in 0..1000 {
            assert!(!test.observe(false));
        }
        assert!(test.observe(true));
    }

    #[test]
    fn a_canary_failing_forty_percent_is_rolled_back_after_a_few_failures() {
        let mut rng = Seeded(0x5eed_0001);
        let mut worst = 0;
        for _ in 0..1000 {
            let test = Sprt::new(0.01, DEFAULTS).unwrap();
            let (_, breaches) = run_until_crossed(&test, 0.4, 10_000, &mut rng).expect("a 40 % canary is caught");
            worst = worst.max(breaches);
        }
        // Wald: about 3.2 breaches on average; the worst of 1000 runs stays far under the target of 25.
        assert!(worst <= 10, "worst of 1000 runs: {worst} failures before the rollback");
    }

    #[test]
    fn a_canary_that_turns_bad_after_a_long_healthy_run_is_caught_within_a_few_more_failures() {
        let test = Sprt::new(0.01, DEFAULTS).unwrap();
        for _ in 0..100_000 {
            test.observe(false);
        }
        // From the floor: A - B = 11.5 nats, five failures in a row.
        let fails = (1..=10).find(|_| test.observe(true)).unwrap();
        assert_eq!(fails, 5);
    }

    #[test]
    fn a_slow_canary_is_rolled_back_after_three_slow_answers() {
        // Latency: every answer over the threshold against the 1 % a p99 SLO allows.
        let test = Sprt::new(0.01, DEFAULTS).unwrap();
        assert_eq!((1..=10).find(|_| test.observe(true)), Some(3));
    }

    #[test]
    fn healthy_canaries_are_not_rolled_back_over_a_million_outcomes() {
        // Seeded simulation of long runs: a canary with no breaches, one at half
        // its error budget (0.5 % against 1 %), and latency shares of 0.2 % and
        // 0.5 % over a p99 threshold (a canary slower than its baseline but
        // inside its SLO). Each is 20 runs of a million outcomes (10 minutes
        // at about 1,700 canary requests/s): no rollback in any.
        let mut rng = Seeded(0x5eed_0002);
        for rate in [0.0, 0.002, 0.005] {
            for run in 0..20 {
                let test = Sprt::new(0.01, DEFAULTS).unwrap();
                let crossed = run_until_crossed(&test, rate, 1_000_000, &mut rng);
                assert_eq!(crossed, None, "false rollback at rate {rate}, run {run}");
            }
        }
    }

    #[test]
    fn at_exactly_the_slo_false_rollbacks_stay_rare() {
        // At p = p0 the test is at its least sure. Over 200 runs of 10,000
        // outcomes (100 expected failures each), a handful of false rollbacks
        // at most: the bound is e^-(A-B) ≈ 1e-5 per excursion from the floor.
        let mut rng = Seeded(0x5eed_0003);
        let rolled_back = (0..200)
            .filter(|_| {
                let test = Sprt::new(0.01, DEFAULTS).unwrap();
                run_until_crossed(&test, 0.01, 10_000, &mut rng).is_some()
            })
            .count();
        assert!(rolled_back <= 2, "{rolled_back} of 200 runs at the SLO rolled back");
    }

    #[test]
    fn concurrent_observers_report_the_crossing_exactly_once() {
        let test = std::sync::Arc::new(Sprt::new(0.01, DEFAULTS).unwrap());
        let crossings: usize = (0..4)
            .map(|_| {
                let test = test.clone();
                std::thread::spawn(move || (0..1000).filter(|_| test.observe(true)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(crossings, 1);
    }
}
