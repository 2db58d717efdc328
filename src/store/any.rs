//! A store chosen at runtime: the embedded one or the shared one.

use std::time::Duration;

use super::{
    Acquired, MemoryLease, MemoryStore, Observation, Outcome, Refusal, Snapshot, Store, StoreError,
    StoreStats,
};
#[cfg(feature = "redis")]
use super::{RedisLease, RedisStore};
use crate::key::ResourceKey;

/// Either backend behind one type, so that the composition root can pick one at runtime.
///
/// The Redis arms box their futures: a Redis call's future is several times the memory
/// store's, and unboxed it would size (and make dearer to move) every request's future on
/// the memory store too; next to a network round trip, the allocation is nothing.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The in-memory store (one process).
    Memory(MemoryStore),
    /// The Redis/Valkey store (replicas share it).
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

/// The lease of an [`AnyStore`].
#[derive(Debug)]
pub enum AnyLease {
    /// From the in-memory store.
    Memory(MemoryLease),
    /// From the Redis store.
    #[cfg(feature = "redis")]
    Redis(RedisLease),
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        Self::Memory(store)
    }
}

#[cfg(feature = "redis")]
impl From<RedisStore> for AnyStore {
    fn from(store: RedisStore) -> Self {
        Self::Redis(store)
    }
}

impl Store for AnyStore {
    type Lease = AnyLease;

    async fn load(&self, key: ResourceKey) -> Result<Snapshot, StoreError> {
        match self {
            Self::Memory(store) => store.load(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => Box::pin(store.load(key)).await,
        }
    }

    async fn learn(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => store.learn(key, generation, observation).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => Box::pin(store.learn(key, generation, observation)).await,
        }
    }

    async fn learn_soon(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.learn_soon(key, generation, observation).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => Box::pin(store.learn_soon(key, generation, observation)).await,
        }
    }

    async fn acquire(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> Result<(AnyLease, Snapshot), StoreError> {
        match self {
            Self::Memory(store) => {
                let (lease, snapshot) = store.acquire(key, wait).await?;
                Ok((AnyLease::Memory(lease), snapshot))
            }
            #[cfg(feature = "redis")]
            Self::Redis(store) => {
                let (lease, snapshot) = Box::pin(store.acquire(key, wait)).await?;
                Ok((AnyLease::Redis(lease), snapshot))
            }
        }
    }

    async fn acquire_unless(
        &self,
        key: ResourceKey,
        wait: Duration,
        refusal: &Refusal,
    ) -> Result<Acquired<AnyLease>, StoreError> {
        let acquired = match self {
            Self::Memory(store) => match store.acquire_unless(key, wait, refusal).await? {
                Acquired::Held(lease, snapshot) => {
                    Acquired::Held(AnyLease::Memory(lease), snapshot)
                }
                Acquired::Refused(snapshot) => Acquired::Refused(snapshot),
            },
            #[cfg(feature = "redis")]
            Self::Redis(store) => match Box::pin(store.acquire_unless(key, wait, refusal)).await? {
                Acquired::Held(lease, snapshot) => Acquired::Held(AnyLease::Redis(lease), snapshot),
                Acquired::Refused(snapshot) => Acquired::Refused(snapshot),
            },
        };
        Ok(acquired)
    }

    async fn read_generation(&self, key: ResourceKey) -> Result<u64, StoreError> {
        match self {
            Self::Memory(store) => store.read_generation(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => Box::pin(store.read_generation(key)).await,
        }
    }

    async fn complete(&self, lease: AnyLease, outcome: Outcome) -> Result<(), StoreError> {
        // A lease completes where it was taken; the mixed arms cannot happen through one
        // store, and dropping the lease there still releases it as unknown.
        match (self, lease) {
            (Self::Memory(store), AnyLease::Memory(lease)) => store.complete(lease, outcome).await,
            #[cfg(feature = "redis")]
            (Self::Redis(store), AnyLease::Redis(lease)) => {
                Box::pin(store.complete(lease, outcome)).await
            }
            #[cfg(feature = "redis")]
            (_, lease) => {
                drop(lease);
                Err(StoreError::Unavailable(
                    "lease completed on another kind of store".into(),
                ))
            }
        }
    }

    async fn purge(&self, key: ResourceKey) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => store.purge(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => Box::pin(store.purge(key)).await,
        }
    }

    fn stats(&self) -> Option<StoreStats> {
        match self {
            Self::Memory(store) => store.stats(),
            #[cfg(feature = "redis")]
            Self::Redis(store) => store.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_counters_reach_the_metrics() {
        // The binary serves an AnyStore: without this, /metrics had no ifmatch_store_* series.
        let store = AnyStore::Memory(MemoryStore::default());
        let key = ResourceKey::new("", "/a", None, []);
        let generation = store.load(key).await.expect("load").generation;
        store
            .learn(key, generation, Observation::Absent)
            .await
            .expect("learn");
        let stats = store.stats().expect("memory store stats");
        assert_eq!((stats.entries, stats.misses), (1, 1));
    }
}
