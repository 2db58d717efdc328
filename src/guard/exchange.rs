//! A forwarded write, run to its known outcome: the one place a forwarded write's lease ends.
//!
//! Once a write is forwarded, the upstream may apply it whatever happens to the client. If a
//! client that goes away, or a proxy that stops waiting (504), ended the lease, the next writer
//! would pass a check that cannot see this write yet, and this write would land on top of it: a
//! lost update. So the exchange is one future that ends the lease with the outcome the
//! upstream's answer shows: the client's request drives it while it waits (at most the
//! route's `response_timeout`), and when it stops waiting or goes away, the rest of the
//! exchange is spawned as a task of its own. Until the outcome is known the key stays fenced: other writers
//! wait (`lease_wait`) and then get 409 "update in progress". If no answer comes within
//! `write_outcome_timeout`, the task gives up on the exchange and the key becomes unknown (the
//! next writer revalidates).
//!
//! When the answer says the write created or changed other resources (`Location`,
//! `Content-Location`), those become unknown too, so a resource created by a POST is never left
//! "absent".

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, ETAG};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::headers;
use super::learn::{Established, establish};
use super::outcome::{outcome_of, related_targets};
use super::policy::{EtagSource, Policy, UpstreamDeadline};
use super::response::{Rejection, RejectionKind};
use super::service::resource_key;
use super::versions::{Audience, Versions, remember};
use crate::key::ResourceKey;
use crate::store::{Outcome, Store};
use crate::telemetry;

/// A write whose lease is held and whose preconditions passed: everything needed to forward it
/// and to end its lease.
pub(crate) struct Exchange<St: Store> {
    pub(crate) store: St,
    pub(crate) lease: St::Lease,
    pub(crate) key: ResourceKey,
    pub(crate) route: Arc<str>,
    pub(crate) policy: Arc<Policy>,
    /// The key header values of the request, for the keys of related resources.
    pub(crate) key_headers: Vec<(HeaderName, HeaderValue)>,
    /// The write's query variant, as the key was computed (see `resource_key`).
    pub(crate) variant: u32,
    /// Where the new representation a response carries is remembered.
    pub(crate) versions: Versions,
}

/// Attached to the 504 of a write still running upstream: once the upstream answers, its
/// status (`Some(status)`), or that it never did (`None`; also when the exchange is dropped
/// unfinished). The idempotency layer above takes it to end the key the 504 held.
///
/// A one-shot channel, made for every forwarded write and sent on when the answer comes: a
/// `watch` channel cost a write about a thousand instructions more (its eight notifiers are
/// woken on every send). Shared behind a lock only on a 504, since extensions must be `Clone`.
#[derive(Debug, Clone)]
pub(crate) struct LateOutcome(Arc<Mutex<Option<oneshot::Receiver<Option<StatusCode>>>>>);

impl LateOutcome {
    fn new(late: oneshot::Receiver<Option<StatusCode>>) -> Self {
        Self(Arc::new(Mutex::new(Some(late))))
    }

    /// The outcome to wait for; `None` once taken (by a clone too).
    pub(crate) fn take(&self) -> Option<oneshot::Receiver<Option<StatusCode>>> {
        self.0.lock().ok()?.take()
    }
}

