//! The queue of one model version and the rule that forms batches from it.
//!
//! A plain struct with no channels or clocks inside: the caller passes `now`,
//! so every batching decision is unit-tested directly. The instance threads
//! in `worker.rs` call [`BatchQueue::next_batch`] only when they are free to
//! run a batch, so requests that arrive while the model runs join the next
//! batch (that is what makes batching happen with a queue delay of zero).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the queue needs to know about a waiting request.
pub trait Queued {
    /// Rows the request adds to a batch.
    fn rows(&self) -> usize;
    /// When it entered the queue.
    fn enqueued(&self) -> Instant;
    /// When it stops being worth running.
    fn deadline(&self) -> Option<Instant>;
    /// The client has gone.
    fn is_cancelled(&self) -> bool;
    /// Whether it may share a batch with `other` (same non-batch shapes).
    fn batches_with(&self, other: &Self) -> bool;
}

/// How a model version forms batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch in rows. With `combine` off, each request runs alone.
    pub max_batch_size: usize,
    /// Put several requests in one batch (Triton's `dynamic_batching`).
    pub combine: bool,
    /// Batch sizes worth dispatching at once, largest first.
    pub preferred: Vec<usize>,
    /// Longest the oldest request waits for the batch to fill.
    pub max_delay: Duration,
    /// Requests allowed to wait; one more is refused.
    pub max_queue_size: usize,
}

/// Why a batch was closed (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// It reached `max_batch_size`.
    Full,
    /// It reached a preferred size.
    Preferred,
    /// The oldest request waited `max_delay` (or there is no delay).
    Delay,
    /// A member's deadline came before the delay ran out.
    Deadline,
    /// Requests run one at a time for this model.
    Single,
}

impl Closed {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Closed; 5] = [Closed::Full, Closed::Preferred, Closed::Delay, Closed::Deadline, Closed::Single];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Full => "full",
            Closed::Preferred => "preferred",
            Closed::Delay => "delay",
            Closed::Deadline => "deadline",
            Closed::Single => "single",
        }
    }
}

/// Why a request left the queue without running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Its deadline passed while it waited.
    Expired,
    /// Its client went away.
    Cancelled,
}

/// What a free instance should do next.
#[derive(Debug)]
pub enum Decision<T> {
    /// Run this batch.
    Run(Vec<T>, Closed),
    /// Nothing to run before this instant, unless a request arrives.
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// Requests waiting for one model version.
#[derive(Debug)]
pub struct BatchQueue<T> {
    entries: VecDeque<T>,
    policy: BatchPolicy,
}

/// How far past the head a batch may reach for compatible requests: bounds the
/// work under the lock when shapes are mixed.
const SCAN_FACTOR: usize = 4;

impl<T: Queued> BatchQueue<T> {
    /// An empty queue.
    pub fn new(policy: BatchPolicy) -> BatchQueue<T> {
        BatchQueue { entries: VecDeque::new(), policy }
    }

    /// Requests waiting (cancelled ones included until they are swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The policy.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Adds a request, or hands it back when the queue is full. Before refusing,
    /// requests whose clients left or whose deadline passed are swept out, so a
    /// disconnect frees its slot at once.
    pub fn push(&mut self, item: T, now: Instant, dropped: &mut Vec<(T, Dropped)>) -> Result<(), T> {
        if self.entries.len() >= self.policy.max_queue_size {
            self.sweep(now, dropped);
            if self.entries.len() >= self.policy.max_queue_size {
                return Err(item);
            }
        }
        self.entries.push_back(item);
        Ok(())
    }

    /// Removes every cancelled or expired request.
    pub fn sweep(&mut self, now: Instant, dropped: &mut Vec<(T, Dropped)>) {
        let before = std::mem::take(&mut self.entries);
        for item in before {
            match drop_reason(&item, now) {
                Some(reason) => dropped.push((item, reason)),
                None => self.entries.push_back(item),
            }
        }
    }

