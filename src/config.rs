//! Configuration: load (TOML file) -> parse (serde) -> validate, reporting every error at once.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`, so a file only names what it
//! changes and a misspelt key is an error, not a silent default. Parsing isolates each bad key
//! and keeps going; validation then checks what parsed; the caller gets one
//! [`ConfigError::Invalid`] listing every problem. Command-line [`Overrides`] are applied between
//! parsing and validation, so `--upstream` can complete a file that has no routes.
//!
//! No tokio, no hyper: this module only turns text into plain values and [`Route`]s.
//!
//! ```
//! use ifmatch::config::{Config, Overrides};
//!
//! let config = Config::from_toml(
//!     r#"
//!     [defaults]
//!     conflict_status = 412
//!
//!     [[routes]]
//!     name = "api"
//!     upstream = "http://127.0.0.1:3000"
//!     "#,
//!     &Overrides::default(),
//! )
//! .unwrap();
//! let routes = config.routes().unwrap();
//! assert_eq!(routes[0].policy.conflict_status, http::StatusCode::PRECONDITION_FAILED);
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Method, StatusCode, Uri};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::guard::{Aliases, EtagSource, OnStoreUnavailable, OnUnknown, Policy, QueryMode};
use crate::store::MemoryStoreConfig;
#[cfg(feature = "redis")]
use crate::store::RedisStoreConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts and limits of the proxy itself.
    pub server: ServerConfig,
    /// Where validators and write leases are kept.
    pub store: StoreConfig,
    /// The guard policy every route starts from.
    pub defaults: PolicyConfig,
    /// Routes, matched by host and longest path prefix.
    pub routes: Vec<RouteConfig>,
    /// The admin API.
    pub admin: AdminConfig,
}

/// `[admin]`: access to the admin listener's API.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required for `/metrics` and `/admin/*` (health checks stay open). Required
    /// when `server.admin_listen` is not a loopback address. `IFMATCH_ADMIN_TOKEN` overrides it.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    // The token is a secret: never in logs or error output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

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
    /// How long an idle pooled upstream connection is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per upstream.
    pub pool_max_idle_per_host: usize,
    /// On shutdown, how long in-flight requests may take before connections are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
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
        }
    }
}

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
    /// Conditional writes while the store is unavailable: `"fail_closed"` (503) or
    /// `"fail_open"` (forwarded unchecked). Reads and unconditional writes always pass.
    pub failure_policy: FailurePolicy,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            max_entries: 1_000_000,
            ttl: Duration::from_secs(300),
            url: None,
            key_prefix: "ifmatch:".to_owned(),
            lease_ttl: Duration::from_secs(120),
            timeout: Duration::from_millis(500),
            failure_policy: FailurePolicy::FailClosed,
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

    /// The settings of the Redis store (the URL is empty when none is set).
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> RedisStoreConfig {
        RedisStoreConfig {
            url: self.url.clone().unwrap_or_default(),
            key_prefix: self.key_prefix.clone(),
            ttl: self.ttl,
            lease_ttl: self.lease_ttl,
            timeout: self.timeout,
        }
    }
}

/// What to do with a conditional write to a resource in an unknown state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknownSetting {
    /// GET the resource first, with the writer's credentials.
    #[default]
    Revalidate,
    /// Forward the write and let the upstream decide.
    Forward,
    /// Reject the write until the resource has been read.
    Reject,
}

impl From<OnUnknownSetting> for OnUnknown {
    fn from(setting: OnUnknownSetting) -> Self {
        match setting {
            OnUnknownSetting::Revalidate => Self::Revalidate,
            OnUnknownSetting::Forward => Self::Forward,
            OnUnknownSetting::Reject => Self::Reject,
        }
    }
}

/// What the query string is to the resource a request names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuerySetting {
    /// The path names the resource; each query a view of it.
    #[default]
    Variant,
    /// Each query string names a resource of its own.
    Identity,
    /// The query is ignored.
    Ignore,
}

impl From<QuerySetting> for QueryMode {
    fn from(setting: QuerySetting) -> Self {
        match setting {
            QuerySetting::Variant => Self::Variant,
            QuerySetting::Identity => Self::Identity,
            QuerySetting::Ignore => Self::Ignore,
        }
    }
}

/// Where validators come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtagSourceSetting {
    /// Only the upstream's strong ETags.
    Upstream,
    /// Always a blake3 hash of the body.
    Synthesize,
    /// The upstream's strong ETag when it sends one, else a hash of the body.
    #[default]
    Both,
}

impl From<EtagSourceSetting> for EtagSource {
    fn from(setting: EtagSourceSetting) -> Self {
        match setting {
            EtagSourceSetting::Upstream => Self::Upstream,
            EtagSourceSetting::Synthesize => Self::Synthesize,
            EtagSourceSetting::Both => Self::Both,
        }
    }
}

