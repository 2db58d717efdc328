//! `GET /admin/idempotency?route=...&key=...`: what the proxy holds for one `Idempotency-Key`
//! on one route (in flight, or the recorded response's status and size). A raw
//! `record=<32 hex digits>` (as logged) addresses a record directly: the only way on a route
//! whose records are scoped by key headers (credentials the admin cannot know).

use http::{Response, StatusCode};
use serde::Serialize;

use super::reply::{AdminBody, json, problem};
use crate::idempotency::record_key;
use crate::key::ResourceKey;
use crate::proxy::Routes;
use crate::store::idempotency::{Held, IdempotencyStore};

#[derive(Debug, Serialize)]
struct Inspected {
    record: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes: Option<usize>,
}

/// Looks up the record the query names.
pub async fn handle<R: IdempotencyStore>(
    query: &str,
    routes: Option<&Routes>,
    records: Option<&R>,
) -> Response<AdminBody> {
    let Some(records) = records else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-store",
            "this proxy keeps no idempotency records (passthrough mode)",
        );
    };
    let (mut route, mut key, mut record) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "route" => route = Some(value.into_owned()),
            "key" => key = Some(value.into_owned()),
            "record" => record = Some(value.into_owned()),
            _ => {}
        }
    }
    let bad = |detail| problem(StatusCode::BAD_REQUEST, "bad-query", detail);
    let (record, route) = match (record, route, key) {
        (Some(record), _, _) => match record.parse::<ResourceKey>() {
            Ok(record) => (record, None),
            Err(_) => return bad("record: 32 hex digits"),
        },
        (None, Some(route), Some(key)) => {
            let Some(routes) = routes else {
                return bad("no routes are loaded");
            };
            let table = routes.load();
            let Some(context) = table.context_by_id(&route) else {
                return problem(StatusCode::NOT_FOUND, "no-route", "no route has this name");
            };
            if !context.policy.key_headers.is_empty() {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "keyed-by-headers",
                    "this route scopes records by request headers: address one with \
                     record=<hex>, as logged",
                );
            }
            (record_key(&context.id, &key, []), Some(route))
        }
        _ => {
            return bad(
                "name the record: ?route=<route name>&key=<Idempotency-Key value, unquoted> \
                 (or ?record=<32 hex digits>)",
            );
        }
    };
    let held = match records.lookup(record).await {
        Ok(held) => held,
        Err(error) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                &error.to_string(),
            );
        }
    };
    let mut inspected = Inspected {
        record: record.to_string(),
        route,
        state: "none",
        fingerprint: None,
        replayable: None,
        status: None,
        body_bytes: None,
    };
    match held {
        None => {}
        Some(Held::InFlight(fingerprint)) => {
            inspected.state = "in_flight";
            inspected.fingerprint = Some(fingerprint.to_hex());
        }
        Some(Held::Done(recorded)) => {
            inspected.state = "completed";
            inspected.fingerprint = Some(recorded.fingerprint.to_hex());
            inspected.replayable = Some(recorded.response.is_some());
            if let Some(response) = recorded.response {
                inspected.status = Some(response.status.as_u16());
                inspected.body_bytes = Some(response.body.len());
            }
        }
    }
    json(StatusCode::OK, &inspected)
}
