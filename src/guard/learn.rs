//! The one learning step, shared by reads, revalidations and write responses: what strong
//! validator a 2xx response establishes for its representation.
//!
//! The upstream's strong `ETag`, when the route trusts it; else, where the route synthesizes,
//! a blake3 hash of the identity-coded body read into a bounded buffer (the frames read are
//! handed back, to be sent on first); else none.

use bytes::Bytes;
use http::response::Parts;
use http_body::Body;

use super::body::{ResponseBody, Tail};
use super::hash::{Hashed, hash_body};
use super::headers;
use super::policy::{EtagSource, Policy};
use crate::etag::EntityTag;
use crate::validator::{Representation, Validator};

/// What a response established, and its body to send on.
pub(crate) enum Established<B: Body> {
    /// A strong validator: the upstream's (`synthesized: false`) or a hash of the body.
    Tag {
        validator: Validator,
        synthesized: bool,
        body: ResponseBody<B>,
    },
    /// The route may synthesize, but the body is larger than `max_hash_bytes`.
    TooLarge { body: ResponseBody<B> },
    /// The body failed while it was read for hashing (nothing of it is worth sending).
    Failed,
    /// Nothing to learn from (no strong tag, and no hashing here).
    Nothing { body: ResponseBody<B> },
}

/// The validator `parts` and `body` establish for the resource's view `variant`. Hashes only
/// when `hash` (the caller knows whether the body is the representation) and the route
/// synthesizes.
pub(crate) async fn establish<B>(
    parts: &Parts,
    body: B,
    policy: &Policy,
    variant: u32,
    hash: bool,
) -> Established<B>
where
    B: Body<Data = Bytes>,
{
    let representation = headers::representation(&parts.headers).with_variant(variant);
    if policy.etag_source != EtagSource::Synthesize {
        if let Some(tag) = headers::strong_etag(&parts.headers) {
            return tagged(tag, representation, false, ResponseBody::upstream(body));
        }
    }
    if !hash || policy.etag_source == EtagSource::Upstream {
        return Established::Nothing {
            body: ResponseBody::upstream(body),
        };
    }
    match hash_body(body, representation, policy.max_hash_bytes).await {
        Hashed::Complete { frames, tag } => tagged(
            tag,
            representation,
            true,
            ResponseBody::buffered(frames, Tail::Done),
        ),
        Hashed::Incomplete {
            rest: Tail::Failed(_),
            ..
        } => Established::Failed,
        Hashed::Incomplete { frames, rest } => Established::TooLarge {
            body: ResponseBody::buffered(frames, rest),
        },
    }
}

fn tagged<B: Body>(
    tag: EntityTag,
    representation: Representation,
    synthesized: bool,
    body: ResponseBody<B>,
) -> Established<B> {
    Established::Tag {
        validator: Validator {
            tag,
            representation,
        },
        synthesized,
        body,
    }
}
