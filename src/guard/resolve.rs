//! A stale write, resolved as far as the guard can, under (then without) its lease.
//!
//! `precondition::evaluate` found the write's precondition stale; before the 409 goes out:
//! 1. The current representation is looked up in the version memory (or, with
//!    `conflict_body = "current"`, fetched by a GET under the lease, learned as a revalidation
//!    learns; if that GET shows the write's precondition now holds, the write is forwarded).
//! 2. Only a PUT's body is read (a PATCH or POST body is not the whole document), bounded by
//!    the route's `max_hash_bytes` and by [`BODY_WAIT`]: a body announced larger is not
//!    read at all, one that comes larger or slower gets the minimal 409 (the discard layer
//!    sees to the connection). The lease is ended first unless the write may merge.
//! 3. A body byte-identical to the current representation, on a route that synthesizes
//!    (identity hash), is answered 200 with the current ETag and no write: idempotent
//!    re-creation, or a retry of a write that already applied.
//! 4. With `on_conflict = "merge"`, the base remembered and the changes disjoint, the client's
//!    changes are applied to the current document, which is forwarded under the same lease with
//!    the current validator (an upstream tag in `If-Match`; a synthesized one is the guard's
//!    own check, just made): exactly as safe as a client that re-read and retried.
//! 5. Else the 409 (or 412) with the current document and the comparison ([`super::conflict`]).
//!
//! The lease ends exactly once: here (`Outcome::Unchanged`) for every answer the guard gives,
//! or in the exchange the merged write is forwarded through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, EXPECT, IF_MATCH, IF_NONE_MATCH, IF_UNMODIFIED_SINCE,
    TRANSFER_ENCODING,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::conflict::{Sides, client_document, document};
use super::exchange::Exchange;
use super::headers;
use super::policy::{ConflictBody, EtagSource, OnConflict};
use super::response::{Rejection, RejectionKind};
use super::revalidate::{Revalidation, revalidation_request};
use super::versions::Version;
use crate::etag::EntityTag;
use crate::precondition::{Preconditions, TagCondition};
use crate::store::{KeyState, Outcome, Store};
use crate::telemetry;
use crate::validator::Representation;

/// The longest the guard waits for a stale write's body (less if `response_timeout` is
/// less): a client that trickles it gets the minimal 409, and a merge, which waits under the
/// lease, spends it out of the write's `write_outcome_timeout`.
pub(crate) const BODY_WAIT: Duration = Duration::from_secs(2);

/// The response header that says a write was merged: `base="…", current="…"`, the version
/// the client edited and the one its changes were applied to.
pub const MERGED_HEADER: &str = "ifmatch-merged";

/// A write whose precondition failed, under its lease if one was taken.
pub(crate) struct Stale<'a, S, St: Store> {
    pub(crate) inner: S,
    /// The write's lease, or `None` when the store saw the precondition fail and took none
    /// (only on routes that neither merge nor fetch the current version: see
    /// [`needs_lease`]).
    pub(crate) held: Option<Exchange<St>>,
    pub(crate) about: About,
    pub(crate) rejection: Rejection,
    /// The state the precondition failed against (the write's view of it).
    pub(crate) state: KeyState,
    pub(crate) pre: &'a Preconditions,
    pub(crate) instance: &'a str,
    /// The lease's generation, for what a GET under it learns.
    pub(crate) generation: u64,
}

/// Which resource a stale write is to, and the route's rules.
pub(crate) struct About {
    pub(crate) key: crate::key::ResourceKey,
    pub(crate) route: Arc<str>,
    pub(crate) policy: Arc<super::policy::Policy>,
    pub(crate) variant: u32,
    pub(crate) versions: super::Versions,
}

impl About {
    pub(crate) fn of<St: Store>(exchange: &Exchange<St>) -> Self {
        Self {
            key: exchange.key,
            route: exchange.route.clone(),
            policy: Arc::clone(&exchange.policy),
            variant: exchange.variant,
            versions: exchange.versions.clone(),
        }
    }
}

/// Whether resolving a stale write on this route may need its lease: to fetch the current
/// version under it, or to forward a merge. Else the 409 needs none, and a store that sees the
/// precondition fail need not take one.
pub(crate) fn needs_lease(policy: &super::policy::Policy) -> bool {
    policy.conflict_body == ConflictBody::Current || policy.on_conflict == OnConflict::Merge
}

/// What becomes of the stale write.
pub(crate) enum Resolved<B, RB: Body, St: Store> {
    /// The guard's answer; the lease has ended.
    Answer(Response<ResponseBody<RB>>),
    /// Forward the write as it is: a fresh GET showed its precondition holds.
    Pass(Request<B>, Exchange<St>),
    /// Forward this merged write, then add this `ifmatch-merged` value to its response.
    Merged(Request<RequestBody<B>>, Exchange<St>, HeaderValue),
}