    /// Decides what a free instance runs at `now`. Requests found cancelled or
    /// expired on the way are moved to `dropped` for the caller to answer.
    pub fn next_batch(&mut self, now: Instant, dropped: &mut Vec<(T, Dropped)>) -> Decision<T> {
        while let Some(head) = self.entries.front() {
            match drop_reason(head, now) {
                Some(reason) => {
                    let item = self.entries.pop_front().expect("front exists");
                    dropped.push((item, reason));
                }
                None => break,
            }
        }
        let Some(head) = self.entries.front() else {
            return Decision::Idle;
        };
        if !self.policy.combine {
            let item = self.entries.pop_front().expect("front exists");
            return Decision::Run(vec![item], Closed::Single);
        }

        // Pick the head and the compatible requests behind it, in arrival order.
        let max = self.policy.max_batch_size.max(1);
        let scan = self.entries.len().min(max.saturating_mul(SCAN_FACTOR).max(64));
        let mut chosen = vec![0usize];
        let mut rows = head.rows();
        let mut earliest_deadline = head.deadline();
        for i in 1..scan {
            if rows >= max {
                break;
            }
            let item = &self.entries[i];
            if drop_reason(item, now).is_some() || !item.batches_with(head) || rows + item.rows() > max {
                continue;
            }
            rows += item.rows();
            earliest_deadline = min_option(earliest_deadline, item.deadline());
            chosen.push(i);
        }

        if rows >= max {
            return Decision::Run(self.take(&chosen), Closed::Full);
        }
        if let Some(cut) = self.preferred_cut(&chosen) {
            return Decision::Run(self.take(&chosen[..cut]), Closed::Preferred);
        }
        let delay_end = head.enqueued() + self.policy.max_delay;
        if now >= delay_end {
            return Decision::Run(self.take(&chosen), Closed::Delay);
        }
        match earliest_deadline {
            // Waiting longer would only make a member miss its deadline.
            Some(deadline) if deadline <= delay_end => {
                if now >= deadline {
                    Decision::Run(self.take(&chosen), Closed::Deadline)
                } else {
                    Decision::WaitUntil(deadline)
                }
            }
            _ => Decision::WaitUntil(delay_end),
        }
    }

    /// The length of the longest prefix of `chosen` whose rows equal a
    /// preferred batch size, largest preferred size first.
    fn preferred_cut(&self, chosen: &[usize]) -> Option<usize> {
        if self.policy.preferred.is_empty() {
            return None;
        }
        let mut prefix_rows = Vec::with_capacity(chosen.len());
        let mut total = 0;
        for &i in chosen {
            total += self.entries[i].rows();
            prefix_rows.push(total);
        }
        self.policy.preferred.iter().find_map(|&p| prefix_rows.iter().position(|&r| r == p).map(|pos| pos + 1))
    }

    /// Removes the entries at `indices` (ascending) and returns them in order.
    fn take(&mut self, indices: &[usize]) -> Vec<T> {
        let Some(&last) = indices.last() else {
            return Vec::new();
        };
        let mut taken = Vec::with_capacity(indices.len());
        // Empty, so never allocated, for the usual batch: every entry up to the last taken.
        let mut kept = Vec::new();
        let mut next = indices.iter().peekable();
        for (i, item) in self.entries.drain(..=last).enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                taken.push(item);
            } else {
                kept.push(item);
            }
        }
        for item in kept.into_iter().rev() {
            self.entries.push_front(item);
        }
        taken
    }

    /// Empties the queue (shutdown), handing every request back.
    pub fn drain(&mut self) -> Vec<T> {
        self.entries.drain(..).collect()
    }
}

fn drop_reason<T: Queued>(item: &T, now: Instant) -> Option<Dropped> {
    if item.is_cancelled() {
        Some(Dropped::Cancelled)
    } else if item.deadline().is_some_and(|d| d <= now) {
        Some(Dropped::Expired)
    } else {
        None
    }
}

