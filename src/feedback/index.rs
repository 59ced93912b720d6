//! The bounded prediction index of one route: request id → what answered it
//! and what it predicted, until the truth arrives or the entry is pushed out.
//!
//! The request path only hashes the id and hands the entry to a bounded
//! lock-free queue (`try_send`: it never waits; when the queue is full the
//! entry is dropped and counted). A thread of the index's own applies the
//! queue to 64 maps, sharded by the id's hash, each behind its own mutex held
//! for one map operation: at a million entries an insert is a few cache
//! misses (about a microsecond on a busy machine, `benches/feedback_index.rs`),
//! which no request waits for. A lookup that misses applies what is queued
//! first, so feedback sent right after its answer still finds it. Each shard
//! keeps its insertion order; when a shard is full its oldest entry goes, so
//! memory is bounded by `max_entries` whatever the traffic. Entries are not purged when their `ttl` passes: feedback for an
//! entry still held past its ttl is answered 410 (expired); once the capacity
//! pushed it out, 404 (unknown).
//!
//! Keys are a keyed 64-bit hash of the id (SipHash with per-process random
//! keys): clients cannot make two ids collide on purpose, and by chance two
//! of a million held ids share a key with probability about 3e-8.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::summary::Prediction;

const SHARDS: usize = 64;
/// Entries waiting for the applier: about two seconds of 30,000 requests/s.
const QUEUE: usize = 1 << 16;

/// One prediction as the index keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    /// The version that answered.
    pub version: u64,
    /// When, in milliseconds since the index began.
    pub at_ms: u64,
    /// Whether its truth already came.
    pub judged: bool,
    /// What it predicted.
    pub prediction: Prediction,
}

/// Why feedback does not join a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Never held, or pushed out by newer entries.
    Unknown,
    /// Held, but older than the ttl.
    Expired,
    /// Its truth already came (the first one stands).
    Duplicate,
}

/// The keys are hashes already: hashing them again would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u64>,
}

/// The maps: what the applier thread writes and lookups read.
struct Table {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    evicted: AtomicU64,
    /// Held while entries leave the queue: a flush that holds it sees every
    /// entry either still queued or already applied, none in between.
    draining: Mutex<()>,
}

/// The index of one route.
pub struct PredictionIndex {
    table: Arc<Table>,
    keys: RandomState,
    ttl: Duration,
    start: Instant,
    queue: Sender<(u64, Entry)>,
    pending: Receiver<(u64, Entry)>,
    dropped: AtomicU64,
}

impl Table {
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The low bits pick the shard; the map sees the whole key.
        &self.shards[(key as usize) % SHARDS]
    }

    fn apply(&self, key: u64, entry: Entry) {
        let mut shard = self.shard(key).lock();
        if shard.map.insert(key, entry).is_some() {
            // Its old place in the order stays; the entry goes when that place
            // comes up, a little early, and the count stays exact.
            return;
        }
        shard.order.push_back(key);
        if shard.order.len() > self.shard_capacity
            && let Some(oldest) = shard.order.pop_front()
        {
            shard.map.remove(&oldest);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Table {
    /// Applies what is queued now.
    fn drain(&self, pending: &Receiver<(u64, Entry)>) {
        let _draining = self.draining.lock();
        for (key, entry) in pending.try_iter() {
            self.apply(key, entry);
        }
    }
}

/// The applier: waits until entries are queued (taking none), then drains
/// them into the maps. Ends when the index is dropped: its sender goes, so
/// the wait returns at once, and the table (held only by the index) is gone.
fn apply_queued(pending: Receiver<(u64, Entry)>, table: Weak<Table>) {
    loop {
        let mut ready = crossbeam_channel::Select::new();
        ready.recv(&pending);
        ready.ready();
        let Some(table) = table.upgrade() else { return };
        table.drain(&pending);
    }
}

impl std::fmt::Debug for PredictionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionIndex").field("capacity", &self.capacity()).field("ttl", &self.ttl).finish()
    }
}

impl PredictionIndex {
    /// An empty index that holds at most `max_entries` (rounded up to a
    /// multiple of the shard count) and judges entries older than `ttl` expired.
    pub fn new(max_entries: usize, ttl: Duration) -> PredictionIndex {
        let shard_capacity = max_entries.div_ceil(SHARDS).max(1);
        let table = Arc::new(Table {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity,
            evicted: AtomicU64::new(0),
            draining: Mutex::new(()),
        });
        let (queue, pending) = crossbeam_channel::bounded(QUEUE);
        let (receiver, weak) = (pending.clone(), Arc::downgrade(&table));
        if let Err(e) =
            std::thread::Builder::new().name("feedback-index".into()).spawn(move || apply_queued(receiver, weak))
        {
            // Without its thread the index still works: lookups apply the queue.
            tracing::error!(error = %e, "the prediction index's applier thread did not start");
        }
        PredictionIndex {
            table,
            keys: RandomState::new(),
            ttl,
            start: Instant::now(),
            queue,
            pending,
            dropped: AtomicU64::new(0),
        }
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.table.shard_capacity * SHARDS
    }

    /// Applies every queued entry now (lookups that miss do; so do the
    /// figures the admin API shows).
    pub fn flush(&self) {
        self.table.drain(&self.pending);
    }

