//! Counting a canary's requests that pass the latency threshold while they
//! still run, without a timer per request.
//!
//! The latency test counts a request as slow the moment it passes the
//! threshold, not when (or if) it answers: a canary ten times slower than its
//! SLO is judged on its first few overdue requests, not after ten thresholds.
//! A tokio timer per canary request did that, at the price of two locked
//! timer-wheel updates on every request. Here requests are counted in slots
//! of time instead: a request adds itself to the slot of its start, takes
//! itself out when it ends, and one sweeper per canary (the rollout's
//! analyzer task) visits each slot once even its youngest request is overdue
//! and counts what is still in it as slow. The sweeper wakes at the slots'
//! ends, so a request is counted at most a slot after it passes the
//! threshold (plus the timer's millisecond), with a slot a sixteenth of the
//! threshold (at least [`MIN_SLOT`]): 1.25 ms for a 20 ms SLO, where a canary
//! at 1,000 requests/s sends about one more request before the rollback than
//! a timer per request did.
//!
//! Exactly once: a slot is one atomic word holding its lap (which pass of
//! the ring it belongs to), a swept bit and the count of its requests still
//! running. The sweep sets the bit and takes the count in one step; a request
//! that ends takes itself out only if the bit is not set, in one step too, so
//! each request is counted either by the sweep (and its end says so) or by
//! its own answer, never both and never neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The smallest slot: a tighter threshold is swept a little later relative
/// to it, rather than more than a thousand times a second.
pub const MIN_SLOT: Duration = Duration::from_millis(1);
/// Slots a threshold is cut into (when that leaves them at least [`MIN_SLOT`]).
const SLOTS_PER_THRESHOLD: u32 = 16;
/// Slots in the ring: eight thresholds of starts, far more than a sweeper
/// a few slots late needs. A slot reused before it was swept is counted by
/// the request that takes it over.
const RING: u64 = 128;

const SWEPT: u64 = 1 << 31;
const COUNT: u64 = SWEPT - 1;

fn lap_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn count_of(word: u64) -> u64 {
    word & COUNT
}

fn pack(lap: u32, swept: bool, count: u64) -> u64 {
    (u64::from(lap) << 32) | if swept { SWEPT } else { 0 } | (count & COUNT)
}

/// Where a running request is counted.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    index: usize,
    lap: u32,
}

/// A started request's place in the watch: counted in a slot, or already
/// counted as slow when it started (it was overdue by then).
#[derive(Clone, Copy, Debug)]
pub enum Started {
    /// In a slot until it ends or the slot is swept.
    Watched(Ticket),
    /// Counted as slow at its start; its answer must not count it again.
    CountedSlow,
    /// Too old for the ring (started more than a ring ago): judged by its answer alone.
    Unwatched,
}

/// The slots of one canary's running requests.
#[derive(Debug)]
pub struct OverdueWatch {
    epoch: Instant,
    /// The slot's length in nanoseconds (at least [`MIN_SLOT`]'s million).
    slot_nanos: u64,
    /// Slots from a slot's end until even its youngest request is overdue.
    lag: u64,
    slots: Box<[AtomicU64]>,
}

impl OverdueWatch {
    /// A watch of requests against `threshold`.
    pub fn new(threshold: Duration) -> OverdueWatch {
        let slot = (threshold / SLOTS_PER_THRESHOLD).max(MIN_SLOT);
        let lag = u64::try_from(threshold.as_nanos().div_ceil(slot.as_nanos())).unwrap_or(u64::MAX).min(RING / 2);
        OverdueWatch {
            epoch: Instant::now(),
            slot_nanos: u64::try_from(slot.as_nanos()).unwrap_or(u64::MAX),
            lag,
            slots: (0..RING).map(|_| AtomicU64::new(pack(0, false, 0))).collect(),
        }
    }

