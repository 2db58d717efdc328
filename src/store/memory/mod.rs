//! The embedded store: a dashmap of fixed-size entries, bounded by capacity and TTL.
//!
//! Each key costs an 8-byte table slot pointing at one 40-byte entry (plus a 16-byte slot in an
//! eviction ring). The common state, one strong validator without `Last-Modified` whose tag is
//! synthesized (kept as its 16-byte digest) or at most 16 bytes long, lives inline in the entry;
//! anything else (several representations, a long tag, a `Last-Modified`) spills into a side
//! map, touched only under the key's shard lock. The table holds pointers rather than entries
//! because a hash table runs at 44-87% load: a small slot wastes less at any load factor. Generations come from one global clock,
//! stamped while the key's shard lock is held, so a generation handed out by [`Store::load`] can
//! only match the entry state it was read with.
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

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::{Mutex as LeaseMutex, OwnedMutexGuard};

use super::{
    KeyState, Observation, Outcome, Representation, Snapshot, Store, StoreError, StoreStats,
    Validator,
};
use crate::etag::{EntityTag, SYNTHESIZED_PREFIX};
use crate::key::ResourceKey;

/// Most representations tracked per resource; a new one past this replaces them all.
const MAX_REPRESENTATIONS: usize = 4;
/// Number of removal watermarks (a power of two). A removal refuses the in-flight reads of
/// every missing key sharing its slot: under a churn of R removals/s and reads taking T s, a
/// read is refused with probability about R*T/WATERMARKS (10k/s * 50 ms: 0.8% here, 12% with
/// 4096). 512 KiB per store buys that.
const WATERMARKS: usize = 65536;
/// Number of eviction rings (a power of two): spreads the ring locks.
const RINGS: usize = 16;
/// Candidates an insertion examines per pass (one with second chance, one without).
const EVICTION_BUDGET: usize = 32;

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

/// The write lease of the memory store.
///
/// Dropping it without [`Store::complete`] (say, the client went away mid-write) marks the key
/// unknown, because the write may or may not have applied.
pub struct MemoryLease {
    inner: Arc<Inner>,
    key: ResourceKey,
    /// Held until the outcome is recorded; `None` once released.
    guard: Option<OwnedMutexGuard<()>>,
    completed: bool,
}

struct Inner {
    entries: DashMap<ResourceKey, Box<Entry>, KeyHasherBuilder>,
    /// The validators of entries whose state does not fit inline (`State::Spilled`). Changed
    /// only under the key's `entries` shard lock (lock order: `entries`, then `spilled`).
    spilled: DashMap<ResourceKey, Present, KeyHasherBuilder>,
    /// One mutex per key with a lease held or awaited; removed when nobody references it.
    leases: DashMap<ResourceKey, Arc<LeaseMutex<()>>, KeyHasherBuilder>,
    /// The source of every generation.
    clock: AtomicU64,
    /// Per slot, the clock value stamped by the latest removal of a key in that slot.
    watermarks: Box<[AtomicU64]>,
    /// Each entry's key appears exactly once, in the ring chosen by its key bits.
    rings: Box<[Mutex<VecDeque<ResourceKey>>]>,
    /// Which ring the next eviction starts from.
    cursor: AtomicUsize,
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

/// One key's state, kept small: 40 bytes (one 48-byte malloc chunk), the common validator inline.
struct Entry {
    generation: u64,
    /// The inline validator's representation (`State::Inline` only).
    representation: u64,
    /// The inline validator's tag (`State::Inline` only).
    tag: CompactTag,
    /// Coarse expiry, in seconds since the store was created.
    expires_at: u32,
    state: State,
    leased: bool,
    /// Touched since the eviction scan last passed it.
    visited: bool,
}

/// Where an entry's state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    /// Known not to exist.
    Absent,
    /// One validator, no `Last-Modified`: in the entry's `representation` and `tag`.
    Inline,
    /// In the side map.
    Spilled,
}

/// A strong entity-tag in 17 bytes: a synthesized tag's 16-byte digest, or an opaque-tag of at
/// most 16 bytes. The two encodings cannot collide (`len` tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompactTag {
    /// Length of the opaque-tag in `bytes`, or [`CompactTag::DIGEST`].
    len: u8,
    bytes: [u8; 16],
}

#[derive(Clone)]
struct Present {
    validators: Box<[Validator]>,
    last_modified: Option<SystemTime>,
}

/// A state to store.
enum Held {
    Unknown,
    Absent,
    Present(Present),
}

