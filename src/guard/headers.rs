//! Header plumbing between HTTP messages and the pure core.

use std::time::SystemTime;

use http::header::{
    CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::etag::EntityTag;
use crate::precondition::{Field, PreconditionError, Preconditions, TagCondition};
use crate::store::Representation;

const FIELDS: [(HeaderName, Field); 4] = [
    (IF_MATCH, Field::IfMatch),
    (IF_NONE_MATCH, Field::IfNoneMatch),
    (IF_UNMODIFIED_SINCE, Field::IfUnmodifiedSince),
    (IF_MODIFIED_SINCE, Field::IfModifiedSince),
];

/// Parses the precondition headers of a request. `If-Modified-Since` only counts on reads
/// (RFC 9110 §13.1.3: a recipient ignores it on other methods).
pub(crate) fn preconditions(
    headers: &HeaderMap,
    read: bool,
) -> Result<Preconditions, PreconditionError> {
    let fields = FIELDS
        .iter()
        .filter(|(_, field)| read || *field != Field::IfModifiedSince)
        .flat_map(|(name, field)| {
            headers
                .get_all(name)
                .iter()
                .map(move |value| (*field, value.as_bytes()))
        });
    Preconditions::parse(fields)
}

/// The representation a response describes.
pub(crate) fn representation(headers: &HeaderMap) -> Representation {
    let bytes = |name| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    Representation::new(bytes(CONTENT_TYPE), bytes(CONTENT_ENCODING))
}

/// The response's `ETag` if it is a single strong entity-tag.
pub(crate) fn strong_etag(headers: &HeaderMap) -> Option<EntityTag> {
    let mut values = headers.get_all(ETAG).iter();
    let tag = EntityTag::parse(values.next()?.as_bytes()).ok()?;
    (values.next().is_none() && !tag.is_weak()).then_some(tag)
}

/// The response's `Last-Modified`, if valid.
pub(crate) fn last_modified(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(LAST_MODIFIED)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// Sets the `ETag` header to `tag`.
pub(crate) fn set_etag(headers: &mut HeaderMap, tag: &EntityTag) {
    if let Ok(value) = HeaderValue::from_str(&tag.to_string()) {
        headers.insert(ETAG, value);
    }
}

/// Removes the proxy's synthesized tags from `If-Match` and `If-None-Match`: the upstream cannot
/// know them, and the guard has already evaluated them. The upstream's own tags and `*` stay.
pub(crate) fn strip_synthesized(headers: &mut HeaderMap, pre: &Preconditions) {
    for (name, condition) in [
        (IF_MATCH, &pre.if_match),
        (IF_NONE_MATCH, &pre.if_none_match),
    ] {
        let Some(TagCondition::Tags(tags)) = condition else {
            continue;
        };
        if !tags.iter().any(EntityTag::is_synthesized) {
            continue;
        }
        headers.remove(&name);
        let kept: Vec<String> = tags
            .iter()
            .filter(|tag| !tag.is_synthesized())
            .map(ToString::to_string)
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(name, value);
        }
    }
}

/// Formats a tag list as it was sent, for problem details.
pub(crate) fn describe(condition: &TagCondition) -> String {
    match condition {
        TagCondition::Any => "*".to_owned(),
        TagCondition::Tags(tags) => tags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}
