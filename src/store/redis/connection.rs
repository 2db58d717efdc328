//! The store's one connection to Redis or Valkey: a single node, or a Redis Cluster.
//!
//! - **One node**: redis-rs's `ConnectionManager`, one multiplexed connection that reconnects
//!   by itself; clones share it, so no request sets up a connection.
//! - **A cluster** (`cluster_urls`): redis-rs's cluster client, one multiplexed connection per
//!   node, found from the seeds' slot map. Each script touches exactly one Redis key (a resource
//!   is one hash, `<prefix><resource key>`), so it runs on the one node that owns that key's
//!   hash slot, atomically, with no cross-slot keys and no hash tags needed. MOVED and ASK
//!   redirections (resharding, failover) are followed by the client library.
//!
//! Both connect lazily: a store whose Redis is down at start only fails its operations (each
//! bounded by the store's `timeout`) until Redis is back.
//!
//! **One connection per worker thread.** A multiplexed connection is driven by a task of the
//! runtime it was opened on. Shared by the proxy's worker threads (each a current-thread
//! runtime, see `serve::workers`), every call from another thread would cross threads twice:
//! the request handed to the driving task's thread, the reply handed back, each a wake-up of a
//! parked thread. So [`Connections::get`] gives each current-thread runtime a connection of its
//! own, opened on it the first time it asks: a call is written, and its reply read, by the
//! thread that waits for it. Multi-thread runtimes share the one opened with the store.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::RedisStoreConfig;

/// A store's connections: the one opened with it, and one per current-thread runtime that
/// uses it (see the module's documentation). Cheap to clone: clones share them.
#[derive(Clone)]
pub(super) struct Connections {
    shared: Connection,
    config: Arc<RedisStoreConfig>,
    /// Identifies this store's connections in the threads' lists.
    id: u64,
    /// The threads' lists hold a `Weak` of this: an entry whose store is gone is dropped.
    alive: Arc<()>,
}

/// Store ids, for [`Connections`].
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A connection opened on this thread, for one store and one runtime.
struct Local {
    store: u64,
    runtime: tokio::runtime::Id,
    alive: Weak<()>,
    conn: Connection,
}

thread_local! {
    /// This thread's own connections (a handful: one per store it uses).
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

impl Connections {
    /// The connections `config` names; opens the shared one (lazily connecting).
    pub(super) fn open(config: &RedisStoreConfig) -> Result<Self, RedisError> {
        Ok(Self {
            shared: Connection::open(config)?,
            config: Arc::new(config.clone()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        })
    }

    /// The connection for a call made here: this thread's own on a current-thread runtime
    /// (opened now if it has none), else the shared one.
    pub(super) fn get(&self) -> Connection {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.shared.clone();
        };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return self.shared.clone();
        }
        let runtime = runtime.id();
        LOCAL.with_borrow_mut(|local| {
            if let Some(found) = local
                .iter()
                .find(|entry| entry.store == self.id && entry.runtime == runtime)
            {
                return found.conn.clone();
            }
            // Entries of dropped stores go (their connections close with them); so do this
            // store's on a runtime that has ended, whose driving task is gone.
            local.retain(|entry| entry.alive.strong_count() > 0 && entry.store != self.id);
            // The URL was valid when the shared connection was opened; should opening fail
            // anyway, the shared one serves.
            let Ok(conn) = Connection::open(&self.config) else {
                return self.shared.clone();
            };
            local.push(Local {
                store: self.id,
                runtime,
                alive: Arc::downgrade(&self.alive),
                conn: conn.clone(),
            });
            conn
        })
    }
}

/// A connection to a single node or to a cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// The connection `config` names: the cluster of its `cluster_urls` if any, else `url`.
    pub(super) fn open(config: &RedisStoreConfig) -> Result<Self, RedisError> {
        if !config.cluster_urls.is_empty() {
            let client = ClusterClientBuilder::new(config.cluster_urls.iter().map(String::as_str))
                // Each operation is bounded by `timeout` anyway (see `bounded`); past it the
                // store is unavailable, and the next operation tries again.
                .retries(2)
                .min_retry_wait(5)
                .max_retry_wait(u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX))
                .build()?;
            let settings = ClusterConfig::new()
                .set_connection_timeout(config.timeout)
                .set_response_timeout(config.timeout);
            return Ok(Self::Cluster(
                client.get_pending_async_connection_with_config(settings),
            ));
        }
        let client = redis::Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // Each operation is bounded by `timeout` anyway; retrying inside it only delays
            // the failure. The next operation triggers the next attempt.
            .set_number_of_retries(1)
            .set_min_delay(std::time::Duration::from_millis(10))
            .set_max_delay(config.timeout);
        Ok(Self::Single(ConnectionManager::new_lazy_with_config(
            client, manager,
        )?))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
