//! Header plumbing between HTTP messages and the pure core.

use std::time::SystemTime;

use http::header::{
    CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::response::{MAX_ECHO_BYTES, bounded};
use crate::etag::EntityTag;
use crate::precondition::{Field, PreconditionError, Preconditions, TagCondition};
use crate::validator::Representation;

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
    if let Some(value) = super::response::etag_value(tag) {
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

/// Formats a tag list as it was sent, for problem details and logs: a little less than
/// [`MAX_ECHO_BYTES`] of it, then how many tags were left out (a client may send thousands),
/// so that with a field name in front it still fits in a [`Rejection`](super::Rejection)'s
/// bound, marker included. Appended to `out` (a field name already in it, say), with no
/// string per tag.
pub(crate) fn describe_into(out: &mut String, condition: &TagCondition) {
    const BUDGET: usize = MAX_ECHO_BYTES - 64;
    let tags = match condition {
        TagCondition::Any => return out.push('*'),
        TagCondition::Tags(tags) => tags,
    };
    let base = out.len();
    for (i, tag) in tags.iter().enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let tag_len = tag.opaque().len() + 2 + if tag.is_weak() { 2 } else { 0 };
        if out.len() - base + separator.len() + tag_len > BUDGET {
            if i == 0 {
                // One tag longer than the bound: show its start.
                out.push_str(&bounded(&tag.to_string(), BUDGET));
                if tags.len() > 1 {
                    out.push_str(&format!(", …[+{} more tags]", tags.len() - 1));
                }
            } else {
                out.push_str(&format!(", …[+{} more tags]", tags.len() - i));
            }
            return;
        }
        out.push_str(separator);
        if tag.is_weak() {
            out.push_str("W/");
        }
        out.push('"');
        out.push_str(tag.opaque());
        out.push('"');
    }
}

/// The precondition lines of a write as the client sent them, kept (cheap `Bytes` clones)
/// so that a log can say what was sent when they did not parse (`If-Match: nope`).
pub(crate) struct SentLines(Vec<(Field, HeaderValue)>);

impl SentLines {
    /// The write's `If-Match`, `If-None-Match` and `If-Unmodified-Since` lines, or `None`
    /// without any (no allocation then).
    pub(crate) fn capture(headers: &HeaderMap) -> Option<Self> {
        let mut lines = Vec::new();
        for (name, field) in &FIELDS {
            if *field != Field::IfModifiedSince {
                lines.extend(headers.get_all(name).iter().map(|v| (*field, v.clone())));
            }
        }
        (!lines.is_empty()).then_some(Self(lines))
    }

    /// The lines as `Name: value; Name: value`, at most about [`MAX_ECHO_BYTES`] of them.
    pub(crate) fn describe(&self) -> String {
        let mut sent = String::new();
        for (field, value) in &self.0 {
            if !sent.is_empty() {
                sent.push_str("; ");
            }
            sent.push_str(field.name());
            sent.push_str(": ");
            sent.push_str(&String::from_utf8_lossy(value.as_bytes()));
            if sent.len() > MAX_ECHO_BYTES {
                return bounded(&sent, MAX_ECHO_BYTES).into_owned();
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(condition: &TagCondition) -> String {
        let mut shown = String::new();
        describe_into(&mut shown, condition);
        shown
    }

    fn tags(n: usize) -> TagCondition {
        TagCondition::Tags(
            (0..n)
                .map(|i| EntityTag::strong(&format!("tag-{i}")).unwrap())
                .collect(),
        )
    }

    #[test]
    fn describe_shows_short_lists_whole() {
        assert_eq!(describe(&TagCondition::Any), "*");
        assert_eq!(describe(&tags(2)), "\"tag-0\", \"tag-1\"");
    }

    #[test]
    fn describe_bounds_long_lists() {
        let shown = describe(&tags(5000));
        assert!(shown.len() <= MAX_ECHO_BYTES + 32, "{}", shown.len());
        assert!(shown.starts_with("\"tag-0\", \"tag-1\""), "{shown}");
        assert!(shown.ends_with(" more tags]"), "{shown}");
        let long = TagCondition::Tags(vec![EntityTag::strong(&"x".repeat(5000)).unwrap()]);
        assert!(describe(&long).len() <= MAX_ECHO_BYTES + 32);
    }

    #[test]
    fn sent_lines_are_the_bounded_wire_value() {
        let sent_raw = |headers: &HeaderMap| SentLines::capture(headers).map(|s| s.describe());
        let mut headers = HeaderMap::new();
        assert_eq!(sent_raw(&headers), None);
        headers.insert(IF_MATCH, HeaderValue::from_static("nope"));
        // If-Modified-Since does not count on a write.
        headers.insert(IF_MODIFIED_SINCE, HeaderValue::from_static("whenever"));
        assert_eq!(sent_raw(&headers).as_deref(), Some("If-Match: nope"));
        headers.append(IF_MATCH, HeaderValue::from_static("\"ok\""));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("w/\"x\""));
        assert_eq!(
            sent_raw(&headers).as_deref(),
            Some("If-Match: nope; If-Match: \"ok\"; If-None-Match: w/\"x\"")
        );
        headers.insert(
            IF_MATCH,
            HeaderValue::from_str(&"n".repeat(60_000)).unwrap(),
        );
        assert!(sent_raw(&headers).unwrap().len() <= MAX_ECHO_BYTES + 32);
    }
}
