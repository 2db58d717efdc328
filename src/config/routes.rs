//! `[[routes]]`: which requests go to which upstream, under which policy; checked into
//! [`Route`]s for the router.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::policy::{
    EtagSourceSetting, OnUnknownSetting, PolicyConfig, QuerySetting, parse_conflict_status,
    parse_header_names, parse_lease_wait, parse_max_hash_bytes, parse_methods,
};
use super::validate::{Report, check_field};
use crate::guard::Policy;

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

impl RouteConfig {
    pub(super) fn check(
        &self,
        at: &str,
        defaults: &PolicyConfig,
        report: &mut Report,
    ) -> Option<Route> {
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

pub(super) fn parse_host(host: &str) -> Result<String, String> {
    let authority: Authority = host
        .parse()
        .map_err(|_| format!("{host:?} is not a valid host name"))?;
    if authority.port().is_some() || authority.as_str().contains('@') {
        return Err(format!("{host:?}: give the host name only, without port"));
    }
    Ok(authority.host().to_ascii_lowercase())
}

pub(super) fn parse_path_prefix(prefix: &str) -> Result<String, String> {
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
