//! Drift profiles and the statistics between them, shared by the gateway (which builds a profile
//! per served version, feature and window), the control plane (which merges windows across
//! gateways and tests them against a reference) and the CLI (which profiles a reference file).
//!
//! Nothing here knows of modelgate: profiles are plain values with serde, and statistics are pure
//! functions of two profiles.
//!
//! - [`histogram`]: [`Histogram`], fixed bins on given edges (the reference's quantiles).
//! - [`numeric`]: [`FeatureProfile`], one numeric feature over one window: counts, NaN/inf,
//!   min/max/sum/std, a histogram and a KLL quantile sketch.
//! - [`categorical`]: [`CategoricalProfile`], bounded frequent items plus an "other" count.
//! - [`stats`]: PSI, Jensen–Shannon, Hellinger, KS (statistic and p-value), normed Wasserstein,
//!   chi-squared, NannyML's adaptive threshold.
//! - [`profile`]: [`Profile`], every feature of a version over one window or a reference, and
//!   [`FeatureSpec`], what a window is profiled on.
//! - [`drift`]: [`Verdict`] per feature under a [`Rule`] (Evidently's `auto` by default), and
//!   [`DatasetDrift`].
//!
//! The sketches are Apache DataSketches' (crate `datasketches`), whose bytes Python's
//! `datasketches` reads and writes: a reference profiled in Python can be tested here.
#![forbid(unsafe_code)]

pub mod categorical;
pub mod drift;
mod error;
pub mod histogram;
pub mod numeric;
pub mod profile;
pub mod stats;
#[doc(hidden)]
pub mod testing;
mod wire;

pub use categorical::CategoricalProfile;
pub use drift::{DatasetDrift, NoVerdict, Rule, Stat, Verdict};
pub use error::SketchError;
pub use histogram::Histogram;
pub use numeric::FeatureProfile;
pub use profile::{FeatureSpec, Profile, Summary};
