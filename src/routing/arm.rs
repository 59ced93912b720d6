//! One version behind a route, at run time: its sliding window of outcomes
//! (read by the rollout analyzer and the admin API), its in-flight count
//! against the route's limit, and its metric handles. An arm outlives weight
//! changes: a new route table points at the same arm. A rollout's canary arm
//! also feeds every outcome to its sequential tests, and is retired when the
//! rollout rolls it back: the requests still running on it are then rescued
//! on the baseline (see `Gateway::run_canary`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::sprt::Sequential;
use super::window::{Outcome, Window};
use crate::error::{Error, Fault};
use crate::metrics::RouteMetrics;

/// The run-time state of one routed version.
#[derive(Debug)]
pub struct Arm {
    /// Version number.
    pub version: u64,
    /// Outcomes of routed requests.
    pub window: Window,
    /// The canary's sequential tests (a rollout's canary only).
    pub sequential: Option<Sequential>,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the in-flight count last rose from 0.
    busy_since_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last recorded answer.
    last_answer_ms: AtomicU64,
    epoch: Instant,
    metrics: RouteMetrics,
    /// Follows its target's `failed` mark in the route table (`Routes::update`).
    retired: AtomicBool,
    /// Wakes the requests running on the arm when it is retired.
    on_retire: Notify,
}

