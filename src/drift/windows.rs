//! [`Windows`]: the profiler's state, with time passed in (`now_ms`, wall-clock
//! milliseconds since the epoch) so tests drive it without sleeping.
//!
//! Per registered version: the plan in force, the open window (opened by the
//! first batch that fits, so a window without traffic never exists and an
//! empty profile is never shipped), and the closed windows waiting to be
//! drained, at most `keep` of them (the oldest goes first, counted). Windows
//! are aligned to the wall clock (`start_ms` a multiple of the window length)
//! so the control plane can merge the same window from every gateway.
//!
//! Counts, moments, histograms and frequent items take every row. The KLL
//! quantile sketches, most of the profiler's cost (about 70 ns a value), take
//! every row up to `drift.sketch_rows_per_second` per version and a
//! systematic one-in-s sample above it, s from the previous window's rows:
//! at 10,000 rows/s a window's sketch holds 60,000 of its 600,000 rows, far
//! more than KS or Wasserstein need, and the sketch's own count is the sample
//! size the control plane's tests use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use metrics::Counter;
use modelgate_sketch::{FeatureSpec, Profile, Summary};

use super::extract::{Gathered, Mismatch, Scratch, Sketched, gather, profile};
use super::handoff::{DriftBatch, Liveness};
use super::plan::Plan;
use super::schema::Schema;

/// Rows per second and version the quantile sketches take in full (`drift.sketch_rows_per_second`).
pub const DEFAULT_SKETCH_ROWS_PER_SECOND: u64 = 1_000;

/// Route arm of every window until the batch knows which arm it answered as.
pub const DEFAULT_ARM: &str = "stable";

/// One closed window of a version's traffic, ready to ship.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The model.
    pub model: String,
    /// The version.
    pub version: u64,
    /// The route arm (`stable` for now: the batch worker does not know the arm).
    pub arm: String,
    /// Window start, milliseconds since the Unix epoch (a multiple of `seconds` × 1000).
    pub start_ms: i64,
    /// Window length.
    pub seconds: u32,
    /// Rows profiled.
    pub rows: u64,
    /// One summary per profiled feature.
    pub profile: Profile,
    /// The features read from outputs (predictions): a canary's are also tested against
    /// the stable version's.
    pub predictions: std::collections::BTreeSet<String>,
}

impl ClosedWindow {
    /// The window as the sync report carries it.
    pub fn into_report(self) -> modelgate_registry::sync::DriftWindow {
        modelgate_registry::sync::DriftWindow {
            model: self.model,
            version: i64::try_from(self.version).unwrap_or(i64::MAX),
            arm: self.arm,
            start_ms: self.start_ms,
            seconds: self.seconds,
            rows: self.rows,
            profile: self.profile,
            predictions: self.predictions,
        }
    }
}

/// Per-version counters, registered once so recording is an atomic add.
#[derive(Debug, Clone)]
pub struct VersionCounters {
    /// `modelgate_drift_rows_total`.
    pub rows: Counter,
    /// `modelgate_drift_rows_skipped_total`: rows of batches that did not fit the schema.
    pub skipped: Counter,
    /// `modelgate_drift_windows_dropped_total`: closed windows dropped undrained.
    pub windows_dropped: Counter,
}

/// An open window.
#[derive(Debug)]
struct Open {
    start_ms: i64,
    rows: u64,
    /// Its quantile sketches take one row in this many.
    sketch_every: u64,
    plan: Arc<Plan>,
    summaries: Vec<Summary>,
}

/// One registered version.
#[derive(Debug)]
struct Version {
    model: String,
    version: u64,
    schema: Schema,
    /// The plan new windows open on.
    plan: Arc<Plan>,
    open: Option<Open>,
    /// Rows of the last window that closed (0 before the first): what the next window's sample rate follows.
    last_rows: u64,
    closed: VecDeque<ClosedWindow>,
    alive: Weak<Liveness>,
    counters: VersionCounters,
}

/// What a batch did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Its rows were added to the open window.
    Profiled(u64),
    /// It did not fit the schema (the reason); its rows were counted as skipped.
    Skipped(String),
    /// Its version is not registered (any more).
    Unknown,
}

/// Every version's windows.
#[derive(Debug)]
pub struct Windows {
    window_ms: i64,
    keep: usize,
    /// Rows per window the quantile sketches take in full; above it, a sample of about this many.
    sketch_rows: u64,
    next_id: u64,
    versions: HashMap<u64, Version>,
    /// Reference specs by (model, version), remembered for versions registered later.
    references: HashMap<(String, u64), BTreeMap<String, FeatureSpec>>,
    /// Requeued windows of versions no longer registered (unloaded between the
    /// drain and the failed send), at most `keep`.
    orphans: VecDeque<ClosedWindow>,
    scratch: Scratch,
}

