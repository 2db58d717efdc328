//! The write path (RFC 9110 §13.2.2): admit, lease, establish the state, evaluate, forward,
//! record the outcome.
//!
//! Admission (malformed and missing preconditions) is pure and needs no lease. Everything after
//! it runs under the resource's write lease, which ends in exactly one of two ways: with
//! [`Outcome::Unchanged`] when the guard answers the write itself, or with the outcome the
//! upstream's answer shows, decided in [`super::exchange`], whatever happens to the client.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::exchange::{self, Exchange};
use super::headers;
use super::policy::{FailedOpen, OnStoreUnavailable, OnUnknown, Policy};
use super::resolve::{About, MERGED_HEADER, Resolved, Stale, needs_lease};
use super::response::{Rejection, RejectionKind};
use super::revalidate::{Revalidation, revalidation_request};
use super::service::Guarded;
use super::versions::Versions;
use crate::etag::EntityTag;
use crate::key::ResourceKey;
use crate::precondition::{
    Decision, Failure, Preconditions, RequestKind, ResourceState, TagCondition, evaluate,
};
use crate::store::{Acquired, KeyState, Outcome, Refusal, RefusalCondition, Store, StoreError};
use crate::telemetry;

/// A write `admit`ted with preconditions `pre`.
pub(crate) async fn write<S, St, B, RB>(
    guarded: Guarded<S, St>,
    req: Request<B>,
    pre: Preconditions,
) -> Result<Response<ResponseBody<RB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let Guarded {
        inner,
        store,
        policy,
        key,
        variant,
        route,
        uri,
        writes,
        versions,
    } = guarded;
    let instance = uri.path_and_query().map_or("/", |pq| pq.as_str());

    // 2. At most one write per resource in flight, including unconditional ones: a write the
    // guard did not serialize could change the resource under a conditional one. Where the
    // conflict needs no lease, the store may see a failed precondition and take none.
    let waiting = Instant::now();
    let mut refusal = refusal(&pre, &policy, variant);
    let (lease, snapshot) = loop {
        let acquired = match refusal.take() {
            Some(refusal) => store.acquire_unless(key, policy.lease_wait, &refusal).await,
            None => (store.acquire(key, policy.lease_wait).await)
                .map(|(lease, snapshot)| Acquired::Held(lease, snapshot)),
        };
        metrics::histogram!(telemetry::LEASE_WAIT, "route" => route.clone())
            .record(waiting.elapsed().as_secs_f64());
        let error = match acquired {
            Ok(Acquired::Held(lease, snapshot)) => break (lease, snapshot),
            Ok(Acquired::Refused(snapshot)) => {
                let state = state_of(snapshot.state, variant);
                let Some(rejection) = check(&state, &pre, &policy, instance) else {
                    // The store's check is narrower than ours, so this is not expected; the
                    // write then takes its lease as any other.
                    continue;
                };
                let stale: Stale<'_, S, St> = Stale {
                    inner: inner.clone(),
                    held: None,
                    about: About {
                        key,
                        route,
                        policy,
                        variant,
                        versions,
                    },
                    rejection,
                    state,
                    pre: &pre,
                    instance,
                    generation: snapshot.generation,
                };
                return match Box::pin(stale.resolve(req)).await? {
                    Resolved::Answer(answer) => Ok(answer),
                    // Not reached: without a lease nothing is fetched or merged.
                    Resolved::Pass(..) | Resolved::Merged(..) => Ok(retry_shortly(
                        RejectionKind::LeaseTimeout,
                        instance,
                        "the precondition could not be checked; retry",
                    )),
                };
            }
            Err(error) => error,
        };
        // Boxed, as the revalidation below: a rare path's state would otherwise be part of
        // every write's future (moved on each call).
        return Box::pin(unleased(error, &pre, &policy, instance, inner, req)).await;
    };
    let key_headers = if policy.key_headers.is_empty() {
        Vec::new()
    } else {
        policy
            .key_headers
            .iter()
            .flat_map(|name| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect()
    };
    let exchange = Exchange {
        store,
        lease,
        key,
        route,
        policy,
        key_headers,
        variant,
        versions,
    };

    // 3. Establish the state, 4. evaluate against it.
    let state = state_of(snapshot.state, variant);
    let revalidate = !pre.is_empty()
        && state == KeyState::Unknown
        && exchange.policy.on_unknown == OnUnknown::Revalidate;
    let vetting = Vetting {
        store: &exchange.store,
        key,
        route: &exchange.route,
        policy: &exchange.policy,
        generation: snapshot.generation,
        variant,
        instance,
        revalidation: revalidate.then(|| revalidation_request(&req, &exchange.policy)),
        versions: &exchange.versions,
    };
    let generation = snapshot.generation;
    let (req, exchange, merged) = match vetting.answer(inner.clone(), state, &pre).await? {
        Vetted::Forward => (req.map(RequestBody::new), exchange, None),
        Vetted::Answer(answer) => {
            exchange.end(Outcome::Unchanged).await;
            return Ok(answer);
        }
        Vetted::Refused { rejection, state } => {
            let stale = Stale {
                inner: inner.clone(),
                about: About::of(&exchange),
                held: Some(exchange),
                rejection,
                state,
                pre: &pre,
                instance,
                generation,
            };
            // Boxed: under a lease a stale write may fetch, read its body and merge, state
            // that would otherwise make every write's future larger (and dearer to move).
            match Box::pin(stale.resolve(req)).await? {
                Resolved::Answer(answer) => return Ok(answer),
                Resolved::Pass(req, exchange) => (req.map(RequestBody::new), exchange, None),
                Resolved::Merged(merged, exchange, header) => (merged, exchange, Some(header)),
            }
        }
    };

    // 5. Forward, 6. record the outcome. The exchange may outlive its client: their number
    // is bounded.
    let Some(permit) = writes.try_start() else {
        exchange.end(Outcome::Unchanged).await;
        let detail = "the proxy has as many writes in flight as it allows; retry shortly";
        return Ok(retry_shortly(
            RejectionKind::TooManyWrites,
            instance,
            detail,
        ));
    };
    let mut req = req;
    if merged.is_none() {
        headers::strip_synthesized(req.headers_mut(), &pre);
    }
    let route = exchange.route.clone();
    let mut response = exchange::forward(inner, req, exchange, permit).await?;
    if let Some(merged) = merged {
        metrics::counter!(telemetry::WRITES_MERGED, "route" => route).increment(1);
        response
            .headers_mut()
            .insert(HeaderName::from_static(MERGED_HEADER), merged);
    }
    Ok(response)
}

