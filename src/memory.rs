//! The allocator: mimalloc behind [`Allocator`], the binary's global
//! allocator (src/main.rs), and its housekeeping (issue #15): resident memory
//! follows what the server holds, and goes back to the system once an attack
//! is over. With another global allocator the housekeeping calls only touch
//! mimalloc's own empty state.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc as the global allocator, through its plain `malloc` family
/// wherever the layout asks for no more alignment than every block has.
///
/// Why not `mimalloc::MiMalloc`: it sends every allocation through
/// `mi_malloc_aligned`, even at alignment 1. In mimalloc v3, an aligned
/// request over 1 KiB whose size class is not a power of two is
/// over-allocated and its page marked as holding interior pointers (v2
/// took the plain path for any alignment up to 16): the request path's
/// boxed future (3.7 KB) and hyper's read buffer, every request.
/// `cargo bench --bench allocator`: 64 such blocks at once take 0.8 to
/// 0.95 times as long through the plain path (issue #16). The standard
/// library's `System` allocator makes the same split.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// Every mimalloc block is aligned to at least a word: its size classes are
/// whole words, laid out from word-aligned page starts.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc's plain entry point (`plain`) where every block meets the
/// layout's alignment, its aligned one (`aligned`, given the alignment)
/// otherwise.
#[inline]
fn by_alignment(
    layout: Layout,
    plain: impl FnOnce() -> *mut c_void,
    aligned: impl FnOnce(usize) -> *mut c_void,
) -> *mut u8 {
    if layout.align() <= WORD { plain() } else { aligned(layout.align()) }.cast()
}

#[allow(unsafe_code)] // the global allocator: mimalloc's C API on raw pointers
// SAFETY (every method): the layouts and pointers come from the caller under
// `GlobalAlloc`'s contract; each pointer freed or resized here was returned
// by this allocator, so by mimalloc, whose `mi_free` and `mi_realloc*` take
// any of its blocks whatever call made them. The plain calls are used only
// where `layout.align() <= WORD`, which every block meets.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        let size = layout.size();
        by_alignment(layout, || unsafe { mi_malloc(size) }, |align| unsafe { mi_malloc_aligned(size, align) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        let size = layout.size();
        by_alignment(layout, || unsafe { mi_zalloc(size) }, |align| unsafe { mi_zalloc_aligned(size, align) })
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        let ptr = ptr.cast::<c_void>();
        by_alignment(
            layout,
            || unsafe { mi_realloc(ptr, new_size) },
            |align| unsafe { mi_realloc_aligned(ptr, new_size, align) },
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// `block` is aligned to `align` and its first `len` bytes all hold `byte`.
    #[allow(unsafe_code)] // reads `len` bytes the caller wrote or had zeroed
    fn holds(block: *mut u8, align: usize, len: usize, byte: u8) -> bool {
        // SAFETY: the callers pass a live block of at least `len` initialised bytes.
        (block as usize).is_multiple_of(align) && (0..len).all(|i| unsafe { *block.add(i) } == byte)
    }

    #[test]
    #[allow(unsafe_code)] // drives the allocator through `GlobalAlloc` directly
    fn every_layout_gets_a_block_aligned_as_asked_that_keeps_its_bytes_when_resized() {
        let allocator = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 7, 24, 1000, 1025, 3712, 8192, 9000, 100_000, 1 << 20] {
                let layout = |size| Layout::from_size_align(size, align).expect("a valid layout");
                let (grown, half) = (size * 3 + 5, size.div_ceil(2));
                // SAFETY: every size is over zero; each block is written within
                // its size, resized with its own layout and freed once with
                // the layout it has then.
                unsafe {
                    let block = allocator.alloc(layout(size));
                    assert!(!block.is_null() && holds(block, align, 0, 0), "size {size}, align {align}");
                    block.write_bytes(0xa5, size);
                    let zeroed = allocator.alloc_zeroed(layout(size));
                    assert!(holds(zeroed, align, size, 0), "zeroed: size {size}, align {align}");
                    allocator.dealloc(zeroed, layout(size));
                    let block = allocator.realloc(block, layout(size), grown);
                    assert!(holds(block, align, size, 0xa5), "grown: size {size}, align {align}");
                    let block = allocator.realloc(block, layout(grown), half);
                    assert!(holds(block, align, half, 0xa5), "shrunk: size {size}, align {align}");
                    allocator.dealloc(block, layout(half));
                }
            }
        }
    }
}
