//! The bounded prediction index of one route: request id → what answered it
//! and what it predicted, until the truth arrives or the entry is pushed out.
//!
//! Sharded by the id's hash into 64 maps, each behind its own mutex held for
//! one map operation (tens of nanoseconds), so two requests contend only when
//! they land on one shard at the same instant and no async worker ever waits
//! long. Each shard keeps its insertion order; when a shard is full its
//! oldest entry goes, so memory is bounded by `max_entries` whatever the
//! traffic. Entries are not purged when their `ttl` passes: feedback for an
//! entry still held past its ttl is answered 410 (expired); once the capacity
//! pushed it out, 404 (unknown).
//!
//! Keys are a keyed 64-bit hash of the id (SipHash with per-process random
//! keys): clients cannot make two ids collide on purpose, and by chance two
//! of a million held ids share a key with probability about 3e-8.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::summary::Prediction;

const SHARDS: usize = 64;

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

/// The index of one route.
pub struct PredictionIndex {
    shards: Box<[Mutex<Shard>]>,
    keys: RandomState,
    shard_capacity: usize,
    ttl: Duration,
    start: Instant,
    evicted: AtomicU64,
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
        PredictionIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            keys: RandomState::new(),
            shard_capacity,
            ttl,
            start: Instant::now(),
            evicted: AtomicU64::new(0),
        }
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    fn key(&self, id: &str) -> u64 {
        let mut hasher = self.keys.build_hasher();
        hasher.write(id.as_bytes());
        hasher.finish()
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The low bits pick the shard; the map sees the whole key.
        &self.shards[(key as usize) % SHARDS]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Keeps the prediction of request `id`, answered by `version`. A second
    /// prediction under one id replaces the first (a client that reuses ids
    /// is judged on its latest request).
    pub fn insert(&self, id: &str, version: u64, prediction: Prediction) {
        let key = self.key(id);
        let entry = Entry { version, at_ms: self.now_ms(), judged: false, prediction };
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
        let mut shard = self.shard(key).lock();
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
        self.shards.iter().map(|s| s.lock().order.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries pushed out by newer ones since the index began.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Heap bytes the index holds: each shard's map and order queue at their
    /// allocated capacity (a map slot is a key, an entry and a control byte).
    pub fn heap_bytes(&self) -> usize {
        let slot = size_of::<(u64, Entry)>() + 1;
        self.shards
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

    const P: Prediction = Prediction::Class { class: 1, classes: 3, score: 0.9 };

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
        }
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
        assert_eq!(index.len(), 1);
        assert_eq!(index.judge("a").unwrap().prediction, Prediction::Value(3.0));
    }
}
