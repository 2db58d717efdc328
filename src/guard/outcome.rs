//! What a forwarded write's response says about the resources it touched (SPEC "Outcome"):
//! pure functions over the response head, table-tested below.

use http::header::{CONTENT_LOCATION, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, Method, StatusCode};

use super::headers;
use super::policy::{EtagSource, Policy};
use crate::store::Outcome;
use crate::validator::{Representation, Validator};

/// The write's own resource, from its response's status and headers.
///
/// `request_representation` is the representation the request carried (a PUT's response
/// validator describes it, RFC 9110 §9.3.4); `variant` is the write's query variant.
pub(crate) fn outcome_of(
    method: &Method,
    request_representation: Representation,
    status: StatusCode,
    response: &HeaderMap,
    policy: &Policy,
) -> Outcome {
    if status.is_success() && status != StatusCode::ACCEPTED {
        if method == Method::DELETE {
            // Through a query view, what was deleted is not known to be the whole resource.
            return if request_representation.variant() == 0 {
                Outcome::Deleted
            } else {
                Outcome::Unknown
            };
        }
        // A POST's ETag describes what it created, not the collection it was sent to; a
        // synthesizing route cannot know the new tag without reading the resource again.
        if method == Method::POST || policy.etag_source == EtagSource::Synthesize {
            return Outcome::Unknown;
        }
        let Some(tag) = headers::strong_etag(response) else {
            return Outcome::Unknown;
        };
        // Any other write's validator describes its response body, if it has one.
        let representation = if method == Method::PUT {
            request_representation
        } else if response.contains_key(CONTENT_TYPE) {
            headers::representation(response).with_variant(request_representation.variant())
        } else {
            return Outcome::Unknown;
        };
        return Outcome::Replaced {
            validator: Validator {
                tag,
                representation,
            },
            last_modified: headers::last_modified(response),
        };
    }
    if status.is_client_error()
        && status != StatusCode::CONFLICT
        && status != StatusCode::PRECONDITION_FAILED
    {
        return Outcome::Unchanged;
    }
    // 202 (applied later), 1xx/3xx, 409/412 and 5xx: it may or may not have applied.
    Outcome::Unknown
}

/// The targets, other than its own, that a write's response says it created or changed
/// (RFC 9110 §10.2.2 `Location` of a 201, §8.7 `Content-Location`): each becomes unknown.
/// Empty when the write changed nothing.
pub(crate) fn related_targets<'a>(
    outcome: &Outcome,
    request_path: &str,
    response: &'a HeaderMap,
) -> Vec<(String, Option<&'a str>)> {
    if *outcome == Outcome::Unchanged {
        return Vec::new();
    }
    [LOCATION, CONTENT_LOCATION]
        .iter()
        .flat_map(|name| response.get_all(name))
        .filter_map(|value| value.to_str().ok())
        .filter_map(|reference| crate::target::resolve_reference(request_path, reference))
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::etag::EntityTag;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn replaced(tag: &str, representation: Representation) -> Outcome {
        Outcome::Replaced {
            validator: Validator {
                tag: EntityTag::parse(tag.as_bytes()).unwrap(),
                representation,
            },
            last_modified: None,
        }
    }

    #[test]
    fn outcomes_follow_the_spec_table() {
        let sent = Representation::new(b"application/json", b"").with_variant(7);
        let json = head(&[("etag", "\"v2\""), ("content-type", "application/json")]);
        let weak = head(&[("etag", "W/\"v2\"")]);
        let bare = head(&[]);
        let policy = Policy::default();
        let rows: [(Method, u16, &HeaderMap, Outcome); 13] = [
            (Method::PUT, 200, &json, replaced("\"v2\"", sent)),
            (Method::PUT, 204, &weak, Outcome::Unknown),
            (Method::PUT, 201, &bare, Outcome::Unknown),
            (Method::PATCH, 200, &json, replaced("\"v2\"", sent)),
            (
                Method::PATCH,
                200,
                &head(&[("etag", "\"v2\"")]),
                Outcome::Unknown,
            ),
            (Method::POST, 201, &json, Outcome::Unknown),
            // Through a view: what was deleted is not known to be the resource.
            (Method::DELETE, 204, &bare, Outcome::Unknown),
            (Method::PUT, 202, &json, Outcome::Unknown),
            (Method::PUT, 400, &bare, Outcome::Unchanged),
            (Method::PUT, 404, &bare, Outcome::Unchanged),
            (Method::PUT, 409, &bare, Outcome::Unknown),
            (Method::PUT, 412, &bare, Outcome::Unknown),
            (Method::PUT, 503, &bare, Outcome::Unknown),
        ];
        for (method, status, response, want) in rows {
            let status = StatusCode::from_u16(status).unwrap();
            let got = outcome_of(&method, sent, status, response, &policy);
            assert_eq!(got, want, "{method} {status}");
        }
    }

    #[test]
    fn a_delete_of_the_plain_path_leaves_the_resource_absent() {
        let plain = Representation::new(b"", b"");
        let got = outcome_of(
            &Method::DELETE,
            plain,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            &Policy::default(),
        );
        assert_eq!(got, Outcome::Deleted);
    }

    #[test]
    fn a_synthesizing_route_never_trusts_a_write_response_tag() {
        let policy = Policy {
            etag_source: EtagSource::Synthesize,
            ..Policy::default()
        };
        let json = head(&[("etag", "\"v2\""), ("content-type", "application/json")]);
        let sent = Representation::new(b"application/json", b"");
        let got = outcome_of(&Method::PUT, sent, StatusCode::OK, &json, &policy);
        assert_eq!(got, Outcome::Unknown);
    }

    #[test]
    fn locations_name_the_resources_a_write_touched() {
        let created = head(&[("location", "/items/2"), ("content-location", "2?v=1")]);
        let got = related_targets(&Outcome::Unknown, "/items/", &created);
        assert_eq!(
            got,
            [
                ("/items/2".to_owned(), None),
                ("/items/2".to_owned(), Some("v=1"))
            ]
        );
        assert!(related_targets(&Outcome::Unchanged, "/items", &created).is_empty());
        let foreign = head(&[("location", "mailto:x@y")]);
        assert!(related_targets(&Outcome::Unknown, "/items", &foreign).is_empty());
    }
}