fn min_option(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Item {
        id: u32,
        rows: usize,
        width: i64,
        at: Instant,
        deadline: Option<Instant>,
        cancelled: bool,
    }

    impl Queued for Item {
        fn rows(&self) -> usize {
            self.rows
        }
        fn enqueued(&self) -> Instant {
            self.at
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled
        }
        fn batches_with(&self, other: &Self) -> bool {
            self.width == other.width
        }
    }

    fn policy(max: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            combine: true,
            preferred: vec![],
            max_delay: Duration::from_micros(delay_us),
            max_queue_size: 100,
        }
    }

    struct Fixture {
        queue: BatchQueue<Item>,
        t0: Instant,
        dropped: Vec<(Item, Dropped)>,
    }

    impl Fixture {
        fn new(policy: BatchPolicy) -> Fixture {
            Fixture { queue: BatchQueue::new(policy), t0: Instant::now(), dropped: vec![] }
        }
        fn at(&self, us: u64) -> Instant {
            self.t0 + Duration::from_micros(us)
        }
        fn push(&mut self, id: u32, rows: usize, width: i64, at_us: u64) {
            let item = Item { id, rows, width, at: self.at(at_us), deadline: None, cancelled: false };
            self.queue.push(item, self.at(at_us), &mut self.dropped).unwrap();
        }
        fn next(&mut self, now_us: u64) -> Decision<Item> {
            let now = self.at(now_us);
            self.queue.next_batch(now, &mut self.dropped)
        }
    }

    fn ids(decision: Decision<Item>) -> (Vec<u32>, Closed) {
        match decision {
            Decision::Run(items, why) => (items.iter().map(|i| i.id).collect(), why),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn with_no_delay_a_free_instance_takes_everything_compatible_at_once() {
        let mut f = Fixture::new(policy(8, 0));
        f.push(1, 1, 4, 0);
        f.push(2, 2, 4, 0);
        f.push(3, 1, 4, 0);
        assert_eq!(ids(f.next(0)), (vec![1, 2, 3], Closed::Delay));
        assert!(matches!(f.next(0), Decision::Idle));
    }

    #[test]
    fn a_batch_never_exceeds_max_batch_size_and_keeps_arrival_order() {
        let mut f = Fixture::new(policy(4, 0));
        for id in 1..=6 {
            f.push(id, 1, 4, 0);
        }
        assert_eq!(ids(f.next(0)), (vec![1, 2, 3, 4], Closed::Full));
        assert_eq!(ids(f.next(0)), (vec![5, 6], Closed::Delay));
    }

    #[test]
    fn requests_with_other_shapes_wait_for_their_own_batch() {
        let mut f = Fixture::new(policy(8, 0));
        f.push(1, 1, 4, 0);
        f.push(2, 1, 5, 0);
        f.push(3, 1, 4, 0);
        assert_eq!(ids(f.next(0)), (vec![1, 3], Closed::Delay));
        assert_eq!(ids(f.next(0)), (vec![2], Closed::Delay));
    }

    #[test]
    fn a_request_that_would_overflow_the_batch_is_left_for_the_next() {
        let mut f = Fixture::new(policy(4, 0));
        f.push(1, 3, 4, 0);
        f.push(2, 2, 4, 0);
        f.push(3, 1, 4, 0);
        assert_eq!(ids(f.next(0)), (vec![1, 3], Closed::Full));
        assert_eq!(ids(f.next(0)), (vec![2], Closed::Delay));
    }

    #[test]
    fn with_a_delay_the_batch_waits_for_the_oldest_request_s_deadline() {
        let mut f = Fixture::new(policy(8, 100));
        f.push(1, 1, 4, 0);
        match f.next(10) {
            Decision::WaitUntil(t) => assert_eq!(t, f.at(100)),
            other => panic!("{other:?}"),
        }
        f.push(2, 1, 4, 50);
        assert!(matches!(f.next(60), Decision::WaitUntil(_)));
        assert_eq!(ids(f.next(100)), (vec![1, 2], Closed::Delay));
    }

    #[test]
    fn a_full_batch_does_not_wait_for_the_delay() {
        let mut f = Fixture::new(policy(2, 1_000_000));
        f.push(1, 1, 4, 0);
        f.push(2, 1, 4, 0);
        assert_eq!(ids(f.next(1)), (vec![1, 2], Closed::Full));
    }

    #[test]
    fn a_preferred_size_dispatches_early_and_cuts_the_batch() {
        let mut p = policy(8, 1_000_000);
        p.preferred = vec![4, 2];
        let mut f = Fixture::new(p);
        f.push(1, 1, 4, 0);
        assert!(matches!(f.next(0), Decision::WaitUntil(_)));
        f.push(2, 1, 4, 0);
        f.push(3, 1, 4, 0);
        // 3 rows: the prefix of 2 rows is a preferred size.
        assert_eq!(ids(f.next(0)), (vec![1, 2], Closed::Preferred));
        f.push(4, 1, 4, 0);
        f.push(5, 1, 4, 0);
        f.push(6, 1, 4, 0);
        assert_eq!(ids(f.next(0)), (vec![3, 4, 5, 6], Closed::Preferred));
    }

    #[test]
    fn expired_and_cancelled_requests_are_dropped_not_run() {
        let mut f = Fixture::new(policy(8, 0));
        let mut expired = Item { id: 1, rows: 1, width: 4, at: f.at(0), deadline: Some(f.at(5)), cancelled: false };
        f.queue.push(expired.clone(), f.at(0), &mut f.dropped).unwrap();
        expired.id = 2;
        expired.deadline = None;
        expired.cancelled = true;
        f.queue.push(expired, f.at(0), &mut f.dropped).unwrap();
        f.push(3, 1, 4, 0);
        assert_eq!(ids(f.next(10)), (vec![3], Closed::Delay));
        let reasons: Vec<(u32, Dropped)> = f.dropped.iter().map(|(i, r)| (i.id, *r)).collect();
        assert_eq!(reasons, vec![(1, Dropped::Expired), (2, Dropped::Cancelled)]);
    }

    #[test]
    fn a_member_deadline_closes_the_batch_before_the_delay() {
        let mut f = Fixture::new(policy(8, 1_000));
        f.push(1, 1, 4, 0);
        let urgent = Item { id: 2, rows: 1, width: 4, at: f.at(0), deadline: Some(f.at(300)), cancelled: false };
        f.queue.push(urgent, f.at(0), &mut f.dropped).unwrap();
        match f.next(10) {
            Decision::WaitUntil(t) => assert_eq!(t, f.at(300)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_queue_refuses_but_a_cancelled_request_frees_its_slot() {
        let mut p = policy(8, 0);
        p.max_queue_size = 2;
        let mut f = Fixture::new(p);
        f.push(1, 1, 4, 0);
        let gone = Item { id: 2, rows: 1, width: 4, at: f.at(0), deadline: None, cancelled: true };
        f.queue.push(gone, f.at(0), &mut f.dropped).unwrap();
        let third = Item { id: 3, rows: 1, width: 4, at: f.at(0), deadline: None, cancelled: false };
        assert!(f.queue.push(third.clone(), f.at(0), &mut f.dropped).is_ok());
        assert_eq!(f.dropped.len(), 1);
        assert!(f.queue.push(third, f.at(0), &mut f.dropped).is_err());
    }

    #[test]
    fn without_dynamic_batching_each_request_runs_alone() {
        let mut p = policy(8, 0);
        p.combine = false;
        let mut f = Fixture::new(p);
        f.push(1, 3, 4, 0);
        f.push(2, 1, 4, 0);
        assert_eq!(ids(f.next(0)), (vec![1], Closed::Single));
        assert_eq!(ids(f.next(0)), (vec![2], Closed::Single));
    }
}