/// Forwards `req` through `inner` and waits for the answer, at most the route's
/// `response_timeout` (then 504, and the exchange goes on in a task of its own).
pub(crate) async fn forward<S, St, B, RB>(
    mut inner: S,
    mut req: Request<RequestBody<B>>,
    exchange: Exchange<St>,
    permit: OwnedSemaphorePermit,
) -> Result<Response<ResponseBody<RB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let policy = Arc::clone(&exchange.policy);
    let method = req.method().clone();
    // Clones share the target's bytes: no copy on the common path.
    let (target, uri) = (req.uri().clone(), req.uri().clone());
    let variant = exchange.variant;
    let representation = headers::representation(req.headers()).with_variant(variant);
    let client_method = method.clone();
    req.extensions_mut()
        .insert(UpstreamDeadline(policy.write_outcome_timeout));
    let audience = super::versions::audience(req.headers());
    let call = inner.call(req);
    let remembered = (exchange.versions.clone(), exchange.key, audience);
    let (late, late_rx) = oneshot::channel();

    let run = async move {
        let answer = tokio::time::timeout(exchange.policy.write_outcome_timeout, call).await;
        // Refused only when no 504 waits for it: then nobody needs it.
        let _ = late.send(match &answer {
            Ok(Ok(response)) => Some(response.status()),
            _ => None,
        });
        let outcome = match &answer {
            Ok(Ok(response)) => {
                let (status, headers) = (response.status(), response.headers());
                let outcome =
                    outcome_of(&method, representation, status, headers, &exchange.policy);
                let scope = Scope {
                    key: exchange.key,
                    route: &exchange.route,
                    policy: &exchange.policy,
                    key_headers: &exchange.key_headers,
                };
                forget_related(&exchange.store, scope, &outcome, target.path(), headers).await;
                outcome
            }
            // The write may or may not have applied.
            Ok(Err(_)) => Outcome::Unknown,
            Err(_elapsed) => {
                tracing::warn!(
                    key = %exchange.key,
                    bound = ?exchange.policy.write_outcome_timeout,
                    "no outcome for a write within write_outcome_timeout: the resource becomes unknown"
                );
                metrics::counter!(telemetry::WRITE_OUTCOMES_ABANDONED, "route" => exchange.route.clone())
                    .increment(1);
                Outcome::Unknown
            }
        };
        exchange.end(outcome).await;
        drop(permit);
        answer
    };
    // Driven here while the client waits; if it stops waiting (504) or goes away, the rest
    // of the exchange is handed to a task of its own (see `Detachable`).
    let mut run = Detachable::new(run);

    let instance = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let response_timeout = exchange_timeout(&policy);
    match tokio::time::timeout(response_timeout, &mut run).await {
        Ok(Ok(Ok(response))) => {
            let memory = (&remembered.0, remembered.1, remembered.2);
            Ok(present(response, &client_method, &policy, variant, instance, memory).await)
        }
        Ok(Ok(Err(error))) => Err(error),
        Ok(Err(_)) | Err(_) => {
            let mut response = pending(&policy, instance);
            response.extensions_mut().insert(LateOutcome::new(late_rx));
            Ok(response)
        }
    }
}

/// A future that, dropped before it completed, is spawned to run to completion on its own:
/// the exchange goes on whoever stops waiting for it. The common case (the client waits for
/// the answer) costs no task and no cross-task wake-up. (The proxy's idempotency layer runs
/// its record-or-release step in one too.)
pub(crate) struct Detachable<F: Future + Send + 'static>
where
    F::Output: Send,
{
    future: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Detachable<F>
where
    F::Output: Send,
{
    pub(crate) fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F: Future + Send + 'static> Future for Detachable<F>
where
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(future) = self.future.as_mut() else {
            // Polled after it completed: a caller's bug, never a request's doing.
            return Poll::Pending;
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for Detachable<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(future);
            }
            // No runtime (it is shutting down): the future is dropped, and with it the lease,
            // which marks the key unknown.
            Err(_) => drop(future),
        }
    }
}

