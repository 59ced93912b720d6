//! Sliding windows of request outcomes, one per routed version: lock-free
//! counters that every request adds to and the rollout analyzer reads.
//!
//! A window is a ring of time slots. Each counter of a slot packs the slot's
//! epoch (which slot-length period of time it counts) in its high 32 bits and
//! the count in its low 32 bits, so "start a new period" and "count one" are a
//! single compare-and-swap: no request ever adds to a stale period or loses a
//! count to a reset racing with it (`window/packed.rs`, checked by loom).
//! Readers sum the counters whose epoch falls inside the window and ignore
//! the rest.
//!
//! Time comes from `tokio::time::Instant`, so tests drive the windows with
//! paused time.

mod packed;

use std::time::Duration;

use tokio::time::Instant;

use packed::Packed;

/// Slots a window is divided into: the window slides by a tenth of its span.
const SLOTS_PER_SPAN: u32 = 10;
/// Slots kept: two more than a span, so the slots a reader sums are never the
/// ones writers are starting over.
const RING: usize = SLOTS_PER_SPAN as usize + 2;
/// Latency buckets: upper bounds 50 µs × 2^(i/8), up to about 48 s; the last
/// bucket also holds everything slower.
pub const LATENCY_BUCKETS: usize = 160;
const FIRST_BOUND_SECS: f64 = 50e-6;
const BUCKETS_PER_DOUBLING: f64 = 8.0;

/// What one request did, as the rollout analysis sees it. Client mistakes are
/// not recorded at all: they say nothing about the version.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Answered; the latency the client saw.
    Success(Duration),
    /// Failed through the server's fault (model error, queue full, deadline).
    Failure,
}

#[derive(Debug)]
struct Slot {
    // Requests are not counted apart: they are errors plus successes, and
    // one counter fewer is one contended atomic fewer per request.
    errors: Packed,
    latency: Box<[Packed]>,
}

impl Slot {
    fn new() -> Slot {
        Slot { errors: Packed::default(), latency: (0..LATENCY_BUCKETS).map(|_| Packed::default()).collect() }
    }
}

/// Request outcomes over the last `span` of time.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    slot_nanos: u64,
    slots: Box<[Slot]>,
}

/// Totals of a window at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Requests recorded (successes and server-fault failures).
    pub requests: u64,
    /// Server-fault failures.
    pub errors: u64,
    /// Successes per latency bucket.
    latency: Vec<u64>,
}

impl Window {
    /// A window over the last `span` (at least 10 ms), starting empty at `now`.
    pub fn new(span: Duration, now: Instant) -> Window {
        let slot_nanos = (span.as_nanos() / u128::from(SLOTS_PER_SPAN)).clamp(1_000_000, u128::from(u64::MAX)) as u64;
        Window { origin: now, slot_nanos, slots: (0..RING).map(|_| Slot::new()).collect() }
    }

    /// The span the window covers.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.slot_nanos.saturating_mul(u64::from(SLOTS_PER_SPAN)))
    }

    /// The epoch of `now`: 1 for the first slot-length period, never 0 (0 marks
    /// a counter never written). It wraps after 2^32 periods, which only
    /// matters for a reader comparing periods 2^32 apart.
    fn epoch(&self, now: Instant) -> u32 {
        // u64 nanoseconds last 584 years; a u64 division is far cheaper than a u128 one.
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let since = nanos / self.slot_nanos;
        let epoch = (since as u32).wrapping_add(1);
        if epoch == 0 { 1 } else { epoch }
    }

    /// Records one outcome at `now`.
    pub fn record(&self, now: Instant, outcome: Outcome) {
        let epoch = self.epoch(now);
        let slot = &self.slots[epoch as usize % RING];
        match outcome {
            Outcome::Success(latency) => slot.latency[bucket(latency)].add(epoch),
            Outcome::Failure => slot.errors.add(epoch),
        }
    }

    /// The totals of the last span, as of `now`.
    pub fn summary(&self, now: Instant) -> Summary {
        let epoch = self.epoch(now);
        let mut summary = Summary { latency: vec![0; LATENCY_BUCKETS], ..Summary::default() };
        for slot in self.slots.iter() {
            summary.errors += slot.errors.read(epoch, SLOTS_PER_SPAN);
            for (total, bucket) in summary.latency.iter_mut().zip(slot.latency.iter()) {
                *total += bucket.read(epoch, SLOTS_PER_SPAN);
            }
        }
        summary.requests = summary.errors + summary.latency.iter().sum::<u64>();
        summary
    }
}

