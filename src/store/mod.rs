//! The validator store: what the proxy knows about each resource, and its write lease.
//!
//! Per key the store holds a [`KeyState`] (unknown, absent, or the current validators, one per
//! representation), a **generation** that changes whenever the state may have changed, and at
//! most one **write lease**. A read learns a validator only if the generation it saw before
//! going upstream is still current ([`Store::learn`]), so a read that raced a write never
//! re-installs the stale validator. A write holds the lease from before its precondition check
//! until its outcome is recorded ([`Store::complete`]); dropping a lease without completing it
//! marks the key unknown, because the write may or may not have applied.
//!
//! The trait is async so that a networked store (Redis) satisfies the same contract as the
//! embedded [`MemoryStore`].

mod any;
#[cfg(test)]
pub(crate) mod contract;
pub mod idempotency;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::future::Future;
use std::time::{Duration, SystemTime};

#[cfg(feature = "redis")]
pub use self::redis::{RedisLease, RedisRecords, RedisSetupError, RedisStore, RedisStoreConfig};
pub use any::{AnyLease, AnyStore};
pub use memory::{MemoryLease, MemoryStore, MemoryStoreConfig};
// The value types of what is known live with the core; the store keeps them.
pub use crate::validator::{Representation, Validator};

use crate::key::ResourceKey;

/// A boxed error from a store backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the store knows about a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyState {
    /// Nothing trustworthy is known (never seen, expired, or a write's outcome is uncertain).
    #[default]
    Unknown,
    /// The resource is known not to exist (the upstream answered 404/410).
    Absent,
    /// The resource exists with these validators (at least one, one per representation).
    Present {
        /// The current validators.
        validators: Vec<Validator>,
        /// The upstream's `Last-Modified`, if it sent one.
        last_modified: Option<SystemTime>,
    },
}

/// The state of a key at one moment, with the generation to hand back to [`Store::learn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// What is known.
    pub state: KeyState,
    /// Opaque token: changes whenever the state may have changed.
    pub generation: u64,
    /// Whether a write lease is held on the key right now.
    pub leased: bool,
}

/// What a read learned from the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A current strong validator of one representation. If it differs from the validator held
    /// for the same representation, the resource changed: it replaces all validators.
    Validator {
        /// The validator.
        validator: Validator,
        /// The upstream's `Last-Modified`, if any.
        last_modified: Option<SystemTime>,
    },
    /// The upstream answered 404 or 410.
    Absent,
    /// The read could not establish the state (e.g. the body was too large to hash).
    Unknown,
}

/// The outcome of a write, recorded when its lease is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a strong ETag: this is now the only validator.
    Replaced {
        /// The new validator.
        validator: Validator,
        /// The upstream's `Last-Modified`, if any.
        last_modified: Option<SystemTime>,
    },
    /// Successful DELETE: the resource no longer exists.
    Deleted,
    /// The write may or may not have applied, or applied without telling the new validator.
    Unknown,
    /// The upstream refused the write (4xx other than 409/412): nothing changed.
    Unchanged,
}

/// A write's precondition in the form a store can check against its state by itself (see
/// [`Store::acquire_unless`]): the write goes through its query `variant`'s validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The write's query variant (0: none).
    pub variant: u32,
    /// What the write asks of the state.
    pub condition: RefusalCondition,
}

impl Refusal {
    /// Whether `state` shows this precondition failed, as [`Store::acquire_unless`] decides
    /// it: `If-Match` fails on a state with validators of the variant none of which it names
    /// and, through no query, on a resource known to be absent; `If-Match: *` only on the
    /// latter; `If-None-Match: *` on a state with a validator of the variant. A state without
    /// a validator of the variant is left to the write (it revalidates under its lease).
    pub fn fails(&self, state: &KeyState) -> bool {
        match state {
            KeyState::Unknown => false,
            KeyState::Absent => {
                self.variant == 0 && self.condition != RefusalCondition::IfNoneMatchAny
            }
            KeyState::Present { validators, .. } => {
                let mut of_variant = validators
                    .iter()
                    .filter(|v| v.representation.variant() == self.variant)
                    .peekable();
                if of_variant.peek().is_none() {
                    return false;
                }
                match &self.condition {
                    RefusalCondition::IfMatch(tags) => {
                        !of_variant.any(|v| tags.iter().any(|tag| **tag == *v.tag.opaque()))
                    }
                    RefusalCondition::IfMatchAny => false,
                    RefusalCondition::IfNoneMatchAny => true,
                }
            }
        }
    }
}

/// The precondition a [`Refusal`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalCondition {
    /// `If-Match` with these strong tags' opaque values (weak ones never match and are left
    /// out): fails on a known state with validators of the variant none of which is among
    /// them, and, through no query, on a resource known to be absent.
    IfMatch(Vec<Box<str>>),
    /// `If-Match: *`: fails, through no query, on a resource known to be absent.
    IfMatchAny,
    /// `If-None-Match: *`: fails on a state with a validator of the variant.
    IfNoneMatchAny,
}

/// What [`Store::acquire_unless`] did.
#[derive(Debug)]
pub enum Acquired<L> {
    /// The lease is held, as [`Store::acquire`] takes it.
    Held(L, Snapshot),
    /// No lease was held or taken, and this state shows the precondition failed.
    Refused(Snapshot),
}

