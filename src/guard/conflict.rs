//! What a stale write's conflict shows, and whether it merges: pure functions over the three
//! documents (the version the client edited, the current one, the client's), for
//! [`super::resolve`].
//!
//! The problem members (RFC 9457 §3.2), documented in the README and SPEC: `current` (the
//! current representation, when it is JSON and remembered), then either a three-way
//! comparison (`comparison: "three-way"`, `base_etag`, `conflicts`, `your_changes`,
//! `their_changes`) when the version the client's `If-Match` names is remembered, or a two-way
//! one (`comparison: "two-way"`, `differences`: where the client's document differs from the
//! current one). Pointers are RFC 6901; lists are cut at [`MAX_POINTERS`] (then
//! `truncated: true`).

use bytes::Bytes;
use serde_json::{Value, json};

use super::response::Rejection;
use super::versions::Version;
use crate::etag::EntityTag;
use crate::merge::{self, Comparison, Pointer};

/// At most this many pointers per list in a conflict response.
pub(crate) const MAX_POINTERS: usize = 1000;

/// Whether a media type is JSON: `application/json` or any `+json` structured syntax suffix
/// (RFC 6839 §3.1), parameters ignored.
pub(crate) fn is_json(content_type: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

/// A remembered version as a JSON document, if it is one.
pub(crate) fn document(version: &Version) -> Option<Value> {
    if !is_json(&version.content_type) {
        return None;
    }
    serde_json::from_slice(&version.body).ok()
}

/// The client's body as a JSON document, if its content type says JSON and it parses.
pub(crate) fn client_document(content_type: Option<&[u8]>, body: &Bytes) -> Option<Value> {
    if !content_type.is_some_and(is_json) {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// What the guard compares a stale write with.
pub(crate) struct Sides<'a> {
    /// The version the client's `If-Match` names, when remembered.
    pub(crate) base: Option<(&'a EntityTag, Value)>,
    /// The current version.
    pub(crate) current: Option<Value>,
    /// The client's document.
    pub(crate) yours: Option<Value>,
}

impl Sides<'_> {
    /// The 409 with what is known: the current document, and the comparison when the client's
    /// document is known.
    pub(crate) fn explain(self, mut rejection: Rejection) -> Rejection {
        let Some(current) = self.current else {
            return rejection;
        };
        match (self.yours, self.base) {
            (Some(yours), Some((base_tag, base))) => {
                let comparison = merge::compare(&base, &current, &yours);
                rejection = three_way(rejection, base_tag, &comparison);
            }
            (Some(yours), None) => {
                let differences = merge::changes(&current, &yours);
                let (list, cut) = pointers(&differences);
                rejection = rejection
                    .with_member("comparison", json!("two-way"))
                    .with_member("differences", list);
                if cut {
                    rejection = rejection.with_member("truncated", json!(true));
                }
            }
            (None, _) => {}
        }
        rejection.with_member("current", current)
    }
}

fn three_way(rejection: Rejection, base_tag: &EntityTag, comparison: &Comparison) -> Rejection {
    let (conflicts, cut_conflicts) = if comparison.conflicts.len() > MAX_POINTERS {
        (&comparison.conflicts[..MAX_POINTERS], true)
    } else {
        (&comparison.conflicts[..], false)
    };
    let (yours, cut_yours) = pointers(&comparison.your_changes);
    let (theirs, cut_theirs) = pointers(&comparison.their_changes);
    let rejection = rejection
        .with_member("comparison", json!("three-way"))
        .with_member("base_etag", json!(base_tag.to_string()))
        .with_member("conflicts", json!(conflicts))
        .with_member("your_changes", yours)
        .with_member("their_changes", theirs);
    if cut_conflicts || cut_yours || cut_theirs {
        rejection.with_member("truncated", json!(true))
    } else {
        rejection
    }
}

/// The pointers as JSON strings, at most [`MAX_POINTERS`]; whether some were left out.
fn pointers(list: &[Pointer]) -> (Value, bool) {
    let shown: Vec<Value> = list
        .iter()
        .take(MAX_POINTERS)
        .map(|p| Value::String(p.to_string()))
        .collect();
    (Value::Array(shown), list.len() > MAX_POINTERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    use crate::guard::RejectionKind;

    #[test]
    fn json_media_types() {
        for yes in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/merge-patch+json",
            b"application/vnd.api+json ; x=y",
        ] {
            assert!(is_json(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"text/plain"[..],
            b"application/jsonx",
            b"+json",
            b"",
            b"\xff",
        ] {
            assert!(!is_json(no), "{}", String::from_utf8_lossy(no));
        }
    }

    fn stale() -> Rejection {
        Rejection::new(
            RejectionKind::StalePrecondition,
            StatusCode::CONFLICT,
            "/items/1",
            "stale",
        )
    }

    #[test]
    fn three_way_members() {
        let tag = EntityTag::strong("base").unwrap();
        let sides = Sides {
            base: Some((&tag, json!({"a": 1, "b": 1}))),
            current: Some(json!({"a": 2, "b": 1})),
            yours: Some(json!({"a": 3, "b": 2})),
        };
        let body: Value = serde_json::from_str(&sides.explain(stale()).to_json()).unwrap();
        assert_eq!(body["comparison"], "three-way");
        assert_eq!(body["base_etag"], "\"base\"");
        assert_eq!(
            body["conflicts"],
            json!([{"pointer": "/a", "base": 1, "current": 2, "yours": 3}])
        );
        assert_eq!(body["your_changes"], json!(["/a", "/b"]));
        assert_eq!(body["their_changes"], json!(["/a"]));
        assert_eq!(body["current"], json!({"a": 2, "b": 1}));
        assert_eq!(body["status"], 409);
    }

    #[test]
    fn two_way_without_the_base_and_nothing_without_the_current() {
        let sides = Sides {
            base: None,
            current: Some(json!({"a": 2, "b": 1})),
            yours: Some(json!({"a": 3, "b": 1})),
        };
        let body: Value = serde_json::from_str(&sides.explain(stale()).to_json()).unwrap();
        assert_eq!(body["comparison"], "two-way");
        assert_eq!(body["differences"], json!(["/a"]));
        assert!(body.get("conflicts").is_none());
        let sides = Sides {
            base: None,
            current: None,
            yours: Some(json!({})),
        };
        assert_eq!(sides.explain(stale()), stale());
    }

    #[test]
    fn long_lists_are_cut() {
        let many: serde_json::Map<String, Value> =
            (0..3000).map(|i| (format!("k{i}"), json!(i))).collect();
        let sides = Sides {
            base: None,
            current: Some(json!({})),
            yours: Some(Value::Object(many)),
        };
        let body: Value = serde_json::from_str(&sides.explain(stale()).to_json()).unwrap();
        assert_eq!(body["differences"].as_array().unwrap().len(), MAX_POINTERS);
        assert_eq!(body["truncated"], true);
    }
}
