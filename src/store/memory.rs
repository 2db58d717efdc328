//! The embedded store: a dashmap of fixed-size entries, bounded by capacity and TTL.

use std::time::Duration;

use super::{Observation, Outcome, Snapshot, Store, StoreError};
use crate::key::ResourceKey;

/// Limits of the in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryStoreConfig {
    /// Most entries held; past it, the least recently touched entries are evicted (they become
    /// unknown, which is always safe: a write to an unknown key revalidates).
    pub max_entries: usize,
    /// How long a validator is trusted without seeing the resource again.
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
#[derive(Clone, Default)]
pub struct MemoryStore {}

/// The write lease of the memory store.
pub struct MemoryLease {}

impl MemoryStore {
    /// A store with these limits.
    pub fn new(config: MemoryStoreConfig) -> Self {
        todo!()
    }

    /// Number of entries held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        todo!()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    type Lease = MemoryLease;

    async fn load(&self, key: ResourceKey) -> Result<Snapshot, StoreError> {
        todo!()
    }

    async fn learn(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<bool, StoreError> {
        todo!()
    }

    async fn acquire(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> Result<(MemoryLease, Snapshot), StoreError> {
        todo!()
    }

    async fn complete(&self, lease: MemoryLease, outcome: Outcome) -> Result<(), StoreError> {
        todo!()
    }

    async fn purge(&self, key: ResourceKey) -> Result<bool, StoreError> {
        todo!()
    }
}
