//! The [`Store`] contract as a test suite, run against every backend.
//!
//! Each check is a generic async function over a fresh store; [`contract_tests!`] turns them all
//! into `#[tokio::test]`s for one backend: `contract_tests!(MemoryStore::default());`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

mod idempotency;

// The idempotency records' contract: its own checks, generated the same way.
pub(crate) use idempotency::*;

use super::{
    Acquired, KeyState, Observation, Outcome, Refusal, RefusalCondition, Representation, Store,
    StoreError, Validator,
};
use crate::etag::EntityTag;
use crate::key::ResourceKey;

/// Long enough never to expire in a passing test.
const WAIT: Duration = Duration::from_secs(10);

/// A distinct key per `n`.
pub(crate) fn key(n: u8) -> ResourceKey {
    ResourceKey::from_bytes([n; 16])
}

/// A strong validator `"tag"` of representation `representation`.
pub(crate) fn validator(tag: &str, representation: u64) -> Validator {
    Validator {
        tag: EntityTag::strong(tag).expect("valid opaque tag"),
        representation: Representation(representation),
    }
}

/// A read that saw `validator`, without `Last-Modified`.
pub(crate) fn observed(validator: &Validator) -> Observation {
    Observation::Validator {
        validator: validator.clone(),
        last_modified: None,
    }
}

/// The state holding exactly these validators, without `Last-Modified`.
pub(crate) fn present(validators: &[Validator]) -> KeyState {
    KeyState::Present {
        validators: validators.to_vec(),
        last_modified: None,
    }
}

fn replaced(validator: &Validator) -> Outcome {
    Outcome::Replaced {
        validator: validator.clone(),
        last_modified: None,
    }
}

/// Loads, then learns with the generation just seen; asserts it was recorded.
pub(crate) async fn learn_now<S: Store>(store: &S, key: ResourceKey, observation: Observation) {
    let g = store.load(key).await.expect("load").generation;
    assert!(store.learn(key, g, observation).await.expect("learn"));
}

async fn state<S: Store>(store: &S, key: ResourceKey) -> KeyState {
    store.load(key).await.expect("load").state
}

/// Generates one `#[tokio::test]` per contract check, each on a fresh `$store`.
macro_rules! contract_tests {
    ($store:expr) => {
        $crate::store::contract::contract_tests!(@each $store;
            load_unknown,
            learn_then_load,
            read_racing_a_write_is_refused,
            slower_read_cannot_overwrite_a_faster_one,
            learn_on_missing_key_refused_after_removal,
            learn_on_missing_key_accepted_when_nothing_happened,
            same_validator_refreshes,
            different_validator_replaces_all,
            second_representation_is_added,
            too_many_representations_start_over,
            last_modified_is_the_observations,
            absent_and_unknown_observations,
            complete_replaced,
            complete_deleted,
            complete_unknown,
            complete_unchanged_keeps_state,
            revalidation_under_the_lease,
            lease_excludes_a_second_writer,
            lease_wait_times_out,
            dropped_lease_marks_unknown_and_releases,
            dropped_lease_hands_over_to_a_waiter,
            purge_forgets,
            read_generation_racing_a_write_is_refused,
            acquire_unless_takes_the_lease_unless_the_precondition_fails,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn no_starvation() {
            $crate::store::contract::no_starvation($store).await
        }
    };
    (@each $store:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::store::contract::$check($store).await
            }
        )*
    };
}
pub(crate) use contract_tests;

/// A key never seen reads as unknown and unleased.
pub(crate) async fn load_unknown<S: Store>(store: S) {
    let snap = store.load(key(1)).await.expect("load");
    assert_eq!(snap.state, KeyState::Unknown);
    assert!(!snap.leased);
}

/// A learned validator is what the next load returns, with a new generation.
pub(crate) async fn learn_then_load<S: Store>(store: S) {
    let v = validator("a", 1);
    let before = store.load(key(1)).await.expect("load");
    assert!(
        store
            .learn(key(1), before.generation, observed(&v))
            .await
            .expect("learn")
    );
    let after = store.load(key(1)).await.expect("load");
    assert_eq!(after.state, present(&[v]));
    assert_ne!(after.generation, before.generation);
    assert!(!after.leased);
    // Other keys are untouched.
    assert_eq!(state(&store, key(2)).await, KeyState::Unknown);
}

