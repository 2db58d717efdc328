//! `[defaults]`: the guard policy keys every route starts from, their checks, and their
//! conversion to the guard's [`Policy`].

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde::Deserialize;

use super::validate::{MAX_TIMEOUT, Report, check_field};
use crate::guard::{Aliases, IdempotencyPolicy, OnStoreUnavailable, Policy};

/// The policy keys, each declared once: doc comment, serde attributes, type and default.
///
/// `policy_keys!(generate! { args })` calls `generate! { args keys { ... } }`, so every section
/// that holds policy keys is generated from this one list: `[defaults]` ([`PolicyConfig`],
/// below) and each route's overrides ([`RouteConfig`](super::RouteConfig)). Types are written
/// in full: they are expanded where the generator is invoked.
macro_rules! policy_keys {
    ($generate:ident! { $($args:tt)* }) => {
        $generate! {
            $($args)*
            keys {
                /// Whether the precondition guard sees the route's traffic at all. `false`:
                /// requests pass as through a plain reverse proxy, with no store look-up and
                /// no check (for routes nobody writes through, or writes that need none).
                guard: bool = true;
                /// Status for a failed precondition on a write: 409 (Conflict) or 412
                /// (Precondition Failed).
                conflict_status: u16 = Policy::default().conflict_status.as_u16();
                /// Whether an unconditional write (a `require_methods` method without
                /// `If-Match`, `If-Unmodified-Since` or `If-None-Match: *`) gets 428
                /// Precondition Required.
                require_if_match: bool = false;
                /// The methods `require_if_match` applies to: any of PUT, PATCH, DELETE, POST.
                require_methods: Vec<String> = Policy::default_required_methods()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                /// Conditional write to a resource in an unknown state: "revalidate",
                /// "forward" or "reject".
                on_unknown: $crate::guard::OnUnknown = Policy::default().on_unknown;
                /// Where validators come from: "upstream", "synthesize" or "both".
                etag_source: $crate::guard::EtagSource = Policy::default().etag_source;
                /// Largest body hashed to synthesize an ETag, in bytes; larger bodies stream
                /// through unhashed and leave the resource unknown.
                max_hash_bytes: usize = Policy::default().max_hash_bytes;
                /// Request headers whose values (hashed, never stored raw) are part of the
                /// resource key, e.g. `["authorization"]` for per-user resources.
                key_headers: Vec<String> = Vec::new();
                /// What the query string is to the resource: `"variant"` (the path names the
                /// resource, each query a view of it with its own validators; a write through
                /// any query replaces them all), `"identity"` (each query string names a
                /// resource of its own, as in `/api?id=5`), or `"ignore"`.
                query: $crate::guard::QueryMode = Policy::default().query;
                /// Whether `//a///b` names `/a/b` (runs of slashes are one).
                merge_slashes: bool = Policy::default().aliases.merge_slashes;
                /// Whether `/a/` names `/a`.
                ignore_trailing_slash: bool = Policy::default().aliases.ignore_trailing_slash;
                /// Whether `/A` names `/a` (ASCII letters), for upstreams with
                /// case-insensitive paths.
                case_insensitive_paths: bool = Policy::default().aliases.case_insensitive;
                /// How long a write waits for another write to the same resource before
                /// getting 409.
                #[serde(with = "humantime_serde")]
                lease_wait: std::time::Duration = Policy::default().lease_wait;
                /// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header-07):
                /// `"off"` (passed through), `"optional"` (a request with a key is made
                /// idempotent) or `"required"` (one without gets 400).
                idempotency: $crate::guard::IdempotencyMode = Policy::default().idempotency.mode;
                /// The methods `idempotency` applies to: any of POST, PATCH, PUT, DELETE.
                idempotency_methods: Vec<String> = Policy::default()
                    .idempotency
                    .methods
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                /// How long a completed request's response is kept and replayed to retries.
                #[serde(with = "humantime_serde")]
                idempotency_retention: std::time::Duration =
                    Policy::default().idempotency.retention;
                /// Largest request body buffered to fingerprint a request with a key; a
                /// larger one gets 413.
                idempotency_max_request_bytes: usize =
                    Policy::default().idempotency.max_request_bytes;
                /// Largest response body recorded for replay; a larger one streams through
                /// and a retry gets 409 (completed, cannot be replayed).
                idempotency_max_response_bytes: usize =
                    Policy::default().idempotency.max_response_bytes;
                /// What the conflict response to a stale write carries: `"remembered"` (the
                /// current representation when the proxy remembers it, and for JSON the fields
                /// in conflict), `"current"` (the same, fetching the current representation
                /// from the upstream when it is not remembered) or `"minimal"` (the current
                /// ETag and a sentence).
                conflict_body: $crate::guard::ConflictBody = Policy::default().conflict_body;
                /// What a stale JSON write whose changes do not overlap the intervening ones
                /// gets: `"reject"` (the conflict status) or `"merge"` (its changes applied
                /// to the current version and forwarded, under the same lease).
                on_conflict: $crate::guard::OnConflict = Policy::default().on_conflict;
            }
        }
    };
}
pub(super) use policy_keys;