/// `[defaults]`: the guard policy of every route, unless the route overrides a field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Status for a failed precondition on a write: 409 (Conflict) or 412 (Precondition Failed).
    pub conflict_status: u16,
    /// Whether an unconditional write (a `require_methods` method without `If-Match`,
    /// `If-Unmodified-Since` or `If-None-Match: *`) gets 428 Precondition Required.
    pub require_if_match: bool,
    /// The methods `require_if_match` applies to: any of PUT, PATCH, DELETE, POST.
    pub require_methods: Vec<String>,
    /// Conditional write to a resource in an unknown state: "revalidate", "forward" or "reject".
    pub on_unknown: OnUnknownSetting,
    /// Where validators come from: "upstream", "synthesize" or "both".
    pub etag_source: EtagSourceSetting,
    /// Largest body hashed to synthesize an ETag, in bytes; larger bodies stream through
    /// unhashed and leave the resource unknown.
    pub max_hash_bytes: usize,
    /// Request headers whose values (hashed, never stored raw) are part of the resource key,
    /// e.g. `["authorization"]` for per-user resources.
    pub key_headers: Vec<String>,
    /// What the query string is to the resource: `"variant"` (the path names the resource,
    /// each query a view of it with its own validators; a write through any query replaces them
    /// all), `"identity"` (each query string names a resource of its own, as in `/api?id=5`), or
    /// `"ignore"`.
    pub query: QuerySetting,
    /// Whether `//a///b` names `/a/b` (runs of slashes are one).
    pub merge_slashes: bool,
    /// Whether `/a/` names `/a`.
    pub ignore_trailing_slash: bool,
    /// Whether `/A` names `/a` (ASCII letters), for upstreams with case-insensitive paths.
    pub case_insensitive_paths: bool,
    /// How long a write waits for another write to the same resource before getting 409.
    #[serde(with = "humantime_serde")]
    pub lease_wait: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let policy = Policy::default();
        Self {
            conflict_status: policy.conflict_status.as_u16(),
            require_if_match: false,
            require_methods: Policy::default_required_methods()
                .iter()
                .map(ToString::to_string)
                .collect(),
            on_unknown: OnUnknownSetting::Revalidate,
            etag_source: EtagSourceSetting::Both,
            max_hash_bytes: policy.max_hash_bytes,
            key_headers: Vec::new(),
            query: QuerySetting::Variant,
            merge_slashes: policy.aliases.merge_slashes,
            ignore_trailing_slash: policy.aliases.ignore_trailing_slash,
            case_insensitive_paths: policy.aliases.case_insensitive,
            lease_wait: policy.lease_wait,
        }
    }
}

/// `[[routes]]`: requests for one host and path prefix, sent to one upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route id (letters, digits, `-`, `_`, `.`); part of every resource key.
    pub name: String,
    /// Only requests for this host (without port, case-insensitive); absent: any host.
    pub host: Option<String>,
    /// Only requests whose path is this prefix or below it ("/api" matches "/api" and
    /// "/api/x", not "/apix"). The longest matching prefix wins.
    pub path_prefix: String,
    /// Where matching requests go: `http://host:port`, no path.
    pub upstream: String,
    /// Whether the upstream sees the client's `Host` (else the upstream's own authority).
    pub preserve_host: bool,
    /// Overrides `defaults.conflict_status`.
    pub conflict_status: Option<u16>,
    /// Overrides `defaults.require_if_match`.
    pub require_if_match: Option<bool>,
    /// Overrides `defaults.require_methods`.
    pub require_methods: Option<Vec<String>>,
    /// Overrides `defaults.on_unknown`.
    pub on_unknown: Option<OnUnknownSetting>,
    /// Overrides `defaults.etag_source`.
    pub etag_source: Option<EtagSourceSetting>,
    /// Overrides `defaults.max_hash_bytes`.
    pub max_hash_bytes: Option<usize>,
    /// Overrides `defaults.key_headers`.
    pub key_headers: Option<Vec<String>>,
    /// Overrides `defaults.query`.
    pub query: Option<QuerySetting>,
    /// Overrides `defaults.merge_slashes`.
    pub merge_slashes: Option<bool>,
    /// Overrides `defaults.ignore_trailing_slash`.
    pub ignore_trailing_slash: Option<bool>,
    /// Overrides `defaults.case_insensitive_paths`.
    pub case_insensitive_paths: Option<bool>,
    /// Overrides `defaults.lease_wait`.
    #[serde(with = "humantime_serde::option")]
    pub lease_wait: Option<Duration>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            host: None,
            path_prefix: "/".to_owned(),
            upstream: String::new(),
            preserve_host: true,
            conflict_status: None,
            require_if_match: None,
            require_methods: None,
            on_unknown: None,
            etag_source: None,
            max_hash_bytes: None,
            key_headers: None,
            query: None,
            merge_slashes: None,
            ignore_trailing_slash: None,
            case_insensitive_paths: None,
            lease_wait: None,
        }
    }
}