impl Windows {
    /// Windows of `window_seconds`, keeping at most `keep` closed ones per version,
    /// sketching every row up to [`DEFAULT_SKETCH_ROWS_PER_SECOND`].
    pub fn new(window_seconds: u32, keep: usize) -> Windows {
        Windows {
            window_ms: i64::from(window_seconds.max(1)) * 1000,
            keep: keep.max(1),
            sketch_rows: DEFAULT_SKETCH_ROWS_PER_SECOND * u64::from(window_seconds.max(1)),
            next_id: 1,
            versions: HashMap::new(),
            references: HashMap::new(),
            orphans: VecDeque::new(),
            scratch: Scratch::default(),
        }
    }

    /// Sketches every row up to `rows_per_second` per version (at least 1), a sample above.
    pub fn with_sketch_rate(mut self, rows_per_second: u64) -> Windows {
        self.sketch_rows = rows_per_second.max(1).saturating_mul(u64::try_from(self.window_ms / 1000).unwrap_or(1));
        self
    }

    /// Window length in seconds.
    pub fn window_seconds(&self) -> u32 {
        u32::try_from(self.window_ms / 1000).unwrap_or(u32::MAX)
    }

    /// Registers a version; returns the id its batches carry. A reloaded
    /// version gets a new id; the old one retires when its tap is dropped.
    pub fn register(
        &mut self,
        model: &str,
        version: u64,
        schema: Schema,
        alive: Weak<Liveness>,
        counters: VersionCounters,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let reference = self.references.get(&(model.to_owned(), version));
        let plan = Arc::new(plan_logged(model, version, &schema, reference));
        self.versions.insert(
            id,
            Version {
                model: model.to_owned(),
                version,
                schema,
                plan,
                open: None,
                last_rows: 0,
                closed: VecDeque::new(),
                alive,
                counters,
            },
        );
        id
    }

    /// Switches a version to the reference's specs (or back to its own kinds
    /// with `None`) from its next window on; remembered for a later registration.
    pub fn set_features(&mut self, model: &str, version: u64, features: Option<BTreeMap<String, FeatureSpec>>) {
        let key = (model.to_owned(), version);
        if self.references.get(&key) == features.as_ref() {
            return;
        }
        match features {
            Some(specs) => {
                self.references.insert(key.clone(), specs);
            }
            None => {
                self.references.remove(&key);
            }
        }
        let reference = self.references.get(&key);
        for v in self.versions.values_mut().filter(|v| v.model == model && v.version == version) {
            v.plan = Arc::new(plan_logged(model, version, &v.schema, reference));
        }
    }

    /// Profiles a batch into its version's window for `now_ms`, closing the
    /// previous window first if its time has passed.
    pub fn record(&mut self, batch: &DriftBatch, now_ms: i64) -> Recorded {
        let mut recorded = Recorded::Unknown;
        self.record_all(std::slice::from_ref(batch), now_ms, |_, outcome| recorded = outcome);
        recorded
    }

    /// Profiles a take of batches, in the order they came, into their
    /// versions' windows for `now_ms`; tells `outcome` what became of each (by
    /// index). The batches of one version that follow each other are profiled
    /// together, one pass per feature.
    pub fn record_all(&mut self, batches: &[DriftBatch], now_ms: i64, mut outcome: impl FnMut(usize, Recorded)) {
        let mut first = 0;
        for run in batches.chunk_by(|a, b| a.registration == b.registration) {
            self.record_run(run, now_ms, |i, r| outcome(first + i, r));
            first += run.len();
        }
    }

    /// [`Windows::record_all`] for batches of one registration.
    fn record_run(&mut self, batches: &[DriftBatch], now_ms: i64, mut outcome: impl FnMut(usize, Recorded)) {
        let (window_ms, keep, sketch_rows) = (self.window_ms, self.keep, self.sketch_rows);
        let Some(v) = self.versions.get_mut(&batches[0].registration) else {
            (0..batches.len()).for_each(|i| outcome(i, Recorded::Unknown));
            return;
        };
        let start_ms = now_ms - now_ms.rem_euclid(window_ms);
        if v.open.as_ref().is_some_and(|open| open.start_ms != start_ms) {
            v.close(window_ms, keep);
        }
        let open = v.open.get_or_insert_with(|| Open {
            start_ms,
            rows: 0,
            // Up to twice the target the sketch takes every row: the sample only starts
            // where it saves at least half the work.
            sketch_every: (v.last_rows / sketch_rows).max(1),
            plan: v.plan.clone(),
            summaries: v.plan.empty_summaries(),
        });
        let scratch = &mut self.scratch;
        scratch.clear();
        let mut profiled = 0;
        let mut flush = |open: &mut Open, scratch: &mut Scratch| {
            let sketched = Sketched::one_in(open.sketch_every, open.rows);
            let rows = profile(&v.schema, &open.plan, &mut open.summaries, batches, sketched, scratch);
            open.rows += rows;
            profiled += rows;
        };
        for (i, batch) in batches.iter().enumerate() {
            let mut gathered = gather(&v.schema, &open.plan, scratch, batch, i);
            if gathered == Ok(Gathered::Apart) {
                flush(open, scratch);
                gathered = gather(&v.schema, &open.plan, scratch, batch, i);
            }
            match gathered {
                Ok(_) => outcome(i, Recorded::Profiled(batch.rows as u64)),
                Err(Mismatch(reason)) => {
                    v.counters.skipped.increment(batch.rows as u64);
                    tracing::debug!(model = %v.model, version = v.version, %reason, "drift: batch skipped");
                    outcome(i, Recorded::Skipped(reason));
                }
            }
        }
        if scratch.rows() > 0 {
            flush(open, scratch);
        }
        v.counters.rows.increment(profiled);
        // A window opened by skipped batches alone stays empty: drop it, nothing to ship.
        if open.rows == 0 {
            v.open = None;
        }
    }

