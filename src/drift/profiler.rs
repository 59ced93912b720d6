//! [`Profiler`]: the profiler thread and the handle the rest of the gateway
//! uses: versions register at load (and get a [`DriftTap`]), the sync
//! follower drains closed windows, puts back what it failed to send, and
//! hands down the reference's specs.
//!
//! One named thread (`mg-drift`) owns the work: it takes batches, profiles
//! them and closes windows on time. The state sits behind one mutex that the
//! thread holds while it profiles a batch; the other callers are the sync
//! follower (a few times a minute) and version loads, never the request path.
//!
//! While traffic flows the thread does not wait on the channel: it sleeps a
//! fixed [`POLL`] ([`POLL_BUSY`] when the last takes filled a quarter of the
//! queue) and takes what queued meanwhile. A `try_send` that finds a
//! receiver parked on the channel must wake it (a futex call: on these VMs a
//! few microseconds of the instance thread and a context switch per batch);
//! a sleeping poller is never woken, so an offer is a queue push and nothing
//! else. Only after [`IDLE_AFTER`] without a batch does the thread park on the
//! channel (until a batch, a window's end or [`IDLE_WAKE`]): the first batch
//! after a quiet spell pays the one wake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
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
/// While batches come, how long the thread sleeps between takes. The queue
/// (`drift.queue`, 64 by default) holds what arrives meanwhile: 5 ms of 12,800
/// batches/s.
const POLL: Duration = Duration::from_millis(5);
/// The sleep when the last takes filled a quarter of the queue or more: at
/// c=64 on small batches the batcher makes 20,000 and more a second, which
/// 5 ms of sleep would drop a fifth of (measured by `load-tests/drift/throughput.py`).
const POLL_BUSY: Duration = Duration::from_millis(1);
/// Without a batch for this long the thread parks on the channel instead.
const IDLE_AFTER: Duration = Duration::from_millis(200);
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
        let windows = Arc::new(Mutex::new(
            Windows::new(settings.window_seconds, settings.keep_windows)
                .with_sketch_rate(settings.sketch_rows_per_second),
        ));
        let (state, queue) = (windows.clone(), settings.queue.max(1));
        std::thread::Builder::new().name("mg-drift".into()).spawn(move || run(&state, &receiver, queue))?;
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
fn run(windows: &Mutex<Windows>, receiver: &Receiver<DriftBatch>, queue: usize) {
    let busy = (queue / 4).max(1);
    // Batches taken since the last sleep.
    let mut since_sleep = 0;
    let mut gauge_at = std::time::Instant::now();
    let mut last_batch = std::time::Instant::now();
    let mut parked_with: Option<DriftBatch> = None;
    // The batches of one take, profiled together under the lock.
    let mut take = Vec::with_capacity(BATCHES_PER_LOCK);
    // Every sender (the profiler and every tap) is gone and nothing is queued.
    let mut disconnected = false;
    loop {
        take.extend(parked_with.take());
        while take.len() < BATCHES_PER_LOCK {
            match receiver.try_recv() {
                Ok(batch) => take.push(batch),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let taken = take.len();
        let mut state = windows.lock();
        let now = now_ms();
        state.tick(now);
        state.record_all(&take, now, |_, _| {});
        if gauge_at.elapsed() >= GAUGE_EVERY {
            metrics::drift_profile_bytes(state.memory_bytes());
            gauge_at = std::time::Instant::now();
        }
        let until_close = state
            .next_close_ms()
            .map_or(IDLE_WAKE, |at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE_WAKE));
        drop(state);
        // The batches' buffers go back to their allocators outside the lock.
        take.clear();
        since_sleep += taken;
        if disconnected {
            return;
        }
        if taken == BATCHES_PER_LOCK {
            // More may be queued: let the lock go for the follower, then take on.
            continue;
        }
        if taken > 0 {
            last_batch = std::time::Instant::now();
        }
        if last_batch.elapsed() < IDLE_AFTER {
            let poll = if since_sleep >= busy { POLL_BUSY } else { POLL };
            since_sleep = 0;
            std::thread::sleep(poll.min(until_close));
            continue;
        }
        since_sleep = 0;
        match receiver.recv_timeout(until_close) {
            Ok(batch) => {
                parked_with = Some(batch);
                last_batch = std::time::Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