    /// When the sweeper should next run: at the end of the next slot that
    /// completes an overdue one, or, with nothing in flight (`idle`), a
    /// threshold's worth of slots on (no request starting now can be
    /// overdue sooner).
    pub fn next_sweep(&self, now: Instant, idle: bool) -> Instant {
        let ahead = if idle { self.lag + 1 } else { 1 };
        let tick = self.tick(now).saturating_add(ahead);
        // In nanoseconds: ticks of a millisecond pass u32::MAX after 50 days.
        let nanos = u128::from(self.slot_nanos).saturating_mul(u128::from(tick));
        self.epoch + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn tick(&self, at: Instant) -> u64 {
        // In u64 nanoseconds (584 years): a u128 division costs more than the rest of a start.
        let since = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        since / self.slot_nanos
    }

    fn place(tick: u64) -> (usize, u32) {
        ((tick % RING) as usize, (tick / RING) as u32)
    }

    /// Counts a request that started at `started`. `overdue(n)` is told of
    /// `n` requests found overdue on the way (a slot taken over from a lap
    /// the sweeper never reached, or this request itself).
    pub fn start(&self, started: Instant, mut overdue: impl FnMut(u64)) -> Started {
        let (index, lap) = Self::place(self.tick(started));
        let taken = self.slots[index].fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let seen = lap_of(word);
            if seen == lap {
                // A swept slot takes no more requests.
                (word & SWEPT == 0).then_some(word + 1)
            } else if (seen.wrapping_sub(lap) as i32) > 0 {
                // The slot already holds a later lap.
                None
            } else {
                Some(pack(lap, false, 1))
            }
        });
        match taken {
            Ok(before) => {
                if lap_of(before) != lap && before & SWEPT == 0 && count_of(before) > 0 {
                    // Taken over from a lap the sweeper never reached: those requests are long overdue.
                    overdue(count_of(before));
                }
                Started::Watched(Ticket { index, lap })
            }
            Err(word) if lap_of(word) == lap => {
                // Its slot is swept: it was overdue before it started here.
                overdue(1);
                Started::CountedSlow
            }
            Err(_) => Started::Unwatched,
        }
    }

    /// Takes an ended request out of its slot. True when it was already
    /// counted as slow (by a sweep, a take-over or at its start): its
    /// answer then must not count it again.
    pub fn end(&self, started: Started) -> bool {
        let ticket = match started {
            Started::Watched(ticket) => ticket,
            Started::CountedSlow => return true,
            Started::Unwatched => return false,
        };
        // Still in its slot (same lap, not swept): it takes itself out, and its answer judges it.
        self.slots[ticket.index]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (lap_of(word) == ticket.lap && word & SWEPT == 0).then(|| word - 1)
            })
            .is_err()
    }

    /// Sweeps every slot from tick `from` whose requests are all overdue at
    /// `now`, telling `overdue` how many still run. Returns the tick to sweep
    /// from next time.
    pub fn sweep(&self, now: Instant, from: u64, mut overdue: impl FnMut(u64)) -> u64 {
        let Some(last) = self.tick(now).checked_sub(self.lag + 1) else {
            return from;
        };
        // A sweeper more than a ring late only finds the slots still in the ring.
        let first = from.max(last.saturating_sub(RING - 1));
        for tick in first..=last {
            let (index, lap) = Self::place(tick);
            // Not swept yet, and holding that slot's lap (else no request started there).
            let swept = self.slots[index].fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (lap_of(word) == lap && word & SWEPT == 0).then_some(word | SWEPT)
            });
            if let Ok(before) = swept
                && count_of(before) > 0
            {
                overdue(count_of(before));
            }
        }
        last + 1
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    const THRESHOLD: Duration = Duration::from_millis(80);

    fn counter() -> (Arc<AtomicU64>, impl Fn(u64) + Clone) {
        let total = Arc::new(AtomicU64::new(0));
        let add = {
            let total = total.clone();
            move |n| {
                total.fetch_add(n, Ordering::Relaxed);
            }
        };
        (total, add)
    }

    fn slot_of(watch: &OverdueWatch) -> Duration {
        Duration::from_nanos(watch.slot_nanos)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_running_past_the_threshold_is_counted_once_by_the_sweep() {
        let watch = OverdueWatch::new(THRESHOLD);
        let (slow, add) = counter();
        let started = watch.start(Instant::now(), &add);
        let mut next = 0;
        tokio::time::advance(THRESHOLD - Duration::from_millis(1)).await;
        next = watch.sweep(Instant::now(), next, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 0, "not yet overdue");
        // Within a slot (5 ms) past the threshold, the sweep counts it.
        tokio::time::advance(slot_of(&watch) + Duration::from_millis(2)).await;
        next = watch.sweep(Instant::now(), next, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 1);
        // Sweeping again finds nothing new, and its answer knows it was counted.
        tokio::time::advance(THRESHOLD).await;
        watch.sweep(Instant::now(), next, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 1);
        assert!(watch.end(started), "counted by the sweep: its answer must not count it again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_wakes_at_slot_ends_and_a_threshold_on_when_idle() {
        let watch = OverdueWatch::new(THRESHOLD);
        let slot = slot_of(&watch);
        assert_eq!(slot, THRESHOLD / 16);
        tokio::time::advance(slot * 3 + slot / 2).await;
        let now = Instant::now();
        assert_eq!(watch.next_sweep(now, false), watch.epoch + slot * 4, "the end of the current slot");
        // Idle: the first slot that a request starting now could make overdue.
        assert_eq!(watch.next_sweep(now, true), watch.epoch + slot * (3 + 17));
        // Months on, still a slot ahead (not stuck at a tick that no longer fits 32 bits).
        let later = now + Duration::from_secs(90 * 24 * 3600);
        let next = watch.next_sweep(later, false);
        assert!(next > later && next - later <= slot, "{:?}", next - later);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_answers_in_time_is_never_counted_by_the_sweep() {
        let watch = OverdueWatch::new(THRESHOLD);
        let (slow, add) = counter();
        let early = watch.start(Instant::now(), &add);
        let late = watch.start(Instant::now(), &add);
        tokio::time::advance(THRESHOLD / 2).await;
        assert!(!watch.end(early), "answered before the threshold: judged by its answer");
        tokio::time::advance(THRESHOLD * 2).await;
        watch.sweep(Instant::now(), 0, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 1, "only the one still running");
        assert!(watch.end(late));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_ends_between_the_threshold_and_the_sweep_is_left_to_its_answer() {
        let watch = OverdueWatch::new(THRESHOLD);
        let (slow, add) = counter();
        let started = watch.start(Instant::now(), &add);
        tokio::time::advance(THRESHOLD + Duration::from_millis(1)).await;
        assert!(!watch.end(started), "not swept yet: its answer (over the threshold) counts it");
        tokio::time::advance(THRESHOLD).await;
        watch.sweep(Instant::now(), 0, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 0, "and the sweep does not count it too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reused_a_ring_later_counts_the_requests_the_sweeper_never_reached() {
        let watch = OverdueWatch::new(THRESHOLD);
        let (slow, add) = counter();
        let stuck: Vec<Started> = (0..3).map(|_| watch.start(Instant::now(), &add)).collect();
        // No sweeper ran for a whole ring: the next request in that slot counts the three.
        tokio::time::advance(slot_of(&watch) * RING as u32).await;
        let fresh = watch.start(Instant::now(), &add);
        assert_eq!(slow.load(Ordering::Relaxed), 3);
        assert!(stuck.into_iter().all(|s| watch.end(s)), "each knows it was counted");
        assert!(!watch.end(fresh));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_starts_in_a_swept_slot_is_counted_at_its_start() {
        let watch = OverdueWatch::new(THRESHOLD);
        let (slow, add) = counter();
        let then = Instant::now();
        watch.start(then, &add);
        tokio::time::advance(THRESHOLD * 2).await;
        watch.sweep(Instant::now(), 0, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 1);
        // A retry or hedge whose clock started at `then`: overdue already.
        let late = watch.start(then, &add);
        assert_eq!(slow.load(Ordering::Relaxed), 2);
        assert!(watch.end(late));
    }

    #[test]
    fn answers_racing_the_sweep_are_counted_exactly_once() {
        // Threads start and end requests in one slot while another sweeps it:
        // every request is counted by exactly one side.
        for round in 0..50 {
            let watch = Arc::new(OverdueWatch::new(Duration::from_millis(8)));
            let (swept, add) = counter();
            let start = watch.epoch;
            let tickets: Vec<Started> = (0..4000).map(|_| watch.start(start, &add)).collect();
            let halves: Vec<Vec<Started>> = tickets.chunks(2000).map(<[Started]>::to_vec).collect();
            let enders: Vec<_> = halves
                .into_iter()
                .map(|half| {
                    let watch = watch.clone();
                    std::thread::spawn(move || half.into_iter().filter(|t| watch.end(*t)).count() as u64)
                })
                .collect();
            // Past the threshold and within the ring: the sweep covers the slot.
            watch.sweep(start + Duration::from_millis(20), 0, &add);
            let counted_by_answers_told_swept: u64 = enders.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(
                counted_by_answers_told_swept,
                swept.load(Ordering::Relaxed),
                "round {round}: requests the sweep counted are exactly those whose end was told so"
            );
        }
    }
}
