//! The embedded store: a dashmap of fixed-size entries, bounded by capacity and TTL.
//!
//! Each key costs an 8-byte table slot pointing at one 40-byte entry (plus a 16-byte slot in an
//! eviction ring). The common state, one strong validator without `Last-Modified` whose tag is
//! synthesized (kept as its 16-byte digest) or at most 16 bytes long, lives inline in the entry;
//! anything else (several representations, a long tag, a `Last-Modified`) spills into a side
//! map, touched only under the key's shard lock. The table holds pointers rather than entries
//! because a hash table runs at 44-87% load: a small slot wastes less at any load factor.
//! Generations come from one global clock, stamped while the key's shard lock is held, so a
//! generation handed out by [`Store::load`] can only match the entry state it was read with.
//!
//! Removing an entry (capacity eviction) would let a read that saw the key missing re-install
//! what it learned even though a write came and went meanwhile. Every removal therefore raises a
//! **watermark** (one of 65536, chosen by key bits): a read of a missing key may record its
//! observation only if no removal in its slot happened after its [`Store::load`].
//!
//! Eviction is SIEVE-like: every entry sits once in one of a few FIFO rings; at capacity, an
//! insertion pops a bounded number of candidates, evicting the first one that holds nothing
//! (expired or unknown) or was not touched since it was last passed over. Leased entries are
//! never evicted. The work per insertion is bounded, whatever the map size. The entry count can
//! pass `max_entries` by at most one per thread inserting at the same instant, and by leases
//! taken while every candidate is leased (a lease is never refused for want of room; a read of
//! a new key then records nothing instead).
//!
//! Write leases are `tokio` mutexes, one per key, that exist only while someone holds or waits
//! for the lease; waiters are served in order.
//!
//! By job: this file holds the store and its operations (what a load, learn, lease, outcome or
//! purge does to an entry); `entry` the entry and its inline or spilled state; `eviction` the
//! rings and watermarks; `lease` the lease mutexes; `hasher` the maps' hasher. Every operation
//! here holds at most one key's shard lock at a time, stamps each new generation
//! ([`Inner::tick`]) under it, and lets go of it before an eviction ring is locked. No map
//! reference is held across an `.await`: the map APIs return owned values.

mod entry;
mod eviction;
mod hasher;
mod lease;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use self::entry::{Entry, Held, Known, Present};
use self::eviction::{Rings, Watermarks};
use self::hasher::KeyHasherBuilder;
use self::lease::Leases;
pub use self::lease::MemoryLease;
use super::{
    Acquired, KeyState, Observation, Outcome, Refusal, Snapshot, Store, StoreError, StoreStats,
};
use crate::key::ResourceKey;

/// Limits of the in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryStoreConfig {
    /// Most entries held; past it, the least recently touched entries are evicted (they become
    /// unknown, which is always safe: a write to an unknown key revalidates).
    pub max_entries: usize,
    /// How long a validator is trusted without seeing the resource.
    pub ttl: Duration,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            ttl: Duration::from_secs(300),
        }
    }
}

/// The in-memory validator store (cheap to clone: clones share the map).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    entries: DashMap<ResourceKey, Box<Entry>, KeyHasherBuilder>,
    /// The validators of entries whose state does not fit inline. Changed only under the key's
    /// `entries` shard lock (lock order: `entries`, then `spilled`).
    spilled: DashMap<ResourceKey, Present, KeyHasherBuilder>,
    leases: Leases,
    /// The source of every generation.
    clock: AtomicU64,
    watermarks: Watermarks,
    /// Each entry's key appears exactly once, in the ring chosen by its key bits.
    rings: Rings,
    /// Number of entries (kept here: `DashMap::len` locks every shard).
    len: AtomicUsize,
    /// Lookups (load, acquire) that found a known state, and those that did not; entries
    /// evicted for room. Plain relaxed atomics: the metrics exporter reads them on scrape.
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    max_entries: usize,
    /// TTL in whole seconds, rounded up.
    ttl_secs: u32,
    time: TimeSource,
}

/// Where "now" comes from: the monotonic clock, or a hand-driven one in tests.
enum TimeSource {
    Monotonic(Instant),
    #[cfg(test)]
    Manual(Arc<std::sync::atomic::AtomicU32>),
}

impl MemoryStore {
    /// A store with these limits.
    pub fn new(config: MemoryStoreConfig) -> Self {
        Self::with_time(config, TimeSource::Monotonic(Instant::now()))
    }

