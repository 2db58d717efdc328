//! Write leases: one `tokio` mutex per key, present only while someone holds or awaits it.
//!
//! Guarantees:
//! - At most one [`MemoryLease`] per key at a time; waiters are served in order.
//! - A key's mutex stays in the map only while someone holds it, waits for it, or is about to:
//!   every [`Leases::lock`] ends (granted, timed out or cancelled at any point) in
//!   [`Leases::release`], which removes the mutex once the map's reference is the last. The
//!   count is read under the shard lock under which every new waiter clones its reference.
//! - A lease's outcome is recorded before the next holder can run: dropping a lease records
//!   (`Outcome::Unknown` unless completed), then unlocks, then releases the slot.
//!
//! Callers must hold no map reference across the wait, and mark the entry leased only once the
//! lease is held. The lease map takes no other lock under its shard locks, so it has no place
//! in the store's lock order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Mutex as LeaseMutex, OwnedMutexGuard};

use super::Inner;
use super::hasher::KeyHasherBuilder;
use crate::key::ResourceKey;
use crate::store::{Outcome, StoreError};

/// The write lease of the memory store.
///
/// Dropping it without [`Store::complete`](crate::store::Store::complete) (say, the client went
/// away mid-write) marks the key unknown, because the write may or may not have applied.
pub struct MemoryLease {
    inner: Arc<Inner>,
    key: ResourceKey,
    /// Held until the outcome is recorded; `None` once released.
    guard: Option<OwnedMutexGuard<()>>,
    completed: bool,
}

impl MemoryLease {
    /// The lease of `key` in the store `inner`, held through `guard`.
    pub(super) fn new(inner: Arc<Inner>, key: ResourceKey, guard: OwnedMutexGuard<()>) -> Self {
        Self {
            inner,
            key,
            guard: Some(guard),
            completed: false,
        }
    }

    /// Records the holder's outcome and ends the lease.
    pub(super) fn complete(mut self, outcome: Outcome) {
        // The lease carries its own store: this stays right even if it came from another clone.
        self.inner.record(self.key, outcome);
        self.completed = true;
    }
}

impl fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        if !self.completed {
            self.inner.record(self.key, Outcome::Unknown);
        }
        // The outcome is recorded before the next holder can run.
        drop(self.guard.take());
        self.inner.leases.release(self.key);
    }
}

/// One mutex per key with a lease held or awaited.
pub(super) struct Leases {
    mutexes: DashMap<ResourceKey, Arc<LeaseMutex<()>>, KeyHasherBuilder>,
}

impl Leases {
    /// No lease held.
    pub(super) fn new(hasher: KeyHasherBuilder) -> Self {
        Self {
            mutexes: DashMap::with_hasher(hasher),
        }
    }

    /// Waits at most `wait` for the lease of `key`. The caller must [`release`](Self::release)
    /// the slot once the returned guard is dropped.
    pub(super) async fn lock(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> Result<OwnedMutexGuard<()>, StoreError> {
        // Cloned under the shard lock, where a release counts the references.
        let mutex = Arc::clone(&self.mutexes.entry(key).or_default());
        match Arc::clone(&mutex).try_lock_owned() {
            // Uncontended: no timer, no allocation.
            Ok(guard) => Ok(guard),
            Err(_) => {
                let waiter = Waiter {
                    leases: self,
                    key,
                    lock: Some(Box::pin(mutex.lock_owned())),
                };
                // Boxed with its timer (a tokio timer is large): every write's future holds
                // this one's state, and moves it whole, though most writes never wait.
                Box::pin(tokio::time::timeout(wait, waiter))
                    .await
                    .map_err(|_| StoreError::LeaseTimeout)
            }
        }
    }

    /// Removes the mutex of `key` if nobody holds, awaits or is about to await it.
    pub(super) fn release(&self, key: ResourceKey) {
        // Under the shard lock, where every new waiter clones the Arc: a count of one (the
        // map's) means nobody else can be using it.
        self.mutexes
            .remove_if(&key, |_, mutex| Arc::strong_count(mutex) == 1);
    }

    /// Number of keys with a mutex.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.mutexes.len()
    }
}

/// Waits for a key's lease mutex. When dropped (timeout, cancellation, or done), it drops its
/// reference first, then removes the mutex from the map if nobody else references it: so a
/// waiter that gives up never leaves the mutex behind.
struct Waiter<'a, F> {
    leases: &'a Leases,
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
        self.leases.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::contract::{self, key, validator};
    use crate::store::{MemoryStore, Store};

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
