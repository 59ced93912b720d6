//! The bounded prediction index of one route: request id → what answered it
//! and what it predicted, until the truth arrives or the entry is pushed out.
//!
//! The request path only hashes the id and pushes the entry onto a bounded
//! lock-free queue (`ArrayQueue::push`: it never waits and never wakes a
//! thread; when the queue is full the entry is dropped and counted). A thread
//! of the index's own drains the queue on a short timer (every 10 ms
//! while entries come, every 20 ms when idle) into 64 maps, sharded by the
//! id's hash, each behind its own mutex held for one map operation: at a
//! million entries an insert is a few cache misses, which no request waits
//! for. A lookup that misses applies what is queued first, so feedback sent
//! right after its answer still finds it.
//!
//! Each shard holds its entries in up to eight generations, each a map of an
//! eighth of the shard's capacity: new entries go to the newest, and when it
//! is full the oldest generation goes whole (its map cleared and reused as
//! the newest). So memory is bounded by `max_entries` whatever the traffic,
//! the oldest entries go first, and once full at least seven eighths of
//! `max_entries` are held. Why generations rather than one map and an order
//! queue: an insert then touches only the newest generation's map (an eighth
//! of the memory, mostly in cache) instead of two random places in 100 MB,
//! the insert and the oldest entry's removal. Entries are not purged when their
//! `ttl` passes: feedback for an entry still held past its ttl is answered
//! 410 (expired); once the capacity pushed it out, 404 (unknown).
//!
//! Inserts read no clock: an entry's time is the applier's last tick (or the
//! last lookup's), so it may be up to one idle pause (20 ms) early.
//!
//! A shared route (`feedback.shared`) also hands each applied entry, with a
//! copy of its id, to its [`Outbox`] for the control plane.
//!
//! Keys are a 64-bit foldhash of the id, seeded at random per index: clients
//! cannot make two ids collide on purpose, and by chance two of a million held
//! ids share a key with probability about 3e-8.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::outbox::{Outbox, Outgoing};
use super::summary::Prediction;

const SHARDS: usize = 64;
/// Entries waiting for the applier: about two seconds of 30,000 requests/s.
const QUEUE: usize = 1 << 16;
/// The applier's pause after a drain that found entries, and after one that found none.
/// Each wake is a context switch that costs more than applying a few entries:
/// at 1 ms (30 entries a wake at 30,000 requests/s) the thread spent 2-4 µs
/// of CPU per entry; at 10 ms the wakes cost under a tenth of that.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
const IDLE_PAUSE: Duration = Duration::from_millis(20);

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

type Map = HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>;

/// Most generations a shard holds.
const GENERATIONS: usize = 8;

/// One shard's generations, oldest first; only the newest takes entries.
#[derive(Default)]
struct Shard {
    generations: VecDeque<Map>,
}

impl Shard {
    /// The entry of `key`, the newest when an id was used twice.
    fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        self.generations.iter_mut().rev().find_map(|map| map.get_mut(&key))
    }

    fn len(&self) -> usize {
        self.generations.iter().map(Map::len).sum()
    }
}

/// How a shard's capacity is cut into generations.
#[derive(Clone, Copy, Debug)]
struct Generations {
    /// Generations a shard holds when full.
    count: usize,
    /// Entries in each.
    size: usize,
}

impl Generations {
    /// At least `shard_capacity` entries in at most [`GENERATIONS`] generations.
    fn for_capacity(shard_capacity: usize) -> Generations {
        let count = GENERATIONS.min(shard_capacity.max(1));
        Generations { count, size: shard_capacity.max(1).div_ceil(count) }
    }
}

/// One entry on its way to the maps (with its id when the route is shared).
struct Queued {
    key: u64,
    entry: Entry,
    id: Option<Box<str>>,
}

/// The maps and the queue: what the applier thread drains and writes, and lookups read.
struct Table {
    shards: Box<[Mutex<Shard>]>,
    generations: Generations,
    evicted: AtomicU64,
    queue: ArrayQueue<Queued>,
    /// Held while entries leave the queue: a flush that holds it sees every
    /// entry either still queued or already applied, none in between.
    draining: Mutex<()>,
    /// Where applied entries of a shared route go next.
    outbox: Option<Arc<Outbox>>,
    /// The index's start on the wall clock (entries' times are relative to it).
    start_unix_ms: i64,
    /// The index's start on the monotonic clock.
    start: Instant,
    /// Milliseconds since `start`, as last read by the applier (each tick) or a lookup:
    /// inserts read this instead of the clock (a clock read is ~25 ns, a quarter of an insert).
    clock_ms: AtomicU64,
}

/// The index of one route.
pub struct PredictionIndex {
    table: Arc<Table>,
    keys: foldhash::fast::RandomState,
    ttl: Duration,
    dropped: AtomicU64,
}