/// RFC 9110 §13.2.2 step 1, before any I/O: malformed preconditions, then missing ones. The
/// preconditions, or the 400/428 answer.
pub(crate) fn admit(
    method: &Method,
    headers: &HeaderMap,
    policy: &Policy,
    instance: &str,
) -> Result<Preconditions, Rejection> {
    let pre = headers::preconditions(headers, false).map_err(|error| {
        let detail = format!(
            "{error}; entity-tags go in double quotes, e.g. If-Match: \"abc\", \
             and dates are HTTP-dates"
        );
        Rejection::new(
            RejectionKind::MalformedPrecondition,
            StatusCode::BAD_REQUEST,
            instance,
            detail,
        )
    })?;
    if !pre.guards_write() && policy.require_precondition.contains(method) {
        let detail = format!(
            "{method} to this resource requires a precondition: GET it, then send its ETag in \
             If-Match (or If-None-Match: * to create it only if it does not exist)"
        );
        let status = StatusCode::PRECONDITION_REQUIRED;
        return Err(Rejection::new(
            RejectionKind::PreconditionRequired,
            status,
            instance,
            detail,
        ));
    }
    Ok(pre)
}

/// The answer to a write whose lease could not be taken.
async fn unleased<S, B, RB>(
    error: StoreError,
    pre: &Preconditions,
    policy: &Policy,
    instance: &str,
    mut inner: S,
    req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    let error = match error {
        StoreError::LeaseTimeout => {
            // Logged once, with the request id, by whoever serves the response (the rejection
            // is in its extensions).
            let detail = format!(
                "another update to this resource is in progress and did not finish within \
                 {:?}; retry shortly",
                policy.lease_wait
            );
            let rejection = Rejection::new(
                RejectionKind::LeaseTimeout,
                StatusCode::CONFLICT,
                instance,
                detail,
            )
            .with_sent(rejection_sent(pre));
            return Ok(rejection.into_response());
        }
        StoreError::Unavailable(error) => error,
    };
    if pre.is_empty() {
        // Nothing to check: the write goes through, as it would without the guard.
        tracing::warn!(%error, resource = instance, "store unavailable, unconditional write forwarded");
        let response = inner.call(req.map(RequestBody::new)).await?;
        return Ok(response.map(ResponseBody::upstream));
    }
    if policy.on_store_unavailable == OnStoreUnavailable::Forward {
        tracing::warn!(
            %error,
            resource = instance,
            policy = "fail_open",
            "store unavailable, conditional write forwarded unchecked"
        );
        let mut response = inner.call(req.map(RequestBody::new)).await?;
        response.extensions_mut().insert(FailedOpen);
        return Ok(response.map(ResponseBody::upstream));
    }
    tracing::warn!(%error, resource = instance, "store unavailable, conditional write refused");
    let detail = "the validator store cannot be reached, so this precondition cannot be checked; \
                  retry shortly";
    Ok(retry_shortly(
        RejectionKind::StoreUnavailable,
        instance,
        detail,
    ))
}

