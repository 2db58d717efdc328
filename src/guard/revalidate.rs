//! Revalidation: establishing an unknown resource's state, under the writer's lease, with a GET
//! through the same inner service.
//!
//! The whole revalidation, its body included, is bounded by the route's `response_timeout`:
//! the lease is held meanwhile, and every step under a lease must be bounded for the lease's
//! time-to-live to cover it (see `config::lease_budget`). A body that trickles in is cut off
//! there and the writer gets 504, as for a head that never came.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

use super::body::{RequestBody, ResponseBody};
use super::headers;
use super::learn::{Established, establish};
use super::policy::{EtagSource, Policy};
use super::response::{Rejection, RejectionKind};
use super::versions::{Versions, remember};
use crate::key::ResourceKey;
use crate::store::{KeyState, Observation, Store};
use crate::telemetry;

/// Establishes an unknown resource's state with a GET through the same inner service.
pub(crate) struct Revalidation<'a, S, St> {
    /// A clone: the readied service is kept for the write itself.
    pub(crate) inner: S,
    pub(crate) store: &'a St,
    pub(crate) policy: &'a Policy,
    pub(crate) route: &'a Arc<str>,
    pub(crate) instance: &'a str,
    /// The write's query variant: what it learns is a validator of that view.
    pub(crate) variant: u32,
    /// Where the representation it reads is remembered.
    pub(crate) versions: &'a Versions,
    /// Whether to read (bounded by `max_hash_bytes`) and remember a body the guard would not
    /// otherwise read (one that came with the upstream's own tag): for a conflict response
    /// that shows the current version.
    pub(crate) read_body: bool,
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
    /// The resource's state, or the response the writer gets when it cannot be established
    /// within the route's `response_timeout`.
    pub(crate) async fn run<B, RB>(
        self,
        key: ResourceKey,
        generation: u64,
        get: Request<RequestBody<B>>,
    ) -> Result<Result<KeyState, Response<ResponseBody<RB>>>, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone,
        St: Store,
        RB: Body<Data = Bytes>,
    {
        let (bound, route, instance) = (self.policy.response_timeout, self.route, self.instance);
        match tokio::time::timeout(bound, self.current_state(key, generation, get)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                metrics::counter!(telemetry::REVALIDATIONS, "route" => route.clone(), "outcome" => "timeout")
                    .increment(1);
                let detail = format!(
                    "the current state of this resource could not be established within {}; \
                     retry later",
                    humantime::format_duration(bound)
                );
                let status = StatusCode::GATEWAY_TIMEOUT;
                Ok(Err(Rejection::new(
                    RejectionKind::UpstreamTimeout,
                    status,
                    instance,
                    detail,
                )
                .into_response()))
            }
        }
    }

    async fn current_state<B, RB>(
        self,
        key: ResourceKey,
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
            variant,
            versions,
            read_body,
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
        let audience = super::versions::audience(get.headers());
        let response = inner.oneshot(get).await?;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            outcome("absent");
            // A view that is not there says nothing of the resource (`?version=9` may 404
            // while the resource exists): only the plain path teaches absence.
            if variant == 0 {
                learn_revalidated(store, key, generation, Observation::Absent).await;
            }
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

        let hash = hash && status == StatusCode::OK;
        let last_modified = headers::last_modified(&parts.headers);
        let validator = match establish(&parts, body, policy, variant, hash).await {
            Established::Tag {
                validator, body, ..
            } => {
                if variant == 0 {
                    let body = if read_body && body.complete().is_none() {
                        read_whole(body, policy.max_hash_bytes).await
                    } else {
                        body
                    };
                    remember(versions, (key, audience), &validator, &parts.headers, &body);
                }
                validator
            }
            Established::Failed => {
                outcome("upstream-error");
                return Ok(Err(unavailable("its body failed midway")));
            }
            Established::TooLarge { .. } => {
                outcome("too-large");
                let detail = format!(
                    "this resource's representation is larger than the route's max_hash_bytes \
                     ({} bytes), so its current state cannot be established and the \
                     precondition cannot be checked: raise max_hash_bytes for this route, or \
                     set on_unknown = \"forward\" to let the upstream decide",
                    policy.max_hash_bytes
                );
                return Ok(Err(conflict(RejectionKind::TooLargeToHash, detail)));
            }
            Established::Nothing { .. } => {
                outcome("no-etag");
                let detail = "the upstream sent no strong ETag for this resource, so its \
                              current state cannot be established: set the route's etag_source \
                              to \"both\" to let the proxy synthesize one"
                    .to_owned();
                return Ok(Err(conflict(RejectionKind::UnknownState, detail)));
            }
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

/// `body` read to its end into memory if it is at most `limit` bytes (else what was read,
/// incomplete, which nothing remembers).
async fn read_whole<RB: Body<Data = Bytes>>(
    body: ResponseBody<RB>,
    limit: usize,
) -> ResponseBody<RB> {
    let mut body = Box::pin(body);
    let mut frames = std::collections::VecDeque::new();
    let mut seen = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(frame) = frame else {
            return ResponseBody::empty();
        };
        seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
        frames.push_back(frame);
        if seen > limit {
            return ResponseBody::empty();
        }
    }
    ResponseBody::buffered(frames, super::body::Tail::Done)
}

async fn learn_revalidated<St: Store>(
    store: &St,
    key: ResourceKey,
    generation: u64,
    observation: Observation,
) {
    if let Err(error) = store.learn(key, generation, observation).await {
        tracing::warn!(%key, %error, "store learn failed after revalidation");
    }
}

/// The GET that revalidates the target of `write`, with the writer's credentials and `Accept`
/// so it sees what the writer may see.
pub(crate) fn revalidation_request<B>(
    write: &Request<B>,
    policy: &Policy,
) -> Request<RequestBody<B>> {
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
