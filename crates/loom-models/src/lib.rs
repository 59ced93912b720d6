//! loom models of the gateway's lock-free counters.
//!
//! The counters' files are compiled here as they are (`#[path]`), with this
//! crate's `atomic` module standing where the gateway's `crate::atomic` (std's
//! atomics) stands, so loom runs the gateway's own code through every
//! interleaving of its threads, under the C++ memory model. The models (in
//! `models.rs`) check what the code promises: the byte budget never admits
//! past its limit, refuses only what does not fit, and comes back to zero;
//! no count is lost, in the windows' packed counters or the statistics.
//!
//! Built and run only with `--cfg loom`, in its own target folder so that the
//! flag does not rebuild the workspace's artefacts (scripts/test.sh):
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p modelgate-loom-models`.
#![cfg(loom)]

/// loom's atomics, under the name the counters' files import them by.
mod atomic {
    pub use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
}

/// `src/budget/count.rs`: the byte budget's count.
#[path = "../../../src/budget/count.rs"]
pub mod count;

/// `src/routing/window/packed.rs`: one counter of an outcome window's slot.
#[path = "../../../src/routing/window/packed.rs"]
pub mod packed;

/// `src/stats.rs`: a model version's Triton statistics.
#[path = "../../../src/stats.rs"]
pub mod stats;

#[cfg(test)]
mod models;
