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

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::RedisStoreConfig;

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
