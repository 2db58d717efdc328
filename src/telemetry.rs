//! The names of every metric ifmatch records, in one place, with their descriptions.
//!
//! Recording goes through the [`metrics`] facade: without an installed recorder (an embedding
//! app that exports nothing) every call is a no-op. The `ifmatch` binary installs a Prometheus
//! recorder and serves it on the admin listener's `/metrics`.

/// Requests by `route`, `method` and `status` class (`2xx`...).
pub const REQUESTS: &str = "ifmatch_requests_total";
/// Writes refused as conflicts, by `route` and `reason` (a rejection slug).
pub const CONFLICTS: &str = "ifmatch_conflicts_total";
/// Writes answered 428 (no precondition where the route requires one), by `route`.
pub const PRECONDITION_REQUIRED: &str = "ifmatch_precondition_required_total";
/// Writes answered 400 (malformed precondition header), by `route`.
pub const MALFORMED_PRECONDITION: &str = "ifmatch_malformed_precondition_total";
/// Revalidation GETs made for writes to unknown resources, by `route` and `outcome`.
pub const REVALIDATIONS: &str = "ifmatch_revalidations_total";
/// Seconds a write waited for its resource's write lease, by `route`.
pub const LEASE_WAIT: &str = "ifmatch_lease_wait_seconds";
/// Seconds from sending a request upstream to its response headers, by `route`.
pub const UPSTREAM_DURATION: &str = "ifmatch_upstream_duration_seconds";
/// Strong ETags synthesized from a body hash, by `route`.
pub const ETAGS_SYNTHESIZED: &str = "ifmatch_etags_synthesized_total";
/// Bodies left unhashed because they exceed `max_hash_bytes`, by `route`.
pub const ETAGS_SKIPPED: &str = "ifmatch_etags_skipped_total";
/// Entries held by the validator store.
pub const STORE_ENTRIES: &str = "ifmatch_store_entries";
/// Store lookups that found a known state.
pub const STORE_HITS: &str = "ifmatch_store_hits_total";
/// Store lookups that found nothing trustworthy.
pub const STORE_MISSES: &str = "ifmatch_store_misses_total";
/// Store entries evicted to make room.
pub const STORE_EVICTIONS: &str = "ifmatch_store_evictions_total";
/// Conditional writes forwarded unchecked because the store was unreachable (`fail_open`).
pub const STORE_FAILED_OPEN: &str = "ifmatch_store_failed_open_total";
/// Client connections open on the data plane, WebSocket tunnels included.
pub const CONNECTIONS: &str = "ifmatch_connections";
/// Client connections refused because `server.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "ifmatch_connections_refused_total";
/// Request bodies the proxy left unread, read to their end and discarded so that their
/// HTTP/1.1 connection carries the next request.
pub const BODIES_DISCARDED: &str = "ifmatch_request_bodies_discarded_total";
/// HTTP/1.1 connections closed after an answer because the body it left unread could not be
/// discarded, by `reason`: `too_large`, `too_slow`, `unsent` (the client waits for
/// `100 Continue`), `forwarded` (the upstream client gave up on it part-way: the upstream
/// failed or answered early), `broken` (the body failed).
pub const CONNECTIONS_CLOSED_UNDISCARDED: &str = "ifmatch_connections_closed_undiscarded_total";
/// Configuration reloads, by `result` (`ok`, `refused`).
pub const CONFIG_RELOADS: &str = "ifmatch_config_reloads_total";
/// Forwarded writes whose outcome never came within `server.write_outcome_timeout`, by route.
pub const WRITE_OUTCOMES_ABANDONED: &str = "ifmatch_write_outcomes_abandoned_total";
/// `Idempotency-Key`s taken by a first request (then forwarded), by `route`.
pub const IDEMPOTENCY_KEYS_TAKEN: &str = "ifmatch_idempotency_keys_taken_total";
/// Taken keys given back (5xx, 409, 429, transport error) so that a retry goes through, by
/// `route`.
pub const IDEMPOTENCY_KEYS_RELEASED: &str = "ifmatch_idempotency_keys_released_total";
/// Retries answered from the record, never forwarded, by `route`.
pub const IDEMPOTENCY_REPLAYS: &str = "ifmatch_idempotency_replays_total";
/// Keys reused for another request (422), by `route`.
pub const IDEMPOTENCY_MISMATCHES: &str = "ifmatch_idempotency_mismatches_total";
/// Retries while the first request was still in flight (409), by `route`.
pub const IDEMPOTENCY_IN_FLIGHT: &str = "ifmatch_idempotency_in_flight_total";
/// Idempotency records (and keys in flight) held in memory.
pub const IDEMPOTENCY_RECORDS: &str = "ifmatch_idempotency_records";
/// Idempotency records evicted from memory to stay within its bounds.
pub const IDEMPOTENCY_EVICTIONS: &str = "ifmatch_idempotency_evictions_total";

