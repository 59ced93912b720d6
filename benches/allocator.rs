//! The global allocator (issue #16): `memory::Allocator` against what
//! `mimalloc::MiMalloc` did, `mi_malloc_aligned` for every layout, measured
//! in the same run on the sizes the request path allocates at word
//! alignment: a small header (64 B), a JSON body (1,000 B), the boxed
//! request future (3,712 B) and a read buffer past 8 KiB (9,000 B).
//!
//! Each iteration holds 64 blocks of one size at once and frees them, the
//! way 64 connections' requests overlap, so the allocator's page search
//! and its interior-pointer bookkeeping show, not only its free list.
//!
//! Run: `cargo bench --bench allocator`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelgate::memory::Allocator;

const LIVE: usize = 64;

/// What `mimalloc::MiMalloc` does for every allocation.
#[allow(unsafe_code)] // mimalloc's C API: each block is freed once, by `mi_free`
fn always_aligned(layout: Layout, blocks: &mut Vec<*mut c_void>) {
    // SAFETY: every block comes from `mi_malloc_aligned` and is freed once.
    unsafe {
        for _ in 0..LIVE {
            blocks.push(black_box(libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align())));
        }
        for block in blocks.drain(..) {
            libmimalloc_sys::mi_free(block);
        }
    }
}

#[allow(unsafe_code)] // `GlobalAlloc` called directly: each block is freed once with its layout
fn through_allocator(layout: Layout, blocks: &mut Vec<*mut u8>) {
    // SAFETY: every block comes from `Allocator::alloc` with `layout` and is freed once with it.
    unsafe {
        for _ in 0..LIVE {
            blocks.push(black_box(Allocator.alloc(layout)));
        }
        for block in blocks.drain(..) {
            Allocator.dealloc(block, layout);
        }
    }
}

fn allocator(c: &mut Criterion) {
    for size in [64, 1_000, 3_712, 9_000] {
        let layout = Layout::from_size_align(size, 8).expect("a valid layout");
        let mut group = c.benchmark_group(format!("allocator/{LIVE}x{size}B"));
        let mut raw = Vec::with_capacity(LIVE);
        group.bench_function("mi_malloc_aligned", |b| b.iter(|| always_aligned(layout, &mut raw)));
        let mut ours = Vec::with_capacity(LIVE);
        group.bench_function("memory_allocator", |b| b.iter(|| through_allocator(layout, &mut ours)));
        group.finish();
    }
}

criterion_group!(benches, allocator);
criterion_main!(benches);