/// A request admitted to an arm; the count drops when it does.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Arm {
    /// A fresh arm of `model` version `version` whose window spans `span`.
    pub fn new(model: &str, version: u64, span: Duration) -> Arm {
        let epoch = Instant::now();
        Arm {
            version,
            window: Window::new(span, epoch),
            sequential: None,
            in_flight: AtomicU32::new(0),
            busy_since_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            epoch,
            metrics: RouteMetrics::new(model, version),
            retired: AtomicBool::new(false),
            on_retire: Notify::new(),
        }
    }

    /// Retires the arm: its route marked it failed (its rollout rolled it
    /// back). Wakes every request waiting in [`Arm::retired`].
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.on_retire.notify_waiters();
    }

    /// Puts the arm in service: its route does not mark it failed (an
    /// operator promoted the canary, or gave it weight again, after its
    /// rollback). While retired, every request it ran would be rescued on the
    /// baseline at once.
    pub fn reinstate(&self) {
        self.retired.store(false, Ordering::Release);
    }

    /// Completes when the arm is retired (at once if it is already).
    pub async fn retired(&self) {
        let notified = self.on_retire.notified();
        tokio::pin!(notified);
        // Listening before looking: a retirement between the two is not missed.
        notified.as_mut().enable();
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// The same arm, with its outcomes also fed to `sequential`.
    pub fn watched(self, sequential: Option<Sequential>) -> Arm {
        Arm { sequential, ..self }
    }

    /// Requests in flight through the route.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits one request unless `limit` are already in flight. A refusal is
    /// the version's failure (503): a canary too slow to keep up fails its
    /// own requests instead of piling up work beside the stable version.
    pub fn admit(&self, model: &str, limit: Option<u32>) -> Result<InFlight<'_>, Error> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            // A clock read only when the arm turns busy (see `stalled_for`).
            self.busy_since_ms.store(self.millis(Instant::now()), Ordering::Relaxed);
        }
        let guard = InFlight(&self.in_flight);
        match limit {
            Some(limit) if before >= limit => Err(Error::Unavailable(format!(
                "model '{model}' version {} has {limit} requests in flight, its limit on this route",
                self.version
            ))),
            _ => Ok(guard),
        }
    }

    /// Records a routed request's outcome: in the window and the sequential
    /// tests (client mistakes left out) and in the route metrics.
    pub fn record(&self, outcome: Result<(), Fault>, elapsed: Duration) {
        self.record_watched(outcome, elapsed, false);
    }

    /// [`Arm::record`], for a request whose slowness the latency test
    /// already counted when it passed the threshold (`slow_counted`).
    pub fn record_watched(&self, outcome: Result<(), Fault>, elapsed: Duration, slow_counted: bool) {
        self.metrics.duration.record(elapsed.as_secs_f64());
        let outcome = match outcome {
            Ok(()) => {
                self.metrics.success.increment(1);
                Outcome::Success(elapsed)
            }
            Err(Fault::Server) => {
                self.metrics.error.increment(1);
                Outcome::Failure
            }
            Err(Fault::Client) => {
                self.metrics.client_error.increment(1);
                return;
            }
        };
        let now = Instant::now();
        self.last_answer_ms.store(self.millis(now), Ordering::Relaxed);
        self.window.record(now, outcome);
        if let Some(sequential) = &self.sequential {
            sequential.observe(outcome, slow_counted);
        }
    }

    /// Whether some request has been in flight longer than `threshold` with
    /// no answer from this arm meanwhile: the arm has been busy without a
    /// break since the later of when it turned busy and its last answer, so a
    /// request in flight then still is. The rollout uses it to tell a stall
    /// of the whole machine (the baseline's requests are overdue too, though
    /// its window records them only when they end) from a slow canary.
    /// Read by the analyzer only when a test crosses: two loads and a clock read.
    pub fn stalled_for(&self, threshold: Duration) -> bool {
        if self.in_flight() == 0 {
            return false;
        }
        let quiet_since = self.busy_since_ms.load(Ordering::Relaxed).max(self.last_answer_ms.load(Ordering::Relaxed));
        u128::from(self.millis(Instant::now()).saturating_sub(quiet_since)) > threshold.as_millis()
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Publishes the arm's current weight.
    pub fn set_weight(&self, weight: u32) {
        self.metrics.weight.set(f64::from(weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retiring_an_arm_wakes_every_request_waiting_on_it_and_later_ones_at_once_until_it_is_reinstated() {
        let arm = std::sync::Arc::new(Arm::new("m", 2, Duration::from_secs(10)));
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let arm = arm.clone();
                tokio::spawn(async move { arm.retired().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiting.iter().all(|w| !w.is_finished()));
        arm.retire();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), arm.retired()).await.unwrap();
        // Promoted after its rollback: its requests run on it again, unrescued.
        arm.reinstate();
        assert!(tokio::time::timeout(Duration::from_millis(50), arm.retired()).await.is_err());
    }

    #[tokio::test]
    async fn the_in_flight_limit_refuses_and_releases() {
        let arm = Arm::new("m", 2, Duration::from_secs(10));
        let first = arm.admit("m", Some(2)).unwrap();
        let second = arm.admit("m", Some(2)).unwrap();
        let refused = arm.admit("m", Some(2)).unwrap_err();
        assert_eq!(refused.fault(), Fault::Server);
        assert!(refused.message().contains("limit"), "{refused}");
        assert_eq!(arm.in_flight(), 2);
        drop(first);
        let third = arm.admit("m", Some(2)).unwrap();
        drop((second, third));
        assert_eq!(arm.in_flight(), 0);
        assert!(arm.admit("m", None).is_ok());
    }

    #[tokio::test]
    async fn client_mistakes_stay_out_of_the_window() {
        let arm = Arm::new("m", 1, Duration::from_secs(10));
        arm.record(Ok(()), Duration::from_millis(2));
        arm.record(Err(Fault::Server), Duration::from_millis(2));
        arm.record(Err(Fault::Client), Duration::from_millis(2));
        let summary = arm.window.summary(tokio::time::Instant::now());
        assert_eq!((summary.requests, summary.errors), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_arm_is_stalled_while_a_request_is_overdue_and_no_answer_comes() {
        let threshold = Duration::from_millis(40);
        let arm = Arm::new("m", 1, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!arm.stalled_for(threshold), "idle");
        let first = arm.admit("m", None).unwrap();
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(!arm.stalled_for(threshold), "in flight, not yet overdue");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(arm.stalled_for(threshold), "in flight 50 ms with no answer");
        // Busy without a break, but answering: nothing is overdue.
        let second = arm.admit("m", None).unwrap();
        arm.record(Ok(()), Duration::from_millis(50));
        drop(first);
        assert!(!arm.stalled_for(threshold));
        tokio::time::advance(Duration::from_millis(41)).await;
        assert!(arm.stalled_for(threshold), "the second has waited past the threshold since the last answer");
        drop(second);
        assert!(!arm.stalled_for(threshold), "nothing in flight");
    }
}
