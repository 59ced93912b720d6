//! Intra-op threads per instance.
//!
//! `tch::set_num_threads` (ATen's `at::set_num_threads`) looks process-wide
//! but is not quite: with the OpenMP build of libtorch from PyPI it sets the
//! calling thread's OpenMP team size and stores a default that other threads
//! adopt the first time they run a parallel operator. So each instance sets
//! its own count on the thread that runs it, just before running, and only
//! when that thread's count differs: instances of different models keep their
//! own counts, and a thread that warms several models up gets each one's.

use std::cell::Cell;

/// The largest count accepted, as for the gateway's `intra_op_threads`.
pub(crate) const MAX_THREADS: usize = 256;

thread_local! {
    /// The count this thread was last set to; 0 = never set.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The thread count an instance runs with: the configured one, or one per
/// available core for 0 (libtorch's own default, made explicit so it does not
/// depend on which instance happened to set the process default last).
pub(crate) fn resolve(configured: usize) -> Result<usize, String> {
    match configured {
        0 => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)),
        n if n <= MAX_THREADS => Ok(n),
        n => Err(format!("intra_op_thread_count must be between 1 and {MAX_THREADS} (or 0 for one per core), got {n}")),
    }
}

/// Makes the calling thread run parallel operators on `threads` threads.
pub(crate) fn use_on_this_thread(threads: usize) {
    CURRENT.with(|current| {
        if current.get() != threads {
            // Reading first runs ATen's lazy per-thread initialisation, which
            // would otherwise apply the process default over ours later.
            let _ = tch::get_num_threads();
            // `resolve` bounds it to 1..=256, which fits and which ATen accepts.
            tch::set_num_threads(threads as i32);
            current.set(threads);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_keeps_its_own_intra_op_count() {
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let run = |n: usize| {
                let barrier = &barrier;
                s.spawn(move || {
                    use_on_this_thread(n);
                    barrier.wait(); // both have set theirs before either reads
                    tch::get_num_threads()
                })
            };
            let (a, b) = (run(1), run(3));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!((a, b), (1, 3));
    }

    #[test]
    fn zero_means_one_per_core_and_absurd_counts_are_refused() {
        assert!(resolve(0).unwrap() >= 1);
        assert_eq!(resolve(4), Ok(4));
        assert!(resolve(100_000).unwrap_err().contains("between 1 and 256"));
    }
}