/// A 503 with `Retry-After: 1`: the write was not forwarded, and may be sent again.
fn retry_shortly<RB: Body>(
    kind: RejectionKind,
    instance: &str,
    detail: &str,
) -> Response<ResponseBody<RB>> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let mut response = Rejection::new(kind, status, instance, detail.to_owned()).into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Steps 3 and 4, under the lease: whether the guard answers the write itself.
struct Vetting<'a, St, B> {
    store: &'a St,
    key: ResourceKey,
    route: &'a Arc<str>,
    policy: &'a Policy,
    /// The generation the lease was taken at, for learning what a revalidation finds.
    generation: u64,
    variant: u32,
    instance: &'a str,
    /// The GET that establishes an unknown state, when the route revalidates.
    revalidation: Option<Request<RequestBody<B>>>,
    /// Where the representation a revalidation reads is remembered.
    versions: &'a Versions,
}

/// What vetting decided.
enum Vetted<RB: Body> {
    /// The preconditions hold (or there are none): forward the write.
    Forward,
    /// The guard's answer (a revalidation that failed, an unknown state the route rejects).
    Answer(Response<ResponseBody<RB>>),
    /// The preconditions failed against `state`: the conflict, still to be resolved.
    Refused {
        rejection: Rejection,
        state: KeyState,
    },
}

impl<St: Store, B> Vetting<'_, St, B> {
    async fn answer<S, RB>(
        self,
        inner: S,
        state: KeyState,
        pre: &Preconditions,
    ) -> Result<Vetted<RB>, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
        RB: Body<Data = Bytes>,
    {
        if pre.is_empty() {
            return Ok(Vetted::Forward);
        }
        let (policy, instance) = (self.policy, self.instance);
        let state = match (state, self.revalidation) {
            (KeyState::Unknown, Some(get)) => {
                let revalidation = Revalidation {
                    inner,
                    store: self.store,
                    policy,
                    route: self.route,
                    instance,
                    variant: self.variant,
                    versions: self.versions,
                    read_body: false,
                };
                match Box::pin(revalidation.run(self.key, self.generation, get)).await? {
                    Ok(state) => state,
                    Err(response) => return Ok(Vetted::Answer(response)),
                }
            }
            (KeyState::Unknown, None) if policy.on_unknown == OnUnknown::Reject => {
                let detail = "the proxy does not know this resource's current state: GET it \
                              first, then retry with its ETag in If-Match";
                let rejection = Rejection::new(
                    RejectionKind::UnknownState,
                    policy.conflict_status,
                    instance,
                    detail.to_owned(),
                );
                return Ok(Vetted::Answer(rejection.into_response()));
            }
            // Forwarded unchecked: the upstream decides.
            (KeyState::Unknown, None) => return Ok(Vetted::Forward),
            (state, _) => state,
        };
        Ok(match check(&state, pre, policy, instance) {
            None => Vetted::Forward,
            Some(rejection) => Vetted::Refused { rejection, state },
        })
    }
}

