//! One request with an `Idempotency-Key`: buffer and fingerprint, take the key or answer from
//! what is held, forward, then record, release or hold the key.
//!
//! Invariant: once the key is taken, exactly one of record / release / hold ends it, decided by
//! the upstream's answer ([`disposition`]), and that step runs to its end even when the client
//! goes away ([`Detachable`]). Nothing is taken before the whole body is in hand, so a client
//! that goes away or trickles its body never holds a key.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::RETRY_AFTER;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::response::{captured, replay};
use crate::guard::{
    Detachable, FailedOpen, LateOutcome, OnStoreUnavailable, Policy, Rejection, RejectionKind,
    ResponseBody,
};
use crate::idempotency::{
    Decision, Disposition, Fingerprint, Found, decide, disposition, record_key,
};
use crate::key::ResourceKey;
use crate::proxy::discard::ClientBody;
use crate::store::StoreError;
use crate::store::idempotency::{Began, Claim, Held, IdempotencyStore, Recorded};
use crate::telemetry;

/// Everything one request with a key needs.
pub(super) struct Exchange<S, R> {
    pub(super) inner: S,
    pub(super) records: R,
    pub(super) route: Arc<str>,
    pub(super) policy: Arc<Policy>,
    /// The client's key, unescaped.
    pub(super) key: String,
    pub(super) body_read_timeout: Duration,
}

/// Why the request body could not be fingerprinted.
enum Unread {
    TooLarge,
    TooSlow,
    Broken,
}

impl<S, R> Exchange<S, R> {
    /// Runs the request to its answer. See the [module docs](self).
    pub(super) async fn run<B, RB>(
        self,
        req: Request<ClientBody<B>>,
    ) -> Result<Response<ResponseBody<RB>>, S::Error>
    where
        S: Service<Request<ClientBody<B>>, Response = Response<ResponseBody<RB>>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        R: IdempotencyStore,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Send,
    {
        let (parts, body) = req.into_parts();
        let instance = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let idempotency = &self.policy.idempotency;
        let body = match read_bounded(body, idempotency.max_request_bytes, self.body_read_timeout)
            .await
        {
            Ok(body) => body,
            Err(unread) => return Ok(unreadable(unread, &instance, idempotency.max_request_bytes)),
        };
        let fingerprint = Fingerprint::new(&parts.method, &instance, &body);
        let key_headers = self.policy.key_headers.iter().flat_map(|name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(move |value| (name.as_str().as_bytes(), value.as_bytes()))
        });
        let key = record_key(&self.route, &self.key, key_headers);
        let req = Request::from_parts(parts, ClientBody::buffered(body));
        let route = metrics::SharedString::from(self.route.to_string());

        let Self {
            mut inner,
            records,
            policy,
            ..
        } = self;
        // Before the take: the claim expires no earlier than this plus its hold.
        let taken_at = tokio::time::Instant::now();
        let claim = match take(&records, key, fingerprint, policy.idempotency.hold).await {
            Ok(Began::Taken(claim)) => claim,
            Ok(Began::Held(held)) => return Ok(answer_held(held, fingerprint, &instance, &route)),
            Err(error) => {
                if policy.on_store_unavailable == OnStoreUnavailable::Forward {
                    tracing::warn!(%error, resource = %instance, policy = "fail_open",
                        "idempotency records unavailable, request forwarded without a key");
                    let mut response = inner.call(req).await?;
                    response.extensions_mut().insert(FailedOpen);
                    return Ok(response);
                }
                tracing::warn!(%error, resource = %instance, "idempotency records unavailable, request refused");
                let detail = "the idempotency records cannot be reached, so this request could \
                              run twice; it was not forwarded: retry shortly with the same key";
                let rejection = Rejection::new(
                    RejectionKind::StoreUnavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &instance,
                    detail,
                );
                return Ok(with_retry_after(rejection.into_response()));
            }
        };
        metrics::counter!(telemetry::IDEMPOTENCY_KEYS_TAKEN, "route" => route.clone()).increment(1);
        tracing::debug!(%key, "idempotency key taken");
        let settle = async move {
            let answer = inner.call(req).await;
            settle(
                answer,
                &records,
                &policy,
                claim,
                fingerprint,
                taken_at + policy.idempotency.hold,
                route,
                &instance,
            )
            .await
        };
        // Driven here while the client waits; if it goes away, the rest (the upstream's answer,
        // and recording or releasing the key by it) goes on in a task of its own.
        Detachable::new(settle).await
    }
}

/// Takes `key` in a task of its own: were the request dropped (its client gone) while the
/// store answers, a key taken for it would stay held, for a request never forwarded, until its
/// hold passes; the task gives such a key back.
async fn take<R: IdempotencyStore>(
    records: &R,
    key: ResourceKey,
    fingerprint: Fingerprint,
    hold: Duration,
) -> Result<Began, StoreError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let records = records.clone();
    tokio::spawn(async move {
        let began = records.begin(key, fingerprint, hold).await;
        if let Err(Ok(Began::Taken(claim))) = answer.send(began) {
            let _ = records.release(&claim).await;
        }
    });
    answered
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("idempotency take failed".into())))
}

