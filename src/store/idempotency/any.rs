//! Idempotency records chosen at runtime, like [`AnyStore`](crate::store::AnyStore).

use std::time::Duration;

use super::{Began, Claim, Held, IdempotencyStore, MemoryRecords, RecordStats, Recorded};
use crate::idempotency::Fingerprint;
use crate::key::ResourceKey;
#[cfg(feature = "redis")]
use crate::store::RedisRecords;
use crate::store::StoreError;

/// Either backend behind one type, so that the composition root can pick one at runtime.
#[derive(Debug, Clone)]
pub enum AnyRecords {
    /// In memory (one process; lost on restart).
    Memory(MemoryRecords),
    /// On Redis/Valkey (replicas share them; they survive restarts).
    #[cfg(feature = "redis")]
    Redis(RedisRecords),
}

impl IdempotencyStore for AnyRecords {
    async fn begin(
        &self,
        key: ResourceKey,
        fingerprint: Fingerprint,
        hold: Duration,
    ) -> Result<Began, StoreError> {
        match self {
            Self::Memory(records) => records.begin(key, fingerprint, hold).await,
            #[cfg(feature = "redis")]
            Self::Redis(records) => records.begin(key, fingerprint, hold).await,
        }
    }

    async fn record(
        &self,
        claim: &Claim,
        recorded: Recorded,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(records) => records.record(claim, recorded, retention).await,
            #[cfg(feature = "redis")]
            Self::Redis(records) => records.record(claim, recorded, retention).await,
        }
    }

    async fn release(&self, claim: &Claim) -> Result<bool, StoreError> {
        match self {
            Self::Memory(records) => records.release(claim).await,
            #[cfg(feature = "redis")]
            Self::Redis(records) => records.release(claim).await,
        }
    }

    async fn lookup(&self, key: ResourceKey) -> Result<Option<Held>, StoreError> {
        match self {
            Self::Memory(records) => records.lookup(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(records) => records.lookup(key).await,
        }
    }

    fn stats(&self) -> Option<RecordStats> {
        match self {
            Self::Memory(records) => records.stats(),
            #[cfg(feature = "redis")]
            Self::Redis(records) => records.stats(),
        }
    }
}
