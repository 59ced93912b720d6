//! The models. Each runs its closure once per interleaving loom can tell
//! apart; an assertion that fails in any one of them fails the test, with
//! the interleaving printed.

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use crate::count::ByteCount;
use crate::packed::Packed;
use crate::stats::{ComputeTimes, ModelStats};

/// Two requests of 60 bytes against a limit of 100: whatever the interleaving,
/// never both admitted at once, and nothing held once both are done.
#[test]
fn the_byte_budget_never_admits_past_its_limit() {
    loom::model(|| {
        let budget = Arc::new(ByteCount::new(100));
        // The bytes the admitted requests hold, counted apart from the budget's own count.
        let admitted = Arc::new(AtomicUsize::new(0));
        let request = |budget: Arc<ByteCount>, admitted: Arc<AtomicUsize>| {
            move || {
                if budget.take(60) {
                    let now = admitted.fetch_add(60, Ordering::SeqCst) + 60;
                    assert!(now <= 100, "{now} bytes admitted at once against a limit of 100");
                    admitted.fetch_sub(60, Ordering::SeqCst);
                    budget.give_back(60);
                }
            }
        };
        let other = thread::spawn(request(budget.clone(), admitted.clone()));
        request(budget.clone(), admitted)();
        other.join().expect("the other request's thread");
        assert_eq!(budget.held(), 0, "bytes left held after every request gave its bytes back");
    });
}

/// Two requests of 40 bytes against a limit of 100, both admitted, taking and
/// giving back at the same time: nothing held once both are done.
#[test]
fn the_byte_budget_comes_back_to_zero_when_requests_end_together() {
    loom::model(|| {
        let budget = Arc::new(ByteCount::new(100));
        let request = |budget: Arc<ByteCount>| {
            move || {
                assert!(budget.take(40), "40 + 40 bytes fit in 100");
                budget.give_back(40);
            }
        };
        let other = thread::spawn(request(budget.clone()));
        request(budget.clone())();
        other.join().expect("the other request's thread");
        assert_eq!(budget.held(), 0, "bytes left held after every request gave its bytes back");
    });
}

/// Three requests (70, 50 and 30 bytes) against a limit of 100, none giving
/// back before all have tried: what is admitted fits, and a request is refused
/// only when it does not fit beside the admitted ones. A refused request must
/// never show in the count (an add-then-undo budget refuses the 30 here while
/// only the 70 is held).
#[test]
fn the_byte_budget_refuses_only_what_does_not_fit() {
    loom::model(|| {
        let budget = Arc::new(ByteCount::new(100));
        let try_take = |budget: Arc<ByteCount>, bytes: usize| move || (bytes, budget.take(bytes));
        let first = thread::spawn(try_take(budget.clone(), 70));
        let second = thread::spawn(try_take(budget.clone(), 50));
        let third = try_take(budget.clone(), 30)();
        let outcomes = [first.join().expect("70"), second.join().expect("50"), third];
        let admitted: usize = outcomes.iter().filter(|(_, taken)| *taken).map(|(bytes, _)| bytes).sum();
        assert!(admitted <= 100, "{admitted} bytes admitted against a limit of 100: {outcomes:?}");
        assert_eq!(budget.held(), admitted, "the count is what was admitted: {outcomes:?}");
        // Nothing was given back, so what a refused request saw held was at most `admitted`.
        for (bytes, _) in outcomes.iter().filter(|(_, taken)| !taken) {
            assert!(admitted + bytes > 100, "{bytes} bytes refused although only {admitted} were held: {outcomes:?}");
        }
        for (bytes, _) in outcomes.iter().filter(|(_, taken)| *taken) {
            budget.give_back(*bytes);
        }
        assert_eq!(budget.held(), 0);
    });
}

/// Three requests counted in the same period at once: all three counted.
#[test]
fn a_window_counter_loses_no_count_within_a_period() {
    loom::model(|| {
        let counter = Arc::new(Packed::default());
        let count = |counter: Arc<Packed>| move || counter.add(1);
        let others = [thread::spawn(count(counter.clone())), thread::spawn(count(counter.clone()))];
        count(counter.clone())();
        for other in others {
            other.join().expect("a counting thread");
        }
        assert_eq!(counter.read(1, 10), 3);
    });
}

/// A slot's counter still holding an old period (epoch 1, two counts) when two
/// requests of a new period (epoch 13, the same slot in a ring of 12) count
/// at once: the first to arrive starts the period over, and neither count is
/// lost to the reset, nor is the old period's count carried into the new one
/// (a reader in between sees at most the new period's counts).
#[test]
fn a_window_counter_starting_a_new_period_loses_no_count_to_the_reset() {
    loom::model(|| {
        let counter = Arc::new(Packed::default());
        counter.add(1);
        counter.add(1);
        let count = |counter: Arc<Packed>| move || counter.add(13);
        let others = [thread::spawn(count(counter.clone())), thread::spawn(count(counter.clone()))];
        let seen = counter.read(13, 10);
        assert!(seen <= 2, "{seen} counts seen in a period that has had at most 2");
        for other in others {
            other.join().expect("a counting thread");
        }
        assert_eq!(counter.read(13, 10), 2, "counts of the new period");
        assert_eq!(counter.read(1, 10), 0, "the old period is gone");
    });
}

/// Two instance threads recording executions at once: every execution, row
/// and duration is counted.
///
/// An execution updates fourteen counters, and every interleaving of two of
/// them is more than loom gets through in minutes; a lost update needs only
/// one thread preempted inside another's read-modify-write, so the model is
/// bounded to two preemptions.
#[test]
fn model_statistics_lose_no_execution() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let stats = Arc::new(ModelStats::new(4));
        let times = ComputeTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(1),
        };
        let other = {
            let stats = stats.clone();
            thread::spawn(move || stats.record_execution(2, 3, times))
        };
        stats.record_execution(1, 3, times);
        other.join().expect("the other instance thread");
        assert_eq!(stats.execution_count(), 2);
        assert_eq!(stats.inference_count(), 6);
        // Per request: 3 requests in all; per batch size: both executions were of 3 rows.
        assert_eq!(stats.compute.get().infer, (3, 300));
        let sizes: Vec<(usize, (u64, u64))> =
            stats.batch_stats().map(|(rows, b)| (rows, b.compute.get().infer)).collect();
        assert_eq!(sizes, vec![(3, (2, 200))]);
    });
}