impl<S, St: Store> Stale<'_, S, St> {
    pub(crate) async fn resolve<B, RB>(
        self,
        req: Request<B>,
    ) -> Result<Resolved<B, RB, St>, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
        B: Body,
        RB: Body<Data = Bytes>,
    {
        let Stale {
            inner,
            held,
            about,
            mut rejection,
            mut state,
            pre,
            instance,
            generation,
        } = self;
        let About {
            key,
            route,
            policy,
            variant,
            versions,
        } = about;
        // Ended as soon as nothing more needs it.
        let mut lease = held;
        let resolvable = matches!(
            rejection.kind,
            RejectionKind::StalePrecondition | RejectionKind::AlreadyExists
        );
        if policy.conflict_body == ConflictBody::Minimal || variant != 0 || !resolvable {
            end(&mut lease).await;
            return Ok(Resolved::Answer(rejection.into_response()));
        }
        // Only what this writer's credentials were shown.
        let viewer = super::versions::audience(req.headers());
        // The representation the write replaces: the current version shown, and merged into,
        // is of it when the memory holds one.
        let written = headers::representation(req.headers());
        let mut current = remembered(&versions, (key, viewer), &state, written);
        // What is spent under the lease from here (the GET, the body) comes out of the
        // forwarded write's budget: the revalidation before it already took the GET's share
        // of `config::lease_budget`.
        let started = Instant::now();
        let fetch = current.is_none() && policy.conflict_body == ConflictBody::Current;
        if let (true, Some(exchange)) = (fetch, &lease) {
            let get = revalidation_request(&req, &policy);
            let revalidation = Revalidation {
                inner,
                store: &exchange.store,
                policy: &policy,
                route: &route,
                instance,
                variant: 0,
                versions: &versions,
                read_body: true,
            };
            // Boxed: a fetch is rare (and a round trip), and its state would otherwise size
            // every stale write's future.
            if let Ok(fresh) = Box::pin(revalidation.run::<B, RB>(key, generation, get)).await? {
                match super::write::check(&fresh, pre, &policy, instance) {
                    None => {
                        if let Some(mut exchange) = lease.take() {
                            spend(&mut exchange, started.elapsed());
                            return Ok(Resolved::Pass(req, exchange));
                        }
                    }
                    Some(fresher) => rejection = fresher,
                }
                state = fresh;
                current = remembered(&versions, (key, viewer), &state, written);
            }
        }
        let Some(current) = current else {
            end(&mut lease).await;
            return Ok(Resolved::Answer(rejection.into_response()));
        };
        let current_doc = document(&current);
        if req.method() != Method::PUT {
            end(&mut lease).await;
            let sides = Sides {
                base: None,
                current: current_doc,
                yours: None,
            };
            return Ok(Resolved::Answer(sides.explain(rejection).into_response()));
        }
        let base = match (&pre.if_match, rejection.kind) {
            (Some(TagCondition::Tags(tags)), RejectionKind::StalePrecondition) => tags
                .iter()
                .filter(|tag| !tag.is_weak())
                .filter_map(|tag| versions.get(key, tag))
                .find(|base| base.audience == viewer),
            _ => None,
        };
        let base_doc = base.as_ref().and_then(document);
        let content_type = req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes);
        // Never across representations: a document merged into another one's shape and sent
        // as this one would replace the resource with what the client never wrote.
        let may_merge = policy.on_conflict == OnConflict::Merge
            && base.as_ref().is_some_and(|base| of(base, written))
            && of(&current, written)
            && base_doc.is_some()
            && current_doc.is_some()
            && content_type.is_some_and(super::conflict::is_json);
        // Only a merge needs the lease while the body comes.
        if !may_merge {
            end(&mut lease).await;
        }
        let (parts, body) = req.into_parts();
        let wait = BODY_WAIT.min(policy.response_timeout);
        let Some(bytes) = read_bounded(body, policy.max_hash_bytes, wait).await else {
            end(&mut lease).await;
            let sides = Sides {
                base: None,
                current: current_doc,
                yours: None,
            };
            return Ok(Resolved::Answer(sides.explain(rejection).into_response()));
        };
        let representation = headers::representation(&parts.headers);
        if policy.etag_source != EtagSource::Upstream
            && already_current(&current, &state, representation, &parts.headers, &bytes)
        {
            end(&mut lease).await;
            metrics::counter!(telemetry::WRITES_ALREADY_APPLIED, "route" => route).increment(1);
            return Ok(Resolved::Answer(already_applied(&current)));
        }
        let content_type = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
        let yours = client_document(content_type, &bytes);
        // The lease is still held only if the write may merge; taken only to forward it.
        if let (true, Some(base), Some(base_doc), Some(current_doc), Some(yours)) =
            (lease.is_some(), &base, &base_doc, &current_doc, &yours)
        {
            if let Ok((merged, _)) = crate::merge::merge(base_doc, current_doc, yours) {
                if let Some(mut exchange) = lease.take() {
                    spend(&mut exchange, started.elapsed());
                    let request = merged_request(parts, &merged, &current.tag);
                    let header = merged_header(&base.tag, &current.tag);
                    return Ok(Resolved::Merged(request, exchange, header));
                }
            }
        }
        end(&mut lease).await;
        let base_tag = base.as_ref().map(|b| &b.tag);
        let sides = Sides {
            base: base_tag.zip(base_doc),
            current: current_doc,
            yours,
        };
        Ok(Resolved::Answer(sides.explain(rejection).into_response()))
    }
}

