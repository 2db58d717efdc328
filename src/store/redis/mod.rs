//! The shared store: Redis or Valkey, so that replicas see the same validators and leases.
//!
//! Each resource is **one hash** (`<prefix><hex key>`), so every operation is one Lua script on
//! one key: atomic, one round trip, and Redis Cluster could route it without hash tags. Fields:
//!
//! | field | meaning |
//! |---|---|
//! | `g` | generation: incremented, started from the server clock in µs when the hash is created, so it never repeats even after the hash expired and came back |
//! | `s`, `v`, `m` | state (`u`nknown, `a`bsent, `p`resent), validators (`<16 hex repr><opaque>\n` each), `Last-Modified` (`secs.nanos`) |
//! | `e` | when the state stops being trusted (server ms); past it the state reads as unknown |
//! | `l`, `x` | the write lease: holder's random id (the fencing check) and expiry (server ms) |
//! | `k` | when the hash itself expires (server ms; `PEXPIREAT`), so it is moved only when needed |
//!
//! A lease that reaches its expiry with `l` still set was never completed: its holder crashed
//! or lost Redis, and its write may have applied. The next script to touch the key **settles**
//! it: the state becomes unknown under a new generation, which also refuses any read that saw
//! the old generation. A completion that comes later carries an id that no longer matches and
//! is ignored. Time is always the server's (`TIME`), so replicas' clocks do not matter.
//!
//! A missing hash reads as unknown with generation 0; a learn against 0 creates the hash only
//! if it is still missing. Removal (purge) keeps the hash as a tombstone with a new generation;
//! the hash itself expires `ttl` after everything in it lapsed (at least 15/16 of it: expiries
//! move only once they fell `ttl / 16` behind, and so does `e`), far longer than any read takes,
//! so a read cannot straddle a removal (with `maxmemory-policy` evicting keys, it could: use
//! `noeviction` or `volatile-ttl` with room to spare).
//!
//! Waiting for a lease polls with capped exponential backoff; waiters in the same process are
//! also woken at once when a local holder releases. Round trips: `load`, `learn`, `complete`,
//! `purge` one each; `acquire` one when uncontended, and `acquire_unless` one also when it
//! refuses (a stale write then needs no second one to give the lease back). Every reply carries
//! the key's generation, which the store remembers per key (bounded), so that a read takes its
//! generation from memory ([`Store::read_generation`]) and a learning GET costs one round trip,
//! the learn: a remembered generation is one the key had before the read began, so if anything
//! changed since, the learn is refused, exactly as for a read that raced a write.
//!
//! The learn itself may wait ([`Store::learn_soon`], `learn_delay`, 50 ms by default): what
//! follows a read through one replica is usually a write to the same resource, whose `ACQUIRE`
//! then carries the read and applies it first (under the same generation check) before it looks
//! at the lease and the precondition. A read-modify-write thus costs two round trips (lease,
//! outcome) instead of three, and a read whose write never comes is sent on its own, batched
//! and pipelined, once the delay is over (see `held`); a later read or load of the key sends it
//! first, so the round trips of a GET are then one as before, only spent by the next one.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use redis::{FromRedisValue, ScriptInvocation};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

mod codec;
mod connection;
mod held;
mod idempotency;
mod scripts;

pub use idempotency::RedisRecords;

use codec::{decode_generation, decode_state, encode_time, encode_validator, malformed, millis};
use connection::Connection;
use held::{Held, Learn};
use scripts::Scripts;

use super::{
    Acquired, Observation, Outcome, Refusal, RefusalCondition, Snapshot, Store, StoreError,
};
use crate::key::ResourceKey;

/// First pause of a lease waiter; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// Longest pause between two attempts of a waiter for a lease held by another replica.
const MAX_BACKOFF: Duration = Duration::from_millis(25);
/// Most generations remembered for reads ([`Store::read_generation`]); past it the memory
/// starts over (a read of a forgotten key loads first: one more round trip, nothing else).
const SEEN_CAPACITY: usize = 100_000;

/// Settings of the Redis store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Seed nodes of a Redis (or Valkey) Cluster, `redis://host:port` each. When not empty,
    /// the store uses the cluster they belong to and `url` is not used.
    pub cluster_urls: Vec<String>,
    /// Prepended to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// How long a validator is trusted without seeing the resource.
    pub ttl: Duration,
    /// How long a write lease lasts if its holder never completes it (crashed replica).
    pub lease_ttl: Duration,
    /// Longest wait for a connection or a reply; past it the store is unavailable.
    pub timeout: Duration,
    /// How long a read's learn may wait in this process for a write to the same resource
    /// that carries it (see [`Store::learn_soon`]); zero sends every learn at once.
    pub learn_delay: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            cluster_urls: Vec::new(),
            key_prefix: "ifmatch:".to_owned(),
            ttl: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(75),
            timeout: Duration::from_millis(500),
            learn_delay: Duration::from_millis(50),
        }
    }
}