/// The latency bucket of `latency`.
fn bucket(latency: Duration) -> usize {
    let secs = latency.as_secs_f64();
    if secs <= FIRST_BOUND_SECS {
        return 0;
    }
    let index = ((secs / FIRST_BOUND_SECS).log2() * BUCKETS_PER_DOUBLING).ceil();
    (index as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `index`.
fn upper_bound(index: usize) -> f64 {
    FIRST_BOUND_SECS * (index as f64 / BUCKETS_PER_DOUBLING).exp2()
}

impl Summary {
    /// Failures over requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// Successful requests.
    pub fn successes(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// The latency under which a fraction `q` of the successes fall,
    /// interpolated inside its bucket (buckets are 9 % wide); `None` without
    /// successes.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.successes();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0.0;
        for (index, &count) in self.latency.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let count = count as f64;
            if seen + count >= rank {
                let lower = if index == 0 { 0.0 } else { upper_bound(index - 1) };
                let upper = upper_bound(index);
                let fraction = (rank - seen) / count;
                return Some(Duration::from_secs_f64(lower + (upper - lower) * fraction));
            }
            seen += count;
        }
        Some(Duration::from_secs_f64(upper_bound(LATENCY_BUCKETS - 1)))
    }

    /// The 99th percentile latency of successes.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn counts_requests_and_server_failures() {
        let window = Window::new(Duration::from_secs(10), Instant::now());
        for _ in 0..7 {
            window.record(Instant::now(), Outcome::Success(ms(3)));
        }
        for _ in 0..3 {
            window.record(Instant::now(), Outcome::Failure);
        }
        let summary = window.summary(Instant::now());
        assert_eq!((summary.requests, summary.errors, summary.successes()), (10, 3, 7));
        assert!((summary.error_rate() - 0.3).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_leave_the_window_after_its_span() {
        let window = Window::new(Duration::from_secs(10), Instant::now());
        window.record(Instant::now(), Outcome::Failure);
        tokio::time::advance(Duration::from_secs(5)).await;
        window.record(Instant::now(), Outcome::Success(ms(1)));
        assert_eq!(window.summary(Instant::now()).requests, 2);
        // The first outcome's slot leaves the window 10 s after its period began.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        let summary = window.summary(Instant::now());
        assert_eq!((summary.requests, summary.errors), (1, 0));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(window.summary(Instant::now()), Summary { latency: vec![0; LATENCY_BUCKETS], ..Summary::default() });
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reused_by_a_later_period_starts_from_zero() {
        let window = Window::new(Duration::from_secs(1), Instant::now());
        for _ in 0..5 {
            window.record(Instant::now(), Outcome::Failure);
        }
        // RING slots of 100 ms later the same slot counts a new period.
        tokio::time::advance(Duration::from_millis(100 * RING as u64)).await;
        window.record(Instant::now(), Outcome::Failure);
        let summary = window.summary(Instant::now());
        assert_eq!((summary.requests, summary.errors), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn p99_is_within_a_bucket_of_the_true_value() {
        let window = Window::new(Duration::from_secs(10), Instant::now());
        for i in 0..1000u64 {
            // 990 fast requests (1-2 ms) and 10 slow ones (400 ms).
            let latency = if i % 100 == 0 { ms(400) } else { ms(1) + Duration::from_micros(i) };
            window.record(Instant::now(), Outcome::Success(latency));
        }
        let summary = window.summary(Instant::now());
        let p99 = summary.p99().unwrap();
        // 99 % took at most 2 ms; the estimate may be off by a bucket's width (9 %).
        assert!(p99 <= ms(2) * 109 / 100, "p99 {p99:?}");
        let p999 = summary.quantile(0.999).unwrap();
        assert!(p999 > ms(370) && p999 <= ms(440), "p99.9 {p999:?}");
        assert_eq!(Summary::default().p99(), None);
    }

    #[test]
    fn buckets_grow_by_nine_percent() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(50)), 0);
        assert_eq!(bucket(Duration::from_micros(100)), 8);
        assert_eq!(bucket(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        for index in 1..LATENCY_BUCKETS {
            let ratio = upper_bound(index) / upper_bound(index - 1);
            assert!((ratio - 2f64.powf(1.0 / 8.0)).abs() < 1e-9);
        }
        // A latency lands in the bucket whose bounds hold it.
        for micros in [51, 120, 999, 12_345, 480_000] {
            let d = Duration::from_micros(micros);
            let b = bucket(d);
            assert!(upper_bound(b) >= d.as_secs_f64() && upper_bound(b - 1) < d.as_secs_f64(), "{d:?}");
        }
    }

    #[test]
    fn concurrent_writers_lose_no_count() {
        let window = std::sync::Arc::new(Window::new(Duration::from_secs(3600), Instant::now()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let window = window.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let outcome = if i % 10 == 0 { Outcome::Failure } else { Outcome::Success(ms(1)) };
                        window.record(Instant::now(), outcome);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let summary = window.summary(Instant::now());
        assert_eq!((summary.requests, summary.errors), (40_000, 4_000));
    }
}
