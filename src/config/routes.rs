//! `[[routes]]`: which requests go to which upstream, under which policy; checked into
//! [`Route`]s for the router.

use std::sync::Arc;

use http::Uri;
use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::policy::{PolicyConfig, policy_keys};
use super::validate::{Report, check_field};
use crate::guard::Policy;

/// Generates [`RouteConfig`]: its own fields, then an override of every policy key inline
/// (`#[serde(flatten)]` does not work with `deny_unknown_fields`), and the merge.
macro_rules! route_section {
    (
        route {
            $(
                $(#[doc = $field_doc:literal])*
                $field:ident: $field_ty:ty = $field_default:expr;
            )*
        }
        keys {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($serde:tt)*)])*
                $key:ident: $ty:ty = $default:expr;
            )*
        }
    ) => {
        /// `[[routes]]`: requests for one host and path prefix, sent to one upstream.
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct RouteConfig {
            $(
                $(#[doc = $field_doc])*
                pub $field: $field_ty,
            )*
            $(
                #[doc = concat!("Overrides `defaults.", stringify!($key), "`.")]
                $(#[serde($($serde)*)])*
                pub $key: Option<$ty>,
            )*
        }

        impl Default for RouteConfig {
            fn default() -> Self {
                Self {
                    $($field: $field_default,)*
                    $($key: None,)*
                }
            }
        }

        impl RouteConfig {
            /// The defaults with this route's overrides applied.
            pub fn policy(&self, defaults: &PolicyConfig) -> PolicyConfig {
                PolicyConfig {
                    $($key: Clone::clone(self.$key.as_ref().unwrap_or(&defaults.$key)),)*
                }
            }

            /// Whether this route sets the policy key `key` itself.
            fn overrides(&self, key: &str) -> bool {
                match key {
                    $(stringify!($key) => self.$key.is_some(),)*
                    _ => false,
                }
            }
        }
    };
}

policy_keys!(route_section! {
    route {
        /// Unique route id (letters, digits, `-`, `_`, `.`); part of every resource key.
        name: String = String::new();
        /// Only requests for this host (without port, case-insensitive); absent: any host.
        host: Option<String> = None;
        /// Only requests whose path is this prefix or below it ("/api" matches "/api" and
        /// "/api/x", not "/apix"). The longest matching prefix wins.
        path_prefix: String = "/".to_owned();
        /// Where matching requests go: `http://host:port`, no path.
        upstream: String = String::new();
        /// Whether the upstream sees the client's `Host` (else the upstream's own authority).
        preserve_host: bool = true;
    }
});

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
        // The merged policy is checked whole, but only the keys this route sets are its
        // problems: the defaults report their own, once.
        let mut policy_report = Report::default();
        let policy = self.policy(defaults).check(at, &mut policy_report);
        for issue in policy_report.into_issues() {
            let key = issue
                .path
                .strip_prefix(at)
                .and_then(|key| key.strip_prefix('.'));
            if key.is_some_and(|key| self.overrides(key)) {
                report.error(&issue.path, &issue.message);
            }
        }
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