/// Bytes held by the version memory (remembered representations, `server.version_memory_bytes`).
pub const VERSION_MEMORY_BYTES: &str = "ifmatch_version_memory_bytes";
/// Version memory lookups that found the version asked for.
pub const VERSION_MEMORY_HITS: &str = "ifmatch_version_memory_hits_total";
/// Version memory lookups that did not.
pub const VERSION_MEMORY_MISSES: &str = "ifmatch_version_memory_misses_total";
/// Stale writes the guard merged with the current version and forwarded, by `route`.
pub const WRITES_MERGED: &str = "ifmatch_writes_merged_total";
/// Stale writes answered 200 without a write because they carried the current representation
/// already (idempotent re-creation or retry), by `route`.
pub const WRITES_ALREADY_APPLIED: &str = "ifmatch_writes_already_applied_total";

/// The `reason` of [`CONFLICTS`]: the slugs of the rejections that count as conflicts.
pub const CONFLICT_REASONS: [&str; 6] = [
    "stale-precondition",
    "resource-absent",
    "already-exists",
    "update-in-progress",
    "unknown-state",
    "too-large-to-hash",
];

/// The `outcome` of [`REVALIDATIONS`].
pub const REVALIDATION_OUTCOMES: [&str; 7] = [
    "present",
    "absent",
    "relayed",
    "upstream-error",
    "too-large",
    "no-etag",
    "timeout",
];

/// The `reason` of [`CONNECTIONS_CLOSED_UNDISCARDED`].
pub const UNDISCARDED_REASONS: [&str; 5] =
    ["too_large", "too_slow", "unsent", "forwarded", "broken"];

/// The `result` of [`CONFIG_RELOADS`].
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "refused"];

/// Every `status` label of [`REQUESTS`].
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every `method` label of [`REQUESTS`] ([`method_label`]'s values).
pub const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "PUT", "PATCH", "DELETE", "POST", "OPTIONS", "other",
];

/// Registers every series whose labels are known now, at zero, with the installed recorder:
/// the label-free ones, and for each of `routes` every combination of the fixed label sets.
/// A fresh process then shows each documented series, so an alert on one reads 0, not "no
/// data". Registering is idempotent: a reload registers its new routes the same way.
pub fn register<'a>(routes: impl IntoIterator<Item = &'a str>) {
    use metrics::{counter, gauge, histogram};
    counter!(CONNECTIONS_REFUSED).increment(0);
    counter!(BODIES_DISCARDED).increment(0);
    for reason in UNDISCARDED_REASONS {
        counter!(CONNECTIONS_CLOSED_UNDISCARDED, "reason" => reason).increment(0);
    }
    gauge!(CONNECTIONS).increment(0.0);
    gauge!(STORE_ENTRIES).increment(0.0);
    gauge!(IDEMPOTENCY_RECORDS).increment(0.0);
    counter!(IDEMPOTENCY_EVICTIONS).increment(0);
    for name in [STORE_HITS, STORE_MISSES, STORE_EVICTIONS] {
        counter!(name).increment(0);
    }
    for result in RELOAD_RESULTS {
        counter!(CONFIG_RELOADS, "result" => result).increment(0);
    }
    gauge!(VERSION_MEMORY_BYTES).increment(0.0);
    for name in [VERSION_MEMORY_HITS, VERSION_MEMORY_MISSES] {
        counter!(name).increment(0);
    }
    for route in routes {
        let route = metrics::SharedString::from(route.to_owned());
        for name in [
            PRECONDITION_REQUIRED,
            MALFORMED_PRECONDITION,
            ETAGS_SYNTHESIZED,
            ETAGS_SKIPPED,
            STORE_FAILED_OPEN,
            WRITE_OUTCOMES_ABANDONED,
            IDEMPOTENCY_KEYS_TAKEN,
            IDEMPOTENCY_KEYS_RELEASED,
            IDEMPOTENCY_REPLAYS,
            IDEMPOTENCY_MISMATCHES,
            IDEMPOTENCY_IN_FLIGHT,
            WRITES_MERGED,
            WRITES_ALREADY_APPLIED,
        ] {
            counter!(name, "route" => route.clone()).increment(0);
        }
        for reason in CONFLICT_REASONS {
            counter!(CONFLICTS, "route" => route.clone(), "reason" => reason).increment(0);
        }
        for outcome in REVALIDATION_OUTCOMES {
            counter!(REVALIDATIONS, "route" => route.clone(), "outcome" => outcome).increment(0);
        }
        for method in METHOD_LABELS {
            for status in STATUS_CLASSES {
                counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
                    .increment(0);
            }
        }
        // A registered histogram is exported with empty buckets.
        let _ = histogram!(LEASE_WAIT, "route" => route.clone());
        let _ = histogram!(UPSTREAM_DURATION, "route" => route.clone());
    }
}