/// Ends a taken key by the upstream's answer: record, release or hold. `expiry` is the earliest
/// the claim can expire.
#[allow(clippy::too_many_arguments)]
async fn settle<R, RB, E>(
    answer: Result<Response<ResponseBody<RB>>, E>,
    records: &R,
    policy: &Policy,
    claim: Claim,
    fingerprint: Fingerprint,
    expiry: tokio::time::Instant,
    route: metrics::SharedString,
    instance: &str,
) -> Result<Response<ResponseBody<RB>>, E>
where
    R: IdempotencyStore,
    RB: Body<Data = Bytes> + Send + 'static,
{
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            // No response: the upstream could not be reached or failed mid-request (the rescue
            // answers 502/504 above); a retry may go through.
            release(records, &claim, route).await;
            return Err(error);
        }
    };
    let status = response.status();
    match disposition(status) {
        Disposition::Release => {
            release(records, &claim, route).await;
            Ok(response)
        }
        Disposition::Hold => {
            tracing::info!(key = %claim.key, %status, hold = ?policy.idempotency.hold,
                "outcome unknown: idempotency key held until its expiry");
            // The guard's 504 for a write still running: once the upstream answers, end the
            // key by that answer (it applied: a retry must never run it again).
            if let Some(late) = response
                .extensions()
                .get::<LateOutcome>()
                .and_then(LateOutcome::take)
            {
                let records = records.clone();
                let retention = policy.idempotency.retention;
                tokio::spawn(async move {
                    settle_late(late, &records, claim, fingerprint, retention, expiry).await;
                });
            }
            Ok(response)
        }
        Disposition::Record => {
            let idempotency = &policy.idempotency;
            let (response, recorded) = captured(
                response,
                fingerprint,
                idempotency.max_response_bytes,
                policy.response_timeout,
                instance,
            )
            .await;
            match records
                .record(&claim, recorded.clone(), idempotency.retention)
                .await
            {
                Ok(true) => {
                    tracing::debug!(key = %claim.key, %status, "idempotent response recorded")
                }
                Ok(false) => tracing::warn!(key = %claim.key,
                    "idempotency key expired before its response was recorded"),
                Err(error) => {
                    // The upstream applied the request: were the key left to expire, a retry
                    // would apply it again. Keep trying while the claim holds (a record after
                    // it expired is refused by its token), without keeping the client waiting.
                    tracing::warn!(key = %claim.key, %error,
                        "idempotent response not recorded; retrying while the key is held");
                    let records = records.clone();
                    let retention = idempotency.retention;
                    tokio::spawn(async move {
                        record_until(&records, &claim, recorded, retention, expiry).await;
                    });
                }
            }
            Ok(response)
        }
    }
}

/// Ends a key held by a 504 once the write's late answer is known (before `expiry`): an
/// applied write leaves a completed, not replayable record (a retry gets 409, never a second
/// execution); a failed one releases the key; no answer leaves it held.
async fn settle_late<R: IdempotencyStore>(
    late: tokio::sync::oneshot::Receiver<Option<StatusCode>>,
    records: &R,
    claim: Claim,
    fingerprint: Fingerprint,
    retention: Duration,
    expiry: tokio::time::Instant,
) {
    // Err inside: the exchange was dropped unfinished, so it never answered.
    let Ok(Ok(Some(status))) = tokio::time::timeout_at(expiry, late).await else {
        return;
    };
    match disposition(status) {
        Disposition::Record => {
            let recorded = Recorded {
                fingerprint,
                response: None,
            };
            record_until_first(records, &claim, recorded, retention, expiry).await;
        }
        Disposition::Release => {
            if let Err(error) = records.release(&claim).await {
                tracing::warn!(key = %claim.key, %error, "idempotency key not released; it frees itself once its hold expires");
            }
        }
        Disposition::Hold => {}
    }
}

/// Records at once, then retries while the claim holds.
async fn record_until_first<R: IdempotencyStore>(
    records: &R,
    claim: &Claim,
    recorded: Recorded,
    retention: Duration,
    expiry: tokio::time::Instant,
) {
    match records.record(claim, recorded.clone(), retention).await {
        Ok(_) => {}
        Err(_) => record_until(records, claim, recorded, retention, expiry).await,
    }
}