/// The precondition as the store may check it before taking the lease, when the route
/// resolves a conflict without one: `If-Match` (a failing `If-Match` fails the request whatever
/// else it asks, RFC 9110 §13.2.2), or `If-None-Match: *` alone.
fn refusal(pre: &Preconditions, policy: &Policy, variant: u32) -> Option<Refusal> {
    if needs_lease(policy) {
        return None;
    }
    let condition = match (&pre.if_match, &pre.if_none_match) {
        (Some(TagCondition::Any), _) => RefusalCondition::IfMatchAny,
        (Some(TagCondition::Tags(tags)), _) => RefusalCondition::IfMatch(
            tags.iter()
                .filter(|tag| !tag.is_weak())
                .map(|tag| Box::from(tag.opaque()))
                .collect(),
        ),
        (None, Some(TagCondition::Any)) => RefusalCondition::IfNoneMatchAny,
        (None, _) => return None,
    };
    Some(Refusal { variant, condition })
}

/// The state as a write through query `variant` sees it: only the validators of that view.
/// A resource known without one for this view is unknown to this write (it revalidates), not
/// changed: the view may simply not have been read yet. Through a view, absence and the
/// resource's `Last-Modified` are not known: only the plain path teaches them (a `?id=6` view
/// of a path whose `?id=5` view was deleted may well exist).
fn state_of(state: KeyState, variant: u32) -> KeyState {
    if variant != 0 {
        return match state {
            KeyState::Present { validators, .. } => {
                let validators: Vec<_> = validators
                    .into_iter()
                    .filter(|v| v.representation.variant() == variant)
                    .collect();
                if validators.is_empty() {
                    KeyState::Unknown
                } else {
                    KeyState::Present {
                        validators,
                        last_modified: None,
                    }
                }
            }
            KeyState::Absent | KeyState::Unknown => KeyState::Unknown,
        };
    }
    match state {
        KeyState::Present {
            mut validators,
            last_modified,
        } => {
            validators.retain(|v| v.representation.variant() == variant);
            if validators.is_empty() {
                KeyState::Unknown
            } else {
                KeyState::Present {
                    validators,
                    last_modified,
                }
            }
        }
        state => state,
    }
}

/// Evaluates the preconditions; a failure becomes the route's conflict response.
pub(crate) fn check(
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
    let weak = matches!(failure, Failure::StaleIfMatch) && weak_match(pre, &tags);
    let current = tags.into_iter().next();
    let mut shown = String::with_capacity(current.as_ref().map_or(4, |tag| tag.opaque().len() + 4));
    match &current {
        Some(tag) => tag.push_wire(&mut shown),
        None => shown.push_str("none"),
    }
    // Rendered once: the detail quotes it and the log line shows it.
    let sent_line = rejection_sent(pre);
    let sent = sent_line.as_deref().unwrap_or_default();
    // Concatenated, not formatted: a stale write is answered at a fraction of the cost of
    // forwarding it, and this is on its path.
    let (kind, detail) = match failure {
        Failure::StaleIfMatch if weak => (
            RejectionKind::StalePrecondition,
            [
                sent,
                " is a weak entity-tag, and weak tags never match If-Match (RFC 9110 \
                 §13.1.1): nothing changed, send the strong one, If-Match: ",
                &shown,
            ]
            .concat(),
        ),
        Failure::StaleIfMatch => (
            RejectionKind::StalePrecondition,
            [
                sent,
                " does not match the current entity-tag ",
                &shown,
                ": the resource changed since you read it. GET it again, reapply your change, \
                 and retry with If-Match: ",
                &shown,
            ]
            .concat(),
        ),
        Failure::ModifiedSince => (
            RejectionKind::StalePrecondition,
            "the resource was modified after the If-Unmodified-Since date: GET it again, \
             reapply your change, and retry"
                .to_owned(),
        ),
        Failure::Absent => (
            RejectionKind::ResourceAbsent,
            [
                "the precondition ",
                sent,
                " names a resource that does not exist (deleted, or never created): to create \
                 it, retry with If-None-Match: *",
            ]
            .concat(),
        ),
        Failure::Exists => (
            RejectionKind::AlreadyExists,
            [
                "If-None-Match: * asks to create the resource only if it does not exist, but it \
                 exists (current entity-tag ",
                &shown,
                "): to update it, GET it and send If-Match",
            ]
            .concat(),
        ),
        Failure::NoneMatchMatched => (
            RejectionKind::AlreadyExists,
            [
                sent,
                " matches the current entity-tag ",
                &shown,
                ": GET it again and retry with If-Match",
            ]
            .concat(),
        ),
    };
    let rejection = Rejection::new(kind, policy.conflict_status, instance, detail);
    Some(rejection.with_current_etag(current).with_sent(sent_line))
}