/// Registers the descriptions (the `# HELP` lines) with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests by route, method and status class");
    describe_counter!(
        STORE_FAILED_OPEN,
        "Conditional writes forwarded unchecked while the store was unreachable (fail_open)"
    );
    describe_counter!(
        CONFLICTS,
        "Writes refused as conflicts, by route and reason"
    );
    describe_counter!(
        PRECONDITION_REQUIRED,
        "Writes answered 428 Precondition Required"
    );
    describe_counter!(
        MALFORMED_PRECONDITION,
        "Writes answered 400 for a malformed precondition"
    );
    describe_counter!(REVALIDATIONS, "Revalidation GETs by route and outcome");
    describe_counter!(
        WRITE_OUTCOMES_ABANDONED,
        "Forwarded writes with no answer within write_outcome_timeout (then unknown)"
    );
    describe_histogram!(
        LEASE_WAIT,
        Unit::Seconds,
        "Wait for a resource's write lease"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Upstream time to response headers"
    );
    describe_counter!(
        ETAGS_SYNTHESIZED,
        "Strong ETags synthesized from a body hash"
    );
    describe_counter!(
        ETAGS_SKIPPED,
        "Bodies too large to hash, left without an ETag"
    );
    describe_gauge!(STORE_ENTRIES, "Entries held by the validator store");
    describe_counter!(STORE_HITS, "Store lookups that found a known state");
    describe_counter!(STORE_MISSES, "Store lookups that found nothing trustworthy");
    describe_counter!(STORE_EVICTIONS, "Store entries evicted to make room");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads by result");
    describe_counter!(
        IDEMPOTENCY_KEYS_TAKEN,
        "Idempotency-Keys taken by a first request, then forwarded"
    );
    describe_counter!(
        IDEMPOTENCY_KEYS_RELEASED,
        "Idempotency-Keys given back after a 5xx, 409, 429 or transport error"
    );
    describe_counter!(
        IDEMPOTENCY_REPLAYS,
        "Retries answered from the idempotency record, not forwarded"
    );
    describe_counter!(
        IDEMPOTENCY_MISMATCHES,
        "Idempotency-Keys reused for another request (422)"
    );
    describe_counter!(
        IDEMPOTENCY_IN_FLIGHT,
        "Retries while the first request with the key was in flight (409)"
    );
    describe_gauge!(IDEMPOTENCY_RECORDS, "Idempotency records held in memory");
    describe_counter!(
        IDEMPOTENCY_EVICTIONS,
        "Idempotency records evicted from memory to stay within bounds"
    );
    describe_gauge!(
        CONNECTIONS,
        "Client connections open, WebSocket tunnels included"
    );
    describe_counter!(
        BODIES_DISCARDED,
        "Unread request bodies discarded to keep their connection"
    );
    describe_counter!(
        CONNECTIONS_CLOSED_UNDISCARDED,
        "Connections closed because an unread request body was too large or slow to discard"
    );
    describe_gauge!(
        VERSION_MEMORY_BYTES,
        "Bytes held by the version memory (remembered representations)"
    );
    describe_counter!(
        VERSION_MEMORY_HITS,
        "Version memory lookups that found the version"
    );
    describe_counter!(
        VERSION_MEMORY_MISSES,
        "Version memory lookups that did not find the version"
    );
    describe_counter!(
        WRITES_MERGED,
        "Stale writes merged with the current version and forwarded"
    );
    describe_counter!(
        WRITES_ALREADY_APPLIED,
        "Stale writes answered 200 without a write: the current representation already"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused at server.max_connections"
    );
}