/// The shard of `key`: picked by bits 32 to 37, which the shard's map uses
/// for nothing. Its `HashMap` places a key by the low bits and tags it with
/// the top seven; shards picked by the low bits would start every key of a
/// shard at one 64th of the buckets, and inserts would probe long chains
/// (700 ns an entry at a million entries, against 1xx ns now).
fn shard_of(key: u64) -> usize {
    (key >> 32) as usize % SHARDS
}

impl Table {
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[shard_of(key)]
    }

    fn apply(&self, key: u64, entry: Entry) {
        let Generations { count, size } = self.generations;
        let mut shard = self.shard(key).lock();
        let full = shard.generations.back().is_none_or(|newest| newest.len() >= size && !newest.contains_key(&key));
        if full {
            // A new generation: the oldest one's map, emptied, once the shard holds them all.
            let map = if shard.generations.len() >= count
                && let Some(mut oldest) = shard.generations.pop_front()
            {
                self.evicted.fetch_add(oldest.len() as u64, Ordering::Relaxed);
                oldest.clear();
                oldest
            } else {
                Map::with_capacity_and_hasher(size, BuildHasherDefault::default())
            };
            shard.generations.push_back(map);
        }
        if let Some(newest) = shard.generations.back_mut() {
            // An id used twice: the newest entry answers, an older copy stays until its generation goes.
            newest.insert(key, entry);
        }
    }
}

impl Table {
    /// Reads the clock and publishes it to inserts; returns milliseconds since the start.
    fn tick(&self) -> u64 {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_ms.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// Applies what is queued now; returns how many entries it applied.
    fn drain(&self) -> usize {
        let _draining = self.draining.lock();
        let mut applied = 0;
        while let Some(Queued { key, entry, id }) = self.queue.pop() {
            self.apply(key, entry);
            if let (Some(outbox), Some(id)) = (&self.outbox, id) {
                let at_unix_ms = self.start_unix_ms.saturating_add(i64::try_from(entry.at_ms).unwrap_or(i64::MAX));
                outbox.push(Outgoing { id, version: entry.version, at_unix_ms, prediction: entry.prediction });
            }
            applied += 1;
        }
        applied
    }
}

/// The applier: drains the queue on a short timer, so pushes never wake it
/// (a wake is a futex call on the request path and tens of microseconds
/// here). Ends within one pause of the index being dropped: the table is
/// held only by the index.
fn apply_queued(table: Weak<Table>) {
    loop {
        let Some(table) = table.upgrade() else { return };
        table.tick();
        let applied = table.drain();
        drop(table);
        std::thread::sleep(if applied == 0 { IDLE_PAUSE } else { BUSY_PAUSE });
    }
}

impl std::fmt::Debug for PredictionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionIndex").field("capacity", &self.capacity()).field("ttl", &self.ttl).finish()
    }
}

impl PredictionIndex {
    /// An empty index that holds at most `max_entries` (rounded up to whole
    /// generations: a multiple of 512 past 4,096) and judges entries older than `ttl` expired.
    pub fn new(max_entries: usize, ttl: Duration) -> PredictionIndex {
        PredictionIndex::with_outbox(max_entries, ttl, None)
    }

    /// An empty index whose applied entries also go to `outbox` (a shared route's).
    pub fn with_outbox(max_entries: usize, ttl: Duration, outbox: Option<Arc<Outbox>>) -> PredictionIndex {
        let generations = Generations::for_capacity(max_entries.div_ceil(SHARDS));
        let start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let table = Arc::new(Table {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            generations,
            evicted: AtomicU64::new(0),
            queue: ArrayQueue::new(QUEUE),
            draining: Mutex::new(()),
            outbox,
            start_unix_ms,
            start: Instant::now(),
            clock_ms: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&table);
        if let Err(e) = std::thread::Builder::new().name("feedback-index".into()).spawn(move || apply_queued(weak)) {
            // Without its thread the index still works: lookups apply the queue.
            tracing::error!(error = %e, "the prediction index's applier thread did not start");
        }
        PredictionIndex { table, keys: foldhash::fast::RandomState::default(), ttl, dropped: AtomicU64::new(0) }
    }

    /// The ttl.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        let Generations { count, size } = self.table.generations;
        count * size * SHARDS
    }

    /// Applies every queued entry now (lookups that miss do; so do the
    /// figures the admin API shows).
    pub fn flush(&self) {
        self.table.drain();
    }