impl RouteConfig {
    /// The defaults with this route's overrides applied.
    pub fn policy(&self, defaults: &PolicyConfig) -> PolicyConfig {
        PolicyConfig {
            conflict_status: self.conflict_status.unwrap_or(defaults.conflict_status),
            require_if_match: self.require_if_match.unwrap_or(defaults.require_if_match),
            require_methods: self
                .require_methods
                .clone()
                .unwrap_or_else(|| defaults.require_methods.clone()),
            on_unknown: self.on_unknown.unwrap_or(defaults.on_unknown),
            etag_source: self.etag_source.unwrap_or(defaults.etag_source),
            max_hash_bytes: self.max_hash_bytes.unwrap_or(defaults.max_hash_bytes),
            key_headers: self
                .key_headers
                .clone()
                .unwrap_or_else(|| defaults.key_headers.clone()),
            query: self.query.unwrap_or(defaults.query),
            merge_slashes: self.merge_slashes.unwrap_or(defaults.merge_slashes),
            ignore_trailing_slash: self
                .ignore_trailing_slash
                .unwrap_or(defaults.ignore_trailing_slash),
            case_insensitive_paths: self
                .case_insensitive_paths
                .unwrap_or(defaults.case_insensitive_paths),
            lease_wait: self.lease_wait.unwrap_or(defaults.lease_wait),
        }
    }
}

/// Command-line values that override the file (flags win over the config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--upstream`: replaces all routes with one catch-all route named "default".
    pub upstream: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--conflict-status`: for the defaults and every route.
    pub conflict_status: Option<u16>,
    /// `--require-if-match`: on for the defaults and every route (false leaves them as set).
    pub require_if_match: bool,
    /// `IFMATCH_ADMIN_TOKEN`: the admin API's bearer token.
    pub admin_token: Option<String>,
    /// `--store redis://...`: use the Redis store at this URL.
    pub store: Option<String>,
}

/// A validated route, ready for the router.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route id (the route's name).
    pub id: Arc<str>,
    /// Host to match, lowercase, without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix to match, without trailing slash (except the root, "/").
    pub path_prefix: String,
    /// The upstream's authority (scheme is always http).
    pub upstream: Authority,
    /// Whether the upstream sees the client's `Host`.
    pub preserve_host: bool,
    /// The guard policy for the route.
    pub policy: Arc<Policy>,
}

/// One problem found in a configuration, at a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, e.g. `routes[1].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })?;
        for issue in &self.0 {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML. (The parser's error, with line and column, is the source:
    /// shown once by whoever prints the chain.)
    #[error("{origin} is not valid toml")]
    Syntax {
        /// The file (or "config").
        origin: String,
        /// The parser's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// Keys with wrong names, types or values: all of them.
    #[error("invalid configuration: {0}")]
    Invalid(Issues),
}

impl ConfigError {
    /// The individual problems (empty for read and syntax errors).
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid(issues) => &issues.0,
            _ => &[],
        }
    }
}

impl Config {
    /// Reads `path`, parses it, applies `overrides` and validates.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or has invalid keys or values (all of them).
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML text, applies `overrides` and validates.
    ///
    /// # Errors
    /// Not TOML, or invalid keys or values (all of them).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::parse(text, "config", overrides)
    }

    /// The defaults with `overrides` applied, validated (no file).
    ///
    /// # Errors
    /// Invalid overrides, or no upstream.
    pub fn from_overrides(overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
            origin: origin.to_owned(),
            source,
        })?;
        let mut report = Report::default();
        let mut config = Self::from_table(table, &mut report);
        config.apply(overrides);
        config.check(&mut report);
        report.finish().map(|()| config)
    }

    fn from_table(table: toml::Table, report: &mut Report) -> Self {
        let mut config = Self::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => config.server = section(value, "server", report),
                "store" => config.store = section(value, "store", report),
                "defaults" => config.defaults = section(value, "defaults", report),
                "admin" => config.admin = section(value, "admin", report),
                "routes" => match value {
                    toml::Value::Array(items) => {
                        config.routes = items
                            .into_iter()
                            .enumerate()
                            .map(|(i, item)| section(item, &format!("routes[{i}]"), report))
                            .collect();
                    }
                    _ => report.parse_error("routes", "expected an array of tables ([[routes]])"),
                },
                _ => report.parse_error(
                    &key,
                    "unknown key, expected one of `server`, `store`, `defaults`, `routes`, `admin`",
                ),
            }
        }
        config
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(upstream) = &overrides.upstream {
            self.routes = vec![RouteConfig {
                name: "default".to_owned(),
                upstream: upstream.clone(),
                ..RouteConfig::default()
            }];
        }
        if let Some(listen) = overrides.listen {
            self.server.listen = listen;
        }
        if let Some(admin_listen) = overrides.admin_listen {
            self.server.admin_listen = admin_listen;
        }
        if let Some(token) = &overrides.admin_token {
            self.admin.token = Some(token.clone());
        }
        if let Some(status) = overrides.conflict_status {
            self.defaults.conflict_status = status;
            for route in &mut self.routes {
                route.conflict_status = Some(status);
            }
        }
        if overrides.require_if_match {
            self.defaults.require_if_match = true;
            for route in &mut self.routes {
                route.require_if_match = Some(true);
            }
        }
        if let Some(url) = &overrides.store {
            self.store.kind = StoreKind::Redis;
            self.store.url = Some(url.clone());
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.routes().map(drop)
    }

    /// The validated routes, in file order.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem of the whole config.
    pub fn routes(&self) -> Result<Vec<Route>, ConfigError> {
        let mut report = Report::default();
        let routes = self.check(&mut report);
        report.finish().map(|()| routes)
    }

    fn check(&self, report: &mut Report) -> Vec<Route> {
        self.server.check(report);
        self.admin.check(&self.server, report);
        self.store.check(&self.server, report);
        self.defaults.check("defaults", report);
        if self.routes.is_empty() {
            report.error(
                "routes",
                "no routes: add a [[routes]] table or pass --upstream",
            );
        }
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route.name.is_empty() && !names.insert(route.name.as_str()) {
                report.error(
                    &format!("{at}.name"),
                    &format!("duplicate route name {:?}", route.name),
                );
            }
            if let Some(mut route) = route.check(&at, &self.defaults, report) {
                // A property of the store, applied by the guard of every route.
                let policy = Arc::make_mut(&mut route.policy);
                policy.on_store_unavailable = self.store.failure_policy.into();
                // Properties of the server, which bound every write the guard forwards.
                policy.response_timeout = self.server.response_timeout;
                policy.write_outcome_timeout = self.server.write_outcome_timeout;
                routes.push(route);
            }
        }
        routes
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

