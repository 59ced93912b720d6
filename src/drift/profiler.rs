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
//! While traffic flows the thread does not wait on the channel: it sleeps
//! (between [`POLL_MIN`] and [`POLL_MAX`], aiming at half a queue of batches
//! per take) and takes what queued meanwhile. A `try_send` that finds a
//! receiver parked on the channel must wake it (a futex call: on these VMs a
//! few microseconds of the instance thread and a context switch per batch);
//! a sleeping poller is never woken, so an offer is a queue push and nothing
//! else. Only after [`IDLE_AFTER`] without a batch does the thread park on the
//! channel (until a batch, a window's end or [`IDLE_WAKE`]): the first batch
//! after a quiet spell pays the one wake.
//!
//! Four times a second the thread also steers each version's [`Sampling`] from the
//! rows the version executed (its `ModelStats`): above
//! `drift.max_rows_per_second` the version offers one batch in n.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::metrics::Gauge;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use modelgate_sketch::FeatureSpec;
use parking_lot::Mutex;

use super::handoff::{DriftBatch, DriftTap, Liveness, Sampling};
use super::schema::Schema;
use super::settings::DriftSettings;
use super::windows::{ClosedWindow, VersionCounters, Windows};
use crate::budget::InflightBytes;
use crate::metrics;
use crate::stats::ModelStats;

/// Longest the thread sleeps without traffic or a window to close (it also
/// refreshes the memory gauge then).
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// While batches come, the thread sleeps between takes for as long as it takes
/// about half the queue (`drift.queue`) to fill at the rate batches came during
/// the last sleep, within these bounds. Each wake costs a context switch of the
/// profiler and of the worker it preempts, so fewer, fuller takes are cheaper.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(10);
/// Without a batch for this long the thread parks on the channel instead.
const IDLE_AFTER: Duration = Duration::from_millis(200);
/// How often, at most, the thread recomputes the memory gauge (a walk over every summary).
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, the thread steers the versions' sampling: a burst after a quiet
/// spell is profiled in full for this long.
const STEER_EVERY: Duration = Duration::from_millis(250);
/// Batches profiled under one lock, at most, before the lock is let go.
const BATCHES_PER_LOCK: usize = 16;

/// The drift profiler of a gateway. Off unless `[drift] enabled = true`.
#[derive(Debug)]
pub struct Profiler {
    windows: Arc<Mutex<Windows>>,
    steered: Arc<Mutex<Vec<Steered>>>,
    sender: Sender<DriftBatch>,
    /// The queue's byte bound (`drift.queue_bytes`), shared by every tap.
    queued_bytes: Arc<InflightBytes>,
    settings: DriftSettings,
}

/// One version's sampling as the profiler thread steers it.
#[derive(Debug)]
struct Steered {
    /// Gone with the version's tap.
    sampling: Weak<Sampling>,
    /// The version's execution statistics: rows executed.
    executed: Arc<ModelStats>,
    /// Rows executed at the last look.
    seen: u64,
    one_in: Gauge,
}

/// Sets each version's sampling from the rows it executed over `elapsed`: one
/// batch in n, n the rows per second over `max_rows_per_second` (rounded up);
/// forgets versions that are gone.
fn steer(steered: &mut Vec<Steered>, elapsed: Duration, max_rows_per_second: u64) {
    steered.retain_mut(|s| {
        let Some(sampling) = s.sampling.upgrade() else { return false };
        let executed = s.executed.inference_count();
        let per_second = executed.saturating_sub(s.seen) as f64 / elapsed.as_secs_f64().max(1e-3);
        s.seen = executed;
        let every = (per_second / max_rows_per_second.max(1) as f64).ceil().clamp(1.0, f64::from(u32::MAX));
        sampling.set_every(every as u32);
        s.one_in.set(every);
        true
    });
}

