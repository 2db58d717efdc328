//! `GET /admin/resources?path=...[&route=...][&host=...]`: what the proxy knows about one
//! resource; `DELETE` of the same forgets it (its next write revalidates).
//!
//! `path` may carry the resource's query (`path=/items%3Fpage%3D2`, URL-encoded), which counts
//! when the route keys on it. A raw `key=<32 hex digits>` (as logged) addresses a key directly.

use std::time::SystemTime;

use http::{Method, Response, StatusCode};
use serde::Serialize;

use super::reply::{AdminBody, json, problem};
use crate::guard::resource_key;
use crate::key::ResourceKey;
use crate::proxy::Routes;
use crate::store::{KeyState, Snapshot, Store};

/// The request's target, parsed from the query string.
#[derive(Debug, Default)]
struct Target {
    path: Option<String>,
    route: Option<String>,
    host: Option<String>,
    key: Option<String>,
}

/// A resolved resource: its key and, when addressed by path, where it came from.
#[derive(Debug, Serialize)]
struct Addressed {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

#[derive(Debug, Serialize)]
struct Inspected<'a> {
    #[serde(flatten)]
    resource: &'a Addressed,
    state: &'static str,
    validators: Vec<ValidatorJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    generation: u64,
    lease_held: bool,
}

#[derive(Debug, Serialize)]
struct ValidatorJson {
    etag: String,
    /// The representation id (hash of content type and coding), hex.
    representation: String,
}

/// Inspects (GET) or purges (DELETE) the resource the query names.
pub async fn handle<St: Store>(
    method: &Method,
    query: &str,
    routes: Option<&Routes>,
    store: Option<&St>,
) -> Response<AdminBody> {
    let Some(store) = store else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-store",
            "this proxy runs without a validator store (passthrough mode)",
        );
    };
    let addressed = match resolve(parse(query), routes) {
        Ok(addressed) => addressed,
        Err((status, slug, detail)) => return problem(status, slug, detail),
    };
    let Ok(key) = addressed.key.parse::<ResourceKey>() else {
        return problem(StatusCode::BAD_REQUEST, "bad-query", "key: 32 hex digits");
    };
    if method == Method::DELETE {
        return match store.purge(key).await {
            Ok(held) => {
                tracing::info!(%key, path = ?addressed.path, "resource purged");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "resource": addressed, "purged": held }),
                )
            }
            Err(error) => store_failed(&error),
        };
    }
    match store.load(key).await {
        Ok(snapshot) => json(StatusCode::OK, &inspected(&addressed, snapshot)),
        Err(error) => store_failed(&error),
    }
}

fn store_failed(error: &crate::store::StoreError) -> Response<AdminBody> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        &error.to_string(),
    )
}

fn parse(query: &str) -> Target {
    let mut target = Target::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "path" => &mut target.path,
            "route" => &mut target.route,
            "host" => &mut target.host,
            "key" => &mut target.key,
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    target
}

/// Why a target names no resource: status, problem slug, detail.
type Unresolved = (StatusCode, &'static str, &'static str);

/// The key the proxy uses for the target, computed exactly as the guard does.
fn resolve(target: Target, routes: Option<&Routes>) -> Result<Addressed, Unresolved> {
    let bad = |detail| (StatusCode::BAD_REQUEST, "bad-query", detail);
    if let Some(key) = target.key {
        return Ok(Addressed {
            key,
            route: None,
            path: None,
            query: None,
        });
    }
    let Some(full) = target.path else {
        return Err(bad(
            "name the resource: ?path=/items/1 (or ?key=<32 hex digits>)",
        ));
    };
    if !full.starts_with('/') {
        return Err(bad("path must start with /"));
    }
    let (path, query) = match full.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (full, None),
    };
    let Some(routes) = routes else {
        return Err(bad("no routes are loaded"));
    };
    let table = routes.load();
    let context = match &target.route {
        Some(id) => table.context_by_id(id),
        None => table.context_for(target.host.as_deref(), &path),
    };
    let Some(context) = context else {
        return Err((
            StatusCode::NOT_FOUND,
            "no-route",
            "no route matches this path (and host); name one with route=",
        ));
    };
    if !context.policy.key_headers.is_empty() {
        // The key hashes request header values (credentials) that the admin cannot know.
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "keyed-by-headers",
            "this route keys resources on request headers: address one with key=<hex>, as \
             logged",
        ));
    }
    let (key, _) = resource_key(&context.id, &context.policy, &path, query.as_deref(), []);
    Ok(Addressed {
        key: key.to_string(),
        route: Some(context.id.to_string()),
        path: Some(path),
        query,
    })
}

fn inspected(addressed: &Addressed, snapshot: Snapshot) -> Inspected<'_> {
    let (state, validators, last_modified) = match snapshot.state {
        KeyState::Unknown => ("unknown", Vec::new(), None),
        KeyState::Absent => ("absent", Vec::new(), None),
        KeyState::Present {
            validators,
            last_modified,
        } => ("present", validators, last_modified),
    };
    Inspected {
        resource: addressed,
        state,
        validators: validators
            .into_iter()
            .map(|v| ValidatorJson {
                etag: v.tag.to_string(),
                representation: format!("{:016x}", v.representation.0),
            })
            .collect(),
        last_modified: last_modified.map(|t: SystemTime| httpdate::fmt_http_date(t)),
        generation: snapshot.generation,
        lease_held: snapshot.leased,
    }
}