/// The longest timeout accepted: longer is a typo, and would overflow deadlines.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest hash buffer accepted.
const MAX_HASH_BYTES: usize = 1 << 30;

/// The most bytes discarded to keep a connection: more is a typo, and costs more than a new one.
const MAX_DISCARD_BYTES: usize = 1 << 30;

/// The most connections accepted: beyond the file descriptors of any one process.
const MAX_CONNECTIONS: usize = 1_000_000;

impl ServerConfig {
    fn check(&self, report: &mut Report) {
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
        if self.max_headers == 0 {
            report.error("server.max_headers", "must be at least 1");
        }
        if self.discard_body_bytes > MAX_DISCARD_BYTES {
            report.error(
                "server.discard_body_bytes",
                "must be at most 1073741824 (1 GiB)",
            );
        }
    }
}

impl StoreConfig {
    fn check(&self, server: &ServerConfig, report: &mut Report) {
        if self.kind == StoreKind::Redis {
            self.check_redis(server, report);
        }
        if self.max_entries == 0 {
            report.error("store.max_entries", "must be at least 1");
        }
        if self.ttl.is_zero() {
            report.error("store.ttl", "must be greater than zero");
        }
    }

    fn check_redis(&self, server: &ServerConfig, report: &mut Report) {
        if cfg!(not(feature = "redis")) {
            report.error(
                "store.kind",
                "this build has no redis support (cargo feature \"redis\"); use \"memory\"",
            );
        }
        match self.url.as_deref() {
            None | Some("") => report.error(
                "store.url",
                "is required with kind = \"redis\" (or pass --store redis://host:port)",
            ),
            Some(url) if !url.starts_with("redis://") => {
                report.error("store.url", &format!("{url:?} must start with redis://"));
            }
            Some(_) => {}
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

impl AdminConfig {
    fn check(&self, server: &ServerConfig, report: &mut Report) {
        match &self.token {
            Some(token)
                if token.trim().is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                report.error("admin.token", "must be non-empty visible ASCII (no spaces)");
            }
            // Anyone who can reach a non-loopback port could purge keys and read paths.
            None if !server.admin_listen.ip().is_loopback() => report.error(
                "admin.token",
                &format!(
                    "required when server.admin_listen ({}) is not a loopback address: \
                     set [admin] token or IFMATCH_ADMIN_TOKEN",
                    server.admin_listen
                ),
            ),
            _ => {}
        }
    }
}

impl PolicyConfig {
    /// Checks every field, reporting under `at`; the resolved policy if all are valid.
    fn check(&self, at: &str, report: &mut Report) -> Option<Policy> {
        let before = report.len();
        let conflict_status = check_field(
            at,
            "conflict_status",
            parse_conflict_status(self.conflict_status),
            report,
        );
        let methods = check_field(
            at,
            "require_methods",
            parse_methods(&self.require_methods),
            report,
        );
        let key_headers = check_field(
            at,
            "key_headers",
            parse_header_names(&self.key_headers),
            report,
        );
        check_field(
            at,
            "max_hash_bytes",
            parse_max_hash_bytes(self.max_hash_bytes),
            report,
        );
        check_field(at, "lease_wait", parse_lease_wait(self.lease_wait), report);
        if report.len() > before {
            return None;
        }
        Some(Policy {
            conflict_status: conflict_status?,
            require_precondition: if self.require_if_match {
                methods?
            } else {
                Vec::new()
            },
            on_unknown: self.on_unknown.into(),
            etag_source: self.etag_source.into(),
            max_hash_bytes: self.max_hash_bytes,
            key_headers: key_headers?,
            query: self.query.into(),
            aliases: Aliases {
                merge_slashes: self.merge_slashes,
                ignore_trailing_slash: self.ignore_trailing_slash,
                case_insensitive: self.case_insensitive_paths,
            },
            lease_wait: self.lease_wait,
            // Set from `[store]` and `[server]` once the route is built.
            on_store_unavailable: OnStoreUnavailable::default(),
            response_timeout: Policy::default().response_timeout,
            write_outcome_timeout: Policy::default().write_outcome_timeout,
        })
    }
}

impl RouteConfig {
    fn check(&self, at: &str, defaults: &PolicyConfig, report: &mut Report) -> Option<Route> {
        let before = report.len();
        if self.name.is_empty() {
            report.error(&format!("{at}.name"), "is required");
        } else if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            report.error(
                &format!("{at}.name"),
                "may only contain letters, digits, '-', '_' and '.'",
            );
        }
        let host = match &self.host {
            None => None,
            Some(host) => check_field(at, "host", parse_host(host), report),
        };
        let path_prefix = check_field(
            at,
            "path_prefix",
            parse_path_prefix(&self.path_prefix),
            report,
        );
        let upstream = if self.upstream.is_empty() {
            report.error(&format!("{at}.upstream"), "is required");
            None
        } else {
            check_field(at, "upstream", parse_upstream(&self.upstream), report)
        };
        // Only the fields this route sets are reported here; the defaults report their own.
        if let Some(status) = self.conflict_status {
            check_field(at, "conflict_status", parse_conflict_status(status), report);
        }
        if let Some(methods) = &self.require_methods {
            check_field(at, "require_methods", parse_methods(methods), report);
        }
        if let Some(headers) = &self.key_headers {
            check_field(at, "key_headers", parse_header_names(headers), report);
        }
        if let Some(bytes) = self.max_hash_bytes {
            check_field(at, "max_hash_bytes", parse_max_hash_bytes(bytes), report);
        }
        if let Some(wait) = self.lease_wait {
            check_field(at, "lease_wait", parse_lease_wait(wait), report);
        }
        let policy = self.policy(defaults).check(at, &mut Report::default());
        if report.len() > before {
            return None;
        }
        Some(Route {
            id: Arc::from(self.name.as_str()),
            host,
            path_prefix: path_prefix?,
            upstream: upstream?,
            preserve_host: self.preserve_host,
            policy: Arc::new(policy?),
        })
    }
}

/// Parses an upstream URL: `http://host[:port]`, optionally with a trailing `/`.
///
/// # Errors
/// Another scheme, credentials, a path or a query, with what to write instead.
pub fn parse_upstream(url: &str) -> Result<Authority, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL ({e})"))?;
    match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP => {}
        Some(scheme) if *scheme == Scheme::HTTPS => {
            return Err(format!(
                "{url:?}: https upstreams are not supported yet; use http://"
            ));
        }
        Some(scheme) => {
            return Err(format!(
                "{url:?}: unsupported scheme {scheme:?}; use http://"
            ));
        }
        None => return Err(format!("{url:?} must start with http://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?} must not contain credentials"));
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(format!(
            "{url:?} must not have a path or query: the request's path is forwarded as is"
        ));
    }
    Ok(authority.clone())
}

