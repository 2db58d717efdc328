//! The write path (RFC 9110 §13.2.2): check, lease, establish the state, evaluate, forward,
//! record the outcome.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tower::{Service, ServiceExt};

use super::body::{RequestBody, ResponseBody, Tail};
use super::hash::{Hashed, hash_body};
use super::headers;
use super::policy::{EtagSource, FailedOpen, OnStoreUnavailable, OnUnknown, Policy};
use super::response::{Rejection, RejectionKind};
use super::service::Guarded;
use crate::precondition::{Decision, Failure, Preconditions, RequestKind, ResourceState, evaluate};
use crate::store::{KeyState, Observation, Outcome, Representation, Store, StoreError, Validator};
use crate::telemetry;

pub(crate) async fn write<S, St, B, RB>(
    guarded: Guarded<S, St>,
    mut req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
    St: Store,
    RB: Body<Data = Bytes>,
{
    let Guarded {
        mut inner,
        store,
        policy,
        key,
        route,
        uri,
    } = guarded;
    let instance = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let reject = |kind, status, detail: String| Rejection::new(kind, status, instance, detail);

    // 1. Malformed preconditions, then missing ones.
    let pre = match headers::preconditions(req.headers(), false) {
        Ok(pre) => pre,
        Err(error) => {
            let detail = format!(
                "{error}; entity-tags go in double quotes, e.g. If-Match: \"abc\", \
                 and dates are HTTP-dates"
            );
            let status = StatusCode::BAD_REQUEST;
            return Ok(reject(RejectionKind::MalformedPrecondition, status, detail).into_response());
        }
    };
    let method = req.method().clone();
    if !pre.guards_write() && policy.require_precondition.contains(&method) {
        let detail = format!(
            "{method} to this resource requires a precondition: GET it, then send its ETag in \
             If-Match (or If-None-Match: * to create it only if it does not exist)"
        );
        let status = StatusCode::PRECONDITION_REQUIRED;
        return Ok(reject(RejectionKind::PreconditionRequired, status, detail).into_response());
    }

    // 2. At most one write per resource in flight, including unconditional ones: a write the
    // guard did not serialize could change the resource under a conditional one.
    let waiting = Instant::now();
    let acquired = store.acquire(key, policy.lease_wait).await;
    metrics::histogram!(telemetry::LEASE_WAIT, "route" => route.clone())
        .record(waiting.elapsed().as_secs_f64());
    let (lease, snapshot) = match acquired {
        Ok(acquired) => acquired,
        Err(StoreError::LeaseTimeout) => {
            // Logged once, with the request id, by whoever serves the response (the rejection
            // is in its extensions).
            let detail = format!(
                "another update to this resource is in progress and did not finish within \
                 {:?}; retry shortly",
                policy.lease_wait
            );
            let rejection = reject(RejectionKind::LeaseTimeout, StatusCode::CONFLICT, detail)
                .with_sent(rejection_sent(&pre));
            return Ok(rejection.into_response());
        }
        Err(StoreError::Unavailable(error)) if pre.is_empty() => {
            // Nothing to check: the write goes through, as it would without the guard.
            tracing::warn!(%key, %error, "store unavailable, unconditional write forwarded");
            let response = inner.call(req.map(RequestBody::new)).await?;
            return Ok(response.map(ResponseBody::upstream));
        }
        Err(StoreError::Unavailable(error))
            if policy.on_store_unavailable == OnStoreUnavailable::Forward =>
        {
            tracing::warn!(
                %key,
                %error,
                resource = instance,
                policy = "fail_open",
                "store unavailable, conditional write forwarded unchecked"
            );
            let mut response = inner.call(req.map(RequestBody::new)).await?;
            response.extensions_mut().insert(FailedOpen);
            return Ok(response.map(ResponseBody::upstream));
        }
        Err(StoreError::Unavailable(error)) => {
            tracing::warn!(%key, %error, "store unavailable, conditional write refused");
            let detail = "the validator store cannot be reached, so this precondition cannot \
                          be checked; retry shortly"
                .to_owned();
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let mut response =
                reject(RejectionKind::StoreUnavailable, status, detail).into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(response);
        }
    };

    if !pre.is_empty() {
        // 3. Establish the state, 4. evaluate against it.
        let state = match snapshot.state {
            KeyState::Unknown => match policy.on_unknown {
                OnUnknown::Forward => None,
                OnUnknown::Reject => {
                    let detail = "the proxy does not know this resource's current state: GET \
                                  it first, then retry with its ETag in If-Match"
                        .to_owned();
                    let status = policy.conflict_status;
                    let rejection = reject(RejectionKind::UnknownState, status, detail);
                    release(&store, lease, Outcome::Unchanged).await;
                    return Ok(rejection.into_response());
                }
                OnUnknown::Revalidate => {
                    let revalidation = Revalidation {
                        inner: inner.clone(),
                        store: &store,
                        policy: &policy,
                        route: &route,
                        instance,
                    };
                    let get = revalidation_request(&req, &policy);
                    match revalidation.run(key, snapshot.generation, get).await? {
                        Ok(state) => Some(state),
                        Err(response) => {
                            release(&store, lease, Outcome::Unchanged).await;
                            return Ok(response);
                        }
                    }
                }
            },
            state => Some(state),
        };
        if let Some(state) = state {
            if let Some(rejection) = check(&state, &pre, &policy, instance) {
                // Logged once, with the request id, by whoever serves the response.
                release(&store, lease, Outcome::Unchanged).await;
                return Ok(rejection.into_response());
            }
        }
        headers::strip_synthesized(req.headers_mut(), &pre);
    }

    // 5. Forward, 6. record the outcome.
    let request_representation = headers::representation(req.headers());
    match inner.call(req.map(RequestBody::new)).await {
        Ok(response) => {
            let outcome = outcome_of(&method, request_representation, &response, &policy);
            release(&store, lease, outcome).await;
            Ok(response.map(ResponseBody::upstream))
        }
        Err(error) => {
            // The write may or may not have applied.
            release(&store, lease, Outcome::Unknown).await;
            Err(error)
        }
    }
}

/// Evaluates the preconditions; a failure becomes the route's conflict response.
fn check(
    state: &KeyState,
    pre: &Preconditions,
    policy: &Policy,
    instance: &str,
) -> Option<Rejection> {
    let (tags, last_modified) = match state {
        KeyState::Present {
            validators,
            last_modified,
        } => (
            validators.iter().map(|v| v.tag.clone()).collect::<Vec<_>>(),
            *last_modified,
        ),
        _ => (Vec::new(), None),
    };
    let resource = match state {
        KeyState::Present { .. } => ResourceState::Present {
            validators: &tags,
            last_modified,
        },
        _ => ResourceState::Absent,
    };
    let Decision::Failed(failure) = evaluate(RequestKind::Write, &resource, pre) else {
        return None;
    };
    let current = tags.first().cloned();
    let shown = current
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    let sent = rejection_sent(pre).unwrap_or_default();
    let (kind, detail) = match failure {
        Failure::StaleIfMatch => (
            RejectionKind::StalePrecondition,
            format!(
                "{sent} does not match the current entity-tag {shown}: the resource \
                 changed since you read it. GET it again, reapply your change, and retry with \
                 If-Match: {shown}"
            ),
        ),
        Failure::ModifiedSince => (
            RejectionKind::StalePrecondition,
            "the resource was modified after the If-Unmodified-Since date: GET it again, \
             reapply your change, and retry"
                .to_owned(),
        ),
        Failure::Absent => (
            RejectionKind::ResourceAbsent,
            format!(
                "the precondition {sent} names a resource that does not exist (deleted, or never \
                 created): to create it, retry with If-None-Match: *"
            ),
        ),
        Failure::Exists => (
            RejectionKind::AlreadyExists,
            format!(
                "If-None-Match: * asks to create the resource only if it does not exist, but it \
                 exists (current entity-tag {shown}): to update it, GET it and send If-Match"
            ),
        ),
        Failure::NoneMatchMatched => (
            RejectionKind::AlreadyExists,
            format!(
                "{sent} matches the current entity-tag {shown}: GET it again and \
                 retry with If-Match"
            ),
        ),
    };
    let rejection = Rejection::new(kind, policy.conflict_status, instance, detail);
    Some(
        rejection
            .with_current_etag(current)
            .with_sent(rejection_sent(pre)),
    )
}

/// The precondition as the client sent it, for details and logs.
fn rejection_sent(pre: &Preconditions) -> Option<String> {
    if let Some(condition) = &pre.if_match {
        return Some(format!("If-Match: {}", headers::describe(condition)));
    }
    if let Some(condition) = &pre.if_none_match {
        return Some(format!("If-None-Match: {}", headers::describe(condition)));
    }
    pre.if_unmodified_since
        .map(|date| format!("If-Unmodified-Since: {}", httpdate::fmt_http_date(date)))
}

/// What a forwarded write's response says about the resource now (SPEC "Outcome").
fn outcome_of<RB>(
    method: &Method,
    request_representation: Representation,
    response: &Response<RB>,
    policy: &Policy,
) -> Outcome {
    let status = response.status();
    if status.is_success() && status != StatusCode::ACCEPTED {
        if method == Method::DELETE {
            return Outcome::Deleted;
        }
        // A POST's ETag describes what it created, not the collection it was sent to; a
        // synthesizing route cannot know the new tag without reading the resource again.
        if method == Method::POST || policy.etag_source == EtagSource::Synthesize {
            return Outcome::Unknown;
        }
        let Some(tag) = headers::strong_etag(response.headers()) else {
            return Outcome::Unknown;
        };
        // RFC 9110 §9.3.4: a PUT response's validator describes the representation that was
        // sent. Any other write's describes its response body, if it has one.
        let representation = if method == Method::PUT {
            request_representation
        } else if response.headers().contains_key(CONTENT_TYPE) {
            headers::representation(response.headers())
        } else {
            return Outcome::Unknown;
        };
        return Outcome::Replaced {
            validator: Validator {
                tag,
                representation,
            },
            last_modified: headers::last_modified(response.headers()),
        };
    }
    if status.is_client_error()
        && status != StatusCode::CONFLICT
        && status != StatusCode::PRECONDITION_FAILED
    {
        return Outcome::Unchanged;
    }
    Outcome::Unknown
}

async fn release<St: Store>(store: &St, lease: St::Lease, outcome: Outcome) {
    if let Err(error) = store.complete(lease, outcome).await {
        tracing::warn!(%error, "store complete failed");
    }
}

/// Establishes an unknown resource's state with a GET through the same inner service.
struct Revalidation<'a, S, St> {
    /// A clone: the readied service is kept for the write itself.
    inner: S,
    store: &'a St,
    policy: &'a Policy,
    route: &'a Arc<str>,
    instance: &'a str,
}

