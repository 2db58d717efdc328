//! Reading a response body into a bounded buffer to synthesize a strong entity-tag.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::body::Tail;
use crate::etag::EntityTag;
use crate::validator::Representation;

/// A body read as far as the hash buffer allows.
pub(crate) enum Hashed<B: Body> {
    /// The whole body fit: its frames and the tag synthesized from it.
    Complete {
        frames: VecDeque<Frame<Bytes>>,
        tag: EntityTag,
    },
    /// The body is larger than the buffer (or failed): what was read, then the rest.
    Incomplete {
        frames: VecDeque<Frame<Bytes>>,
        rest: Tail<B>,
    },
}

/// Reads `body` until its end or until more than `limit` bytes were seen, hashing the
/// representation's identity with the bytes so that two representations with equal bytes
/// (say JSON and plain text) never share a tag.
pub(crate) async fn hash_body<B>(body: B, representation: Representation, limit: usize) -> Hashed<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    // A declared length over the limit streams through at once, without buffering a byte.
    if body.size_hint().lower() > limit as u64 {
        return Hashed::Incomplete {
            frames: VecDeque::new(),
            rest: rest_of(body),
        };
    }
    let mut frames = VecDeque::new();
    let mut seen = 0usize;
    loop {
        match body.as_mut().frame().await {
            None => {
                let tag = tag_of(representation, &frames);
                return Hashed::Complete { frames, tag };
            }
            Some(Err(error)) => {
                return Hashed::Incomplete {
                    frames,
                    rest: Tail::Failed(Some(error)),
                };
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.len());
                }
                frames.push_back(frame);
                if seen > limit {
                    return Hashed::Incomplete {
                        frames,
                        rest: rest_of(body),
                    };
                }
            }
        }
    }
}

/// The tag of a whole body, hashed once it is all buffered: the hasher (about 2 KiB of state)
/// then lives on the stack for one call, not in every read's future across its awaits.
fn tag_of(representation: Representation, frames: &VecDeque<Frame<Bytes>>) -> EntityTag {
    let mut hasher = blake3::Hasher::new();
    // The content part only: a query variant with the same bytes gets the same tag.
    hasher.update(&representation.with_variant(0).0.to_le_bytes());
    for data in frames.iter().filter_map(Frame::data_ref) {
        hasher.update(data);
    }
    EntityTag::synthesized(&hasher.finalize())
}

/// The tag [`hash_body`] synthesizes for `bytes`, when they are the whole body.
pub(crate) fn synthesized_tag(representation: Representation, bytes: &[u8]) -> EntityTag {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&representation.with_variant(0).0.to_le_bytes());
    hasher.update(bytes);
    EntityTag::synthesized(&hasher.finalize())
}

fn rest_of<B: Body>(body: Pin<Box<B>>) -> Tail<B> {
    if body.is_end_stream() {
        Tail::Done
    } else {
        Tail::Rest(body)
    }
}