/// A hash buffer per request in flight: beyond 1 GiB one client could exhaust memory.
fn parse_max_hash_bytes(bytes: usize) -> Result<usize, String> {
    if (1..=MAX_HASH_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!("must be between 1 and {MAX_HASH_BYTES} (1 GiB)"))
    }
}

/// Zero is allowed: a write to a busy resource then gets 409 at once.
fn parse_lease_wait(wait: Duration) -> Result<Duration, String> {
    if wait <= MAX_TIMEOUT {
        Ok(wait)
    } else {
        Err("must be at most 1 day".to_owned())
    }
}

fn parse_conflict_status(status: u16) -> Result<StatusCode, String> {
    match status {
        409 => Ok(StatusCode::CONFLICT),
        412 => Ok(StatusCode::PRECONDITION_FAILED),
        other => Err(format!("must be 409 or 412, not {other}")),
    }
}

fn parse_methods(methods: &[String]) -> Result<Vec<Method>, String> {
    methods
        .iter()
        .map(|m| match m.to_ascii_uppercase().as_str() {
            "PUT" => Ok(Method::PUT),
            "PATCH" => Ok(Method::PATCH),
            "DELETE" => Ok(Method::DELETE),
            "POST" => Ok(Method::POST),
            _ => Err(format!(
                "{m:?} is not a write method; expected PUT, PATCH, DELETE or POST"
            )),
        })
        .collect()
}

fn parse_header_names(names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid header name"))
        })
        .collect()
}

fn parse_host(host: &str) -> Result<String, String> {
    let authority: Authority = host
        .parse()
        .map_err(|_| format!("{host:?} is not a valid host name"))?;
    if authority.port().is_some() || authority.as_str().contains('@') {
        return Err(format!("{host:?}: give the host name only, without port"));
    }
    Ok(authority.host().to_ascii_lowercase())
}

fn parse_path_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) || prefix.contains(char::is_whitespace) {
        return Err(format!(
            "{prefix:?} must be a plain path (no query, fragment or spaces)"
        ));
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}

fn check_field<T>(
    at: &str,
    key: &str,
    result: Result<T, String>,
    report: &mut Report,
) -> Option<T> {
    result
        .map_err(|message| report.error(&format!("{at}.{key}"), &message))
        .ok()
}

