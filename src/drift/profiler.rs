//! [`Profiler`]: the profiler thread and the handle the rest of the gateway
//! uses: versions register at load (and get a [`DriftTap`]), the sync
//! follower drains closed windows, puts back what it failed to send, and
//! hands down the reference's specs.
//!
//! One named thread (`mg-drift`) owns the work: it receives batches, profiles
//! them and closes windows on time, sleeping until the next window end when no
//! traffic comes. The state sits behind one mutex that the thread holds while
//! it profiles a batch; the other callers are the sync follower (a few times
//! a minute) and version loads, never the request path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use modelgate_sketch::FeatureSpec;
use parking_lot::Mutex;

use super::handoff::{DriftBatch, DriftTap, Liveness};
use super::schema::Schema;
use super::settings::DriftSettings;
use super::windows::{ClosedWindow, VersionCounters, Windows};
use crate::metrics;

/// Longest the thread sleeps without traffic or a window to close (it also
/// refreshes the memory gauge then).
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// How often, at most, the thread recomputes the memory gauge (a walk over every summary).
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Batches profiled under one lock, at most, before the lock is let go.
const BATCHES_PER_LOCK: usize = 16;

/// The drift profiler of a gateway. Off unless `[drift] enabled = true`.
#[derive(Debug)]
pub struct Profiler {
    windows: Arc<Mutex<Windows>>,
    sender: Sender<DriftBatch>,
    settings: DriftSettings,
}

impl Profiler {
    /// Starts the profiler thread.
    pub fn start(settings: &DriftSettings) -> std::io::Result<Arc<Profiler>> {
        let (sender, receiver) = crossbeam_channel::bounded(settings.queue.max(1));
        let windows = Arc::new(Mutex::new(Windows::new(settings.window_seconds, settings.keep_windows)));
        let state = windows.clone();
        std::thread::Builder::new().name("mg-drift".into()).spawn(move || run(&state, &receiver))?;
        Ok(Arc::new(Profiler { windows, sender, settings: settings.clone() }))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &DriftSettings {
        &self.settings
    }

    /// Registers a loaded version; its instance threads offer batches through
    /// the returned tap. Dropping the tap retires the version once its windows
    /// are drained.
    pub fn register(&self, model: &str, version: u64, schema: Schema) -> DriftTap {
        let alive = Arc::new(Liveness);
        let counters = VersionCounters {
            rows: metrics::drift_rows(model, version),
            skipped: metrics::drift_rows_skipped(model, version),
            windows_dropped: metrics::drift_windows_dropped(model, version),
        };
        let registration = self.windows.lock().register(model, version, schema, Arc::downgrade(&alive), counters);
        DriftTap {
            sender: self.sender.clone(),
            registration,
            dropped: metrics::drift_rows_dropped(model, version),
            _alive: alive,
        }
    }

    /// Profiles `model` `version` on the reference's specs from its next window
    /// on (`None`: on the schema's own kinds). May come before the version loads.
    pub fn set_features(&self, model: &str, version: u64, features: Option<BTreeMap<String, FeatureSpec>>) {
        self.windows.lock().set_features(model, version, features);
    }

    /// Takes every closed window (closing those whose time has passed first).
    pub fn drain_closed(&self) -> Vec<ClosedWindow> {
        let mut windows = self.windows.lock();
        let closed = windows.drain_closed(now_ms());
        metrics::drift_profile_bytes(windows.memory_bytes());
        closed
    }

    /// Puts back windows that could not be sent, within `keep_windows` per version.
    pub fn requeue(&self, windows: Vec<ClosedWindow>) {
        let mut state = self.windows.lock();
        state.requeue(windows);
        metrics::drift_profile_bytes(state.memory_bytes());
    }
}

/// Wall-clock milliseconds since the epoch (windows align to the wall clock
/// so gateways' windows line up).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The thread: profile what comes, close windows on time, stop when every
/// sender (the profiler and every tap) is gone.
fn run(windows: &Mutex<Windows>, receiver: &Receiver<DriftBatch>) {
    let mut gauge_at = std::time::Instant::now();
    loop {
        let now = now_ms();
        let wait = windows
            .lock()
            .next_close_ms()
            .map_or(IDLE_WAKE, |at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE_WAKE));
        let first = match receiver.recv_timeout(wait) {
            Ok(batch) => Some(batch),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut state = windows.lock();
        let now = now_ms();
        state.tick(now);
        if let Some(batch) = first {
            record(&mut state, &batch, now);
            // Whatever queued meanwhile, under the same lock.
            for batch in receiver.try_iter().take(BATCHES_PER_LOCK - 1) {
                record(&mut state, &batch, now);
            }
        }
        if gauge_at.elapsed() >= GAUGE_EVERY {
            metrics::drift_profile_bytes(state.memory_bytes());
            gauge_at = std::time::Instant::now();
        }
    }
}

fn record(windows: &mut Windows, batch: &DriftBatch, now: i64) {
    if let super::windows::Recorded::Skipped(reason) = windows.record(batch, now) {
        tracing::debug!(registration = batch.registration, %reason, "drift: batch skipped");
    }
}
