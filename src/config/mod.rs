//! Configuration: load (TOML file) -> parse (serde) -> validate, reporting every error at once.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`, so a file only names what it
//! changes and a misspelt key is an error, not a silent default. Parsing isolates each bad key
//! and keeps going; validation then checks what parsed; the caller gets one
//! [`ConfigError::Invalid`] listing every problem. Command-line [`Overrides`] are applied between
//! parsing and validation, so `--upstream` can complete a file that has no routes.
//!
//! No tokio, no hyper: this module only turns text into plain values and [`Route`]s. Each
//! section's file holds its keys and their checks; a policy key is declared once, for both
//! `[defaults]` ([`PolicyConfig`]) and the routes that override it ([`RouteConfig`]).
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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

mod admin;
mod policy;
mod routes;
mod server;
mod store;
mod validate;

pub use admin::AdminConfig;
pub use policy::PolicyConfig;
pub use routes::{Route, RouteConfig, parse_upstream};
pub use server::ServerConfig;
pub use store::{FailurePolicy, StoreConfig, StoreKind, idempotency_hold, lease_budget};
pub use validate::{Issue, Issues};
use validate::{Report, section};

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
                policy.idempotency.hold =
                    idempotency_hold(&self.server, &self.store, policy.lease_wait);
                routes.push(route);
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests;