    /// Entries dropped because the queue to the applier was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn key(&self, id: &str) -> u64 {
        self.keys.hash_one(id)
    }

    /// An entry's time (`Entry::at_ms`) on the wall clock, Unix milliseconds.
    pub fn unix_ms(&self, at_ms: u64) -> i64 {
        self.table.start_unix_ms.saturating_add(i64::try_from(at_ms).unwrap_or(i64::MAX))
    }

    fn now_ms(&self) -> u64 {
        self.table.tick()
    }

    /// Keeps the prediction of request `id`, answered by `version`: queued
    /// for the applier, never waited for. A second prediction under one id
    /// replaces the first (a client that reuses ids is judged on its latest request).
    pub fn insert(&self, id: &str, version: u64, prediction: Prediction) {
        let key = self.key(id);
        // Stamped with the applier's last tick: up to 20 ms early, so an entry may expire that much early.
        let entry = Entry { version, at_ms: self.table.clock_ms.load(Ordering::Relaxed), judged: false, prediction };
        // A shared route's id travels on to the outbox: one small allocation, on those routes only.
        let id = self.table.outbox.as_ref().map(|_| Box::from(id));
        if self.table.queue.push(Queued { key, entry, id }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the entry of request `id` judged when the index holds it (a truth
    /// accepted through the control plane); true when it did.
    pub fn mark_judged(&self, id: &str) -> bool {
        let key = self.key(id);
        self.table.shard(key).lock().get_mut(key).map(|e| e.judged = true).is_some()
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
        if self.table.shard(key).lock().get_mut(key).is_none() {
            // Perhaps still queued: feedback may come right after its answer.
            self.flush();
        }
        let mut shard = self.table.shard(key).lock();
        let entry = shard.get_mut(key).ok_or(Miss::Unknown)?;
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
        self.table.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries pushed out by newer ones since the index began.
    pub fn evicted(&self) -> u64 {
        self.table.evicted.load(Ordering::Relaxed)
    }

    /// Heap bytes the index holds: each generation's map at its allocated
    /// capacity (a slot is a key, an entry and a control byte).
    pub fn heap_bytes(&self) -> usize {
        let slot = size_of::<(u64, Entry)>() + 1;
        self.table
            .shards
            .iter()
            .map(|s| s.lock().generations.iter().map(|map| map.capacity() * slot).sum::<usize>())
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
    fn the_keys_of_one_shard_spread_over_the_bits_its_map_places_and_tags_by() {
        let keys = foldhash::fast::RandomState::default();
        let in_shard_0: Vec<u64> =
            (0..100_000).map(|i| keys.hash_one(i.to_string())).filter(|&k| shard_of(k) == 0).collect();
        assert!(in_shard_0.len() > 1000);
        let distinct =
            |bits: fn(u64) -> u64| in_shard_0.iter().map(|&k| bits(k)).collect::<std::collections::HashSet<_>>().len();
        // The map's first bucket (low bits) and its tag (top 7 bits) take every value within one shard.
        assert_eq!(distinct(|k| k & 63), 64, "low bits");
        assert_eq!(distinct(|k| k >> 57), 128, "top bits");
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

    #[test]
    fn a_full_index_holds_at_least_seven_eighths_and_the_newest_entries_all() {
        let capacity = SHARDS * 800;
        let index = PredictionIndex::new(capacity, Duration::from_secs(60));
        assert_eq!(index.capacity(), capacity);
        let total = capacity * 5;
        for i in 0..total {
            index.insert(&format!("id-{i}"), 1, P);
            if i % 10_000 == 0 {
                index.flush();
            }
        }
        index.flush();
        let held = index.len();
        assert!(held <= capacity && held >= capacity * 7 / 8, "{held} of {capacity}");
        assert_eq!(index.evicted() as usize, total - held, "every entry not held was counted out");
        // Whole generations go, oldest first: every one of the newest half is still held (each shard
        // holds its newest 700 entries and gets about 400 ± 20 of these).
        let newest = capacity / 2;
        assert!((total - newest..total).all(|i| index.peek(&format!("id-{i}")).is_ok()));
        assert_eq!(index.peek("id-0"), Err(Miss::Unknown));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_past_their_ttl_are_expired_not_unknown() {
        let index = PredictionIndex::new(1000, Duration::from_secs(10));
        index.insert("old", 1, P);
        tokio::time::advance(Duration::from_secs(11)).await;
        // The lookup reads the clock: inserts after it are stamped with its time.
        assert_eq!(index.judge("old"), Err(Miss::Expired));
        index.insert("new", 1, P);
        assert!(index.judge("new").is_ok());
    }

    #[test]
    fn a_shared_index_hands_applied_entries_with_their_ids_to_its_outbox() {
        let outbox = Arc::new(Outbox::with_capacity(2));
        let index = PredictionIndex::with_outbox(1000, Duration::from_secs(60), Some(outbox.clone()));
        for id in ["a", "b", "c"] {
            index.insert(id, 2, P);
        }
        index.flush();
        assert_eq!(index.len(), 3, "the index holds every entry");
        let shipped = outbox.take(10);
        assert_eq!(shipped.iter().map(|o| &*o.id).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((shipped[0].version, shipped[0].prediction), (2, P));
        assert!(shipped[0].at_unix_ms > 1_700_000_000_000, "wall-clock time");
        assert_eq!(outbox.dropped(), 1, "the full outbox dropped and counted one");
        let unshared = PredictionIndex::new(1000, Duration::from_secs(60));
        unshared.insert("a", 1, P);
        assert!(unshared.table.outbox.is_none());
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
