//! Drift profiling in the data plane: per served version, feature and window,
//! a summary of what the model saw and answered (histogram on the reference's
//! edges, KLL quantiles, frequent items, counts), shipped to the control plane
//! which tests it against the version's reference.
//!
//! Off the request path: an instance thread offers its batch's tensors (shared,
//! not copied) with a `try_send` after the answers are sent; one profiler
//! thread does the rest. Off by default (`[drift] enabled`), and then the
//! worker pays one `Option` check per batch.
//!
//! Costs, measured by `cargo bench --bench drift_handoff -- --quick` (2 shared,
//! loaded cores): the hand-off of a one-request batch 110 ns (a bare
//! `try_send(())` 12 ns, the check with drift off 0.65 ns); batches of 8 or 64
//! requests 0.5–0.75 µs when the profiler keeps up (their assembled buffer
//! moves to the profiler thread). Profiling 61–107 ns per value (row ×
//! feature), mostly the KLL update: 10,000 rows/s × 64 features is 4–7 % of a
//! core. Memory per (numeric feature, version, window) after 600,000 rows:
//! about 5.0 KiB (5.2 KiB on 10 reference bins); a categorical feature is
//! bounded by its 64-entry map whatever the number of distinct values.
//!
//! - [`settings`]: `[drift]` in the gateway's config.
//! - [`schema`]: a version's features, from its config (`INPUT0[3]`, `OUTPUT0.argmax`, …).
//! - [`plan`]: the features profiled and their specs, with or without a reference.
//! - [`handoff`]: [`DriftTap::offer`], the instance thread's side.
//! - [`extract`]: one batch's rows into the window's summaries.
//! - [`windows`]: windows per version, closing on time, kept until drained.
//! - [`profiler`]: the thread, and [`Profiler`], the handle the gateway and the sync follower use.

pub mod extract;
pub mod handoff;
pub mod plan;
pub mod profiler;
pub mod schema;
pub mod settings;
pub mod windows;

pub use handoff::{DriftBatch, DriftTap, SharedTensor};
pub use profiler::Profiler;
pub use schema::{Schema, SchemaError};
pub use settings::DriftSettings;
pub use windows::ClosedWindow;