/// Generates [`PolicyConfig`] and its defaults from the keys.
macro_rules! defaults_section {
    (keys {
        $(
            $(#[doc = $doc:literal])*
            $(#[serde($($serde:tt)*)])*
            $key:ident: $ty:ty = $default:expr;
        )*
    }) => {
        /// `[defaults]`: the guard policy of every route, unless the route overrides a field.
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct PolicyConfig {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])*
                pub $key: $ty,
            )*
        }

        impl Default for PolicyConfig {
            fn default() -> Self {
                Self {
                    $($key: $default,)*
                }
            }
        }
    };
}

policy_keys!(defaults_section! {});

/// The largest hash buffer accepted.
const MAX_HASH_BYTES: usize = 1 << 30;

impl PolicyConfig {
    /// Checks every field, reporting under `at`; the resolved policy if all are valid.
    pub(super) fn check(&self, at: &str, report: &mut Report) -> Option<Policy> {
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
        let idempotency_methods = check_field(
            at,
            "idempotency_methods",
            parse_methods(&self.idempotency_methods),
            report,
        );
        check_field(
            at,
            "idempotency_retention",
            parse_retention(self.idempotency_retention),
            report,
        );
        for (key, bytes) in [
            (
                "idempotency_max_request_bytes",
                self.idempotency_max_request_bytes,
            ),
            (
                "idempotency_max_response_bytes",
                self.idempotency_max_response_bytes,
            ),
        ] {
            check_field(at, key, parse_max_hash_bytes(bytes), report);
        }
        if report.len() > before {
            return None;
        }
        Some(Policy {
            guard: self.guard,
            conflict_status: conflict_status?,
            require_precondition: if self.require_if_match {
                methods?
            } else {
                Vec::new()
            },
            on_unknown: self.on_unknown,
            etag_source: self.etag_source,
            max_hash_bytes: self.max_hash_bytes,
            key_headers: key_headers?,
            query: self.query,
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
            idempotency: IdempotencyPolicy {
                mode: self.idempotency,
                methods: idempotency_methods?,
                retention: self.idempotency_retention,
                max_request_bytes: self.idempotency_max_request_bytes,
                max_response_bytes: self.idempotency_max_response_bytes,
                // Set from `[server]` and `[store]` once the route is built.
                hold: Policy::default().idempotency.hold,
            },
            conflict_body: self.conflict_body,
            on_conflict: self.on_conflict,
        })
    }
}

/// A hash buffer per request in flight: beyond 1 GiB one client could exhaust memory.
fn parse_max_hash_bytes(bytes: usize) -> Result<usize, String> {
    if (1..=MAX_HASH_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!("must be between 1 and {MAX_HASH_BYTES} (1 GiB)"))
    }
}

/// A record kept at least a second, at most a year.
fn parse_retention(retention: Duration) -> Result<Duration, String> {
    if (Duration::from_secs(1)..=Duration::from_secs(366 * 24 * 60 * 60)).contains(&retention) {
        Ok(retention)
    } else {
        Err("must be between 1s and 366 days".to_owned())
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
