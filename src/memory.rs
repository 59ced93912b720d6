//! The allocator's housekeeping (issue #15): resident memory follows what
//! the server holds, and goes back to the system once an attack is over.
//! The binary makes mimalloc the global allocator (src/main.rs); with
//! another one these calls only touch mimalloc's own empty state.

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`, mimalloc.h,
/// the same in v2 and v3; libmimalloc-sys names only the older options).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long freed memory may stay resident before it goes back to the system.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// How often a quiet server hands freed memory back.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Makes the server's resident memory follow what it holds (issue #15: an
/// attack's memory must be gone within 30 s of its end, and the peak stay
/// near `server.max_inflight_bytes`):
/// - freed memory goes back to the system 10 ms after it is freed, not
///   mimalloc v3's default of a second, during which a burst of large
///   requests kept hundreds of MiB of freed buffers resident on top of the
///   live ones (measured: no cost to c=64 throughput; 0 ms cost 10 %);
/// - that purge runs only when the allocator is called, so a server gone
///   quiet after an attack never gave anything back: a thread asks for it
///   every `COLLECT_EVERY`;
/// - built with `no_thp` (Cargo.toml), mimalloc does not ask for transparent
///   huge pages: in 2 MiB pages, memory freed in part is never handed back.
#[allow(unsafe_code)] // a call into the allocator's C API, no pointers
pub fn tune_allocator() -> std::io::Result<()> {
    // SAFETY: sets a plain integer option, read by each later purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    std::thread::Builder::new().name("mg-mem".into()).spawn(|| {
        loop {
            std::thread::sleep(COLLECT_EVERY);
            COLLECT_ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            collect(false);
        }
    })?;
    Ok(())
}

/// Rounds without a park after which a thread's collection is a full one.
const QUIET_ROUNDS: u64 = 4;

/// Rounds of collection asked for so far (one per `COLLECT_EVERY`).
static COLLECT_ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Collects the calling thread's heap (pages its freed objects emptied go back
/// to the allocator's arenas) and purges what any thread freed past the delay.
/// `all` also gives back the empty pages a heap keeps for reuse (mimalloc
/// retains a few per size class): for a thread that has been quiet, when
/// reuse is not coming.
#[allow(unsafe_code)] // a call into the allocator's C API, no pointers
fn collect(all: bool) {
    // SAFETY: safe from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(all) };
}

/// Run by each runtime worker as it parks: once per collection round, it
/// collects its own heap, where a connection's small objects were freed (the
/// collecting thread can only collect its own). One relaxed load per park.
pub fn collect_if_due() {
    thread_local! {
        static DONE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let round = COLLECT_ROUND.load(std::sync::atomic::Ordering::Relaxed);
    let done = DONE.get();
    if done != round {
        DONE.set(round);
        // A second or more since this thread last parked after a round: the
        // server is quiet, and the pages kept for reuse can go too.
        collect(round - done >= QUIET_ROUNDS);
    }
}
