//! A fast per-thread random number for weighted picks and shadow sampling: a
//! leaf that the route table and the shadow both use.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static RNG: Cell<u64> = Cell::new(std::hash::RandomState::new().build_hasher().finish() | 1);
}

/// A fast per-thread random number (SplitMix64): weighted picks and shadow
/// sampling need uniformity, not secrecy.
#[inline]
pub fn next_random() -> u64 {
    RNG.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}