/// The classic cache race: a read goes upstream, a write completes meanwhile, and the read's
/// (older) validator must not be installed over the write's.
pub(crate) async fn read_racing_a_write_is_refused<S: Store>(store: S) {
    let (old, new) = (validator("old", 1), validator("new", 1));
    learn_now(&store, key(1), observed(&old)).await;
    let g = store.load(key(1)).await.expect("load").generation;
    let (lease, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    store
        .complete(lease, replaced(&new))
        .await
        .expect("complete");
    assert!(!store.learn(key(1), g, observed(&old)).await.expect("learn"));
    assert_eq!(state(&store, key(1)).await, present(&[new]));
}

/// Of two reads that saw the same generation, the first to record wins.
pub(crate) async fn slower_read_cannot_overwrite_a_faster_one<S: Store>(store: S) {
    let (slow, fast) = (validator("slow", 1), validator("fast", 1));
    let g = store.load(key(1)).await.expect("load").generation;
    assert!(
        store
            .learn(key(1), g, observed(&fast))
            .await
            .expect("learn")
    );
    assert!(
        !store
            .learn(key(1), g, observed(&slow))
            .await
            .expect("learn")
    );
    assert_eq!(state(&store, key(1)).await, present(&[fast]));
}

/// A read that saw the key missing may not record once the key was created and removed.
pub(crate) async fn learn_on_missing_key_refused_after_removal<S: Store>(store: S) {
    let stale = validator("stale", 1);
    let g = store.load(key(1)).await.expect("load").generation;
    let (lease, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    store
        .complete(lease, replaced(&validator("new", 1)))
        .await
        .expect("complete");
    assert!(store.purge(key(1)).await.expect("purge"));
    assert!(
        !store
            .learn(key(1), g, observed(&stale))
            .await
            .expect("learn")
    );
    assert_eq!(state(&store, key(1)).await, KeyState::Unknown);
}

/// Refusals must not block progress: with nothing in between, a read of a missing key
/// records, even right after unrelated activity and purges.
pub(crate) async fn learn_on_missing_key_accepted_when_nothing_happened<S: Store>(store: S) {
    learn_now(&store, key(2), Observation::Absent).await;
    assert!(store.purge(key(2)).await.expect("purge"));
    assert!(!store.purge(key(3)).await.expect("purge"));
    let v = validator("a", 1);
    learn_now(&store, key(1), observed(&v)).await;
    assert_eq!(state(&store, key(1)).await, present(&[v]));
}

/// Seeing the same validator again confirms the state: recorded, generation unchanged.
pub(crate) async fn same_validator_refreshes<S: Store>(store: S) {
    let v = validator("a", 1);
    learn_now(&store, key(1), observed(&v)).await;
    let g = store.load(key(1)).await.expect("load").generation;
    assert!(store.learn(key(1), g, observed(&v)).await.expect("learn"));
    let snap = store.load(key(1)).await.expect("load");
    assert_eq!(snap.state, present(&[v]));
    assert_eq!(snap.generation, g);
}

/// A different validator for a known representation means the resource changed: it replaces
/// every validator, since the others describe the old state.
pub(crate) async fn different_validator_replaces_all<S: Store>(store: S) {
    let (json, html, json2) = (validator("j1", 1), validator("h1", 2), validator("j2", 1));
    learn_now(&store, key(1), observed(&json)).await;
    learn_now(&store, key(1), observed(&html)).await;
    learn_now(&store, key(1), observed(&json2)).await;
    assert_eq!(state(&store, key(1)).await, present(&[json2]));
}

/// A validator for a representation not yet held is added beside the others.
pub(crate) async fn second_representation_is_added<S: Store>(store: S) {
    let (json, html) = (validator("j1", 1), validator("h1", 2));
    learn_now(&store, key(1), observed(&json)).await;
    let before = store.load(key(1)).await.expect("load").generation;
    learn_now(&store, key(1), observed(&html)).await;
    let snap = store.load(key(1)).await.expect("load");
    match snap.state {
        KeyState::Present { validators, .. } => {
            assert_eq!(validators.len(), 2);
            assert!(validators.contains(&json) && validators.contains(&html));
        }
        other => panic!("expected present, got {other:?}"),
    }
    assert_ne!(snap.generation, before);
}

/// Past four representations, the newest starts a fresh set.
pub(crate) async fn too_many_representations_start_over<S: Store>(store: S) {
    for r in 1..=4 {
        learn_now(&store, key(1), observed(&validator(&format!("r{r}"), r))).await;
    }
    let fifth = validator("r5", 5);
    learn_now(&store, key(1), observed(&fifth)).await;
    assert_eq!(state(&store, key(1)).await, present(&[fifth]));
}

/// `Last-Modified` is taken from the latest observation.
pub(crate) async fn last_modified_is_the_observations<S: Store>(store: S) {
    let v = validator("a", 1);
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let with_date = Observation::Validator {
        validator: v.clone(),
        last_modified: Some(t),
    };
    learn_now(&store, key(1), with_date).await;
    let expected = KeyState::Present {
        validators: vec![v.clone()],
        last_modified: Some(t),
    };
    assert_eq!(state(&store, key(1)).await, expected);
    learn_now(&store, key(1), observed(&v)).await;
    assert_eq!(state(&store, key(1)).await, present(&[v]));
}

/// 404/410 make the key absent; an inconclusive read makes it unknown.
pub(crate) async fn absent_and_unknown_observations<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    learn_now(&store, key(1), Observation::Absent).await;
    assert_eq!(state(&store, key(1)).await, KeyState::Absent);
    // Absent again: a refresh.
    let g = store.load(key(1)).await.expect("load").generation;
    assert!(
        store
            .learn(key(1), g, Observation::Absent)
            .await
            .expect("learn")
    );
    assert_eq!(store.load(key(1)).await.expect("load").generation, g);
    learn_now(&store, key(1), Observation::Unknown).await;
    assert_eq!(state(&store, key(1)).await, KeyState::Unknown);
    // Unknown on a key never seen is accepted and changes nothing.
    learn_now(&store, key(2), Observation::Unknown).await;
    assert_eq!(state(&store, key(2)).await, KeyState::Unknown);
}

/// Takes the lease on `key`, checks what a load sees meanwhile, and completes with `outcome`.
async fn write<S: Store>(store: &S, key: ResourceKey, outcome: Outcome) {
    let before = store.load(key).await.expect("load");
    let (lease, under) = store.acquire(key, WAIT).await.expect("acquire");
    assert!(under.leased);
    assert_ne!(under.generation, before.generation);
    assert_eq!(under.state, before.state);
    let during = store.load(key).await.expect("load");
    assert!(during.leased);
    assert_eq!(during.generation, under.generation);
    store.complete(lease, outcome).await.expect("complete");
    let after = store.load(key).await.expect("load");
    assert!(!after.leased);
    assert_ne!(after.generation, under.generation);
}

/// A write that returned a strong ETag leaves exactly that validator.
pub(crate) async fn complete_replaced<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("html", 2))).await;
    let v = validator("b", 1);
    write(&store, key(1), replaced(&v)).await;
    assert_eq!(state(&store, key(1)).await, present(&[v]));
}