/// The store could not be set up (the URL is invalid).
#[derive(Debug, thiserror::Error)]
#[error("invalid redis store url")]
pub struct RedisSetupError(#[source] redis::RedisError);

/// The Redis validator store (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// The write lease of the Redis store.
///
/// Dropping it without [`Store::complete`] spawns a release that marks the key unknown; if that
/// never runs (the process died), the lease expires after `lease_ttl` with the same effect.
pub struct RedisLease {
    inner: Arc<Inner>,
    key: ResourceKey,
    id: String,
    completed: bool,
}

struct Inner {
    conn: Connection,
    prefix: String,
    ttl_ms: u64,
    lease_ms: u64,
    timeout: Duration,
    scripts: Scripts,
    /// Local waiters per contended key, woken when a local holder releases.
    waiters: DashMap<ResourceKey, Arc<Notify>>,
    /// Releases of dropped leases still in flight: later operations on the key from this
    /// process wait for them, so that a drop is seen by whatever this process does next.
    releasing: DashMap<ResourceKey, watch::Receiver<()>>,
    /// Lease ids: a per-process random prefix and a counter.
    id_seed: u64,
    id_counter: AtomicU64,
    /// The last generation each script reply showed per key, so that a read can hand the
    /// learn a generation without loading first (see [`Store::read_generation`]).
    seen: DashMap<ResourceKey, u64>,
    /// Entries of `seen` (approximate), to bound it.
    seen_len: AtomicU64,
    /// Reads' learns held back for a write to carry ([`Store::learn_soon`]).
    held: Held,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sender of held learns waits for this to notice the store is gone.
        self.held.wake.notify_one();
    }
}

impl RedisStore {
    /// A store on `config.url`. Connects lazily, on first use, and reconnects by itself: a
    /// Redis that is down at startup or goes away later only makes operations fail until it
    /// is back. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// The URL is invalid.
    pub fn new(config: RedisStoreConfig) -> Result<Self, RedisSetupError> {
        let conn = Connection::open(&config).map_err(RedisSetupError)?;
        let random = std::collections::hash_map::RandomState::new();
        // Held learns need a task to send them; outside a runtime every learn goes at once.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let delay = runtime
            .as_ref()
            .map_or(Duration::ZERO, |_| config.learn_delay);
        let inner = Inner {
            conn,
            prefix: config.key_prefix,
            ttl_ms: millis(config.ttl),
            lease_ms: millis(config.lease_ttl),
            timeout: config.timeout,
            scripts: Scripts::new(),
            waiters: DashMap::new(),
            releasing: DashMap::new(),
            id_seed: random.hash_one(std::process::id()),
            id_counter: AtomicU64::new(0),
            seen: DashMap::new(),
            seen_len: AtomicU64::new(0),
            held: Held::new(delay),
        };
        let inner = Arc::new(inner);
        if let (Some(runtime), false) = (runtime, delay.is_zero()) {
            let wake = Arc::clone(&inner.held.wake);
            runtime.spawn(send_held(Arc::downgrade(&inner), wake));
        }
        Ok(Self { inner })
    }

