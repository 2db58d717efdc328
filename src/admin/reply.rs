//! The admin API's responses: JSON, and problem+json (RFC 9457) for errors.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

/// Every admin response's body.
pub type AdminBody = Full<Bytes>;

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<AdminBody> {
    // Our own plain structs: serializing them cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    with_type(status, body, "application/json")
}

/// A problem+json response; `extra` members (an object) are merged in.
pub fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<AdminBody> {
    problem_with(status, slug, detail, serde_json::Map::new())
}

/// A problem+json response with extension members.
pub fn problem_with(
    status: StatusCode,
    slug: &str,
    detail: &str,
    mut extra: serde_json::Map<String, serde_json::Value>,
) -> Response<AdminBody> {
    extra.insert("type".into(), format!("urn:ifmatch:problem:{slug}").into());
    extra.insert(
        "title".into(),
        status.canonical_reason().unwrap_or("Error").into(),
    );
    extra.insert("status".into(), status.as_u16().into());
    extra.insert("detail".into(), detail.into());
    let body = serde_json::to_vec(&extra).unwrap_or_default();
    with_type(status, body, "application/problem+json")
}

/// A response of `content_type`.
pub fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Admin answers describe live state: never cache them.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
