//! Capacity: the eviction rings, the SIEVE-like scan, and the removal watermarks.
//!
//! Guarantees:
//! - Every entry's key sits exactly once in one ring (the one its key bits choose), and `len`
//!   counts the entries: entries come in only through [`Inner::insert`] and leave only through
//!   [`Inner::make_room`].
//! - Every removal raises its key's watermark to a generation stamped under the shard lock,
//!   before the entry goes: [`Watermarks::removed_since`] tells a read of a missing key
//!   whether a removal came after its load.
//! - Leased entries are never evicted; the work per insertion is bounded (a few passes over at
//!   most [`EVICTION_BUDGET`] candidates), whatever the map size.
//!
//! Lock order: ring, then `entries` shard (then `spilled`): no ring lock is taken under a shard
//! lock. Callers hold no map reference when making room, and hand [`Inner::insert`] the vacant
//! slot as their only one (it lets go of it before locking the ring).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use dashmap::mapref::entry::{Entry as MapEntry, VacantEntry};

use super::Inner;
use super::entry::Entry;
use crate::key::ResourceKey;

/// Number of removal watermarks (a power of two). A removal refuses the in-flight reads of
/// every missing key sharing its slot: under a churn of R removals/s and reads taking T s, a
/// read is refused with probability about R*T/WATERMARKS (10k/s * 50 ms: 0.8% here, 12% with
/// 4096). 512 KiB per store buys that.
const WATERMARKS: usize = 65536;
/// Number of eviction rings (a power of two): spreads the ring locks.
const RINGS: usize = 16;
/// Candidates an insertion examines per pass (one with second chance, one without).
const EVICTION_BUDGET: usize = 32;

/// Per slot of keys, the clock value stamped by the latest removal of a key in that slot.
pub(super) struct Watermarks {
    slots: Box<[AtomicU64]>,
}

/// FIFO rings of keys, the order in which eviction examines entries.
pub(super) struct Rings {
    queues: Box<[Mutex<VecDeque<ResourceKey>>]>,
    /// Which ring the next eviction starts from.
    cursor: AtomicUsize,
}

impl Watermarks {
    /// No removal yet.
    pub(super) fn new() -> Self {
        Self {
            slots: (0..WATERMARKS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether a key sharing the slot of `key` was removed after `generation` was handed out.
    pub(super) fn removed_since(&self, key: &ResourceKey, generation: u64) -> bool {
        self.slot(key).load(Ordering::SeqCst) > generation
    }

    fn raise(&self, key: &ResourceKey, stamp: u64) {
        self.slot(key).fetch_max(stamp, Ordering::SeqCst);
    }

    fn slot(&self, key: &ResourceKey) -> &AtomicU64 {
        let bytes = key.as_bytes();
        let slot = usize::from(u16::from_le_bytes([bytes[8], bytes[9]])) & (WATERMARKS - 1);
        &self.slots[slot]
    }
}

impl Rings {
    /// Empty rings.
    pub(super) fn new() -> Self {
        Self {
            queues: (0..RINGS).map(|_| Mutex::new(VecDeque::new())).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, VecDeque<ResourceKey>> {
        self.queues[index & (RINGS - 1)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, key: ResourceKey) {
        self.lock(usize::from(key.as_bytes()[10])).push_back(key);
    }
}

impl Inner {
    /// Stores `entry` as the entry of `key` in its vacant slot, and queues it for eviction.
    pub(super) fn insert(
        &self,
        key: ResourceKey,
        slot: VacantEntry<'_, ResourceKey, Box<Entry>>,
        entry: Entry,
    ) {
        // The shard lock goes with the reference, before the ring lock is taken.
        drop(slot.insert(Box::new(entry)));
        self.len.fetch_add(1, Ordering::Relaxed);
        self.rings.push(key);
    }

    /// Evicts one entry if the store is full. Returns whether there is room (there may not be
    /// when every candidate examined is leased).
    pub(super) fn make_room(&self, now: u32) -> bool {
        if self.len.load(Ordering::Relaxed) < self.max_entries {
            return true;
        }
        let start = self.rings.cursor.fetch_add(1, Ordering::Relaxed);
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
    /// runs out.
    fn evict_from(&self, ring: usize, now: u32, force: bool, budget: &mut usize) -> bool {
        let mut ring = self.rings.lock(ring);
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
                self.forget(&key, entry);
                let stamp = self.tick();
                self.watermarks.raise(&key, stamp);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::contract::{self, key, validator};
    use crate::store::{KeyState, MemoryStore, MemoryStoreConfig, Observation, Outcome, Store};

    fn numbered(n: u32) -> ResourceKey {
        let mut bytes = [0u8; 16];
        // Spread over rings, watermarks and hash bits like a digest would.
        let h = blake3::hash(&n.to_le_bytes());
        bytes.copy_from_slice(&h.as_bytes()[..16]);
        ResourceKey::from_bytes(bytes)
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
        let queued: usize = (0..RINGS).map(|r| store.inner.rings.lock(r).len()).sum();
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
}