/// A successful DELETE leaves the key absent.
pub(crate) async fn complete_deleted<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    write(&store, key(1), Outcome::Deleted).await;
    assert_eq!(state(&store, key(1)).await, KeyState::Absent);
}

/// An uncertain outcome leaves the key unknown.
pub(crate) async fn complete_unknown<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    write(&store, key(1), Outcome::Unknown).await;
    assert_eq!(state(&store, key(1)).await, KeyState::Unknown);
}

/// A refused write changes nothing but the generation.
pub(crate) async fn complete_unchanged_keeps_state<S: Store>(store: S) {
    let v = validator("a", 1);
    learn_now(&store, key(1), observed(&v)).await;
    write(&store, key(1), Outcome::Unchanged).await;
    assert_eq!(state(&store, key(1)).await, present(&[v]));
    // On a key never seen, too.
    write(&store, key(2), Outcome::Unchanged).await;
    assert_eq!(state(&store, key(2)).await, KeyState::Unknown);
}

/// The lease holder may record a revalidation with the generation it got from `acquire`.
pub(crate) async fn revalidation_under_the_lease<S: Store>(store: S) {
    let v = validator("current", 1);
    let (lease, under) = store.acquire(key(1), WAIT).await.expect("acquire");
    assert_eq!(under.state, KeyState::Unknown);
    assert!(
        store
            .learn(key(1), under.generation, observed(&v))
            .await
            .expect("learn")
    );
    let snap = store.load(key(1)).await.expect("load");
    assert_eq!(snap.state, present(std::slice::from_ref(&v)));
    assert!(snap.leased);
    store
        .complete(lease, Outcome::Unchanged)
        .await
        .expect("complete");
    assert_eq!(state(&store, key(1)).await, present(&[v]));
}