    /// Entries dropped because the queue to the applier was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn key(&self, id: &str) -> u64 {
        let mut hasher = self.keys.build_hasher();
        hasher.write(id.as_bytes());
        hasher.finish()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Keeps the prediction of request `id`, answered by `version`: queued
    /// for the applier, never waited for. A second prediction under one id
    /// replaces the first (a client that reuses ids is judged on its latest request).
    pub fn insert(&self, id: &str, version: u64, prediction: Prediction) {
        let key = self.key(id);
        let entry = Entry { version, at_ms: self.now_ms(), judged: false, prediction };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send((key, entry)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The prediction of request `id`, left as it is.
    pub fn peek(&self, id: &str) -> Result<Entry, Miss> {
        self.find(id, false)
    }

    /// The prediction of request `id`, marked judged: the entry stays (so a
    /// second truth is told apart from an unknown id) until pushed out.
    pub fn judge(&self, id: &str) -> Result<Entry, Miss> {
        self.find(id, true)
    }

    fn find(&self, id: &str, mark: bool) -> Result<Entry, Miss> {
        let key = self.key(id);
        let now = self.now_ms();
        if !self.table.shard(key).lock().map.contains_key(&key) {
            // Perhaps still queued: feedback may come right after its answer.
            self.flush();
        }
        let mut shard = self.table.shard(key).lock();
        let entry = shard.map.get_mut(&key).ok_or(Miss::Unknown)?;
        if u128::from(now.saturating_sub(entry.at_ms)) > self.ttl.as_millis() {
            return Err(Miss::Expired);
        }
        if entry.judged {
            return Err(Miss::Duplicate);
        }
        let found = *entry;
        entry.judged |= mark;
        Ok(found)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.table.shards.iter().map(|s| s.lock().order.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries pushed out by newer ones since the index began.
    pub fn evicted(&self) -> u64 {
        self.table.evicted.load(Ordering::Relaxed)
    }

    /// Heap bytes the index holds: each shard's map and order queue at their
    /// allocated capacity (a map slot is a key, an entry and a control byte).
    pub fn heap_bytes(&self) -> usize {
        let slot = size_of::<(u64, Entry)>() + 1;
        self.table
            .shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.map.capacity() * slot + s.order.capacity() * size_of::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let index = PredictionIndex::new(1 << 20, Duration::from_secs(60));
        // Faster than any applier: some of these find the queue full.
        for i in 0..QUEUE * 4 {
            index.insert(&i.to_string(), 1, P);
        }
        index.flush();
        assert_eq!(index.len() as u64 + index.dropped(), (QUEUE * 4) as u64);
    }

    const P: Prediction = Prediction::Class { class: 1, classes: 3, score: 0.9 };

    #[test]
    fn the_applier_thread_applies_without_a_lookup_and_lets_the_table_go_with_the_index() {
        let index = PredictionIndex::new(1000, Duration::from_secs(60));
        index.insert("a", 1, P);
        for _ in 0..1000 {
            if index.len() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(index.len(), 1, "applied by the thread, no flush");
        let table = Arc::downgrade(&index.table);
        drop(index);
        for _ in 0..1000 {
            if table.strong_count() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(table.strong_count(), 0);
    }

    #[test]
    fn feedback_joins_once_then_is_a_duplicate() {
        let index = PredictionIndex::new(1000, Duration::from_secs(60));
        index.insert("a", 2, P);
        let entry = index.judge("a").unwrap();
        assert_eq!((entry.version, entry.prediction), (2, P));
        assert_eq!(index.judge("a"), Err(Miss::Duplicate));
        assert_eq!(index.judge("b"), Err(Miss::Unknown));
    }

    #[test]
    fn the_oldest_entries_go_first_and_memory_stays_bounded() {
        let index = PredictionIndex::new(64 * 4, Duration::from_secs(60));
        for i in 0..100_000 {
            index.insert(&format!("id-{i}"), 1, P);
            if i % 10_000 == 0 {
                index.flush();
            }
        }
        index.flush();
        assert_eq!(index.len(), 64 * 4);
        assert_eq!(index.evicted(), 100_000 - 64 * 4);
        assert_eq!(index.judge("id-0"), Err(Miss::Unknown));
        assert!(index.judge("id-99999").is_ok());
        // Bounded: the maps never grow past what 4 entries per shard need.
        assert!(index.heap_bytes() < 64 * 4 * 200, "{} bytes", index.heap_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_past_their_ttl_are_expired_not_unknown() {
        let index = PredictionIndex::new(1000, Duration::from_secs(10));
        index.insert("old", 1, P);
        tokio::time::advance(Duration::from_secs(11)).await;
        index.insert("new", 1, P);
        assert_eq!(index.judge("old"), Err(Miss::Expired));
        assert!(index.judge("new").is_ok());
    }

    #[test]
    fn an_id_used_twice_is_judged_on_its_latest_prediction() {
        let index = PredictionIndex::new(1000, Duration::from_secs(60));
        index.insert("a", 1, P);
        index.insert("a", 2, Prediction::Value(3.0));
        index.flush();
        assert_eq!(index.len(), 1);
        assert_eq!(index.judge("a").unwrap().prediction, Prediction::Value(3.0));
    }
}