    fn with_time(config: MemoryStoreConfig, time: TimeSource) -> Self {
        let hasher = KeyHasherBuilder::new();
        let ttl = &config.ttl;
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let inner = Inner {
            entries: DashMap::with_hasher(hasher.clone()),
            spilled: DashMap::with_hasher(hasher.clone()),
            leases: Leases::new(hasher),
            clock: AtomicU64::new(0),
            watermarks: Watermarks::new(),
            rings: Rings::new(),
            len: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            max_entries: config.max_entries,
            ttl_secs: u32::try_from(ttl_secs).unwrap_or(u32::MAX),
            time,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Number of entries held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryStoreConfig::default())
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("max_entries", &self.inner.max_entries)
            .field("ttl_secs", &self.inner.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    type Lease = MemoryLease;

    async fn load(&self, key: ResourceKey) -> Result<Snapshot, StoreError> {
        let snapshot = self.inner.load(key);
        self.inner.count_lookup(&snapshot);
        Ok(snapshot)
    }

    async fn learn(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<bool, StoreError> {
        Ok(self.inner.learn(key, generation, observation))
    }

    async fn acquire(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> Result<(MemoryLease, Snapshot), StoreError> {
        let guard = self.inner.leases.lock(key, wait).await?;
        let lease = MemoryLease::new(Arc::clone(&self.inner), key, guard);
        let snapshot = self.inner.mark_leased(key);
        self.inner.count_lookup(&snapshot);
        Ok((lease, snapshot))
    }

    /// Refuses without a lease when the entry, read under its shard lock, is not leased and
    /// shows the precondition failed: the refusal is ordered before any write that takes the
    /// lease afterwards (a lease taken but not yet marked has changed nothing). Otherwise it
    /// takes the lease as [`Store::acquire`] does.
    async fn acquire_unless(
        &self,
        key: ResourceKey,
        wait: Duration,
        refusal: &Refusal,
    ) -> Result<Acquired<MemoryLease>, StoreError> {
        let snapshot = self.inner.load(key);
        if !snapshot.leased && refusal.fails(&snapshot.state) {
            self.inner.count_lookup(&snapshot);
            return Ok(Acquired::Refused(snapshot));
        }
        let (lease, snapshot) = self.acquire(key, wait).await?;
        Ok(Acquired::Held(lease, snapshot))
    }

    async fn complete(&self, lease: MemoryLease, outcome: Outcome) -> Result<(), StoreError> {
        lease.complete(outcome);
        Ok(())
    }

    async fn purge(&self, key: ResourceKey) -> Result<bool, StoreError> {
        Ok(self.inner.purge(key))
    }

    fn stats(&self) -> Option<StoreStats> {
        let inner = &self.inner;
        Some(StoreStats {
            entries: inner.len.load(Ordering::Relaxed) as u64,
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            evictions: inner.evictions.load(Ordering::Relaxed),
        })
    }
}

impl Inner {
    fn now(&self) -> u32 {
        match &self.time {
            TimeSource::Monotonic(start) => {
                u32::try_from(start.elapsed().as_secs()).unwrap_or(u32::MAX)
            }
            #[cfg(test)]
            TimeSource::Manual(now) => now.load(Ordering::Relaxed),
        }
    }

    /// A fresh generation. Called with the key's shard lock held, so that a reader who then
    /// takes the lock sees the entry carrying it.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn count_lookup(&self, snapshot: &Snapshot) {
        let counter = match snapshot.state {
            KeyState::Unknown => &self.misses,
            _ => &self.hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn load(&self, key: ResourceKey) -> Snapshot {
        // Read the clock before looking: any entry created (or removed) after this read carries
        // (or leaves a watermark) greater than it.
        let clock = self.clock.load(Ordering::SeqCst);
        let now = self.now();
        match self.entries.get(&key) {
            Some(entry) => Snapshot {
                state: self.known(&key, &entry, now).into_state(),
                generation: entry.generation,
                leased: entry.leased,
            },
            None => Snapshot {
                state: KeyState::Unknown,
                generation: clock,
                leased: false,
            },
        }
    }

    fn learn(&self, key: ResourceKey, generation: u64, observation: Observation) -> bool {
        let now = self.now();
        if let Some(mut entry) = self.entries.get_mut(&key) {
            return self.apply(&key, &mut entry, generation, observation, now);
        }
        // Missing: was it removed since the caller's load?
        if self.watermarks.removed_since(&key, generation) {
            return false;
        }
        if matches!(observation, Observation::Unknown) {
            // Nothing to store: a missing key already reads as unknown.
            return true;
        }
        if !self.make_room(now) {
            // Full of leased entries: stay unknown rather than grow.
            return false;
        }
        match self.entries.entry(key) {
            MapEntry::Occupied(mut occupied) => {
                self.apply(&key, occupied.get_mut(), generation, observation, now)
            }
            MapEntry::Vacant(vacant) => {
                // Under the shard lock: a removal of this key either stamped its watermark
                // already or has not happened.
                if self.watermarks.removed_since(&key, generation) {
                    return false;
                }
                let mut entry = Entry::new(self.tick(), now.saturating_add(self.ttl_secs));
                let held = Known::Unknown.after(observation).unwrap_or(Held::Unknown);
                self.set(&key, &mut entry, held);
                self.insert(key, vacant, entry);
                true
            }
        }
    }

    /// Applies an observation to an existing entry if `generation` is still current.
    fn apply(
        &self,
        key: &ResourceKey,
        entry: &mut Entry,
        generation: u64,
        obs: Observation,
        now: u32,
    ) -> bool {
        if entry.generation != generation {
            return false;
        }
        self.settle(key, entry, now);
        let next = self.known(key, entry, now).after(obs);
        if let Some(next) = next {
            self.set(key, entry, next);
            entry.generation = self.tick();
        }
        entry.expires_at = now.saturating_add(self.ttl_secs);
        entry.visited = true;
        true
    }

    /// Marks `key` leased (creating it if needed) and returns its state under the lease.
    fn mark_leased(&self, key: ResourceKey) -> Snapshot {
        let now = self.now();
        // A lease must be visible to others, so the entry is created even past capacity.
        let expires_at = now.saturating_add(self.ttl_secs);
        self.upsert(key, now, expires_at, true, |entry, generation| {
            self.settle(&key, entry, now);
            entry.generation = generation;
            entry.leased = true;
            entry.visited = true;
            Snapshot {
                state: self.known(&key, entry, now).into_state(),
                generation,
                leased: true,
            }
        })
    }

    /// Records a lease holder's outcome and clears the leased mark.
    fn record(&self, key: ResourceKey, outcome: Outcome) {
        let now = self.now();
        // Leased entries are never evicted; should it be gone anyway, record the outcome in a
        // new one rather than lose it.
        self.upsert(key, now, now, false, |entry, generation| {
            self.settle(&key, entry, now);
            // A refused write keeps the state and its expiry, which it does not extend.
            if let Some(next) = Held::written(outcome) {
                self.set(&key, entry, next);
                entry.expires_at = now.saturating_add(self.ttl_secs);
            }
            entry.generation = generation;
            entry.leased = false;
            entry.visited = true;
        });
    }

    /// Runs `update` on the entry of `key` under its shard lock, with a fresh generation. A
    /// missing entry is created, expiring at `expires_at`, after making room if `evict`.
    fn upsert<R>(
        &self,
        key: ResourceKey,
        now: u32,
        expires_at: u32,
        evict: bool,
        update: impl FnOnce(&mut Entry, u64) -> R,
    ) -> R {
        if let Some(mut entry) = self.entries.get_mut(&key) {
            return update(&mut entry, self.tick());
        }
        if evict {
            self.make_room(now);
        }
        match self.entries.entry(key) {
            MapEntry::Occupied(mut occupied) => update(occupied.get_mut(), self.tick()),
            MapEntry::Vacant(vacant) => {
                let mut entry = Entry::new(self.tick(), expires_at);
                let generation = entry.generation;
                let updated = update(&mut entry, generation);
                self.insert(key, vacant, entry);
                updated
            }
        }
    }

    /// Forgets what is known about `key`. The entry itself stays (it still sits in an eviction
    /// ring, and may carry a lease): it becomes unknown with a new generation, which refuses
    /// every learn in flight.
    fn purge(&self, key: ResourceKey) -> bool {
        let now = self.now();
        match self.entries.get_mut(&key) {
            Some(mut entry) => {
                let held = entry.holds(now);
                self.set(&key, &mut entry, Held::Unknown);
                entry.generation = self.tick();
                held
            }
            None => false,
        }
    }
}