/// The write's response as the client gets it: with the validator the guard accepts next, or
/// none. A client reuses the ETag of its last write; one the guard would refuse (a weak tag,
/// or the upstream's own on a route that synthesizes) would earn it a 409 for nothing.
///
/// When the upstream sent no usable tag and the body is the new representation (a 2xx to PUT,
/// PATCH or POST, identity-coded, on a route that synthesizes), the client gets the tag
/// synthesized from it: the tag the next write's revalidation will find if the upstream
/// serves the same bytes on GET. It is not recorded in the store (the resource stays unknown
/// until then), but remembered in the version memory, as the version the client holds now.
async fn present<RB>(
    response: Response<RB>,
    method: &Method,
    policy: &Policy,
    variant: u32,
    instance: &str,
    (versions, key, audience): (&Versions, ResourceKey, Audience),
) -> Response<ResponseBody<RB>>
where
    RB: Body<Data = Bytes>,
{
    let (mut parts, body) = response.into_parts();
    let upstream_tag = headers::strong_etag(&parts.headers);
    if upstream_tag.is_some() && policy.etag_source != EtagSource::Synthesize {
        return Response::from_parts(parts, ResponseBody::upstream(body));
    }
    let identity = parts
        .headers
        .get(CONTENT_ENCODING)
        .is_none_or(|coding| coding.as_bytes().eq_ignore_ascii_case(b"identity"));
    let representation = parts.status.is_success()
        && matches!(*method, Method::PUT | Method::PATCH | Method::POST)
        && parts.headers.contains_key(CONTENT_TYPE)
        && identity;
    parts.headers.remove(ETAG);
    match establish(&parts, body, policy, variant, representation).await {
        Established::Tag {
            validator,
            synthesized: true,
            body,
        } => {
            if variant == 0 {
                remember(versions, (key, audience), &validator, &parts.headers, &body);
            }
            headers::set_etag(&mut parts.headers, &validator.tag);
            Response::from_parts(parts, body)
        }
        Established::Tag { body, .. }
        | Established::TooLarge { body }
        | Established::Nothing { body } => Response::from_parts(parts, body),
        Established::Failed => {
            let detail = format!(
                "the upstream answered this write {} but its response body failed midway; the \
                 write may have applied: GET the resource before retrying",
                parts.status
            );
            let status = StatusCode::BAD_GATEWAY;
            Rejection::new(RejectionKind::UpstreamUnavailable, status, instance, detail)
                .into_response()
        }
    }
}

/// How long the client waits: the route's response timeout, never past the exchange's own.
fn exchange_timeout(policy: &Policy) -> std::time::Duration {
    policy.response_timeout.min(policy.write_outcome_timeout)
}

/// The 504 for a write still running upstream.
fn pending<RB: Body>(policy: &Policy, instance: &str) -> Response<ResponseBody<RB>> {
    let detail = format!(
        "the upstream did not answer this write within {}; it may still apply, so the resource \
         stays locked until its outcome is known (at most {}): GET it then, and retry only if \
         your change is not there",
        humantime::format_duration(exchange_timeout(policy)),
        humantime::format_duration(policy.write_outcome_timeout),
    );
    Rejection::new(
        RejectionKind::UpstreamTimeout,
        StatusCode::GATEWAY_TIMEOUT,
        instance,
        detail,
    )
    .into_response()
}

impl<St: Store> Exchange<St> {
    /// Ends the lease with the write's outcome.
    pub(crate) async fn end(self, outcome: Outcome) {
        if let Err(error) = self.store.complete(self.lease, outcome).await {
            // The lease lapses on its own (Redis), which marks the key unknown.
            tracing::warn!(key = %self.key, %error, "store complete failed");
        }
    }
}

/// Where a write's related resources get their keys: the write's own route and key headers.
struct Scope<'a> {
    key: ResourceKey,
    route: &'a str,
    policy: &'a Policy,
    key_headers: &'a [(HeaderName, HeaderValue)],
}

/// Makes the other resources the response names unknown. (Learning their validators instead
/// would need their leases: a write to one may have completed since the upstream answered.)
async fn forget_related<St: Store>(
    store: &St,
    scope: Scope<'_>,
    outcome: &Outcome,
    path: &str,
    headers: &http::HeaderMap,
) {
    for (path, query) in related_targets(outcome, path, headers) {
        let headers = scope
            .key_headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let (key, _) = resource_key(scope.route, scope.policy, &path, query, headers);
        if key == scope.key {
            continue;
        }
        match store.purge(key).await {
            Ok(_) => tracing::debug!(%key, path, "related resource forgotten"),
            Err(error) => tracing::warn!(%key, %error, "store purge of a related resource failed"),
        }
    }
}