/// A second writer waits for the first, then sees its outcome.
pub(crate) async fn lease_excludes_a_second_writer<S: Store>(store: S) {
    let (first, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    // Another key is independent.
    let (other, _) = store
        .acquire(key(2), Duration::ZERO)
        .await
        .expect("acquire other key");
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.acquire(key(1), WAIT).await.map(|(l, s)| (l, s.state)) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished(), "second writer got a held lease");
    let v = validator("first", 1);
    store.complete(first, replaced(&v)).await.expect("complete");
    let (lease, seen) = second.await.expect("join").expect("second acquire");
    assert_eq!(seen, present(&[v]));
    store
        .complete(lease, Outcome::Unchanged)
        .await
        .expect("complete");
    store
        .complete(other, Outcome::Unchanged)
        .await
        .expect("complete");
}

/// Past its wait, a writer gets `LeaseTimeout`; the holder is unaffected.
pub(crate) async fn lease_wait_times_out<S: Store>(store: S) {
    let (held, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    let late = store.acquire(key(1), Duration::from_millis(20)).await;
    assert!(
        matches!(late, Err(StoreError::LeaseTimeout)),
        "late writer got the lease"
    );
    let zero = store.acquire(key(1), Duration::ZERO).await;
    assert!(
        matches!(zero, Err(StoreError::LeaseTimeout)),
        "zero wait got the lease"
    );
    assert!(store.load(key(1)).await.expect("load").leased);
    let v = validator("a", 1);
    store.complete(held, replaced(&v)).await.expect("complete");
    assert_eq!(state(&store, key(1)).await, present(&[v]));
    let (again, _) = store
        .acquire(key(1), Duration::ZERO)
        .await
        .expect("free again");
    store
        .complete(again, Outcome::Unchanged)
        .await
        .expect("complete");
}

/// A lease dropped mid-write (the client went away) leaves the key unknown and free.
pub(crate) async fn dropped_lease_marks_unknown_and_releases<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    let (lease, under) = store.acquire(key(1), WAIT).await.expect("acquire");
    drop(lease);
    let snap = store.load(key(1)).await.expect("load");
    assert_eq!(snap.state, KeyState::Unknown);
    assert!(!snap.leased);
    assert_ne!(snap.generation, under.generation);
    let (again, _) = store
        .acquire(key(1), Duration::ZERO)
        .await
        .expect("released");
    store
        .complete(again, Outcome::Unchanged)
        .await
        .expect("complete");
}

/// A waiter queued behind a dropped lease gets it, and sees the key unknown.
pub(crate) async fn dropped_lease_hands_over_to_a_waiter<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    let (lease, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.acquire(key(1), WAIT).await.map(|(l, s)| (l, s.state)) }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(lease);
    let (lease, seen) = waiter.await.expect("join").expect("waiter acquire");
    assert_eq!(seen, KeyState::Unknown);
    store
        .complete(lease, Outcome::Unchanged)
        .await
        .expect("complete");
}