/// Request headers a revalidation GET must not inherit from the write it serves.
const NOT_FOR_REVALIDATION: [http::HeaderName; 11] = [
    CONTENT_LENGTH,
    CONTENT_TYPE,
    CONTENT_ENCODING,
    TRANSFER_ENCODING,
    EXPECT,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
];

impl<S, St> Revalidation<'_, S, St> {
    /// The resource's state, or the response the writer gets when it cannot be established.
    async fn run<B, RB>(
        self,
        key: crate::key::ResourceKey,
        generation: u64,
        get: Request<RequestBody<B>>,
    ) -> Result<Result<KeyState, Response<ResponseBody<RB>>>, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
        St: Store,
        RB: Body<Data = Bytes>,
    {
        let hash = self.policy.etag_source != EtagSource::Upstream;
        let Revalidation {
            inner,
            store,
            policy,
            route,
            instance,
        } = self;
        let outcome = |outcome: &'static str| {
            metrics::counter!(telemetry::REVALIDATIONS, "route" => route.clone(), "outcome" => outcome)
                .increment(1);
        };
        let conflict = |kind, detail| {
            Rejection::new(kind, policy.conflict_status, instance, detail).into_response()
        };
        let unavailable = |what: &str| {
            let detail = format!(
                "the current state of this resource could not be established: {what}; retry later"
            );
            let status = StatusCode::BAD_GATEWAY;
            Rejection::new(RejectionKind::UpstreamUnavailable, status, instance, detail)
                .into_response()
        };
        let response = inner.oneshot(get).await?;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            outcome("absent");
            learn_revalidated(store, key, generation, Observation::Absent).await;
            return Ok(Ok(KeyState::Absent));
        }
        if status.is_server_error() {
            outcome("upstream-error");
            let what = format!("the upstream answered {status} to the revalidation GET");
            return Ok(Err(unavailable(&what)));
        }
        if !status.is_success() {
            // 401, 403, redirects...: the writer learns what the upstream said.
            outcome("relayed");
            return Ok(Err(Response::from_parts(
                parts,
                ResponseBody::upstream(body),
            )));
        }

        let representation = headers::representation(&parts.headers);
        let last_modified = headers::last_modified(&parts.headers);
        let upstream_tag = match policy.etag_source {
            EtagSource::Synthesize => None,
            _ => headers::strong_etag(&parts.headers),
        };
        let tag = match upstream_tag {
            Some(tag) => tag,
            None if hash && status == StatusCode::OK => {
                match hash_body(body, representation, policy.max_hash_bytes).await {
                    Hashed::Complete { tag, .. } => tag,
                    Hashed::Incomplete {
                        rest: Tail::Failed(_),
                        ..
                    } => {
                        outcome("upstream-error");
                        return Ok(Err(unavailable("its body failed midway")));
                    }
                    Hashed::Incomplete { .. } => {
                        outcome("too-large");
                        let detail = format!(
                            "this resource's representation is larger than the route's \
                             max_hash_bytes ({} bytes), so its current state cannot be \
                             established and the precondition cannot be checked: raise \
                             max_hash_bytes for this route, or set on_unknown = \"forward\" to \
                             let the upstream decide",
                            policy.max_hash_bytes
                        );
                        return Ok(Err(conflict(RejectionKind::TooLargeToHash, detail)));
                    }
                }
            }
            None => {
                outcome("no-etag");
                let detail = "the upstream sent no strong ETag for this resource, so its \
                              current state cannot be established: set the route's etag_source \
                              to \"both\" to let the proxy synthesize one"
                    .to_owned();
                return Ok(Err(conflict(RejectionKind::UnknownState, detail)));
            }
        };
        let validator = Validator {
            tag,
            representation,
        };
        let state = KeyState::Present {
            validators: vec![validator.clone()],
            last_modified,
        };
        let observation = Observation::Validator {
            validator,
            last_modified,
        };
        outcome("present");
        learn_revalidated(store, key, generation, observation).await;
        Ok(Ok(state))
    }
}

async fn learn_revalidated<St: Store>(
    store: &St,
    key: crate::key::ResourceKey,
    generation: u64,
    observation: Observation,
) {
    if let Err(error) = store.learn(key, generation, observation).await {
        tracing::warn!(%key, %error, "store learn failed after revalidation");
    }
}

/// The GET that revalidates the target of `write`, with the writer's credentials and `Accept`
/// so it sees what the writer may see.
fn revalidation_request<B>(write: &Request<B>, policy: &Policy) -> Request<RequestBody<B>> {
    let mut get = Request::new(RequestBody::Empty);
    *get.uri_mut() = write.uri().clone();
    *get.version_mut() = write.version();
    let mut headers = HeaderMap::with_capacity(write.headers().len());
    for (name, value) in write.headers() {
        if !NOT_FOR_REVALIDATION.contains(name) {
            headers.append(name, value.clone());
        }
    }
    if policy.etag_source != EtagSource::Upstream {
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    *get.headers_mut() = headers;
    *get.extensions_mut() = write.extensions().clone();
    get
}