impl Profiler {
    /// Starts the profiler thread.
    pub fn start(settings: &DriftSettings) -> std::io::Result<Arc<Profiler>> {
        let (sender, receiver) = crossbeam_channel::bounded(settings.queue.max(1));
        let windows = Arc::new(Mutex::new(
            Windows::new(settings.window_seconds, settings.keep_windows)
                .with_sketch_rate(settings.sketch_rows_per_second),
        ));
        let steered = Arc::new(Mutex::new(Vec::new()));
        let queued_bytes = InflightBytes::new(settings.queue_bytes);
        let thread = Thread {
            windows: windows.clone(),
            steered: steered.clone(),
            queued_bytes: queued_bytes.clone(),
            queue: settings.queue.max(1),
            max_rows_per_second: settings.max_rows_per_second,
        };
        std::thread::Builder::new().name("mg-drift".into()).spawn(move || thread.run(&receiver))?;
        Ok(Arc::new(Profiler { windows, steered, sender, queued_bytes, settings: settings.clone() }))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &DriftSettings {
        &self.settings
    }

    /// Registers a loaded version; its instance threads offer batches through
    /// the returned tap, sampled from the rows `executed` counts. Dropping the
    /// tap retires the version once its windows are drained.
    pub fn register(&self, model: &str, version: u64, schema: Schema, executed: Arc<ModelStats>) -> DriftTap {
        let alive = Arc::new(Liveness);
        let counters = VersionCounters {
            rows: metrics::drift_rows(model, version),
            skipped: metrics::drift_rows_skipped(model, version),
            windows_dropped: metrics::drift_windows_dropped(model, version),
        };
        let registration = self.windows.lock().register(model, version, schema, Arc::downgrade(&alive), counters);
        let sampling = Arc::new(Sampling::default());
        let one_in = metrics::drift_sampled_one_in(model, version);
        one_in.set(1.0);
        let seen = executed.inference_count();
        self.steered.lock().push(Steered { sampling: Arc::downgrade(&sampling), executed, seen, one_in });
        DriftTap {
            sender: self.sender.clone(),
            registration,
            dropped: metrics::drift_rows_dropped(model, version),
            sampling,
            queued_bytes: self.queued_bytes.clone(),
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

/// What the profiler thread owns.
struct Thread {
    windows: Arc<Mutex<Windows>>,
    steered: Arc<Mutex<Vec<Steered>>>,
    queued_bytes: Arc<InflightBytes>,
    queue: usize,
    max_rows_per_second: u64,
}

impl Thread {
    /// The thread: profile what comes, close windows on time, stop when every
    /// sender (the profiler and every tap) is gone.
    fn run(self, receiver: &Receiver<DriftBatch>) {
        let Thread { windows, steered, queued_bytes, queue, max_rows_per_second } = self;
        let half_queue = u32::try_from(queue / 2).unwrap_or(u32::MAX).max(1);
        let mut poll = POLL_MAX;
        // Batches taken since the last sleep.
        let mut since_sleep = 0;
        let (mut gauge_at, mut steer_at, mut last_batch) = (Instant::now(), Instant::now(), Instant::now());
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
                metrics::drift_queue_bytes(queued_bytes.held());
                gauge_at = Instant::now();
            }
            let since_steer = steer_at.elapsed();
            if since_steer >= STEER_EVERY {
                steer(&mut steered.lock(), since_steer, max_rows_per_second);
                steer_at = Instant::now();
            }
            let until_close = state
                .next_close_ms()
                .map_or(IDLE_WAKE, |at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE_WAKE));
            drop(state);
            // The batches' buffers go back to their allocators outside the lock,
            // and their bytes to the queue's bound.
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
                last_batch = Instant::now();
            }
            if last_batch.elapsed() < IDLE_AFTER {
                poll = match u32::try_from(since_sleep) {
                    Ok(0) => POLL_MAX,
                    Ok(taken) => (poll * half_queue / taken).clamp(POLL_MIN, POLL_MAX),
                    Err(_) => POLL_MIN,
                };
                since_sleep = 0;
                std::thread::sleep(poll.min(until_close));
                continue;
            }
            since_sleep = 0;
            match receiver.recv_timeout(until_close) {
                Ok(batch) => {
                    parked_with = Some(batch);
                    last_batch = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ComputeTimes;

    #[test]
    fn a_version_above_the_cap_offers_one_batch_in_n_and_all_again_when_it_slows() {
        let executed = Arc::new(ModelStats::new(4));
        let sampling = Arc::new(Sampling::default());
        let mut steered = vec![Steered {
            sampling: Arc::downgrade(&sampling),
            executed: executed.clone(),
            seen: 0,
            one_in: Gauge::noop(),
        }];
        executed.record_execution(1, 35_000, ComputeTimes::default());
        steer(&mut steered, Duration::from_secs(1), 10_000);
        assert_eq!(sampling.every(), 4);
        // Half a second at the cap's rate: under it, every batch again.
        executed.record_execution(1, 5_000, ComputeTimes::default());
        steer(&mut steered, Duration::from_millis(500), 10_000);
        assert_eq!(sampling.every(), 1);
        drop(sampling);
        steer(&mut steered, Duration::from_secs(1), 10_000);
        assert!(steered.is_empty());
    }
}
