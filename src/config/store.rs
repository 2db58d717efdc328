//! `[store]`: where validators and write leases are kept, its checks, and the lease budget
//! that ties `store.lease_ttl` to the server's timeouts.

use std::time::Duration;

use serde::Deserialize;

use super::ServerConfig;
use super::validate::Report;
use crate::guard::OnStoreUnavailable;
use crate::store::MemoryStoreConfig;
#[cfg(feature = "redis")]
use crate::store::RedisStoreConfig;
use crate::store::idempotency::MemoryRecordsConfig;

/// Which validator store backs the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded in-memory store (one process).
    #[default]
    Memory,
    /// A shared Redis/Valkey store (several replicas share validators and write leases).
    Redis,
}

/// What a conditional write gets when the store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// 503 with `Retry-After`: no precondition is trusted unchecked.
    #[default]
    FailClosed,
    /// Forward it unchecked (logged at warn): availability over the guarantee.
    FailOpen,
}

impl From<FailurePolicy> for OnStoreUnavailable {
    fn from(policy: FailurePolicy) -> Self {
        match policy {
            FailurePolicy::FailClosed => Self::Refuse,
            FailurePolicy::FailOpen => Self::Forward,
        }
    }
}

/// `[store]`: where validators and write leases are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Store backend: `"memory"` (one process) or `"redis"` (replicas share it).
    pub kind: StoreKind,
    /// Most resources remembered; past it the least recently used are forgotten (safe: a
    /// forgotten resource is revalidated on its next write). Memory store only.
    pub max_entries: usize,
    /// How long a validator is trusted without seeing the resource again.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Redis/Valkey URL, `redis://[user:password@]host:port[/db]` (kind = "redis").
    pub url: Option<String>,
    /// Seed nodes of a Redis/Valkey Cluster, `["redis://host:port", ...]` (kind = "redis",
    /// instead of `url`): the store then runs each resource's scripts on the node owning its
    /// key's hash slot. One reachable seed is enough to find the others.
    pub cluster_urls: Vec<String>,
    /// Prefix of every Redis key, so deployments can share one Redis.
    pub key_prefix: String,
    /// How long a write lease survives a replica that crashed holding it. Must exceed the
    /// longest time a live replica holds one (see [`lease_budget`]), so that a lease never
    /// lapses while its write may still apply.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Longest wait for Redis (connect or reply) before the store counts as unavailable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long what a GET learnt may wait in the replica for a write to the same resource
    /// through it, which then carries it in its lease request (one round trip for both);
    /// past it the learn is sent on its own. Other replicas do not see it meanwhile (a write
    /// through one of them then revalidates). `"0s"` sends every learn at once. Redis only.
    #[serde(with = "humantime_serde")]
    pub learn_delay: Duration,
    /// Conditional writes while the store is unavailable: `"fail_closed"` (503) or
    /// `"fail_open"` (forwarded unchecked). Reads and unconditional writes always pass.
    pub failure_policy: FailurePolicy,
    /// Most `Idempotency-Key` records (and keys in flight) kept in memory; past it the oldest
    /// records are forgotten (a retry of a forgotten key is forwarded again). Memory store
    /// only: on Redis, records live in Redis (mind its `maxmemory`).
    pub idempotency_max_records: usize,
    /// Most bytes of recorded responses (bodies and headers, plus 128 per key) kept in
    /// memory, with the same eviction. Memory store only.
    pub idempotency_max_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            max_entries: 1_000_000,
            ttl: Duration::from_secs(300),
            url: None,
            cluster_urls: Vec::new(),
            key_prefix: "ifmatch:".to_owned(),
            lease_ttl: Duration::from_secs(120),
            timeout: Duration::from_millis(500),
            learn_delay: Duration::from_millis(50),
            failure_policy: FailurePolicy::FailClosed,
            idempotency_max_records: MemoryRecordsConfig::default().max_records,
            idempotency_max_bytes: MemoryRecordsConfig::default().max_bytes,
        }
    }
}

impl StoreConfig {
    /// The limits of the in-memory store.
    pub fn memory(&self) -> MemoryStoreConfig {
        MemoryStoreConfig {
            max_entries: self.max_entries,
            ttl: self.ttl,
        }
    }