/// One route's metric handles, looked up in the recorder once, on the route's first request,
/// instead of once per request (a lookup hashes the name and every label). A route table
/// built by a reload gets new ones. Handles bound before any recorder is installed record
/// nothing, as the macros would.
pub struct RouteMetrics {
    route: metrics::SharedString,
    handles: std::sync::OnceLock<RouteHandles>,
}

struct RouteHandles {
    /// [`REQUESTS`] by [`METHOD_LABELS`] index, then [`STATUS_CLASSES`] index.
    requests: Vec<[metrics::Counter; 5]>,
    /// [`CONFLICTS`] by [`CONFLICT_REASONS`] index.
    conflicts: Vec<metrics::Counter>,
    upstream_duration: metrics::Histogram,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &&*self.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// The handles of route `route`, bound on first use.
    pub fn new(route: std::sync::Arc<str>) -> Self {
        Self {
            route: metrics::SharedString::from(route),
            handles: std::sync::OnceLock::new(),
        }
    }

    fn handles(&self) -> &RouteHandles {
        self.handles.get_or_init(|| {
            let route = &self.route;
            RouteHandles {
                requests: METHOD_LABELS
                    .iter()
                    .map(|&method| {
                        STATUS_CLASSES.map(|status| {
                            metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
                        })
                    })
                    .collect(),
                conflicts: CONFLICT_REASONS
                    .iter()
                    .map(|&reason| {
                        metrics::counter!(CONFLICTS, "route" => route.clone(), "reason" => reason)
                    })
                    .collect(),
                upstream_duration: metrics::histogram!(UPSTREAM_DURATION, "route" => route.clone()),
            }
        })
    }

    /// [`REQUESTS`] with this route, `method` (one of [`METHOD_LABELS`]) and `status` (one of
    /// [`STATUS_CLASSES`]); other labels count as `other` and `5xx`.
    pub fn request(&self, method: &str, status: &str) -> &metrics::Counter {
        let method = METHOD_LABELS
            .iter()
            .position(|&label| label == method)
            .unwrap_or(METHOD_LABELS.len() - 1);
        let status = STATUS_CLASSES
            .iter()
            .position(|&class| class == status)
            .unwrap_or(STATUS_CLASSES.len() - 1);
        &self.handles().requests[method][status]
    }

    /// [`CONFLICTS`] with this route and `reason`, if it is one of [`CONFLICT_REASONS`].
    pub fn conflict(&self, reason: &str) -> Option<&metrics::Counter> {
        let index = CONFLICT_REASONS.iter().position(|&r| r == reason)?;
        self.handles().conflicts.get(index)
    }

    /// [`UPSTREAM_DURATION`] with this route.
    pub fn upstream_duration(&self) -> &metrics::Histogram {
        &self.handles().upstream_duration
    }

    /// The route label.
    pub fn route(&self) -> &metrics::SharedString {
        &self.route
    }
}

/// The status class label of `status`, without allocating.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method label, without allocating (extension methods share one label, so a client cannot
/// grow the label set).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::POST => "POST",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_lists_every_label() {
        for method in [
            "GET", "HEAD", "PUT", "PATCH", "DELETE", "POST", "OPTIONS", "PURGE",
        ] {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            assert!(METHOD_LABELS.contains(&method_label(&method)), "{method}");
        }
        for code in [100, 200, 304, 409, 503] {
            let status = http::StatusCode::from_u16(code).unwrap();
            assert!(STATUS_CLASSES.contains(&status_class(status)), "{code}");
        }
    }
}