/// Retries recording `recorded` for `claim` until it is recorded or `expiry` passes.
async fn record_until<R: IdempotencyStore>(
    records: &R,
    claim: &Claim,
    recorded: Recorded,
    retention: Duration,
    expiry: tokio::time::Instant,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let now = tokio::time::Instant::now();
        if now >= expiry {
            tracing::warn!(key = %claim.key,
                "idempotent response not recorded before the key's hold expired");
            return;
        }
        tokio::time::sleep(backoff.min(expiry - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        match records.record(claim, recorded.clone(), retention).await {
            Ok(true) => {
                tracing::info!(key = %claim.key, "idempotent response recorded on a retry");
                return;
            }
            Ok(false) => {
                tracing::warn!(key = %claim.key,
                    "idempotency key expired before its response was recorded");
                return;
            }
            Err(error) => tracing::debug!(key = %claim.key, %error, "record retry failed"),
        }
    }
}

async fn release<R: IdempotencyStore>(records: &R, claim: &Claim, route: metrics::SharedString) {
    metrics::counter!(telemetry::IDEMPOTENCY_KEYS_RELEASED, "route" => route).increment(1);
    if let Err(error) = records.release(claim).await {
        tracing::warn!(key = %claim.key, %error, "idempotency key not released; it frees itself once its hold expires");
    }
}

/// The answer to a request whose key is held (draft §2.7).
fn answer_held<RB: Body>(
    held: Held,
    fingerprint: Fingerprint,
    instance: &str,
    route: &metrics::SharedString,
) -> Response<ResponseBody<RB>> {
    let found = match &held {
        Held::InFlight(first) => Found::InFlight(*first),
        Held::Done(recorded) => Found::Done {
            fingerprint: recorded.fingerprint,
            replayable: recorded.response.is_some(),
        },
    };
    let reject = |kind, status, detail: &str| {
        Rejection::new(kind, status, instance, detail.to_owned()).into_response()
    };
    match decide(found, fingerprint) {
        Decision::Replay => {
            metrics::counter!(telemetry::IDEMPOTENCY_REPLAYS, "route" => route.clone())
                .increment(1);
            match held {
                Held::Done(recorded) => match recorded.response {
                    Some(response) => replay(response),
                    None => not_replayable(instance),
                },
                Held::InFlight(_) => not_replayable(instance),
            }
        }
        Decision::Reused => {
            metrics::counter!(telemetry::IDEMPOTENCY_MISMATCHES, "route" => route.clone())
                .increment(1);
            reject(
                RejectionKind::IdempotencyKeyReused,
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was already used for a request with another method, \
                 target or body (draft-ietf-httpapi-idempotency-key-header §2.7): use a new key \
                 for a new request",
            )
        }
        // `Forward` cannot come from a held key; answered as in flight, never forwarded.
        Decision::InFlight | Decision::Forward => {
            metrics::counter!(telemetry::IDEMPOTENCY_IN_FLIGHT, "route" => route.clone())
                .increment(1);
            with_retry_after(reject(
                RejectionKind::IdempotencyInFlight,
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being processed \
                 (draft-ietf-httpapi-idempotency-key-header §2.7): retry after it completes, \
                 with the same key, to get its response",
            ))
        }
        Decision::NotReplayable => not_replayable(instance),
    }
}

fn not_replayable<RB: Body>(instance: &str) -> Response<ResponseBody<RB>> {
    let detail = "the first request with this Idempotency-Key completed, but its response was \
                  too large to record (or failed midway) and cannot be replayed: it was not \
                  applied again. GET the resource to see the outcome";
    Rejection::new(
        RejectionKind::IdempotencyNotReplayable,
        StatusCode::CONFLICT,
        instance,
        detail,
    )
    .into_response()
}

fn with_retry_after<B>(mut response: Response<B>) -> Response<B> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Reads `body` whole, at most `max` bytes within `timeout`.
async fn read_bounded<B>(
    mut body: ClientBody<B>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Unread>
where
    B: Body<Data = Bytes> + Unpin,
{
    let read = async {
        let mut data = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Unread::Broken);
            };
            if let Ok(chunk) = frame.into_data() {
                if data.len() + chunk.len() > max {
                    return Err(Unread::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok(data.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Unread::TooSlow))
}

/// The answer to a body that could not be fingerprinted: nothing was taken or forwarded.
fn unreadable<RB: Body>(unread: Unread, instance: &str, max: usize) -> Response<ResponseBody<RB>> {
    let (kind, status, detail) = match unread {
        Unread::TooLarge => (
            RejectionKind::BodyTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a request with an Idempotency-Key is buffered to fingerprint it, and this \
                 route buffers at most {max} bytes (idempotency_max_request_bytes)"
            ),
        ),
        Unread::TooSlow => (
            RejectionKind::RequestTimeout,
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive within server.body_read_timeout; nothing was \
             forwarded"
                .to_owned(),
        ),
        Unread::Broken => (
            RejectionKind::BadRequest,
            StatusCode::BAD_REQUEST,
            "the request body could not be read; nothing was forwarded".to_owned(),
        ),
    };
    Rejection::new(kind, status, instance, detail).into_response()
}