/// Counters a store may keep for the metrics endpoint (read on scrape, never on the hot path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held now.
    pub entries: u64,
    /// Lookups that found a known state (present or absent).
    pub hits: u64,
    /// Lookups that found nothing trustworthy (the write then revalidates).
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write lease could not be taken within the allowed wait.
    #[error("another update to this resource is in progress")]
    LeaseTimeout,
    /// The backend could not be reached or answered an error.
    #[error("validator store unavailable")]
    Unavailable(#[source] BoxError),
}

/// The validator store contract, shared by the embedded and the networked stores.
pub trait Store: Clone + Send + Sync + 'static {
    /// Proof of holding a key's write lease. Dropping it without [`Store::complete`] marks the
    /// key unknown.
    type Lease: Send + 'static;

    /// The current state of `key` (an expired entry reads as unknown).
    fn load(&self, key: ResourceKey) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Records what a read observed, only if `generation` (from [`Store::load`]) is still the
    /// key's current generation. Returns whether it was recorded. A recorded change of state
    /// moves the generation on, so a slower read that saw older data cannot overwrite it.
    fn learn(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records what a read observed as [`Store::learn`] does, but perhaps not at once: a
    /// networked store may hold it back for a short while and send it with this process's
    /// next lease request for `key` (one round trip for both, as a read-modify-write through
    /// one replica needs), or on its own once the while is over. Until then the key reads
    /// elsewhere as it was before the read, which is safe: a state not yet known costs a
    /// revalidation, and a learn whose generation moved on meanwhile is refused then as it
    /// would have been now. In this process it takes effect before anything that comes next
    /// for `key` ([`Store::load`], [`Store::read_generation`], a lease). This default learns
    /// at once.
    fn learn_soon(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.learn(key, generation, observation).await.map(drop) }
    }

    /// Takes the write lease on `key`, waiting at most `wait` (then [`StoreError::LeaseTimeout`]).
    /// Taking the lease moves the generation on; the returned snapshot is the state under the
    /// lease, and its generation may be used to [`Store::learn`] a revalidation.
    fn acquire(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> impl Future<Output = Result<(Self::Lease, Snapshot), StoreError>> + Send;

    /// Takes the write lease as [`Store::acquire`] does, unless no lease is held and the state
    /// shows `refusal`'s precondition failed: then nothing is taken or changed (the generation
    /// stays), which saves a networked store the round trip of giving the lease back. A store
    /// may always take the lease (this default does); the caller evaluates the preconditions
    /// against the snapshot either way.
    fn acquire_unless(
        &self,
        key: ResourceKey,
        wait: Duration,
        refusal: &Refusal,
    ) -> impl Future<Output = Result<Acquired<Self::Lease>, StoreError>> + Send {
        let _ = refusal;
        async move {
            let (lease, snapshot) = self.acquire(key, wait).await?;
            Ok(Acquired::Held(lease, snapshot))
        }
    }

    /// The generation a read about to go upstream hands to [`Store::learn`] afterwards: the
    /// key's current one, or one this process saw earlier. An earlier one is as safe (if the
    /// key changed since, the learn is refused, as for a read that raced a write), so a
    /// networked store may answer from memory without a round trip. This default loads.
    fn read_generation(
        &self,
        key: ResourceKey,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move { Ok(self.load(key).await?.generation) }
    }

    /// Records a write's outcome, moves the generation on and releases the lease.
    fn complete(
        &self,
        lease: Self::Lease,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets `key` (it becomes unknown). Returns whether anything was held.
    fn purge(&self, key: ResourceKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counters for the metrics endpoint, if the store keeps them (a shared store may not:
    /// its server has its own).
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{present, validator};

    fn refusal(variant: u32, condition: RefusalCondition) -> Refusal {
        Refusal { variant, condition }
    }

    fn if_match(variant: u32, tags: &[&str]) -> Refusal {
        let tags = tags.iter().map(|&t| Box::from(t)).collect();
        refusal(variant, RefusalCondition::IfMatch(tags))
    }

    /// The same decisions as the Redis `ACQUIRE` script makes (the store contract checks both).
    #[test]
    fn a_refusal_fails_only_on_a_state_that_shows_it() {
        // Representation 1 is the plain path's view; 7 << 32 | 1 the query variant 7's.
        let plain = validator("cur", 1);
        let view = validator("v7", (7 << 32) | 1);
        let both = present(&[plain, view]);
        let any = RefusalCondition::IfMatchAny;
        let none = RefusalCondition::IfNoneMatchAny;
        let cases = [
            (if_match(0, &["old"]), &both, true),
            (if_match(0, &["old", "cur"]), &both, false),
            (if_match(0, &[]), &both, true),
            // Another view's tag does not match this one.
            (if_match(0, &["v7"]), &both, true),
            (if_match(7, &["v7"]), &both, false),
            (if_match(7, &["cur"]), &both, true),
            // No validator of this view: left to the write, which revalidates.
            (if_match(3, &["old"]), &both, false),
            (refusal(0, any.clone()), &both, false),
            (refusal(0, none.clone()), &both, true),
            (refusal(3, none.clone()), &both, false),
            (if_match(0, &["old"]), &KeyState::Absent, true),
            (refusal(0, any.clone()), &KeyState::Absent, true),
            (refusal(0, none.clone()), &KeyState::Absent, false),
            // Through a query, absence is not known.
            (if_match(7, &["old"]), &KeyState::Absent, false),
            (if_match(0, &["old"]), &KeyState::Unknown, false),
            (refusal(0, none), &KeyState::Unknown, false),
        ];
        for (refusal, state, fails) in cases {
            assert_eq!(refusal.fails(state), fails, "{refusal:?} on {state:?}");
        }
    }
}
