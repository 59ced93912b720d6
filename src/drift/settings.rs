//! `[drift]` in the gateway's config: whether the data plane profiles served
//! traffic for drift checks, and the bounds of what it keeps.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `drift.enabled` | profile every served version's inputs and outputs off the request path | false |
//! | `drift.window_seconds` | window length, aligned to the wall clock (1..=3600) | 60 |
//! | `drift.keep_windows` | closed windows kept per version while the control plane is away; the oldest go first (1..=10000) | 60 |
//! | `drift.queue` | batches waiting for the profiler; past it batches are skipped and counted (1..=65536) | 64 |
//! | `drift.queue_bytes` | tensor bytes those batches hold at most, outside `server.max_inflight_bytes` (the requests have answered); past it batches are skipped and counted (1024..=2^40) | 64 MiB |
//! | `drift.max_rows_per_second` | rows per second and version profiled at most: above it a version offers one batch in n, n from the rows it executed in the last second, so the profiler's CPU stays bounded whatever the traffic (`modelgate_drift_sampled_one_in`) (1..=100000000) | 10000 |
//! | `drift.sketch_rows_per_second` | rows per second and version the quantile (KLL) sketches take in full; above it a systematic sample of about this many, whose size the tests use (1..=10000000) | 1000 |

use serde::Deserialize;

/// The drift profiler's settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// Profile served traffic at all.
    pub enabled: bool,
    /// Window length in seconds.
    pub window_seconds: u32,
    /// Closed windows kept per version until drained.
    pub keep_windows: usize,
    /// Batches queued for the profiler at most.
    pub queue: usize,
    /// Tensor bytes the queued batches hold at most.
    pub queue_bytes: usize,
    /// Rows per second and version the quantile sketches take in full.
    pub sketch_rows_per_second: u64,
    /// Rows per second and version profiled at most; above it, one batch in n.
    pub max_rows_per_second: u64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            enabled: false,
            window_seconds: 60,
            keep_windows: 60,
            queue: 64,
            queue_bytes: 64 << 20,
            sketch_rows_per_second: super::windows::DEFAULT_SKETCH_ROWS_PER_SECOND,
            max_rows_per_second: 10_000,
        }
    }
}

impl DriftSettings {
    /// Checks the ranges the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.window_seconds) {
            return Err(format!("drift.window_seconds must be between 1 and 3600, got {}", self.window_seconds));
        }
        if !(1..=10_000).contains(&self.keep_windows) {
            return Err(format!("drift.keep_windows must be between 1 and 10000, got {}", self.keep_windows));
        }
        if !(1..=65_536).contains(&self.queue) {
            return Err(format!("drift.queue must be between 1 and 65536, got {}", self.queue));
        }
        if !(1024..=1 << 40).contains(&self.queue_bytes) {
            return Err(format!("drift.queue_bytes must be between 1024 and 2^40, got {}", self.queue_bytes));
        }
        if !(1..=10_000_000).contains(&self.sketch_rows_per_second) {
            return Err(format!(
                "drift.sketch_rows_per_second must be between 1 and 10000000, got {}",
                self.sketch_rows_per_second
            ));
        }
        if !(1..=100_000_000).contains(&self.max_rows_per_second) {
            return Err(format!(
                "drift.max_rows_per_second must be between 1 and 100000000, got {}",
                self.max_rows_per_second
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_off_with_minute_windows_and_an_hour_kept() {
        let d = DriftSettings::default();
        assert_eq!((d.enabled, d.window_seconds, d.keep_windows, d.queue), (false, 60, 60, 64));
        assert_eq!(d.queue_bytes, 64 << 20);
        assert!(d.validate().is_ok());
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let bad = DriftSettings { window_seconds: 0, ..DriftSettings::default() };
        assert!(bad.validate().unwrap_err().contains("drift.window_seconds"));
        let bad = DriftSettings { queue: 0, ..DriftSettings::default() };
        assert!(bad.validate().unwrap_err().contains("drift.queue"));
        for bytes in [0, 1023, (1 << 40) + 1] {
            let bad = DriftSettings { queue_bytes: bytes, ..DriftSettings::default() };
            assert!(bad.validate().unwrap_err().contains("drift.queue_bytes"), "{bytes}");
        }
        for rate in [0, 10_000_001] {
            let bad = DriftSettings { sketch_rows_per_second: rate, ..DriftSettings::default() };
            assert!(bad.validate().unwrap_err().contains("drift.sketch_rows_per_second"), "{rate}");
        }
        for rate in [0, 100_000_001] {
            let bad = DriftSettings { max_rows_per_second: rate, ..DriftSettings::default() };
            assert!(bad.validate().unwrap_err().contains("drift.max_rows_per_second"), "{rate}");
        }
    }
}
