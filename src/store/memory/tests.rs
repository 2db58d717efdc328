//! The memory store as a whole: the store contract, sharing between clones, and expiry.

use std::sync::atomic::AtomicU32;

use super::*;
use crate::store::contract::{key, observed, validator};

crate::store::contract::contract_tests!(MemoryStore::default());

/// A store whose clock only moves when the test says so.
fn manual(max_entries: usize, ttl: Duration) -> (MemoryStore, Arc<AtomicU32>) {
    let now = Arc::new(AtomicU32::new(0));
    let config = MemoryStoreConfig { max_entries, ttl };
    let store = MemoryStore::with_time(config, TimeSource::Manual(Arc::clone(&now)));
    (store, now)
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

fn if_match(tags: &[&str]) -> Refusal {
    Refusal {
        variant: 0,
        condition: crate::store::RefusalCondition::IfMatch(
            tags.iter().map(|&t| Box::from(t)).collect(),
        ),
    }
}

#[tokio::test]
async fn a_stale_write_is_refused_without_taking_the_lease() {
    let store = MemoryStore::default();
    let g = store.load(key(1)).await.unwrap().generation;
    assert!(
        store
            .learn(key(1), g, observed(&validator("cur", 1)))
            .await
            .unwrap()
    );
    let before = store.load(key(1)).await.unwrap();
    let Acquired::Refused(snapshot) = store
        .acquire_unless(key(1), Duration::ZERO, &if_match(&["old"]))
        .await
        .unwrap()
    else {
        panic!("a stale If-Match took the lease");
    };
    // Nothing changed: the state, its generation (a read in flight may still learn), no lease.
    assert_eq!(snapshot, before);
    assert_eq!(store.load(key(1)).await.unwrap(), before);
    let (lease, _) = store.acquire(key(1), Duration::ZERO).await.unwrap();
    // Leased: the state may be changing, so the same refusal waits for the lease instead.
    let waited = store
        .acquire_unless(key(1), Duration::from_millis(20), &if_match(&["old"]))
        .await;
    assert!(matches!(waited, Err(StoreError::LeaseTimeout)));
    store.complete(lease, Outcome::Unchanged).await.unwrap();
    // A current If-Match, and an unknown resource, take the lease.
    for (k, refusal) in [(key(1), if_match(&["cur"])), (key(2), if_match(&["old"]))] {
        let acquired = store.acquire_unless(k, Duration::ZERO, &refusal).await;
        let Ok(Acquired::Held(lease, snapshot)) = acquired else {
            panic!("{refusal:?} on {k:?} did not take the lease");
        };
        assert!(snapshot.leased);
        store.complete(lease, Outcome::Unchanged).await.unwrap();
    }
}