    /// Closes every window whose time has passed, and forgets versions that are
    /// gone and have nothing left to ship.
    pub fn tick(&mut self, now_ms: i64) {
        let (window_ms, keep) = (self.window_ms, self.keep);
        for v in self.versions.values_mut() {
            if v.open.as_ref().is_some_and(|open| open.start_ms + window_ms <= now_ms) {
                v.close(window_ms, keep);
            }
        }
        self.forget_gone();
    }

    /// Drops versions whose tap is gone and that have nothing left to ship.
    fn forget_gone(&mut self) {
        self.versions.retain(|_, v| v.alive.strong_count() > 0 || v.open.is_some() || !v.closed.is_empty());
    }

    /// When the earliest open window ends (for the thread's sleep), if any is open.
    pub fn next_close_ms(&self) -> Option<i64> {
        self.versions.values().filter_map(|v| v.open.as_ref()).map(|open| open.start_ms + self.window_ms).min()
    }

    /// Takes every closed window, oldest first per version.
    pub fn drain_closed(&mut self, now_ms: i64) -> Vec<ClosedWindow> {
        self.tick(now_ms);
        let mut out: Vec<ClosedWindow> = self.versions.values_mut().flat_map(|v| v.closed.drain(..)).collect();
        out.extend(self.orphans.drain(..));
        out.sort_by(|a, b| (a.start_ms, &a.model, a.version).cmp(&(b.start_ms, &b.model, b.version)));
        out
    }

    /// Puts back windows a failed send took, ahead of newer ones, within the
    /// same bound per version (the oldest are dropped first).
    pub fn requeue(&mut self, windows: Vec<ClosedWindow>) {
        let keep = self.keep;
        for window in windows.into_iter().rev() {
            let Some(v) = self.versions.values_mut().find(|v| v.model == window.model && v.version == window.version)
            else {
                if self.orphans.len() < keep {
                    self.orphans.push_front(window);
                }
                continue;
            };
            if v.closed.len() >= keep {
                // What is kept is newer than what comes back: the returning window is the oldest.
                v.counters.windows_dropped.increment(1);
                continue;
            }
            v.closed.push_front(window);
        }
    }

    /// Heap bytes of every open and kept window.
    pub fn memory_bytes(&self) -> usize {
        self.versions
            .values()
            .map(|v| {
                let open: usize = v.open.iter().flat_map(|o| &o.summaries).map(Summary::memory_bytes).sum();
                let closed: usize = v.closed.iter().map(|w| w.profile.memory_bytes()).sum();
                open + closed
            })
            .sum::<usize>()
            + self.orphans.iter().map(|w| w.profile.memory_bytes()).sum::<usize>()
    }
}

impl Version {
    /// Closes the open window into the kept ones.
    fn close(&mut self, window_ms: i64, keep: usize) {
        let Some(open) = self.open.take() else { return };
        self.last_rows = open.rows;
        if open.rows == 0 {
            return;
        }
        let predictions = open
            .plan
            .features
            .iter()
            .filter(|p| matches!(p.feature.source, super::schema::Source::Output(_)))
            .map(|p| p.feature.name.clone())
            .collect();
        let features = open.plan.features.iter().map(|p| p.feature.name.clone()).zip(open.summaries).collect();
        if self.closed.len() >= keep {
            self.closed.pop_front();
            self.counters.windows_dropped.increment(1);
        }
        self.closed.push_back(ClosedWindow {
            model: self.model.clone(),
            version: self.version,
            arm: DEFAULT_ARM.to_owned(),
            start_ms: open.start_ms,
            seconds: u32::try_from(window_ms / 1000).unwrap_or(u32::MAX),
            rows: open.rows,
            profile: Profile { features },
            predictions,
        });
    }
}

/// Plans a version and logs, once per plan, the reference features left out.
fn plan_logged(model: &str, version: u64, schema: &Schema, reference: Option<&BTreeMap<String, FeatureSpec>>) -> Plan {
    let plan = Plan::new(schema, reference);
    if !plan.ignored.is_empty() {
        let sample: Vec<String> = plan.ignored.iter().take(5).map(|(name, why)| format!("{name} ({why})")).collect();
        tracing::warn!(
            model,
            version,
            ignored = plan.ignored.len(),
            first = %sample.join(", "),
            "drift reference features not profiled"
        );
    }
    plan
}

#[cfg(test)]
#[path = "windows/tests.rs"]
mod tests;
