//! Brief, bounded spinning at the two hand-offs of a request between a
//! runtime worker and an instance thread (issue #16).
//!
//! Why: on the virtual machines this gateway is measured on, waking a parked
//! thread on another CPU costs about 27 µs (a futex ping-pong between two
//! CPUs takes 54 µs a round trip, 5.7 µs on one CPU and 0.3 µs when the other
//! side spins). A request crosses two such hand-offs besides the client's
//! own: the worker wakes the instance, and the instance wakes the worker
//! with the answer. A thread that is about to park while the other side is
//! about to hand it work stays awake a little instead:
//! - an instance thread whose queue just emptied polls for the next request
//!   for up to `repository.instance_spin_micros`;
//! - a runtime worker with nothing left to run, while requests are queued or
//!   running at an instance, polls for an answer for up to `server.worker_spin_micros`
//!   before it parks (the runtime's `on_thread_park` hook). An answer sent
//!   while it polls schedules the waiting task without a wake-up, and the
//!   runtime runs it instead of parking.
//!
//! Both spins end at once when there is nothing to wait for, so an idle
//! gateway spins only once after its last request; and one thread at a time
//! spins on each side (one instance per version, one runtime worker), so a
//! gateway with many instances or workers does not burn a core for each.
//! The bounds are `repository.instance_spin_micros` and
//! `server.worker_spin_micros` (0 turns one off).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests queued or running at any instance of any version and not yet
/// answered (the low 32 bits), and answers sent so far (the high 32 bits,
/// wrapping): one atomic add when a request is queued and one when it is
/// answered.
static HANDED: AtomicU64 = AtomicU64::new(0);

/// What an answer adds to [`HANDED`]: one answer more, one request fewer.
const ANSWER: u64 = (1 << 32) - 1;

/// Set while a runtime worker polls for an answer.
static WORKER_POLLING: AtomicBool = AtomicBool::new(false);

/// `server.worker_spin_micros` in nanoseconds, once `serve` has read it; 0
/// until then, and in every other command.
static WORKER_BOUND_NANOS: AtomicU64 = AtomicU64::new(0);

/// Sets how long a parking runtime worker polls for answers (`server.worker_spin_micros`).
pub fn set_worker_bound(bound: Duration) {
    WORKER_BOUND_NANOS.store(bound.as_nanos().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The runtime's `on_thread_park` hook: [`await_answer_before_park`] within
/// the bound [`set_worker_bound`] set.
pub fn on_worker_park() {
    let bound = WORKER_BOUND_NANOS.load(Ordering::Relaxed);
    if bound != 0 {
        await_answer_before_park(Duration::from_nanos(bound));
    }
}

/// Held by a request from the moment it is queued until it is answered (or
/// dropped): while any is held, a parking runtime worker polls for answers.
#[derive(Debug)]
pub struct Unanswered(());

impl Unanswered {
    /// Counts one request more as handed to an instance.
    pub fn count() -> Unanswered {
        HANDED.fetch_add(1, Ordering::Relaxed);
        Unanswered(())
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        // Never borrows from the answers: this request's 1 is in the low bits.
        // Release: a worker that sees the answer count move also sees the answer.
        HANDED.fetch_add(ANSWER, Ordering::Release);
    }
}

/// A runtime worker about to park: while requests are unanswered and no
/// other worker polls, polls until one is answered or `bound` passes.
/// Returns at once otherwise.
pub fn await_answer_before_park(bound: Duration) {
    let handed = HANDED.load(Ordering::Acquire);
    if bound.is_zero() || handed as u32 == 0 || WORKER_POLLING.swap(true, Ordering::Acquire) {
        return;
    }
    poll_until(bound, || HANDED.load(Ordering::Acquire) >> 32 != handed >> 32);
    WORKER_POLLING.store(false, Ordering::Release);
}

/// Polls `done` until it holds (true) or `bound` passes (false).
pub(super) fn poll_until(bound: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        // A few pause instructions between reads: the other side's write
        // arrives within one, and the core's sibling keeps its pipeline.
        for _ in 0..8 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= bound {
            return done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_ends_when_its_condition_holds_or_its_bound_passes() {
        let start = Instant::now();
        assert!(!poll_until(Duration::from_millis(2), || false));
        assert!(start.elapsed() >= Duration::from_millis(2));
        let calls = std::cell::Cell::new(0);
        assert!(poll_until(Duration::MAX, || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        }));
    }
}