/// Deserializes one section; a bad key is reported and dropped so the others still parse.
fn section<T: DeserializeOwned + Default>(value: toml::Value, at: &str, report: &mut Report) -> T {
    let toml::Value::Table(table) = value else {
        report.parse_error(at, "expected a table");
        return T::default();
    };
    if let Ok(parsed) = toml::Value::Table(table.clone()).try_into() {
        return parsed;
    }
    // Deserialize each key alone: every field has a default, so only bad keys fail.
    let mut good = toml::Table::new();
    for (key, value) in table {
        let single = toml::Table::from_iter([(key.clone(), value.clone())]);
        match toml::Value::Table(single).try_into::<T>() {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => report.parse_error(&format!("{at}.{key}"), e.message()),
        }
    }
    toml::Value::Table(good).try_into().unwrap_or_default()
}

/// Collects problems; a key that failed to parse gets no further (misleading) validation errors.
#[derive(Default)]
struct Report {
    issues: Vec<Issue>,
    unparsed: HashSet<String>,
}

impl Report {
    fn parse_error(&mut self, path: &str, message: &str) {
        self.unparsed.insert(path.to_owned());
        self.push(path, message);
    }

    fn error(&mut self, path: &str, message: &str) {
        let unparsed = |prefix: &String| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if !self.unparsed.iter().any(unparsed) {
            self.push(path, message);
        }
    }

    fn push(&mut self, path: &str, message: &str) {
        self.issues.push(Issue {
            path: path.to_owned(),
            message: message.trim().to_owned(),
        });
    }

    fn len(&self) -> usize {
        self.issues.len()
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(Issues(self.issues)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &Overrides::default())
    }

    fn paths(err: &ConfigError) -> Vec<&str> {
        err.issues().iter().map(|i| i.path.as_str()).collect()
    }

    const MINIMAL: &str = r#"
        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
    "#;