    /// Round trip to Redis: whether it answers within the timeout (for readiness checks).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        bounded(self.inner.timeout, ping.query_async::<String>(&mut conn))
            .await
            .map(drop)
    }

    /// Waits (bounded) for this process's release of a dropped lease on `key`, if one is in
    /// flight, so that the drop is visible to what follows.
    async fn settled(&self, key: ResourceKey) {
        let pending = self.inner.releasing.get(&key).map(|rx| rx.clone());
        if let Some(mut rx) = pending {
            // Completes when the release task drops its sender; nothing is ever sent.
            let _ = tokio::time::timeout(self.inner.timeout, rx.changed()).await;
        }
    }

    async fn try_acquire(
        &self,
        key: ResourceKey,
        id: &str,
        refusal: Option<&Refusal>,
    ) -> Result<Attempt, StoreError> {
        let inner = &self.inner;
        let mut call = inner.scripts.acquire.key(inner.key(key));
        call.arg(inner.ttl_ms).arg(inner.lease_ms).arg(id);
        let tags: &[Box<str>] = match refusal {
            None => {
                call.arg("").arg("");
                &[]
            }
            Some(refusal) => {
                let (kind, tags) = match &refusal.condition {
                    RefusalCondition::IfMatch(tags) => ("m", &tags[..]),
                    RefusalCondition::IfMatchAny => ("*", &[][..]),
                    RefusalCondition::IfNoneMatchAny => ("n", &[][..]),
                };
                call.arg(kind).arg(format!("{:08x}", refusal.variant));
                tags
            }
        };
        // A read of this key held back rides along, applied before the lease is looked at. If
        // the call fails it may or may not have been applied, which is as safe as never.
        match inner.held.take(key) {
            Some(learn) => learn.push_args(&mut call),
            None => {
                call.arg("").arg("").arg("").arg("").arg("");
            }
        }
        for tag in tags {
            call.arg(&**tag);
        }
        let reply: Vec<String> = inner.run(&call).await?;
        match reply.as_slice() {
            [held, generation] if held == "0" => {
                inner.saw(key, decode_generation(generation)?);
                Ok(Attempt::Busy)
            }
            [taken, generation, s, v, m] => {
                let generation = decode_generation(generation)?;
                let snapshot = Snapshot {
                    state: decode_state(s, v, m)?,
                    generation,
                    leased: taken == "1",
                };
                inner.saw(key, generation);
                match taken.as_str() {
                    "1" => Ok(Attempt::Taken(snapshot)),
                    "2" => Ok(Attempt::Refused(snapshot)),
                    _ => Err(malformed("acquire")),
                }
            }
            _ => Err(malformed("acquire")),
        }
    }

    /// The lease on `key`, waiting at most `wait`, unless `refusal` (see
    /// [`Store::acquire_unless`]).
    async fn take(
        &self,
        key: ResourceKey,
        wait: Duration,
        refusal: Option<&Refusal>,
    ) -> Result<Acquired<RedisLease>, StoreError> {
        self.settled(key).await;
        let deadline = Instant::now() + wait;
        // Armed (not `completed`) only while an attempt is in flight: a caller that goes away
        // then (a client that hung up) may leave the lease taken in Redis with nobody holding
        // it, so dropping the armed lease gives it back (a no-op unless it is ours) rather than
        // block the key until it lapses. The same holds for an attempt that timed out.
        let mut lease = RedisLease {
            inner: Arc::clone(&self.inner),
            key,
            id: self.inner.lease_id(),
            completed: true,
        };
        let slot = WaitSlot::new(&self.inner, key);
        let mut backoff = MIN_BACKOFF;
        loop {
            // Registered before the attempt, so a local release between the attempt and the
            // pause is not missed.
            let notified = slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            lease.completed = false;
            match self.try_acquire(key, &lease.id, refusal).await {
                Ok(Attempt::Taken(snapshot)) => return Ok(Acquired::Held(lease, snapshot)),
                Ok(Attempt::Refused(snapshot)) => {
                    lease.completed = true;
                    return Ok(Acquired::Refused(snapshot));
                }
                Ok(Attempt::Busy) => lease.completed = true,
                Err(error) => return Err(error),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::LeaseTimeout);
            }
            let pause = backoff.min(deadline - now);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One attempt at a lease.
enum Attempt {
    /// Another holder has it.
    Busy,
    /// Taken: the state under the lease.
    Taken(Snapshot),
    /// Not taken: the state shows the precondition fails.
    Refused(Snapshot),
}

impl Inner {
    fn key(&self, key: ResourceKey) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Remembers `generation` as the latest seen for `key`.
    fn saw(&self, key: ResourceKey, generation: u64) {
        if self.seen.insert(key, generation).is_none()
            && self.seen_len.fetch_add(1, Ordering::Relaxed) >= SEEN_CAPACITY as u64
        {
            self.seen.clear();
            self.seen_len.store(0, Ordering::Relaxed);
        }
    }

    fn lease_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", self.id_seed)
    }

    async fn run<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(self.timeout, call.invoke_async(&mut conn)).await
    }

    /// Sends `learn` (one round trip): whether it was recorded.
    async fn learn_now(&self, key: ResourceKey, learn: &Learn) -> Result<bool, StoreError> {
        let mut call = self.scripts.learn.key(self.key(key));
        call.arg(self.ttl_ms);
        learn.push_args(&mut call);
        let (recorded, generation): (String, String) = self.run(&call).await?;
        self.saw(key, decode_generation(&generation)?);
        Ok(recorded == "1")
    }

    /// Records `outcome` if lease `id` still holds `key`; wakes local waiters either way.
    async fn complete(
        &self,
        key: ResourceKey,
        id: &str,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let (kind, validator, last_modified) = match outcome {
            Outcome::Replaced {
                validator,
                last_modified,
            } => ("r", Some(validator), last_modified),
            Outcome::Deleted => ("d", None, None),
            Outcome::Unknown => ("u", None, None),
            Outcome::Unchanged => ("n", None, None),
        };
        let (rep, tag) = encode_validator(validator.as_ref());
        let mut call = self.scripts.complete.key(self.key(key));
        call.arg(self.ttl_ms)
            .arg(id)
            .arg(kind)
            .arg(rep)
            .arg(tag)
            .arg(encode_time(last_modified));
        let result = self.run::<(String, String)>(&call).await;
        if let Some(waiters) = self.waiters.get(&key) {
            waiters.notify_waiters();
        }
        let (recorded, generation) = result?;
        self.saw(key, decode_generation(&generation)?);
        if recorded != "1" {
            // Our lease lapsed (we were too slow, or Redis lost it): whoever comes next sees
            // the key unknown, which is what a write of unrecorded outcome needs.
            tracing::warn!(%key, "lease lapsed before completion, outcome not recorded");
        }
        Ok(())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("lease_ms", &self.inner.lease_ms)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Store for RedisStore {
    type Lease = RedisLease;

    async fn load(&self, key: ResourceKey) -> Result<Snapshot, StoreError> {
        self.settled(key).await;
        let inner = &self.inner;
        // What this process learnt is part of what it loads (a HEAD after a GET).
        if let Some(learn) = inner.held.take(key) {
            inner.learn_now(key, &learn).await?;
        }
        let mut call = inner.scripts.load.key(inner.key(key));
        call.arg(inner.ttl_ms);
        let reply: Vec<String> = inner.run(&call).await?;
        let [generation, s, v, m, leased] = reply.as_slice() else {
            return Err(malformed("load"));
        };
        let generation = decode_generation(generation)?;
        inner.saw(key, generation);
        Ok(Snapshot {
            state: decode_state(s, v, m)?,
            generation,
            leased: leased == "1",
        })
    }

    async fn learn(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<bool, StoreError> {
        self.settled(key).await;
        let learn = Learn::new(generation, observation);
        self.inner.learn_now(key, &learn).await
    }

    async fn learn_soon(
        &self,
        key: ResourceKey,
        generation: u64,
        observation: Observation,
    ) -> Result<(), StoreError> {
        let learn = Learn::new(generation, observation);
        match self.inner.held.hold(key, learn) {
            Ok(()) => Ok(()),
            Err(learn) => {
                self.settled(key).await;
                self.inner.learn_now(key, &learn).await.map(drop)
            }
        }
    }

    async fn acquire(
        &self,
        key: ResourceKey,
        wait: Duration,
    ) -> Result<(RedisLease, Snapshot), StoreError> {
        match self.take(key, wait, None).await? {
            Acquired::Held(lease, snapshot) => Ok((lease, snapshot)),
            Acquired::Refused(_) => Err(malformed("acquire")),
        }
    }

    async fn acquire_unless(
        &self,
        key: ResourceKey,
        wait: Duration,
        refusal: &Refusal,
    ) -> Result<Acquired<RedisLease>, StoreError> {
        self.take(key, wait, Some(refusal)).await
    }

    async fn read_generation(&self, key: ResourceKey) -> Result<u64, StoreError> {
        self.settled(key).await;
        // A read held back goes first: this read begins after it, as it would have at once
        // (so that what this one learns adds to it, say another representation).
        if let Some(learn) = self.inner.held.take(key) {
            self.inner.learn_now(key, &learn).await?;
        }
        if let Some(generation) = self.inner.seen.get(&key) {
            return Ok(*generation);
        }
        Ok(self.load(key).await?.generation)
    }

    async fn complete(&self, mut lease: RedisLease, outcome: Outcome) -> Result<(), StoreError> {
        let result = lease.inner.complete(lease.key, &lease.id, outcome).await;
        // Only once the call is over: a caller that goes away during it (a client that hung
        // up while its rejection's lease was released) drops the lease, which releases it as
        // unknown, rather than leave the key locked until the lease lapses. After a failed
        // call, the lease is left to lapse.
        lease.completed = true;
        result
    }

    async fn purge(&self, key: ResourceKey) -> Result<bool, StoreError> {
        self.settled(key).await;
        let inner = &self.inner;
        let mut call = inner.scripts.purge.key(inner.key(key));
        call.arg(inner.ttl_ms);
        // Whatever was held for it would be refused by the removal's new generation.
        drop(inner.held.take(key));
        let known = inner.run::<i64>(&call).await? == 1;
        if inner.seen.remove(&key).is_some() {
            inner.seen_len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(known)
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        // Outside a runtime nothing can be sent; the lease then lapses after `lease_ttl`,
        // which marks the key unknown just the same.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (done, pending) = watch::channel(());
        self.inner.releasing.insert(self.key, pending.clone());
        let (inner, key, id) = (
            Arc::clone(&self.inner),
            self.key,
            std::mem::take(&mut self.id),
        );
        runtime.spawn(async move {
            if let Err(error) = inner.complete(key, &id, Outcome::Unknown).await {
                tracing::warn!(%key, %error, "release of a dropped lease failed; it will lapse");
            }
            inner
                .releasing
                .remove_if(&key, |_, rx| rx.same_channel(&pending));
            drop(done);
        });
    }
}

/// A waiter's registration for local wake-ups; removed when the last waiter on the key leaves.
struct WaitSlot<'a> {
    inner: &'a Inner,
    key: ResourceKey,
    notify: Arc<Notify>,
}

impl<'a> WaitSlot<'a> {
    fn new(inner: &'a Inner, key: ResourceKey) -> Self {
        let notify = Arc::clone(&inner.waiters.entry(key).or_default());
        Self { inner, key, notify }
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        // Our clone plus the map's: nobody else is waiting.
        self.inner
            .waiters
            .remove_if(&self.key, |_, notify| Arc::strong_count(notify) <= 2);
    }
}

/// Sends the learns held back once they are due, until the store is dropped.
async fn send_held(inner: Weak<Inner>, wake: Arc<Notify>) {
    /// Learns sent at once (pipelined on the connection).
    const BATCH: usize = 256;
    loop {
        wake.notified().await;
        let mut next = Some(Instant::now());
        while let Some(at) = next {
            tokio::time::sleep_until(at).await;
            let Some(inner) = inner.upgrade() else { return };
            let (due, following) = inner.held.due(Instant::now());
            next = following;
            for batch in due.chunks(BATCH) {
                let sends = batch
                    .iter()
                    .map(|(key, learn)| inner.learn_now(*key, learn));
                let results = futures_util::future::join_all(sends).await;
                let failed = results.iter().filter(|result| result.is_err()).count();
                if failed > 0 {
                    // Costs a revalidation on each one's next write, nothing else.
                    tracing::warn!(failed, "held learns not recorded: the store failed");
                }
            }
        }
    }
}

/// Runs a Redis call within `timeout`; every failure means the store is unavailable.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(StoreError::Unavailable(Box::new(error))),
        Err(_) => Err(StoreError::Unavailable(
            "redis did not answer in time".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::codec::{decode_time, decode_validator};
    use crate::store::KeyState;
    use std::sync::OnceLock;

    use super::*;
    use crate::store::contract::{self, contract_tests, key, observed, validator};

    #[allow(dead_code)]
    mod redis_server {
        include!("../../../tests/support/redis_server.rs");
    }
    use redis_server::RedisServer;

    /// One server for the whole test binary; every store gets its own key prefix (the
    /// idempotency records' tests share it).
    pub(super) fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    fn store_with(lease_ttl: Duration) -> RedisStore {
        configured(RedisStoreConfig {
            lease_ttl,
            ..RedisStoreConfig::default()
        })
    }

    /// A store of its own key prefix on the test server, as `config` says otherwise.
    fn configured(config: RedisStoreConfig) -> RedisStore {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let n = STORES.fetch_add(1, Ordering::Relaxed);
        RedisStore::new(RedisStoreConfig {
            url: server().url(),
            key_prefix: format!("test{}-{n}:", std::process::id()),
            timeout: Duration::from_secs(2),
            ..config
        })
        .expect("valid url")
    }

    /// Another replica: a store sharing `store`'s keys, learning at once.
    fn sibling(store: &RedisStore) -> RedisStore {
        RedisStore::new(RedisStoreConfig {
            url: server().url(),
            key_prefix: store.inner.prefix.clone(),
            timeout: Duration::from_secs(2),
            learn_delay: Duration::ZERO,
            ..RedisStoreConfig::default()
        })
        .expect("valid url")
    }

    /// A store that holds learns back for longer than any test runs: only a write or a load
    /// sends them.
    fn holding() -> RedisStore {
        configured(RedisStoreConfig {
            learn_delay: Duration::from_secs(600),
            ..RedisStoreConfig::default()
        })
    }

    fn store() -> RedisStore {
        store_with(Duration::from_secs(30))
    }

    contract_tests!(store());

    #[tokio::test]
    async fn lapsed_lease_leaves_the_key_unknown_and_ignores_the_late_completion() {
        let store = store_with(Duration::from_millis(300));
        let k = key(1);
        contract::learn_now(&store, k, observed(&validator("a", 1))).await;
        let reader = store.load(k).await.unwrap();
        let (lease, under) = store.acquire(k, Duration::ZERO).await.unwrap();
        // A crashed replica: the lease is neither completed nor released.
        let stale = RedisLease {
            inner: Arc::clone(&lease.inner),
            key: k,
            id: lease.id.clone(),
            completed: false,
        };
        std::mem::forget(lease);
        assert!(store.load(k).await.unwrap().leased);
        // Held until it lapses, then free, and the key is unknown: the write may have applied.
        let err = store.acquire(k, Duration::from_millis(50)).await;
        assert!(matches!(err, Err(StoreError::LeaseTimeout)));
        let (next, snapshot) = store.acquire(k, Duration::from_secs(5)).await.unwrap();
        assert_eq!(snapshot.state, KeyState::Unknown);
        assert!(snapshot.generation > under.generation);
        // A read that began under the dead lease cannot record what it saw.
        assert!(
            !store
                .learn(k, under.generation, observed(&validator("old", 1)))
                .await
                .unwrap()
        );
        assert!(
            !store
                .learn(k, reader.generation, observed(&validator("old", 1)))
                .await
                .unwrap()
        );
        // The dead replica's late completion (stale fencing id) changes nothing...
        let late = Outcome::Replaced {
            validator: validator("late", 1),
            last_modified: None,
        };
        store.complete(stale, late).await.unwrap();
        let during = store.load(k).await.unwrap();
        assert!(
            during.leased,
            "the late completion released someone else's lease"
        );
        assert_eq!(during.state, KeyState::Unknown);
        // ...while the live holder's completion counts.
        let v = validator("new", 1);
        let outcome = Outcome::Replaced {
            validator: v.clone(),
            last_modified: None,
        };
        store.complete(next, outcome).await.unwrap();
        assert_eq!(store.load(k).await.unwrap().state, contract::present(&[v]));
    }

    #[tokio::test]
    async fn late_completion_after_lapse_is_ignored_even_without_a_new_holder() {
        let store = store_with(Duration::from_millis(100));
        let k = key(2);
        let (lease, _) = store.acquire(k, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let outcome = Outcome::Replaced {
            validator: validator("late", 1),
            last_modified: None,
        };
        store.complete(lease, outcome).await.unwrap();
        let snap = store.load(k).await.unwrap();
        assert_eq!(snap.state, KeyState::Unknown);
        assert!(!snap.leased);
    }

    #[tokio::test]
    async fn a_failed_precondition_is_refused_in_one_call_without_a_lease() {
        let store = store();
        let k = key(4);
        let current = validator("cur", 0);
        contract::learn_now(&store, k, observed(&current)).await;
        let before = store.load(k).await.unwrap();
        let stale = Refusal {
            variant: 0,
            condition: RefusalCondition::IfMatch(vec!["old".into()]),
        };
        let Acquired::Refused(snapshot) = store
            .acquire_unless(k, Duration::ZERO, &stale)
            .await
            .unwrap()
        else {
            panic!("a stale If-Match took the lease");
        };
        assert_eq!(snapshot.state, contract::present(&[current]));
        // Nothing changed: not even the generation, so no read in flight is refused for it.
        let after = store.load(k).await.unwrap();
        assert_eq!(after.generation, before.generation);
        assert!(!after.leased);
        // Known absent: If-Match fails too.
        contract::learn_now(&store, key(5), Observation::Absent).await;
        let refused = store.acquire_unless(key(5), Duration::ZERO, &stale).await;
        assert!(matches!(refused, Ok(Acquired::Refused(_))));
    }

    #[tokio::test]
    async fn a_read_takes_its_generation_from_the_last_reply() {
        let store = store();
        let k = key(6);
        contract::learn_now(&store, k, observed(&validator("a", 1))).await;
        let remembered = store.read_generation(k).await.unwrap();
        assert_eq!(remembered, store.load(k).await.unwrap().generation);
        // Another replica's write: this process's memory is behind, and the learn refused.
        let other = sibling(&store);
        let (lease, _) = other.acquire(k, Duration::ZERO).await.unwrap();
        let outcome = Outcome::Replaced {
            validator: validator("b", 1),
            last_modified: None,
        };
        other.complete(lease, outcome).await.unwrap();
        assert_eq!(store.read_generation(k).await.unwrap(), remembered);
        let refused = store.learn(k, remembered, observed(&validator("a", 1)));
        assert!(!refused.await.unwrap());
        // The refusal's reply brought the memory up to date: the next read records.
        let g = store.read_generation(k).await.unwrap();
        assert_ne!(g, remembered);
        assert!(
            store
                .learn(k, g, observed(&validator("b", 1)))
                .await
                .unwrap()
        );
    }

    fn if_match(tag: &str) -> Refusal {
        Refusal {
            variant: 0,
            condition: RefusalCondition::IfMatch(vec![tag.into()]),
        }
    }

    /// The lease a write with `If-Match: <tag>` takes on `key` at once; `refused` says why a
    /// refusal fails the test.
    async fn passing(
        store: &RedisStore,
        key: ResourceKey,
        tag: &str,
        refused: &str,
    ) -> (RedisLease, Snapshot) {
        match store
            .acquire_unless(key, Duration::ZERO, &if_match(tag))
            .await
        {
            Ok(Acquired::Held(lease, under)) => (lease, under),
            other => panic!("{refused}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_held_learn_rides_with_the_next_write_and_its_precondition_sees_it() {
        let store = holding();
        let other = sibling(&store);
        let (k, stale) = (key(20), key(21));
        for k in [k, stale] {
            let g = store.read_generation(k).await.unwrap();
            let learn = store.learn_soon(k, g, observed(&validator("a", 0)));
            learn.await.unwrap();
            // Not sent yet: the other replica does not know it.
            assert_eq!(other.load(k).await.unwrap().state, KeyState::Unknown);
        }
        // The write's lease request carried it: the state under the lease is what was read...
        let (lease, under) = passing(&store, k, "a", "a current If-Match was refused").await;
        assert_eq!(under.state, contract::present(&[validator("a", 0)]));
        store.complete(lease, Outcome::Unchanged).await.unwrap();
        // ...and a stale one is refused by it in the same call.
        let old = if_match("old");
        let refused = store.acquire_unless(stale, Duration::ZERO, &old);
        let Acquired::Refused(snapshot) = refused.await.unwrap() else {
            panic!("a stale If-Match took the lease");
        };
        assert_eq!(snapshot.state, contract::present(&[validator("a", 0)]));
        assert_eq!(
            other.load(stale).await.unwrap().state,
            contract::present(&[validator("a", 0)])
        );
    }

    #[tokio::test]
    async fn a_held_learn_is_refused_when_another_replica_wrote_meanwhile() {
        let store = holding();
        let other = sibling(&store);
        let k = key(22);
        contract::learn_now(&store, k, observed(&validator("old", 0))).await;
        // A read sees "old" while another replica's write (its upstream sent no ETag) lands.
        let g = store.read_generation(k).await.unwrap();
        let (lease, _) = other.acquire(k, Duration::ZERO).await.unwrap();
        other.complete(lease, Outcome::Unknown).await.unwrap();
        let learn = store.learn_soon(k, g, observed(&validator("old", 0)));
        learn.await.unwrap();
        // A write still holding "old" must not pass on the read's word: the state under its
        // lease is unknown, so the guard revalidates upstream before letting it through.
        let (lease, under) = passing(&store, k, "old", "an unknown state refused the write").await;
        assert_eq!(under.state, KeyState::Unknown);
        store.complete(lease, Outcome::Unchanged).await.unwrap();
    }

    #[tokio::test]
    async fn a_read_after_a_held_one_adds_its_representation_to_it() {
        let store = holding();
        let k = key(26);
        let (json, xml) = (validator("j", 1), validator("x", 2));
        // Two reads one after the other, of two representations (content negotiation).
        let g = store.read_generation(k).await.unwrap();
        store.learn_soon(k, g, observed(&json)).await.unwrap();
        let g = store.read_generation(k).await.unwrap();
        store.learn_soon(k, g, observed(&xml)).await.unwrap();
        // A write holding the first one's tag is current, not refused as stale.
        let (lease, under) =
            passing(&store, k, "j", "the first representation's tag was refused").await;
        let KeyState::Present { validators, .. } = under.state else {
            panic!("not present: {:?}", under.state);
        };
        assert!(validators.contains(&json) && validators.contains(&xml));
        store.complete(lease, Outcome::Unchanged).await.unwrap();
    }

    #[tokio::test]
    async fn a_key_read_more_often_than_the_delay_still_has_its_learn_sent() {
        let delay = Duration::from_millis(100);
        let store = configured(RedisStoreConfig {
            learn_delay: delay,
            ..RedisStoreConfig::default()
        });
        let other = sibling(&store);
        let k = key(27);
        let g = store.read_generation(k).await.unwrap();
        let started = Instant::now();
        // Reads that ran at the same time keep coming, each replacing the held learn.
        let deadline = started + Duration::from_secs(10);
        while other.load(k).await.unwrap().state == KeyState::Unknown {
            assert!(Instant::now() < deadline, "the held learn was never sent");
            store
                .learn_soon(k, g, observed(&validator("a", 0)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_held_learn_is_loaded_here_dropped_by_a_purge_and_sent_when_due() {
        let store = holding();
        let other = sibling(&store);
        let v = observed(&validator("a", 0));
        // This process loads what it holds (and that sends it).
        let g = store.read_generation(key(23)).await.unwrap();
        store.learn_soon(key(23), g, v.clone()).await.unwrap();
        let here = store.load(key(23)).await.unwrap().state;
        assert_eq!(here, contract::present(&[validator("a", 0)]));
        assert_eq!(other.load(key(23)).await.unwrap().state, here);
        // A purge forgets it.
        let g = store.read_generation(key(24)).await.unwrap();
        store.learn_soon(key(24), g, v.clone()).await.unwrap();
        store.purge(key(24)).await.unwrap();
        assert_eq!(store.load(key(24)).await.unwrap().state, KeyState::Unknown);
        // With a short delay, the sender delivers one no write took.
        let soon = configured(RedisStoreConfig {
            learn_delay: Duration::from_millis(20),
            ..RedisStoreConfig::default()
        });
        let other = sibling(&soon);
        let g = soon.read_generation(key(25)).await.unwrap();
        soon.learn_soon(key(25), g, v).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while other.load(key(25)).await.unwrap().state == KeyState::Unknown {
            assert!(Instant::now() < deadline, "the held learn was never sent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_state_is_trusted_for_the_ttl_and_its_hash_outlives_it() {
        let ttl = Duration::from_millis(400);
        let store = RedisStore::new(RedisStoreConfig {
            url: server().url(),
            key_prefix: format!("test{}-ttl:", std::process::id()),
            ttl,
            timeout: Duration::from_secs(2),
            ..RedisStoreConfig::default()
        })
        .unwrap();
        let k = key(9);
        let v = validator("a", 1);
        let learned = Instant::now();
        contract::learn_now(&store, k, observed(&v)).await;
        assert_eq!(
            store.load(k).await.unwrap().state,
            contract::present(std::slice::from_ref(&v))
        );
        // The hash lives a TTL past the trust: between one and two TTLs from now.
        let mut conn = store.inner.conn.clone();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(store.inner.key(k))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((400..=800).contains(&pttl), "PTTL {pttl} ms");
        // The state reads as unknown once its TTL has passed on the server's clock, not before.
        let deadline = Instant::now() + Duration::from_secs(5);
        let unknown = loop {
            let snapshot = store.load(k).await.unwrap();
            if snapshot.state == KeyState::Unknown {
                break snapshot;
            }
            assert!(Instant::now() < deadline, "the state never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(learned.elapsed() >= ttl - Duration::from_millis(50));
        // Learnt again under the generation it reads at, it is trusted again.
        assert!(
            store
                .learn(k, unknown.generation, observed(&v))
                .await
                .unwrap()
        );
        assert_eq!(store.load(k).await.unwrap().state, contract::present(&[v]));
    }

    #[tokio::test]
    async fn last_modified_round_trips_with_nanoseconds() {
        let store = store();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let obs = Observation::Validator {
            validator: validator("a", 7),
            last_modified: Some(t),
        };
        contract::learn_now(&store, key(3), obs).await;
        let KeyState::Present { last_modified, .. } = store.load(key(3)).await.unwrap().state
        else {
            panic!("not present");
        };
        assert_eq!(last_modified, Some(t));
    }

    #[tokio::test]
    async fn unreachable_redis_is_unavailable_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let store = RedisStore::new(RedisStoreConfig {
            url: format!("redis://127.0.0.1:{port}"),
            timeout: Duration::from_millis(200),
            ..RedisStoreConfig::default()
        })
        .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            store.load(key(1)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.acquire(key(1), Duration::from_secs(5)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(store.ping().await.is_err());
    }

    #[test]
    fn encodings_round_trip() {
        assert_eq!(decode_time(&encode_time(None)), None);
        let t = UNIX_EPOCH + Duration::new(5, 7);
        assert_eq!(decode_time(&encode_time(Some(t))), Some(t));
        let v = validator("ifm-abc", u64::MAX);
        let (rep, tag) = encode_validator(Some(&v));
        assert_eq!(decode_validator(&format!("{rep}{tag}")), Some(v));
        assert_eq!(decode_validator("zz"), None);
        assert!(decode_state("p", "", "").is_err());
    }
}
