//! Responses recorded and replayed: the first answer read (bounded) into a record while the
//! client gets the same bytes, and a record turned back into that answer.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use crate::guard::{Rejection, RejectionKind, ResponseBody, Tail};
use crate::idempotency::{Fingerprint, REPLAYED_HEADER};
use crate::store::idempotency::{Recorded, StoredResponse};

/// Reads `response`'s body, up to `max` bytes within `timeout`, into a record; the client's
/// response carries the same status, headers and bytes. A body over `max` streams on to the
/// client and is recorded as not replayable (the request did complete); so is one that fails
/// or stalls midway (the client then gets 502: the upstream answered, its body broke).
pub(super) async fn captured<RB>(
    response: Response<ResponseBody<RB>>,
    fingerprint: Fingerprint,
    max: usize,
    timeout: Duration,
    instance: &str,
) -> (Response<ResponseBody<RB>>, Recorded)
where
    RB: Body<Data = Bytes> + Send + 'static,
{
    let (parts, body) = response.into_parts();
    let (mut ahead, mut rest) = body.into_frames();
    let mut frames = VecDeque::new();
    let mut data = BytesMut::new();
    let mut replayable = true;
    let read = async {
        loop {
            let frame = match ahead.pop_front() {
                Some(frame) => frame,
                None => match &mut rest {
                    Tail::Rest(body) => match body.frame().await {
                        None => return Read::Done,
                        Some(Err(error)) => return Read::Failed(error),
                        Some(Ok(frame)) => frame,
                    },
                    Tail::Failed(error) => return error.take().map_or(Read::Done, Read::Failed),
                    Tail::Done => return Read::Done,
                },
            };
            match frame.data_ref() {
                Some(chunk) => data.extend_from_slice(chunk),
                // Trailers cannot be replayed byte for byte.
                None => replayable = false,
            }
            frames.push_back(frame);
            if data.len() > max {
                return Read::TooLarge;
            }
        }
    };
    let read = tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Read::Stalled);
    let not_replayable = Recorded {
        fingerprint,
        response: None,
    };
    match read {
        Read::Done => {
            let recorded = Recorded {
                fingerprint,
                response: replayable.then(|| StoredResponse {
                    status: parts.status,
                    headers: recordable(&parts.headers),
                    body: data.freeze(),
                }),
            };
            let body = ResponseBody::buffered(frames, Tail::Done);
            (Response::from_parts(parts, body), recorded)
        }
        Read::TooLarge => {
            tracing::info!(max, "response too large to record: a retry gets 409");
            frames.extend(ahead);
            let body = ResponseBody::buffered(frames, rest);
            (Response::from_parts(parts, body), not_replayable)
        }
        Read::Failed(_) | Read::Stalled => {
            let detail = format!(
                "the upstream answered this request {} but its response body failed midway; \
                 it may have applied, and a retry with the same Idempotency-Key gets 409: GET \
                 the resource to see the outcome",
                parts.status
            );
            let rejection = Rejection::new(
                RejectionKind::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                instance,
                detail,
            );
            (rejection.into_response(), not_replayable)
        }
    }
}

enum Read<E> {
    Done,
    TooLarge,
    Failed(E),
    Stalled,
}

/// The headers a replay repeats: every end-to-end one, in order. (Hop-by-hop fields never get
/// here: forwarding removed them.)
fn recordable(headers: &http::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The recorded response, byte for byte, marked as a replay.
pub(super) fn replay<RB: Body>(stored: StoredResponse) -> Response<ResponseBody<RB>> {
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn upstream(body: &'static [u8]) -> Response<ResponseBody<Full<Bytes>>> {
        let mut response =
            Response::new(ResponseBody::upstream(Full::new(Bytes::from_static(body))));
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert("location", HeaderValue::from_static("/items/9"));
        response
    }

    #[tokio::test]
    async fn a_small_answer_is_recorded_and_replayed_as_it_was() {
        let fp = Fingerprint([1; 32]);
        let (client, recorded) = captured(
            upstream(b"{\"id\":9}"),
            fp,
            1024,
            Duration::from_secs(5),
            "/items",
        )
        .await;
        let stored = recorded.response.expect("replayable");
        assert_eq!(stored.status, StatusCode::CREATED);
        assert_eq!(&stored.body[..], b"{\"id\":9}");
        let first = client.into_body().collect().await.ok().unwrap().to_bytes();
        assert_eq!(&first[..], b"{\"id\":9}");
        let replayed: Response<ResponseBody<Full<Bytes>>> = replay(stored);
        assert_eq!(replayed.status(), StatusCode::CREATED);
        assert_eq!(replayed.headers()["location"], "/items/9");
        assert_eq!(replayed.headers()[REPLAYED_HEADER], "true");
        let again = replayed
            .into_body()
            .collect()
            .await
            .ok()
            .unwrap()
            .to_bytes();
        assert_eq!(again, first);
    }

    #[tokio::test]
    async fn a_large_answer_streams_whole_and_is_not_replayable() {
        let fp = Fingerprint([1; 32]);
        let (client, recorded) = captured(
            upstream(b"0123456789"),
            fp,
            4,
            Duration::from_secs(5),
            "/items",
        )
        .await;
        assert_eq!(recorded.response, None);
        let body = client.into_body().collect().await.ok().unwrap().to_bytes();
        assert_eq!(&body[..], b"0123456789");
    }
}