    #[test]
    fn minimal_file_gets_every_default() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.defaults, PolicyConfig::default());
        let routes = config.routes().unwrap();
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(&*route.id, "api");
        assert_eq!(route.host, None);
        assert_eq!(route.path_prefix, "/");
        assert_eq!(route.upstream.as_str(), "127.0.0.1:3000");
        assert!(route.preserve_host);
        assert_eq!(*route.policy, Policy::default());
    }

    #[test]
    fn example_file_is_valid_and_shows_the_defaults() {
        let config =
            parse(include_str!("../config/ifmatch.toml")).expect("config/ifmatch.toml is valid");
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.defaults, PolicyConfig::default());
        let routes = config.routes().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].host.as_deref(), Some("accounts.example.com"));
        assert_eq!(
            routes[0].policy.conflict_status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            routes[0].policy.key_headers,
            vec![http::header::AUTHORIZATION]
        );
        assert_eq!(*routes[1].policy, Policy::default());
    }

    #[test]
    fn full_file_parses() {
        let config = parse(
            r#"
            [server]
            listen = "0.0.0.0:80"
            admin_listen = "127.0.0.1:9000"
            connect_timeout = "500ms"
            response_timeout = "1m"
            header_read_timeout = "3s"
            max_header_bytes = 16384

            [store]
            kind = "memory"
            max_entries = 10
            ttl = "1h"

            [defaults]
            conflict_status = 412
            require_if_match = true
            require_methods = ["put", "POST"]
            on_unknown = "reject"
            etag_source = "upstream"
            max_hash_bytes = 1024
            key_headers = ["Authorization"]
            query = "identity"
            merge_slashes = false
            case_insensitive_paths = true
            lease_wait = "250ms"

            [[routes]]
            name = "users"
            host = "API.Example.com"
            path_prefix = "/users/"
            upstream = "http://users.internal:8081/"
            preserve_host = false
            conflict_status = 409
            require_if_match = false
            ignore_trailing_slash = false
            lease_wait = "1s"
        "#,
        )
        .unwrap();
        assert_eq!(config.server.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.store.ttl, Duration::from_secs(3600));
        let route = &config.routes().unwrap()[0];
        assert_eq!(route.host.as_deref(), Some("api.example.com"));
        assert_eq!(route.path_prefix, "/users");
        assert_eq!(route.upstream.as_str(), "users.internal:8081");
        assert!(!route.preserve_host);
        let policy = &route.policy;
        assert_eq!(policy.conflict_status, StatusCode::CONFLICT);
        assert!(policy.require_precondition.is_empty());
        assert_eq!(policy.on_unknown, OnUnknown::Reject);
        assert_eq!(policy.etag_source, EtagSource::Upstream);
        assert_eq!(policy.max_hash_bytes, 1024);
        assert_eq!(policy.key_headers, vec![http::header::AUTHORIZATION]);
        assert_eq!(policy.query, crate::guard::QueryMode::Identity);
        let aliases = Aliases {
            merge_slashes: false,
            ignore_trailing_slash: false,
            case_insensitive: true,
        };
        assert_eq!(policy.aliases, aliases);
        assert_eq!(policy.lease_wait, Duration::from_secs(1));
    }

    #[test]
    fn require_if_match_uses_require_methods() {
        let config = parse(
            r#"
            [defaults]
            require_if_match = true
            [[routes]]
            name = "a"
            upstream = "http://a:1"
            [[routes]]
            name = "b"
            upstream = "http://b:1"
            require_methods = ["PUT", "POST"]
        "#,
        )
        .unwrap();
        let routes = config.routes().unwrap();
        assert_eq!(
            routes[0].policy.require_precondition,
            Policy::default_required_methods()
        );
        assert_eq!(
            routes[1].policy.require_precondition,
            vec![Method::PUT, Method::POST]
        );
    }

    #[test]
    fn redis_store_settings_and_their_checks() {
        let config = parse(
            r#"
            [store]
            kind = "redis"
            url = "redis://10.0.0.5:6379/2"
            key_prefix = "shop:"
            failure_policy = "fail_open"

            [[routes]]
            name = "api"
            upstream = "http://127.0.0.1:3000"
        "#,
        )
        .unwrap();
        assert_eq!(config.store.kind, StoreKind::Redis);
        assert_eq!(config.store.lease_ttl, Duration::from_secs(120));
        let route = &config.routes().unwrap()[0];
        assert_eq!(
            route.policy.on_store_unavailable,
            OnStoreUnavailable::Forward
        );
        #[cfg(feature = "redis")]
        assert_eq!(config.store.redis().key_prefix, "shop:");

        // The lease must outlive a revalidation plus the write it guards.
        let err = parse(
            r#"
            [server]
            response_timeout = "10s"
            [store]
            kind = "redis"
            url = "http://not-redis"
            lease_ttl = "20s"
            [[routes]]
            name = "api"
            upstream = "http://127.0.0.1:3000"
        "#,
        )
        .unwrap_err();
        assert_eq!(paths(&err), ["store.url", "store.lease_ttl"], "{err}");

        // --store selects Redis over a file that says memory; fail closed by default.
        let overrides = Overrides {
            upstream: Some("http://127.0.0.1:3000".to_owned()),
            store: Some("redis://127.0.0.1:6379".to_owned()),
            ..Overrides::default()
        };
        let config = Config::from_overrides(&overrides).unwrap();
        assert_eq!(config.store.kind, StoreKind::Redis);
        assert_eq!(config.store.url.as_deref(), Some("redis://127.0.0.1:6379"));
        let route = &config.routes().unwrap()[0];
        assert_eq!(
            route.policy.on_store_unavailable,
            OnStoreUnavailable::Refuse
        );
    }

    #[test]
    fn every_error_is_reported() {
        let err = parse(
            r#"
            surprise = 1

            [server]
            listen = "not an address"
            lsiten = "127.0.0.1:1"
            response_timeout = "0s"
            max_header_bytes = 100

            [store]
            kind = "etcd"
            ttl = "forever"

            [defaults]
            conflict_status = 400
            on_unknown = "guess"
            require_methods = ["GET"]
            key_headers = ["bad header"]

            [[routes]]
            upstream = "https://secure:443"

            [[routes]]
            name = "dup"
            upstream = "http://a:1/base"
            path_prefix = "api"
            host = "a.example:8080"

            [[routes]]
            name = "dup"
            upstream = 3
            conflict_status = 500
        "#,
        )
        .unwrap_err();
        let mut got = paths(&err);
        got.sort_unstable();
        let mut want = vec![
            "surprise",
            "server.listen",
            "server.lsiten",
            "server.response_timeout",
            "server.max_header_bytes",
            "store.kind",
            "store.ttl",
            "defaults.conflict_status",
            "defaults.on_unknown",
            "defaults.require_methods",
            "defaults.key_headers",
            "routes[0].name",
            "routes[0].upstream",
            "routes[1].upstream",
            "routes[1].path_prefix",
            "routes[1].host",
            "routes[2].name",
            "routes[2].upstream",
            "routes[2].conflict_status",
        ];
        want.sort_unstable();
        assert_eq!(got, want, "{err}");
        let text = err.to_string();
        assert!(text.contains("19 errors"), "{text}");
        assert!(text.contains("https upstreams are not supported"), "{text}");
        assert!(text.contains("unknown variant `etcd`"), "{text}");
        assert!(text.contains("duplicate route name"), "{text}");
    }

    #[test]
    fn limits_must_be_positive_and_sane() {
        let err = parse(
            r#"
            [server]
            body_read_timeout = "0s"
            idle_timeout = "1000d"
            max_connections = 0
            shutdown_timeout = "0s"
            discard_body_bytes = 1_073_741_825

            [defaults]
            max_hash_bytes = 0
            lease_wait = "2d"

            [[routes]]
            name = "api"
            upstream = "http://127.0.0.1:3000"
            max_hash_bytes = 4_294_967_296
        "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "server.body_read_timeout: must be greater than zero",
            "server.idle_timeout: must be at most 1 day",
            "server.max_connections: must be between 1 and 1000000",
            "server.shutdown_timeout: must be greater than zero",
            "server.discard_body_bytes: must be at most 1073741824 (1 GiB)",
            "defaults.max_hash_bytes: must be between 1 and 1073741824 (1 GiB)",
            "defaults.lease_wait: must be at most 1 day",
            "routes[0].max_hash_bytes: must be between 1",
        ] {
            assert!(text.contains(expected), "{expected:?} not in {text}");
        }
        assert!(text.contains("8 errors"), "{text}");
        // Absurd durations are reported, never overflowed.
        let err = parse(
            r#"
            [server]
            response_timeout = "500000000000000000s"
            [store]
            kind = "redis"
            url = "redis://127.0.0.1:6379"
            [[routes]]
            name = "api"
            upstream = "http://127.0.0.1:3000"
        "#,
        )
        .unwrap_err();
        assert!(paths(&err).contains(&"server.response_timeout"), "{err}");
    }

    #[test]
    fn a_bad_key_type_is_not_also_reported_as_missing() {
        let err = parse("[[routes]]\nname = \"a\"\nupstream = 3\n").unwrap_err();
        assert_eq!(paths(&err), vec!["routes[0].upstream"]);
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn syntax_error_is_one_error() {
        let err = parse("[server\nlisten = 1").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn no_routes_is_an_error() {
        let err = parse("").unwrap_err();
        assert_eq!(paths(&err), vec!["routes"]);
    }

    #[test]
    fn routes_must_be_tables() {
        let err = parse("routes = 1").unwrap_err();
        assert_eq!(paths(&err), vec!["routes"]);
    }

    #[test]
    fn a_route_that_is_not_a_table_is_one_error() {
        let err = parse("routes = [1, { name = \"b\", upstream = \"http://b:1\" }]").unwrap_err();
        assert_eq!(paths(&err), vec!["routes[0]"]);
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(parse_upstream("http://h:1").unwrap().as_str(), "h:1");
        assert_eq!(parse_upstream("http://h/").unwrap().as_str(), "h");
        for bad in [
            "h:1",
            "https://h",
            "ftp://h",
            "http://h/path",
            "http://h?q",
            "http://u:p@h",
            "http://",
            "",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_prefixes_are_normalized() {
        assert_eq!(parse_path_prefix("/").unwrap(), "/");
        assert_eq!(parse_path_prefix("//").unwrap(), "/");
        assert_eq!(parse_path_prefix("/api/").unwrap(), "/api");
        assert!(parse_path_prefix("api").is_err());
        assert!(parse_path_prefix("/a?b").is_err());
    }

    #[test]
    fn admin_token_required_off_loopback_and_never_shown() {
        let open = "[[routes]]\nname = \"x\"\nupstream = \"http://x:1\"\n\
                    [server]\nadmin_listen = \"0.0.0.0:9901\"\n";
        let error = Config::from_toml(open, &Overrides::default()).unwrap_err();
        assert!(
            error.to_string().contains("admin.token: required"),
            "{error}"
        );
        let with_env = Overrides {
            admin_token: Some("s3cret".into()),
            ..Overrides::default()
        };
        let config = Config::from_toml(open, &with_env).unwrap();
        assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
        let blank = format!("{open}[admin]\ntoken = \" \"\n");
        let error = Config::from_toml(&blank, &Overrides::default()).unwrap_err();
        assert!(
            error.to_string().contains("admin.token: must be"),
            "{error}"
        );
    }

    #[test]
    fn upstream_override_replaces_routes() {
        let overrides = Overrides {
            upstream: Some("http://10.0.0.1:80".into()),
            ..Overrides::default()
        };
        let config = Config::from_toml(
            "[[routes]]\nname = \"x\"\nhost = \"x\"\nupstream = \"http://x:1\"\n",
            &overrides,
        )
        .unwrap();
        let routes = config.routes().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(&*routes[0].id, "default");
        assert_eq!(routes[0].host, None);
        assert_eq!(routes[0].path_prefix, "/");
        assert_eq!(routes[0].upstream.as_str(), "10.0.0.1:80");
    }

    #[test]
    fn policy_overrides_apply_to_defaults_and_every_route() {
        let overrides = Overrides {
            conflict_status: Some(412),
            require_if_match: true,
            listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::from_toml(
            r#"
            [[routes]]
            name = "a"
            upstream = "http://a:1"
            conflict_status = 409
            require_if_match = false
            [[routes]]
            name = "b"
            upstream = "http://b:1"
        "#,
            &overrides,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 1);
        assert_eq!(config.defaults.conflict_status, 412);
        for route in config.routes().unwrap() {
            assert_eq!(
                route.policy.conflict_status,
                StatusCode::PRECONDITION_FAILED
            );
            assert_eq!(
                route.policy.require_precondition,
                Policy::default_required_methods()
            );
        }
    }

    #[test]
    fn overrides_alone_make_a_config() {
        let config = Config::from_overrides(&Overrides {
            upstream: Some("http://127.0.0.1:3000".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.routes().unwrap().len(), 1);
        assert!(Config::from_overrides(&Overrides::default()).is_err());
    }

    #[test]
    fn bad_default_is_reported_once_not_per_route() {
        let err = parse(
            r#"
            [defaults]
            conflict_status = 418
            [[routes]]
            name = "a"
            upstream = "http://a:1"
            [[routes]]
            name = "b"
            upstream = "http://b:1"
        "#,
        )
        .unwrap_err();
        assert_eq!(paths(&err), vec!["defaults.conflict_status"]);
    }
}
