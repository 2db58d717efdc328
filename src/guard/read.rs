//! The read path: GET and HEAD pass through and teach the store each resource's validator.

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::headers;
use super::learn::{Established, establish};
use super::policy::EtagSource;
use super::response::{Rejection, RejectionKind};
use super::service::Guarded;
use super::versions;
use crate::etag::EntityTag;
use crate::key::ResourceKey;
use crate::precondition::{Decision, Preconditions, RequestKind, ResourceState, evaluate};
use crate::store::{KeyState, Observation, Snapshot, Store};
use crate::telemetry;

pub(crate) async fn read<S, St, B, RB>(
    guarded: Guarded<S, St>,
    mut req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    St: Store,
    RB: Body<Data = Bytes>,
{
    let Guarded {
        mut inner,
        store,
        policy,
        key,
        variant,
        route,
        uri,
        versions,
        ..
    } = guarded;
    let is_get = req.method() == Method::GET;
    let hash = is_get && policy.etag_source != EtagSource::Upstream;

    // A read's conditionals are the upstream's business, except tags only the proxy knows.
    let client_inm = match headers::preconditions(req.headers(), true) {
        Ok(pre) => {
            headers::strip_synthesized(req.headers_mut(), &pre);
            pre.if_none_match
        }
        Err(_) => None,
    };
    if hash {
        // Synthesized tags are computed over identity-coded bytes, so that every client gets
        // the same tag for the same content.
        req.headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }

    // The generation seen *before* going upstream: if a write lands meanwhile, what this read
    // brings back is refused by the store. A HEAD also needs what is known (it has no body to
    // hash: it carries the known tag); a GET needs only the generation, which a networked
    // store may remember without a round trip.
    let seen = if is_get {
        store.read_generation(key).await.map(|generation| Seen {
            generation,
            known: None,
        })
    } else {
        store.load(key).await.map(|snapshot| Seen {
            generation: snapshot.generation,
            known: Some(snapshot),
        })
    };
    let seen = match seen {
        Ok(seen) => Some(seen),
        Err(error) => {
            tracing::warn!(%key, %error, "store load failed, read passes unobserved");
            None
        }
    };
    let audience = versions
        .enabled()
        .then(|| versions::audience(req.headers()));
    let response = inner.call(req.map(RequestBody::new)).await?;
    let (mut parts, body) = response.into_parts();
    let status = parts.status;

    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        // A view that is not there says nothing of the resource (see the revalidation).
        if variant == 0 {
            learn(&store, key, &seen, Observation::Absent).await;
        }
        return Ok(upstream(parts, body));
    }
    if !status.is_success() {
        return Ok(upstream(parts, body));
    }
    let hash = hash && status == StatusCode::OK;
    match establish(&parts, body, &policy, variant, hash).await {
        Established::Tag {
            validator,
            synthesized,
            body,
        } => {
            // Decided before the validator moves into the store: no copy of the tag.
            let not_modified = synthesized && {
                headers::set_etag(&mut parts.headers, &validator.tag);
                let state = ResourceState::Present {
                    validators: std::slice::from_ref(&validator.tag),
                    last_modified: None,
                };
                let pre = Preconditions {
                    if_none_match: client_inm,
                    ..Preconditions::default()
                };
                evaluate(RequestKind::Read, &state, &pre) == Decision::NotModified
            };
            // A version the upstream served, whether or not the store takes its tag.
            if let (0, Some(audience)) = (variant, audience) {
                let memory = (key, audience);
                versions::remember(&versions, memory, &validator, &parts.headers, &body);
            }
            let observation = Observation::Validator {
                validator,
                last_modified: headers::last_modified(&parts.headers),
            };
            learn(&store, key, &seen, observation).await;
            if !synthesized {
                return Ok(Response::from_parts(parts, body));
            }
            metrics::counter!(telemetry::ETAGS_SYNTHESIZED, "route" => route).increment(1);
            if not_modified {
                parts.status = StatusCode::NOT_MODIFIED;
                for name in [CONTENT_LENGTH, CONTENT_TYPE, CONTENT_ENCODING] {
                    parts.headers.remove(name);
                }
                return Ok(Response::from_parts(parts, ResponseBody::empty()));
            }
            Ok(Response::from_parts(parts, body))
        }
        Established::Nothing { body } => {
            if !is_get {
                // HEAD has no body to hash: it carries the validator already known, if any.
                let representation = headers::representation(&parts.headers).with_variant(variant);
                let known = seen.as_ref().and_then(|seen| seen.known.as_ref());
                if let Some(tag) = known_tag(known, representation) {
                    headers::set_etag(&mut parts.headers, tag);
                }
            }
            Ok(Response::from_parts(parts, body))
        }
        Established::Failed => {
            // Nothing was sent to the client yet: answer 502 rather than pass on a body that
            // ends short (the client might not notice), and learn nothing from it.
            tracing::warn!(%key, "upstream body failed while it was hashed");
            let detail = "the upstream's response body failed midway; retry later";
            let mut response = Rejection::new(
                RejectionKind::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                uri.path_and_query().map_or("/", |pq| pq.as_str()),
                detail.to_owned(),
            )
            .into_response();
            // A failed read, not a refused write: logged above, not as a rejection.
            response.extensions_mut().remove::<Rejection>();
            Ok(response)
        }
        Established::TooLarge { body } => {
            // Too large to hash: whatever was known no longer describes this resource.
            tracing::debug!(%key, limit = policy.max_hash_bytes, "body too large to hash");
            metrics::counter!(telemetry::ETAGS_SKIPPED, "route" => route).increment(1);
            learn(&store, key, &seen, Observation::Unknown).await;
            Ok(Response::from_parts(parts, body))
        }
    }
}

/// What the store showed before the read went upstream.
struct Seen {
    /// The generation to learn against.
    generation: u64,
    /// The state, for a HEAD.
    known: Option<Snapshot>,
}

/// Records an observation against the generation seen before the read (soon: a write that
/// follows through this process may carry it); a refusal is normal (a write or a fresher read
/// got there first) and a store failure only costs a revalidation.
async fn learn<St: Store>(
    store: &St,
    key: ResourceKey,
    seen: &Option<Seen>,
    observation: Observation,
) {
    let Some(seen) = seen else { return };
    if let Err(error) = store.learn_soon(key, seen.generation, observation).await {
        tracing::warn!(%key, %error, "store learn failed");
    }
}

fn upstream<RB: Body>(parts: http::response::Parts, body: RB) -> Response<ResponseBody<RB>> {
    Response::from_parts(parts, ResponseBody::upstream(body))
}

/// The validator known for `representation`, else any known one of the same view.
fn known_tag(
    snapshot: Option<&Snapshot>,
    representation: crate::validator::Representation,
) -> Option<&EntityTag> {
    let Some(Snapshot {
        state: KeyState::Present { validators, .. },
        ..
    }) = snapshot
    else {
        return None;
    };
    validators
        .iter()
        .find(|v| v.representation == representation)
        .or_else(|| {
            validators
                .iter()
                .find(|v| v.representation.variant() == representation.variant())
        })
        .map(|v| &v.tag)
}
