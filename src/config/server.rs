//! `[server]`: the proxy's listeners, timeouts and limits, and their checks.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{MAX_TIMEOUT, Report};

/// `[server]`: listeners, timeouts and limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Data-plane listener (HTTP/1.1 and h2c prior knowledge).
    pub listen: SocketAddr,
    /// Admin listener: `/healthz`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// Longest wait for a TCP connection to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response headers once the request is sent; then 504.
    /// A write's revalidation, body included, is bounded by it too.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long a forwarded write may run upstream: a client that gives up, or a 504, does not
    /// end the exchange, and the resource stays locked until its outcome is known or this
    /// passes (then it becomes unknown). At least `response_timeout` and `body_read_timeout`.
    #[serde(with = "humantime_serde")]
    pub write_outcome_timeout: Duration,
    /// Longest wait for a client's complete request headers (HTTP/1.1), and so also for the
    /// next request on an idle HTTP/1.1 keep-alive connection, and for any connection's first
    /// request (h2c included); then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for a request's whole body once it is forwarded; then 408, and the
    /// resource's state becomes unknown (the upstream may have seen part of the body).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most bytes of a request body the proxy answered without reading (a rejected write, a
    /// 404) that it reads and discards to keep the HTTP/1.1 connection; a larger body, or one
    /// not all there within `body_read_timeout` of its head, gets `Connection: close`. 0: never.
    pub discard_body_bytes: usize,
    /// A client connection (HTTP/1.1, h2c or an upgraded WebSocket tunnel) with no bytes in
    /// either direction for this long is closed, gracefully: requests in flight finish.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most client connections served at once, WebSocket tunnels included; past it a new
    /// connection gets 503 problem+json with `Retry-After` and is closed.
    pub max_connections: usize,
    /// Largest request head accepted, in bytes (at least 8192); larger gets 431 problem+json
    /// (past twice this, at most 1 MiB more, hyper's bare 431). On h2c, the header list size.
    pub max_header_bytes: usize,
    /// Most request header fields accepted; more gets 431 problem+json (past twice this, at
    /// most 100 more, on HTTP/1.1, hyper's bare 431).
    pub max_headers: usize,
    /// How long an idle pooled upstream connection is kept (then the proxy closes it).
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most pooled connections kept per upstream and [worker](Self::workers), idle or
    /// finishing a response; past it, a connection is closed once its response is read.
    pub pool_max_idle_per_host: usize,
    /// On shutdown, how long in-flight requests may take before connections are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Bytes of recent representations the proxy remembers (by resource and validator) to
    /// make a stale write's 409 show the current version, compare fields, and merge where a
    /// route allows it; least recently used out first, at most a few versions per resource.
    /// 0: remember nothing (every 409 is minimal). Shared by every route, kept across reloads.
    pub version_memory_bytes: usize,
    /// Threads serving the data plane, each a single-threaded runtime with an accept loop of
    /// its own on the one listener (as nginx's worker processes): a connection and its
    /// requests stay on the thread that accepted it, and a worker holding more than one
    /// connection above the least loaded stops accepting until the others catch up. Unset:
    /// one per CPU. 0: none, the data plane runs on the caller's runtime (the binary's is
    /// tokio's work-stealing one).
    pub workers: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            write_outcome_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            // Below response_timeout, so that a trickled body to an upstream that waits for
            // all of it is answered 408 (the client's fault), not 504.
            body_read_timeout: Duration::from_secs(20),
            // nginx discards any amount; 1 MiB keeps a rejected write's answer from waiting on
            // much more than a large JSON document, and past it a new connection is cheaper.
            discard_body_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            // Each client connection may hold an upstream one: keep twice this under the
            // process's file-descriptor limit. 10k idle connections cost ~100-200 MiB of buffers.
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            shutdown_timeout: Duration::from_secs(30),
            version_memory_bytes: crate::guard::DEFAULT_VERSION_MEMORY_BYTES,
            workers: None,
        }
    }
}

/// The most bytes discarded to keep a connection: more is a typo, and costs more than a new one.
const MAX_DISCARD_BYTES: usize = 1 << 30;

/// The largest version memory: more is a typo (it is held in the proxy's own memory).
const MAX_VERSION_MEMORY_BYTES: usize = 1 << 36;

/// The most worker threads: more is a typo (each is a thread and a runtime).
const MAX_WORKERS: usize = 1024;

/// The most connections accepted: beyond the file descriptors of any one process.
const MAX_CONNECTIONS: usize = 1_000_000;

impl ServerConfig {
    /// How many worker threads serve the data plane (0: none, it runs on the caller's runtime).
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    pub(super) fn check(&self, report: &mut Report) {
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            report.error("server.admin_listen", "must differ from server.listen");
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("write_outcome_timeout", self.write_outcome_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("pool_idle_timeout", self.pool_idle_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if value.is_zero() {
                report.error(&format!("server.{key}"), "must be greater than zero");
            } else if value > MAX_TIMEOUT {
                report.error(&format!("server.{key}"), "must be at most 1 day");
            }
        }
        for (key, value) in [
            ("response_timeout", self.response_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            // The exchange goes on after the client stops waiting, never the other way round.
            if self.write_outcome_timeout < value {
                report.error(
                    "server.write_outcome_timeout",
                    &format!("must be at least server.{key}"),
                );
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            report.error(
                "server.max_connections",
                &format!("must be between 1 and {MAX_CONNECTIONS}"),
            );
        }
        // hyper's HTTP/1.1 read buffer cannot be smaller than 8 KiB.
        if self.max_header_bytes < 8192 {
            report.error("server.max_header_bytes", "must be at least 8192");
        }
        if u32::try_from(self.max_header_bytes).is_err() {
            report.error("server.max_header_bytes", "must fit in 32 bits");
        }
        if self.workers.is_some_and(|workers| workers > MAX_WORKERS) {
            report.error("server.workers", &format!("must be at most {MAX_WORKERS}"));
        }
        if self.max_headers == 0 {
            report.error("server.max_headers", "must be at least 1");
        }
        if self.version_memory_bytes > MAX_VERSION_MEMORY_BYTES {
            report.error(
                "server.version_memory_bytes",
                "must be at most 68719476736 (64 GiB)",
            );
        }
        if self.discard_body_bytes > MAX_DISCARD_BYTES {
            report.error(
                "server.discard_body_bytes",
                "must be at most 1073741824 (1 GiB)",
            );
        }
    }
}