/// What an entry says right now, expiry applied (owned: a spilled state is cloned out, so that
/// no side-map guard is held while the entry changes).
enum Known {
    Unknown,
    Absent,
    Inline {
        representation: Representation,
        tag: CompactTag,
    },
    Spilled(Present),
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
            leases: DashMap::with_hasher(hasher),
            clock: AtomicU64::new(0),
            watermarks: (0..WATERMARKS).map(|_| AtomicU64::new(0)).collect(),
            rings: (0..RINGS).map(|_| Mutex::new(VecDeque::new())).collect(),
            cursor: AtomicUsize::new(0),
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

impl fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLease")
            .field("key", &self.key)
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
        // Cloned under the shard lock, where a release counts the references.
        let mutex = Arc::clone(&self.inner.leases.entry(key).or_default());
        let guard = match Arc::clone(&mutex).try_lock_owned() {
            // Uncontended: no timer, no allocation.
            Ok(guard) => guard,
            Err(_) => {
                let waiter = Waiter {
                    inner: &self.inner,
                    key,
                    lock: Some(Box::pin(mutex.lock_owned())),
                };
                match tokio::time::timeout(wait, waiter).await {
                    Ok(guard) => guard,
                    Err(_) => return Err(StoreError::LeaseTimeout),
                }
            }
        };
        let lease = MemoryLease {
            inner: Arc::clone(&self.inner),
            key,
            guard: Some(guard),
            completed: false,
        };
        let snapshot = self.inner.mark_leased(key);
        self.inner.count_lookup(&snapshot);
        Ok((lease, snapshot))
    }

    async fn complete(&self, mut lease: MemoryLease, outcome: Outcome) -> Result<(), StoreError> {
        // The lease carries its own store: this stays right even if it came from another clone.
        lease.inner.record(lease.key, outcome);
        lease.completed = true;
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

impl Drop for MemoryLease {
    fn drop(&mut self) {
        if !self.completed {
            self.inner.record(self.key, Outcome::Unknown);
        }
        // The outcome is recorded before the next holder can run.
        drop(self.guard.take());
        self.inner.release_slot(self.key);
    }
}

/// Waits for a key's lease mutex. When dropped (timeout, cancellation, or done), it drops its
/// reference first, then removes the mutex from the map if nobody else references it: so a
/// waiter that gives up never leaves the mutex behind.
struct Waiter<'a, F> {
    inner: &'a Inner,
    key: ResourceKey,
    lock: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = OwnedMutexGuard<()>>> Future for Waiter<'_, F> {
    type Output = OwnedMutexGuard<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.lock.as_mut() {
            Some(lock) => lock.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<F> Drop for Waiter<'_, F> {
    fn drop(&mut self) {
        drop(self.lock.take());
        self.inner.release_slot(self.key);
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

    fn watermark(&self, key: &ResourceKey) -> &AtomicU64 {
        let bytes = key.as_bytes();
        let slot = usize::from(u16::from_le_bytes([bytes[8], bytes[9]])) & (WATERMARKS - 1);
        &self.watermarks[slot]
    }

    fn ring(&self, index: usize) -> std::sync::MutexGuard<'_, VecDeque<ResourceKey>> {
        self.rings[index & (RINGS - 1)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ring_of(key: &ResourceKey) -> usize {
        usize::from(key.as_bytes()[10])
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
        if self.watermark(&key).load(Ordering::SeqCst) > generation {
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
        let recorded = match self.entries.entry(key) {
            MapEntry::Occupied(mut occupied) => {
                return self.apply(&key, occupied.get_mut(), generation, observation, now);
            }
            MapEntry::Vacant(vacant) => {
                // Under the shard lock: a removal of this key either stamped its watermark
                // already or has not happened.
                if self.watermark(&key).load(Ordering::SeqCst) > generation {
                    return false;
                }
                let mut entry = Entry::new(self.tick(), now.saturating_add(self.ttl_secs));
                let held = Known::Unknown.after(observation).unwrap_or(Held::Unknown);
                self.set(&key, &mut entry, held);
                vacant.insert(Box::new(entry));
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        self.ring(Self::ring_of(&key)).push_back(key);
        recorded
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
        let lease_entry = |entry: &mut Entry, generation| {
            self.settle(&key, entry, now);
            entry.generation = generation;
            entry.leased = true;
            entry.visited = true;
            Snapshot {
                state: self.known(&key, entry, now).into_state(),
                generation,
                leased: true,
            }
        };
        if let Some(mut entry) = self.entries.get_mut(&key) {
            return lease_entry(&mut entry, self.tick());
        }
        // A lease must be visible to others, so the entry is created even past capacity.
        self.make_room(now);
        let (snapshot, created) = match self.entries.entry(key) {
            MapEntry::Occupied(mut occupied) => {
                (lease_entry(occupied.get_mut(), self.tick()), false)
            }
            MapEntry::Vacant(vacant) => {
                let mut entry = Entry::new(self.tick(), now.saturating_add(self.ttl_secs));
                let generation = entry.generation;
                let snapshot = lease_entry(&mut entry, generation);
                vacant.insert(Box::new(entry));
                self.len.fetch_add(1, Ordering::Relaxed);
                (snapshot, true)
            }
        };
        if created {
            self.ring(Self::ring_of(&key)).push_back(key);
        }
        snapshot
    }

    /// Records a lease holder's outcome and clears the leased mark.
    fn record(&self, key: ResourceKey, outcome: Outcome) {
        let now = self.now();
        let update = |entry: &mut Entry, generation| {
            self.settle(&key, entry, now);
            let next = match outcome {
                Outcome::Replaced {
                    validator,
                    last_modified,
                } => Some(Held::Present(Present {
                    validators: Box::new([validator]),
                    last_modified,
                })),
                Outcome::Deleted => Some(Held::Absent),
                Outcome::Unknown => Some(Held::Unknown),
                // A refused write says nothing new about the resource: keep the state and its
                // expiry, which it does not extend.
                Outcome::Unchanged => None,
            };
            if let Some(next) = next {
                self.set(&key, entry, next);
                entry.expires_at = now.saturating_add(self.ttl_secs);
            }
            entry.generation = generation;
            entry.leased = false;
            entry.visited = true;
        };
        if let Some(mut entry) = self.entries.get_mut(&key) {
            update(&mut entry, self.tick());
            return;
        }
        // Leased entries are never evicted; should it be gone anyway, record the outcome in a
        // new one rather than lose it.
        let created = match self.entries.entry(key) {
            MapEntry::Occupied(mut occupied) => {
                update(occupied.get_mut(), self.tick());
                false
            }
            MapEntry::Vacant(vacant) => {
                let mut entry = Entry::new(self.tick(), now);
                let generation = entry.generation;
                update(&mut entry, generation);
                vacant.insert(Box::new(entry));
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        if created {
            self.ring(Self::ring_of(&key)).push_back(key);
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

    /// Removes the lease mutex of `key` if nobody holds, awaits or is about to await it.
    fn release_slot(&self, key: ResourceKey) {
        // Under the shard lock, where every new waiter clones the Arc: a count of one (the
        // map's) means nobody else can be using it.
        self.leases
            .remove_if(&key, |_, mutex| Arc::strong_count(mutex) == 1);
    }

    /// Evicts one entry if the store is full. Returns whether there is room (there may not be
    /// when every candidate examined is leased).
    fn make_room(&self, now: u32) -> bool {
        if self.len.load(Ordering::Relaxed) < self.max_entries {
            return true;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // Second chance first; if every candidate was touched lately, recency is ignored.
        for force in [false, true] {
            let mut budget = EVICTION_BUDGET;
            for offset in 0..RINGS {
                if budget == 0 {
                    break;
                }
                if self.evict_from(start.wrapping_add(offset), now, force, &mut budget) {
                    return true;
                }
            }
        }
        false
    }

    /// Examines candidates of one ring, each at most once, until one is evicted or the budget
    /// runs out. Lock order: ring, then shard (no ring lock is taken under a shard lock).
    fn evict_from(&self, ring: usize, now: u32, force: bool, budget: &mut usize) -> bool {
        let mut ring = self.ring(ring);
        let candidates = ring.len().min(*budget);
        *budget -= candidates;
        for _ in 0..candidates {
            let Some(key) = ring.pop_front() else {
                return false;
            };
            let MapEntry::Occupied(mut occupied) = self.entries.entry(key) else {
                continue; // Not expected: entries leave only through here.
            };
            let entry = occupied.get_mut();
            let spare = !entry.holds(now);
            if !entry.leased && (spare || !entry.visited || force) {
                if entry.state == State::Spilled {
                    self.spilled.remove(&key);
                }
                let stamp = self.tick();
                self.watermark(&key).fetch_max(stamp, Ordering::SeqCst);
                occupied.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            entry.visited = false;
            drop(occupied);
            ring.push_back(key);
        }
        false
    }
}

impl Inner {
    /// What `entry` (the entry of `key`) says at `now`.
    fn known(&self, key: &ResourceKey, entry: &Entry, now: u32) -> Known {
        if now >= entry.expires_at {
            return Known::Unknown;
        }
        match entry.state {
            State::Unknown => Known::Unknown,
            State::Absent => Known::Absent,
            State::Inline => Known::Inline {
                representation: Representation(entry.representation),
                tag: entry.tag,
            },
            // Not expected to be missing: spilled states change only with the entry.
            State::Spilled => self.spilled.get(key).map_or(Known::Unknown, |present| {
                Known::Spilled(Present::clone(&present))
            }),
        }
    }

    /// Stores `held` in `entry` (the entry of `key`), inline when it fits.
    fn set(&self, key: &ResourceKey, entry: &mut Entry, held: Held) {
        let was_spilled = entry.state == State::Spilled;
        entry.state = match held {
            Held::Unknown => State::Unknown,
            Held::Absent => State::Absent,
            Held::Present(present) => match present.inline() {
                Some((representation, tag)) => {
                    entry.representation = representation.0;
                    entry.tag = tag;
                    State::Inline
                }
                None => {
                    self.spilled.insert(*key, present);
                    State::Spilled
                }
            },
        };
        if was_spilled && entry.state != State::Spilled {
            self.spilled.remove(key);
        }
    }

    /// Makes an expiry explicit before the expiry time moves, so that refreshing the expiry
    /// can never revive a state that had already lapsed.
    fn settle(&self, key: &ResourceKey, entry: &mut Entry, now: u32) {
        if now >= entry.expires_at {
            self.set(key, entry, Held::Unknown);
        }
    }
}

impl Entry {
    fn new(generation: u64, expires_at: u32) -> Self {
        Self {
            generation,
            representation: 0,
            tag: CompactTag {
                len: 0,
                bytes: [0; 16],
            },
            expires_at,
            state: State::Unknown,
            leased: false,
            visited: false,
        }
    }

    /// Whether the entry holds a known state (present or absent) at `now`.
    fn holds(&self, now: u32) -> bool {
        now < self.expires_at && self.state != State::Unknown
    }
}

impl Present {
    /// The one validator and its compact tag, if this state fits inline.
    fn inline(&self) -> Option<(Representation, CompactTag)> {
        match (&*self.validators, self.last_modified) {
            ([only], None) => Some((only.representation, CompactTag::new(&only.tag)?)),
            _ => None,
        }
    }
}

impl CompactTag {
    /// Marks a synthesized tag's digest.
    const DIGEST: u8 = u8::MAX;

    /// The compact form of a strong tag, if it has one.
    fn new(tag: &EntityTag) -> Option<Self> {
        if tag.is_weak() {
            return None;
        }
        let mut bytes = [0u8; 16];
        if tag.is_synthesized() {
            // The shape is checked: "ifm-" and 32 lowercase hex digits.
            let hex = &tag.opaque().as_bytes()[SYNTHESIZED_PREFIX.len()..];
            for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
                *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
            return Some(Self {
                len: Self::DIGEST,
                bytes,
            });
        }
        let opaque = tag.opaque().as_bytes();
        let len = u8::try_from(opaque.len()).ok().filter(|&n| n <= 16)?;
        bytes[..opaque.len()].copy_from_slice(opaque);
        Some(Self { len, bytes })
    }

    /// The tag back, exactly as it was stored.
    fn to_tag(self) -> EntityTag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let opaque = if self.len == Self::DIGEST {
            let mut opaque = String::with_capacity(SYNTHESIZED_PREFIX.len() + 32);
            opaque.push_str(SYNTHESIZED_PREFIX);
            for byte in self.bytes {
                opaque.push(char::from(HEX[usize::from(byte >> 4)]));
                opaque.push(char::from(HEX[usize::from(byte & 15)]));
            }
            opaque
        } else {
            String::from_utf8_lossy(&self.bytes[..usize::from(self.len)]).into_owned()
        };
        // It was a valid strong tag when it was stored.
        EntityTag::strong(&opaque).expect("a stored entity-tag stays valid")
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

impl Known {
    fn into_state(self) -> KeyState {
        match self {
            Known::Unknown => KeyState::Unknown,
            Known::Absent => KeyState::Absent,
            Known::Inline {
                representation,
                tag,
            } => KeyState::Present {
                validators: vec![Validator {
                    tag: tag.to_tag(),
                    representation,
                }],
                last_modified: None,
            },
            Known::Spilled(present) => KeyState::Present {
                validators: present.validators.into_vec(),
                last_modified: present.last_modified,
            },
        }
    }

    /// The state after `observation`, or `None` if it confirms the current one.
    fn after(&self, observation: Observation) -> Option<Held> {
        let (validator, last_modified) = match observation {
            Observation::Unknown => {
                return (!matches!(self, Known::Unknown)).then_some(Held::Unknown);
            }
            Observation::Absent => {
                return (!matches!(self, Known::Absent)).then_some(Held::Absent);
            }
            Observation::Validator {
                validator,
                last_modified,
            } => (validator, last_modified),
        };
        let inline;
        let present = match self {
            Known::Inline {
                representation,
                tag,
            } => {
                // The common confirming read: compared without allocating.
                if last_modified.is_none()
                    && validator.representation == *representation
                    && CompactTag::new(&validator.tag) == Some(*tag)
                {
                    return None;
                }
                inline = Present {
                    validators: Box::new([Validator {
                        tag: tag.to_tag(),
                        representation: *representation,
                    }]),
                    last_modified: None,
                };
                Some(&inline)
            }
            Known::Spilled(present) => Some(present),
            Known::Unknown | Known::Absent => None,
        };
        let validators: Box<[Validator]> = match present {
            Some(present) => {
                let held = present
                    .validators
                    .iter()
                    .find(|v| v.representation == validator.representation);
                match held {
                    Some(held) if held.tag == validator.tag => {
                        if present.last_modified == last_modified {
                            return None;
                        }
                        present.validators.clone()
                    }
                    // A new representation of the same state.
                    None if present.validators.len() < MAX_REPRESENTATIONS => {
                        let mut all = present.validators.to_vec();
                        all.push(validator);
                        all.into_boxed_slice()
                    }
                    // The resource changed (or too many representations): start over.
                    _ => Box::new([validator]),
                }
            }
            None => Box::new([validator]),
        };
        Some(Held::Present(Present {
            validators,
            last_modified,
        }))
    }
}

/// Hashes a [`ResourceKey`] cheaply: the key is already a uniform blake3 digest, so a
/// multiply-fold with per-store random seeds spreads it as well as SipHash would, while the
/// seeds keep bucket positions unpredictable to whoever chooses the URLs.
#[derive(Clone)]
struct KeyHasherBuilder {
    seeds: [u64; 2],
}

impl KeyHasherBuilder {
    fn new() -> Self {
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seeds: [random.hash_one(0u8), random.hash_one(1u8) | 1],
        }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            hash: self.seeds[0],
            multiplier: self.seeds[1],
        }
    }
}

struct KeyHasher {
    hash: u64,
    multiplier: u64,
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let product =
                u128::from(self.hash ^ u64::from_le_bytes(word)) * u128::from(self.multiplier);
            self.hash = (product as u64) ^ ((product >> 64) as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::store::contract::{self, key, observed, validator};

    crate::store::contract::contract_tests!(MemoryStore::default());

    /// A store whose clock only moves when the test says so.
    fn manual(max_entries: usize, ttl: Duration) -> (MemoryStore, Arc<AtomicU32>) {
        let now = Arc::new(AtomicU32::new(0));
        let config = MemoryStoreConfig { max_entries, ttl };
        let store = MemoryStore::with_time(config, TimeSource::Manual(Arc::clone(&now)));
        (store, now)
    }

    fn numbered(n: u32) -> ResourceKey {
        let mut bytes = [0u8; 16];
        // Spread over rings, watermarks and hash bits like a digest would.
        let h = blake3::hash(&n.to_le_bytes());
        bytes.copy_from_slice(&h.as_bytes()[..16]);
        ResourceKey::from_bytes(bytes)
    }

    #[test]
    fn entries_stay_small() {
        // The table slot is a pointer; the entry is one 48-byte malloc chunk (40 usable).
        assert!(size_of::<Box<Entry>>() <= 8);
        assert!(size_of::<Entry>() <= 40, "{}", size_of::<Entry>());
    }

    #[test]
    fn compact_tags_round_trip() {
        let digest = blake3::hash(b"body");
        let tags = [
            EntityTag::synthesized(&digest),
            EntityTag::strong("").unwrap(),
            EntityTag::strong("0123456789abcdef").unwrap(),
            // Starts like a synthesized tag but is not one: kept as text.
            EntityTag::strong("ifm-0123").unwrap(),
        ];
        for tag in tags {
            let compact = CompactTag::new(&tag).expect("fits");
            assert_eq!(compact.to_tag(), tag);
        }
        assert_eq!(
            CompactTag::new(&EntityTag::synthesized(&digest))
                .unwrap()
                .len,
            CompactTag::DIGEST
        );
        assert!(CompactTag::new(&EntityTag::strong("0123456789abcdefg").unwrap()).is_none());
        assert!(CompactTag::new(&EntityTag::weak("a").unwrap()).is_none());
        let upper = EntityTag::strong("ifm-0123456789ABCDEF0123456789ABCDEF").unwrap();
        assert!(CompactTag::new(&upper).is_none());
    }

    #[tokio::test]
    async fn spilled_states_round_trip_and_are_released() {
        let store = MemoryStore::default();
        let long = Validator {
            tag: EntityTag::strong("a-tag-longer-than-sixteen-bytes").unwrap(),
            representation: Representation(1),
        };
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, observed(&long)).await.unwrap());
        assert_eq!(
            store.load(key(1)).await.unwrap().state,
            contract::present(&[long])
        );
        assert_eq!(store.inner.spilled.len(), 1);
        // Back to an inline state: the side map lets go.
        let short = validator("short", 1);
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, observed(&short)).await.unwrap());
        assert_eq!(
            store.load(key(1)).await.unwrap().state,
            contract::present(&[short])
        );
        assert_eq!(store.inner.spilled.len(), 0);
        // Purged while spilled.
        let lm = Observation::Validator {
            validator: validator("short", 1),
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, lm).await.unwrap());
        assert_eq!(store.inner.spilled.len(), 1);
        assert!(store.purge(key(1)).await.unwrap());
        assert_eq!(store.inner.spilled.len(), 0);
    }

    #[tokio::test]
    async fn clones_share_state() {
        let a = MemoryStore::default();
        let b = a.clone();
        let g = a.load(key(1)).await.unwrap().generation;
        assert!(b.learn(key(1), g, Observation::Absent).await.unwrap());
        assert_eq!(a.load(key(1)).await.unwrap().state, KeyState::Absent);
        assert_eq!(a.len(), 1);
    }

    #[tokio::test]
    async fn ttl_expiry_reads_unknown_but_keeps_generation() {
        let (store, now) = manual(100, Duration::from_secs(10));
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, Observation::Absent).await.unwrap());
        now.store(9, Ordering::Relaxed);
        let fresh = store.load(key(1)).await.unwrap();
        assert_eq!(fresh.state, KeyState::Absent);
        now.store(10, Ordering::Relaxed);
        let expired = store.load(key(1)).await.unwrap();
        assert_eq!(expired.state, KeyState::Unknown);
        // Still protected: the generation did not move, and a stale one is refused.
        assert_eq!(expired.generation, fresh.generation);
        assert!(!store.learn(key(1), g, Observation::Absent).await.unwrap());
        // Learning again with the current generation is a change (unknown -> absent).
        assert!(
            store
                .learn(key(1), expired.generation, Observation::Absent)
                .await
                .unwrap()
        );
        let relearned = store.load(key(1)).await.unwrap();
        assert_eq!(relearned.state, KeyState::Absent);
        assert_ne!(relearned.generation, expired.generation);
    }

    #[tokio::test]
    async fn sub_second_ttl_rounds_up_and_learning_refreshes() {
        let (store, now) = manual(100, Duration::from_millis(1500));
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, Observation::Absent).await.unwrap());
        now.store(1, Ordering::Relaxed);
        let snap = store.load(key(1)).await.unwrap();
        assert_eq!(snap.state, KeyState::Absent);
        // A confirming read refreshes the expiry without moving the generation.
        assert!(
            store
                .learn(key(1), snap.generation, Observation::Absent)
                .await
                .unwrap()
        );
        now.store(2, Ordering::Relaxed);
        let later = store.load(key(1)).await.unwrap();
        assert_eq!(later.state, KeyState::Absent);
        assert_eq!(later.generation, snap.generation);
        now.store(3, Ordering::Relaxed);
        assert_eq!(store.load(key(1)).await.unwrap().state, KeyState::Unknown);
    }

    #[tokio::test]
    async fn expired_state_is_not_revived_under_a_lease() {
        let (store, now) = manual(100, Duration::from_secs(5));
        let g = store.load(key(1)).await.unwrap().generation;
        let v = validator("a", 1);
        assert!(store.learn(key(1), g, observed(&v)).await.unwrap());
        now.store(5, Ordering::Relaxed);
        let (lease, snap) = store.acquire(key(1), Duration::ZERO).await.unwrap();
        assert_eq!(snap.state, KeyState::Unknown);
        store.complete(lease, Outcome::Unchanged).await.unwrap();
        assert_eq!(store.load(key(1)).await.unwrap().state, KeyState::Unknown);
    }

    #[tokio::test]
    async fn capacity_is_bounded_under_a_flood_of_keys() {
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 1000,
            ttl: Duration::from_secs(300),
        });
        let mut refused = 0;
        for n in 0..10_000 {
            let g = store.load(numbered(n)).await.unwrap().generation;
            // Refused only if the eviction it caused shares its key's watermark slot.
            if !store
                .learn(numbered(n), g, Observation::Absent)
                .await
                .unwrap()
            {
                refused += 1;
            }
            // Single task: no concurrent inserter, so no slack at all.
            assert!(store.len() <= 1000, "len {} at {n}", store.len());
        }
        assert!(refused < 10, "{refused} learns refused");
        assert_eq!(store.len(), store.inner.entries.len());
        // Every entry sits in exactly one ring slot.
        let queued: usize = (0..RINGS).map(|r| store.inner.ring(r).len()).sum();
        assert_eq!(queued, store.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capacity_slack_is_one_per_thread() {
        const WORKERS: usize = 2;
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 1000,
            ttl: Duration::from_secs(300),
        });
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in t * 2_500..(t + 1) * 2_500 {
                        let g = store.load(numbered(n)).await.unwrap().generation;
                        store
                            .learn(numbered(n), g, Observation::Absent)
                            .await
                            .unwrap();
                        assert!(store.len() <= 1000 + WORKERS, "len {}", store.len());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.len(), store.inner.entries.len());
    }

    #[tokio::test]
    async fn recently_touched_keys_survive_eviction() {
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 100,
            ttl: Duration::from_secs(300),
        });
        let hot = numbered(u32::MAX);
        let g = store.load(hot).await.unwrap().generation;
        assert!(store.learn(hot, g, Observation::Absent).await.unwrap());
        for n in 0..5_000 {
            let g = store.load(numbered(n)).await.unwrap().generation;
            store
                .learn(numbered(n), g, Observation::Absent)
                .await
                .unwrap();
            let snap = store.load(hot).await.unwrap();
            assert_eq!(snap.state, KeyState::Absent, "hot key evicted at {n}");
            assert!(
                store
                    .learn(hot, snap.generation, Observation::Absent)
                    .await
                    .unwrap()
            );
        }
    }

    #[tokio::test]
    async fn eviction_raises_the_watermark() {
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 4,
            ttl: Duration::from_secs(300),
        });
        let k = numbered(0);
        let stale = store.load(k).await.unwrap().generation;
        // A write comes and goes, then the entry is evicted by other keys.
        let (lease, _) = store.acquire(k, Duration::ZERO).await.unwrap();
        store.complete(lease, Outcome::Deleted).await.unwrap();
        let mut n = 1;
        while store.inner.entries.contains_key(&k) {
            let g = store.load(numbered(n)).await.unwrap().generation;
            store
                .learn(numbered(n), g, Observation::Absent)
                .await
                .unwrap();
            n += 1;
            assert!(n < 1000, "never evicted");
        }
        // The read that started before the write must not install what it saw.
        assert!(!store.learn(k, stale, Observation::Absent).await.unwrap());
        // A read that starts now may.
        let fresh = store.load(k).await.unwrap().generation;
        assert!(store.learn(k, fresh, Observation::Absent).await.unwrap());
    }

    #[tokio::test]
    async fn leased_entries_are_never_evicted() {
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 10,
            ttl: Duration::from_secs(300),
        });
        let k = numbered(u32::MAX);
        let (lease, _) = store.acquire(k, Duration::ZERO).await.unwrap();
        for n in 0..2_000 {
            let g = store.load(numbered(n)).await.unwrap().generation;
            store
                .learn(numbered(n), g, Observation::Absent)
                .await
                .unwrap();
            assert!(store.len() <= 10);
        }
        let snap = store.load(k).await.unwrap();
        assert!(snap.leased);
        store
            .complete(
                lease,
                Outcome::Replaced {
                    validator: validator("done", 1),
                    last_modified: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.load(k).await.unwrap().state,
            contract::present(&[validator("done", 1)])
        );
    }

    #[tokio::test]
    async fn learn_stays_unknown_when_full_of_leases() {
        let store = MemoryStore::new(MemoryStoreConfig {
            max_entries: 2,
            ttl: Duration::from_secs(300),
        });
        let (a, _) = store.acquire(key(1), Duration::ZERO).await.unwrap();
        let (b, _) = store.acquire(key(2), Duration::ZERO).await.unwrap();
        let g = store.load(key(3)).await.unwrap().generation;
        assert!(!store.learn(key(3), g, Observation::Absent).await.unwrap());
        assert_eq!(store.len(), 2);
        // A lease is always granted: it must be visible to other writers.
        let (c, _) = store.acquire(key(3), Duration::ZERO).await.unwrap();
        assert_eq!(store.len(), 3);
        drop((a, b, c));
        let g = store.load(key(4)).await.unwrap().generation;
        assert!(store.learn(key(4), g, Observation::Absent).await.unwrap());
        assert!(store.len() <= 3);
    }

    #[tokio::test]
    async fn lease_slots_are_cleaned_up() {
        let store = MemoryStore::default();
        let (lease, _) = store.acquire(key(1), Duration::ZERO).await.unwrap();
        let err = store.acquire(key(1), Duration::from_millis(10)).await;
        assert!(matches!(err, Err(StoreError::LeaseTimeout)));
        // A waiter whose future is dropped mid-wait.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            store.acquire(key(1), Duration::from_secs(60)),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(store.inner.leases.len(), 1);
        store.complete(lease, Outcome::Unchanged).await.unwrap();
        assert_eq!(store.inner.leases.len(), 0);
        let (lease, _) = store.acquire(key(1), Duration::ZERO).await.unwrap();
        drop(lease);
        assert_eq!(store.inner.leases.len(), 0);
    }

    #[tokio::test]
    async fn waiter_cancelled_after_the_handover_cleans_up() {
        use futures_util::FutureExt;
        let store = MemoryStore::default();
        let (lease, _) = store.acquire(key(1), Duration::ZERO).await.unwrap();
        let mut waiting = Box::pin(store.acquire(key(1), Duration::from_secs(60)));
        assert!((&mut waiting).now_or_never().is_none());
        // The release sees the waiter's reference and leaves the mutex in place...
        drop(lease);
        assert_eq!(store.inner.leases.len(), 1);
        // ...so the waiter, abandoned before it ran again, must remove it.
        drop(waiting);
        assert_eq!(store.inner.leases.len(), 0);
        assert!(store.acquire(key(1), Duration::ZERO).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_slots_do_not_leak_under_timeouts_and_cancellations() {
        let store = MemoryStore::default();
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for round in 0..200u64 {
                        let k = key((round % 3) as u8);
                        let wait = Duration::from_micros((t * 7 + round) % 300);
                        let attempt = store.acquire(k, wait);
                        // Some waiters are abandoned before their own wait ends.
                        let abandon = Duration::from_micros((t * 13 + round * 5) % 400);
                        if let Ok(Ok((lease, _))) = tokio::time::timeout(abandon, attempt).await {
                            tokio::task::yield_now().await;
                            if round % 2 == 0 {
                                drop(lease);
                            } else {
                                store.complete(lease, Outcome::Unknown).await.unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.inner.leases.len(), 0);
        for n in 0..3 {
            assert!(!store.load(key(n)).await.unwrap().leased);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_prevents_lost_updates() {
        const TASKS: u64 = 32;
        const ROUNDS: u64 = 50;
        let k = key(7);

        // The "upstream": a counter read and written back by each task.
        let upstream = Arc::new(Mutex::new(0u64));
        let read = |u: &Mutex<u64>| *u.lock().unwrap();
        let write = |u: &Mutex<u64>, v| *u.lock().unwrap() = v;

        // Without the lease, read-modify-write loses updates.
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let upstream = Arc::clone(&upstream);
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let n = read(&upstream);
                    tokio::task::yield_now().await;
                    write(&upstream, n + 1);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let unguarded = read(&upstream);
        assert!(
            unguarded < TASKS * ROUNDS,
            "no update was lost: {unguarded}"
        );

        // With it, none is.
        write(&upstream, 0);
        let store = MemoryStore::default();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (store, upstream) = (store.clone(), Arc::clone(&upstream));
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let (lease, _) = store.acquire(k, Duration::from_secs(30)).await.unwrap();
                    let n = read(&upstream);
                    tokio::task::yield_now().await;
                    write(&upstream, n + 1);
                    let outcome = Outcome::Replaced {
                        validator: validator(&(n + 1).to_string(), 1),
                        last_modified: None,
                    };
                    store.complete(lease, outcome).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(read(&upstream), TASKS * ROUNDS);
        let last = validator(&(TASKS * ROUNDS).to_string(), 1);
        assert_eq!(
            store.load(k).await.unwrap().state,
            contract::present(&[last])
        );
        assert_eq!(store.inner.leases.len(), 0);
    }
}