/// Ends the lease, if still held.
async fn end<St: Store>(lease: &mut Option<Exchange<St>>) {
    if let Some(exchange) = lease.take() {
        exchange.end(Outcome::Unchanged).await;
    }
}

/// The current version, if remembered for this `viewer`: the first of the state's validators
/// of the `written` representation the memory holds, else the first of any.
fn remembered(
    versions: &super::Versions,
    (key, viewer): (crate::key::ResourceKey, super::versions::Audience),
    state: &KeyState,
    written: Representation,
) -> Option<Version> {
    let KeyState::Present { validators, .. } = state else {
        return None;
    };
    let find = |of_written: bool| {
        validators
            .iter()
            .filter(|v| (v.representation == written) == of_written)
            .filter_map(|v| versions.get(key, &v.tag))
            .find(|version| version.audience == viewer)
    };
    find(true).or_else(|| find(false))
}

/// Whether a remembered (identity-coded) `version` is of the `written` representation.
fn of(version: &Version, written: Representation) -> bool {
    Representation::new(&version.content_type, b"") == written
}

/// Whether the client's body is the current representation, byte for byte: the same bytes as
/// the remembered one (and the same content type), or, without that, bytes whose synthesized
/// tag is one of the current validators.
fn already_current(
    current: &Version,
    state: &KeyState,
    representation: crate::validator::Representation,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> bool {
    let same_type = headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().eq_ignore_ascii_case(&current.content_type));
    if same_type && *body == current.body {
        return true;
    }
    let KeyState::Present { validators, .. } = state else {
        return false;
    };
    let tag = super::hash::synthesized_tag(representation, body);
    validators.iter().any(|v| v.tag.strong_eq(&tag))
}

/// The 200 for a write that asked for what is already there.
fn already_applied<RB: Body>(current: &Version) -> Response<ResponseBody<RB>> {
    let mut response = Response::new(ResponseBody::full(current.body.clone()));
    let headers = response.headers_mut();
    if let Ok(content_type) = HeaderValue::from_bytes(&current.content_type) {
        if !current.content_type.is_empty() {
            headers.insert(CONTENT_TYPE, content_type);
        }
    }
    headers::set_etag(headers, &current.tag);
    *response.status_mut() = StatusCode::OK;
    response
}

/// The write carrying `merged`, conditional on the current validator when the upstream knows
/// it (a synthesized tag is the guard's own, just checked under this lease).
fn merged_request<B>(
    mut parts: http::request::Parts,
    merged: &serde_json::Value,
    current: &EntityTag,
) -> Request<RequestBody<B>> {
    // Serializing a parsed document cannot fail.
    let bytes = Bytes::from(serde_json::to_vec(merged).unwrap_or_default());
    let headers = &mut parts.headers;
    for name in [
        TRANSFER_ENCODING,
        EXPECT,
        IF_MATCH,
        IF_NONE_MATCH,
        IF_UNMODIFIED_SINCE,
    ] {
        headers.remove(name);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if !current.is_synthesized() {
        if let Ok(value) = HeaderValue::from_str(&current.to_string()) {
            headers.insert(IF_MATCH, value);
        }
    }
    Request::from_parts(parts, RequestBody::full(bytes))
}

fn merged_header(base: &EntityTag, current: &EntityTag) -> HeaderValue {
    HeaderValue::from_str(&format!("base={base}, current={current}"))
        .unwrap_or_else(|_| HeaderValue::from_static("?1"))
}

/// The time spent under the lease since the precondition failed (the conflict's GET, a
/// merge's body read), out of the write's outcome budget: every step under a lease stays
/// within what `config::lease_budget` covers.
fn spend<St: Store>(exchange: &mut Exchange<St>, spent: Duration) {
    let mut policy = (*exchange.policy).clone();
    let floor = Duration::from_millis(1);
    policy.write_outcome_timeout = policy
        .write_outcome_timeout
        .saturating_sub(spent)
        .max(floor);
    policy.response_timeout = policy.response_timeout.min(policy.write_outcome_timeout);
    exchange.policy = Arc::new(policy);
}

/// The whole body, if it is at most `limit` bytes and all there within `wait`. A body
/// announced larger is not read at all.
async fn read_bounded<B: Body>(body: B, limit: usize, wait: Duration) -> Option<Bytes> {
    if body.size_hint().lower() > limit as u64 {
        return None;
    }
    let mut body = Box::pin(body);
    let read = async {
        let mut all = BytesMut::new();
        while let Some(frame) = body.as_mut().frame().await {
            let Ok(mut data) = frame.ok()?.into_data() else {
                continue;
            };
            if all.len().saturating_add(data.remaining()) > limit {
                return None;
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                let n = chunk.len();
                all.extend_from_slice(chunk);
                data.advance(n);
            }
        }
        Some(all.freeze())
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}