    /// The bounds of the in-memory idempotency records.
    pub fn memory_records(&self) -> MemoryRecordsConfig {
        MemoryRecordsConfig {
            max_records: self.idempotency_max_records,
            max_bytes: self.idempotency_max_bytes,
        }
    }

    /// The settings of the Redis store (the URL is empty when none is set).
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> RedisStoreConfig {
        RedisStoreConfig {
            url: self.url.clone().unwrap_or_default(),
            cluster_urls: self.cluster_urls.clone(),
            key_prefix: self.key_prefix.clone(),
            ttl: self.ttl,
            lease_ttl: self.lease_ttl,
            timeout: self.timeout,
            learn_delay: self.learn_delay,
        }
    }
}

/// The longest a live replica holds a write lease: the one place the bounds of every step under
/// a lease are added up, and what `store.lease_ttl` must exceed.
///
/// Under the lease a write takes, in turn: the store's answer to the acquire, a revalidation
/// (head and body, bounded as a whole by `server.response_timeout`), a store learn, the
/// forwarded exchange (bounded by `server.write_outcome_timeout`, whether or not the client
/// still waits; the request body's own bound, `server.body_read_timeout`, is within it), and
/// the store's completion. Each store call is bounded by `store.timeout`.
pub fn lease_budget(server: &ServerConfig, store: &StoreConfig) -> Duration {
    server
        .response_timeout
        .saturating_add(server.write_outcome_timeout)
        .saturating_add(store.timeout.saturating_mul(3))
}

/// The longest a live replica holds an idempotency key without an outcome, and so how long a
/// taken key stays taken (after which a crashed replica's key is free again).
///
/// Under a taken key, in turn: the wait for the resource's write lease (`lease_wait`), the
/// whole write under it ([`lease_budget`]), the read of the response body to record it
/// (bounded by `server.response_timeout`) and the store's record (`store.timeout`).
pub fn idempotency_hold(
    server: &ServerConfig,
    store: &StoreConfig,
    lease_wait: Duration,
) -> Duration {
    lease_wait
        .saturating_add(lease_budget(server, store))
        .saturating_add(server.response_timeout)
        .saturating_add(store.timeout)
}

impl StoreConfig {
    pub(super) fn check(&self, server: &ServerConfig, report: &mut Report) {
        if self.kind == StoreKind::Redis {
            self.check_redis(server, report);
        }
        if self.max_entries == 0 {
            report.error("store.max_entries", "must be at least 1");
        }
        if self.ttl.is_zero() {
            report.error("store.ttl", "must be greater than zero");
        }
        if self.idempotency_max_records == 0 {
            report.error("store.idempotency_max_records", "must be at least 1");
        }
        if self.idempotency_max_bytes < 64 * 1024 {
            report.error(
                "store.idempotency_max_bytes",
                "must be at least 65536 (64 KiB)",
            );
        }
    }

    fn check_redis(&self, server: &ServerConfig, report: &mut Report) {
        if cfg!(not(feature = "redis")) {
            report.error(
                "store.kind",
                "this build has no redis support (cargo feature \"redis\"); use \"memory\"",
            );
        }
        let url = self.url.as_deref().filter(|url| !url.is_empty());
        match (url, self.cluster_urls.is_empty()) {
            (None, true) => report.error(
                "store.url",
                "is required with kind = \"redis\" (or pass --store redis://host:port), or \
                 store.cluster_urls for a Redis Cluster",
            ),
            (Some(_), false) => report.error(
                "store.cluster_urls",
                "names a Redis Cluster; store.url names a single Redis: set one of them",
            ),
            _ => {}
        }
        let urls = url.into_iter().map(|url| ("store.url", url));
        let seeds = self
            .cluster_urls
            .iter()
            .map(|url| ("store.cluster_urls", url.as_str()));
        for (key, url) in urls.chain(seeds) {
            if !url.starts_with("redis://") {
                report.error(key, &format!("{url:?} must start with redis://"));
            }
        }
        if self.timeout.is_zero() {
            report.error("store.timeout", "must be greater than zero");
        }
        let budget = lease_budget(server, self);
        if self.lease_ttl <= budget {
            report.error(
                "store.lease_ttl",
                &format!(
                    "must exceed the longest time a write holds its lease, {} \
                     (server.response_timeout + server.write_outcome_timeout + 3 x \
                     store.timeout)",
                    humantime::format_duration(budget)
                ),
            );
        }
    }
}