/// 16 writers hammering one key all get through.
pub(crate) async fn no_starvation<S: Store>(store: S) {
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, done) = (store.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                for _ in 0..10 {
                    let (lease, _) = store.acquire(key(1), WAIT).await.expect("acquire");
                    tokio::task::yield_now().await;
                    store
                        .complete(lease, Outcome::Unknown)
                        .await
                        .expect("complete");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    assert_eq!(done.load(Ordering::Relaxed), 16);
    assert!(!store.load(key(1)).await.expect("load").leased);
}

/// Purge forgets what is known and says whether anything was.
pub(crate) async fn purge_forgets<S: Store>(store: S) {
    learn_now(&store, key(1), observed(&validator("a", 1))).await;
    let before = store.load(key(1)).await.expect("load").generation;
    assert!(store.purge(key(1)).await.expect("purge"));
    let after = store.load(key(1)).await.expect("load");
    assert_eq!(after.state, KeyState::Unknown);
    assert!(
        !store
            .learn(key(1), before, Observation::Absent)
            .await
            .expect("learn")
    );
    assert!(!store.purge(key(9)).await.expect("purge"));
    learn_now(&store, key(2), Observation::Absent).await;
    assert!(store.purge(key(2)).await.expect("purge"));
}

/// A read's generation, remembered or loaded, refuses what the read saw once a write happened
/// after it was taken; with nothing in between, the read records.
pub(crate) async fn read_generation_racing_a_write_is_refused<S: Store>(store: S) {
    let (old, new) = (validator("old", 1), validator("new", 1));
    learn_now(&store, key(1), observed(&old)).await;
    let g = store.read_generation(key(1)).await.expect("generation");
    let (lease, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    store
        .complete(lease, replaced(&new))
        .await
        .expect("complete");
    assert!(!store.learn(key(1), g, observed(&old)).await.expect("learn"));
    assert_eq!(
        state(&store, key(1)).await,
        present(std::slice::from_ref(&new))
    );
    // Taken after the write: the next read records (here, a newer representation).
    let newer = validator("newer", 1);
    let g = store.read_generation(key(1)).await.expect("generation");
    assert!(
        store
            .learn(key(1), g, observed(&newer))
            .await
            .expect("learn")
    );
    assert_eq!(state(&store, key(1)).await, present(&[newer]));
    // A key never seen, and one only purged.
    let g = store.read_generation(key(2)).await.expect("generation");
    assert!(
        store
            .learn(key(2), g, Observation::Absent)
            .await
            .expect("learn")
    );
    assert!(store.purge(key(2)).await.expect("purge"));
    let g = store.read_generation(key(2)).await.expect("generation");
    assert!(store.learn(key(2), g, observed(&old)).await.expect("learn"));
}

fn if_match(variant: u32, tags: &[&str]) -> Refusal {
    Refusal {
        variant,
        condition: RefusalCondition::IfMatch(tags.iter().map(|&t| Box::from(t)).collect()),
    }
}

/// `acquire_unless` either takes the lease (always allowed) or, only when the precondition
/// fails on a known state and nobody holds the lease, refuses without changing anything.
pub(crate) async fn acquire_unless_takes_the_lease_unless_the_precondition_fails<S: Store>(
    store: S,
) {
    let current = validator("cur", 0);
    learn_now(&store, key(1), observed(&current)).await;
    let before = store.load(key(1)).await.expect("load");
    // Refused or not, the outcome is consistent with the state.
    let checks = [
        (if_match(0, &["old"]), true),
        (if_match(0, &["old", "cur"]), false),
        (if_match(0, &[]), true),
        (
            Refusal {
                variant: 0,
                condition: RefusalCondition::IfMatchAny,
            },
            false,
        ),
        (
            Refusal {
                variant: 0,
                condition: RefusalCondition::IfNoneMatchAny,
            },
            true,
        ),
        // No validator of this view is known: the write revalidates under the lease.
        (if_match(7, &["old"]), false),
    ];
    for (refusal, fails) in checks {
        match store
            .acquire_unless(key(1), WAIT, &refusal)
            .await
            .expect("acquire_unless")
        {
            Acquired::Held(lease, snapshot) => {
                assert!(snapshot.leased);
                store
                    .complete(lease, Outcome::Unchanged)
                    .await
                    .expect("complete");
            }
            Acquired::Refused(snapshot) => {
                assert!(fails, "{refusal:?} refused, yet it may hold");
                assert_eq!(snapshot.state, before.state);
                assert!(!snapshot.leased);
                // Nothing is held: a writer takes the lease at once.
                let (lease, _) = store.acquire(key(1), Duration::ZERO).await.expect("free");
                store
                    .complete(lease, Outcome::Unchanged)
                    .await
                    .expect("complete");
            }
        }
    }
    assert_eq!(state(&store, key(1)).await, present(&[current]));
    // While another write holds the lease, the state may be changing: wait, never refuse.
    let (held, _) = store.acquire(key(1), WAIT).await.expect("acquire");
    let waited = store
        .acquire_unless(key(1), Duration::from_millis(50), &if_match(0, &["old"]))
        .await;
    assert!(matches!(waited, Err(StoreError::LeaseTimeout)));
    store
        .complete(held, Outcome::Unchanged)
        .await
        .expect("complete");
    // Known absent: If-Match fails through the plain path, If-None-Match: * holds.
    learn_now(&store, key(2), Observation::Absent).await;
    let any = Refusal {
        variant: 0,
        condition: RefusalCondition::IfNoneMatchAny,
    };
    let Acquired::Held(lease, _) = store
        .acquire_unless(key(2), WAIT, &any)
        .await
        .expect("acquire")
    else {
        panic!("If-None-Match: * refused on an absent resource");
    };
    store
        .complete(lease, Outcome::Unchanged)
        .await
        .expect("complete");
}
