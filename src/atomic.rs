//! The atomics of the lock-free counters that loom checks (`crates/loom-models`).
//!
//! Those counters (`budget::count`, `routing::window::packed`, `stats`) name
//! their atomics through this module rather than `std::sync::atomic`. The loom
//! models compile the same files inside a crate whose own `atomic` module
//! re-exports `loom::sync::atomic`, so loom explores the interleavings of the
//! code the gateway runs, while the gateway's build is unchanged: here these
//! are std's atomics and nothing else.

pub use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