/// Whether `If-Match` failed only because it sent a current tag as weak.
fn weak_match(pre: &Preconditions, current: &[EntityTag]) -> bool {
    let Some(TagCondition::Tags(sent)) = &pre.if_match else {
        return false;
    };
    sent.iter()
        .any(|tag| tag.is_weak() && current.iter().any(|c| c.weak_eq(tag)))
}

/// The precondition as the client sent it, for details and logs.
fn rejection_sent(pre: &Preconditions) -> Option<String> {
    for (field, condition) in [
        ("If-Match: ", &pre.if_match),
        ("If-None-Match: ", &pre.if_none_match),
    ] {
        if let Some(condition) = condition {
            let mut sent = String::with_capacity(64);
            sent.push_str(field);
            headers::describe_into(&mut sent, condition);
            return Some(sent);
        }
    }
    pre.if_unmodified_since
        .map(|date| format!("If-Unmodified-Since: {}", httpdate::fmt_http_date(date)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{present, validator};

    fn pre(headers: &[(&'static str, &'static str)]) -> Preconditions {
        let mut map = HeaderMap::new();
        for &(name, value) in headers {
            map.append(name, HeaderValue::from_static(value));
        }
        headers::preconditions(&map, false).unwrap()
    }

    /// Each failure's detail, word for word: clients and the README quote them.
    #[test]
    fn each_failure_has_its_detail() {
        let current = present(&[validator("cur", 1)]);
        let modified = KeyState::Present {
            validators: vec![validator("cur", 1)],
            last_modified: Some(
                httpdate::parse_http_date("Mon, 07 Nov 1994 08:49:37 GMT").unwrap(),
            ),
        };
        let cases = [
            (
                &current,
                pre(&[("if-match", "\"old\"")]),
                RejectionKind::StalePrecondition,
                "If-Match: \"old\" does not match the current entity-tag \"cur\": the resource \
                 changed since you read it. GET it again, reapply your change, and retry with \
                 If-Match: \"cur\"",
            ),
            (
                &current,
                pre(&[("if-match", "W/\"cur\"")]),
                RejectionKind::StalePrecondition,
                "If-Match: W/\"cur\" is a weak entity-tag, and weak tags never match If-Match \
                 (RFC 9110 §13.1.1): nothing changed, send the strong one, If-Match: \"cur\"",
            ),
            (
                &KeyState::Absent,
                pre(&[("if-match", "\"old\"")]),
                RejectionKind::ResourceAbsent,
                "the precondition If-Match: \"old\" names a resource that does not exist \
                 (deleted, or never created): to create it, retry with If-None-Match: *",
            ),
            (
                &current,
                pre(&[("if-none-match", "*")]),
                RejectionKind::AlreadyExists,
                "If-None-Match: * asks to create the resource only if it does not exist, but it \
                 exists (current entity-tag \"cur\"): to update it, GET it and send If-Match",
            ),
            (
                &current,
                pre(&[("if-none-match", "\"cur\"")]),
                RejectionKind::AlreadyExists,
                "If-None-Match: \"cur\" matches the current entity-tag \"cur\": GET it again and \
                 retry with If-Match",
            ),
            (
                &modified,
                pre(&[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
                RejectionKind::StalePrecondition,
                "the resource was modified after the If-Unmodified-Since date: GET it again, \
                 reapply your change, and retry",
            ),
        ];
        let policy = Policy::default();
        for (state, pre, kind, detail) in cases {
            let Some(rejection) = check(state, &pre, &policy, "/r") else {
                panic!("{pre:?} on {state:?} passed");
            };
            assert_eq!((rejection.kind, rejection.detail.as_str()), (kind, detail));
        }
        // A precondition that holds is no rejection.
        assert!(check(&current, &pre(&[("if-match", "\"cur\"")]), &policy, "/r").is_none());
    }
}
