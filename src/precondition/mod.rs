//! Conditional request headers (RFC 9110 §13.1) and their evaluation in the order of §13.2.2.
//!
//! Parsing and evaluation are pure: [`evaluate`] takes the resource's known state and the parsed
//! [`Preconditions`] and returns a [`Decision`]; the middleware only acts on it.
//!
//! ```
//! use ifmatch::precondition::{evaluate, Decision, Field, Preconditions, RequestKind, ResourceState};
//! use ifmatch::EntityTag;
//! let current = [EntityTag::strong("v2").unwrap()];
//! let pre = Preconditions::parse([(Field::IfMatch, &b"\"v1\""[..])]).unwrap();
//! let state = ResourceState::Present { validators: &current, last_modified: None };
//! assert!(matches!(evaluate(RequestKind::Write, &state, &pre), Decision::Failed(_)));
//! ```

use std::time::SystemTime;

use crate::etag::{EntityTag, EtagError, trim_ows};

/// A precondition header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `If-Match`
    IfMatch,
    /// `If-None-Match`
    IfNoneMatch,
    /// `If-Modified-Since`
    IfModifiedSince,
    /// `If-Unmodified-Since`
    IfUnmodifiedSince,
}

impl Field {
    /// The header name as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::IfMatch => "If-Match",
            Self::IfNoneMatch => "If-None-Match",
            Self::IfModifiedSince => "If-Modified-Since",
            Self::IfUnmodifiedSince => "If-Unmodified-Since",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of `If-Match` or `If-None-Match`: `*` or a non-empty list of entity-tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagCondition {
    /// `*`: any current representation.
    Any,
    /// A list of entity-tags (several field lines are one combined list).
    Tags(Vec<EntityTag>),
}

/// The precondition headers of one request, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`, if present.
    pub if_match: Option<TagCondition>,
    /// `If-None-Match`, if present.
    pub if_none_match: Option<TagCondition>,
    /// `If-Modified-Since`, if present (only meaningful on GET/HEAD).
    pub if_modified_since: Option<SystemTime>,
    /// `If-Unmodified-Since`, if present.
    pub if_unmodified_since: Option<SystemTime>,
}

/// A malformed precondition header; the request gets 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreconditionError {
    /// A member of an entity-tag list is not an entity-tag.
    #[error("malformed {field}: {source}")]
    Tag {
        /// Which header.
        field: Field,
        /// What is wrong with the tag.
        #[source]
        source: EtagError,
    },
    /// The field has no members (empty value, or only commas).
    #[error("empty {0}")]
    Empty(Field),
    /// `*` appears together with entity-tags, or more than once.
    #[error("{0} mixes * with entity-tags")]
    MixedWildcard(Field),
}

impl Preconditions {
    /// Parses field lines in any order; lines of the same list field are combined.
    ///
    /// A malformed entity-tag list (`If-Match`, `If-None-Match`) is an error (400). A date field
    /// that is not one valid HTTP-date (garbage, a list of dates, several lines) is ignored, as
    /// RFC 9110 requires of `If-Unmodified-Since` (§13.1.4) and `If-Modified-Since` (§13.1.3):
    /// the request is then evaluated as if the field were absent. (`If-Range`, §13.1.5, is not
    /// evaluated here: it only qualifies `Range`, which the proxy leaves to the upstream.)
    pub fn parse<'a>(
        fields: impl IntoIterator<Item = (Field, &'a [u8])>,
    ) -> Result<Self, PreconditionError> {
        let mut if_match = TagList::default();
        let mut if_none_match = TagList::default();
        let mut if_modified_since = DateField::default();
        let mut if_unmodified_since = DateField::default();
        for (field, value) in fields {
            match field {
                Field::IfMatch => if_match.push_line(field, value)?,
                Field::IfNoneMatch => if_none_match.push_line(field, value)?,
                Field::IfModifiedSince => if_modified_since.push_line(value),
                Field::IfUnmodifiedSince => if_unmodified_since.push_line(value),
            }
        }
        Ok(Self {
            if_match: if_match.finish(Field::IfMatch)?,
            if_none_match: if_none_match.finish(Field::IfNoneMatch)?,
            if_modified_since: if_modified_since.finish(),
            if_unmodified_since: if_unmodified_since.finish(),
        })
    }

    /// Whether no precondition is present at all.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
            && self.if_unmodified_since.is_none()
    }

    /// Whether the request carries a precondition that makes a write safe to require
    /// (`If-Match`, `If-Unmodified-Since`, or the create-only `If-None-Match: *`).
    pub fn guards_write(&self) -> bool {
        self.if_match.is_some()
            || self.if_unmodified_since.is_some()
            || self.if_none_match == Some(TagCondition::Any)
    }
}

/// The members of one list field (`"*" / #entity-tag`), accumulated over its lines.
#[derive(Default)]
struct TagList {
    /// Whether any line of the field was seen, even an empty one.
    present: bool,
    /// How many `*` members were seen.
    wildcards: usize,
    /// The entity-tag members, in order.
    tags: Vec<EntityTag>,
}

impl TagList {
    /// Adds the members of one field line; a malformed member fails the whole field.
    fn push_line(&mut self, field: Field, value: &[u8]) -> Result<(), PreconditionError> {
        self.present = true;
        for member in split_list(value) {
            let member = trim_ows(member);
            // RFC 9110 §5.6.1: empty list elements are ignored.
            if member.is_empty() {
                continue;
            }
            if member == b"*" {
                self.wildcards += 1;
                continue;
            }
            let tag = EntityTag::parse(member)
                .map_err(|source| PreconditionError::Tag { field, source })?;
            self.tags.push(tag);
        }
        Ok(())
    }

    /// Checks the combined list: `*` must stand alone, and a present field needs a member.
    fn finish(self, field: Field) -> Result<Option<TagCondition>, PreconditionError> {
        match (self.present, self.wildcards, self.tags.is_empty()) {
            (false, _, _) => Ok(None),
            (true, 0, true) => Err(PreconditionError::Empty(field)),
            (true, 0, false) => Ok(Some(TagCondition::Tags(self.tags))),
            (true, 1, true) => Ok(Some(TagCondition::Any)),
            (true, _, _) => Err(PreconditionError::MixedWildcard(field)),
        }
    }
}

/// Splits a field line on the commas that separate list members. Commas inside a quoted
/// opaque-tag (`"a,b"`) are part of the tag, so quotes are tracked.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut in_quotes = false;
    value.split(move |&b| {
        if b == b'"' {
            in_quotes = !in_quotes;
        }
        b == b',' && !in_quotes
    })
}

/// A date field: valid only as one line holding one HTTP-date.
#[derive(Default)]
enum DateField {
    /// No line seen.
    #[default]
    Absent,
    /// One line, a valid HTTP-date.
    Valid(SystemTime),
    /// Not one valid HTTP-date: the recipient MUST ignore the field (RFC 9110 §13.1.3, §13.1.4).
    Invalid,
}

impl DateField {
    /// Takes one line; a second line makes the field a list of dates, which is invalid too.
    fn push_line(&mut self, value: &[u8]) {
        *self = match self {
            Self::Absent => std::str::from_utf8(trim_ows(value))
                .ok()
                .and_then(|s| httpdate::parse_http_date(s).ok())
                .map_or(Self::Invalid, Self::Valid),
            Self::Valid(_) | Self::Invalid => Self::Invalid,
        };
    }

    /// The date, if the field was one valid HTTP-date.
    fn finish(self) -> Option<SystemTime> {
        match self {
            Self::Valid(date) => Some(date),
            Self::Absent | Self::Invalid => None,
        }
    }
}

/// What kind of request is evaluated: §13.2.2 treats GET/HEAD differently in step 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// GET or HEAD.
    Read,
    /// Any state-changing method.
    Write,
}

/// What is known about the target resource when preconditions are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceState<'a> {
    /// The resource has no current representation (404/410).
    Absent,
    /// The resource exists with these current validators (one per representation).
    Present {
        /// Current strong validators, one per representation.
        validators: &'a [EntityTag],
        /// The last modification date, if the upstream sent `Last-Modified`.
        last_modified: Option<SystemTime>,
    },
}

/// Why a precondition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `If-Match` lists tags, none of which strongly matches a current validator.
    StaleIfMatch,
    /// `If-Match` on a resource that does not exist.
    Absent,
    /// `If-Unmodified-Since` is older than the resource's last modification.
    ModifiedSince,
    /// `If-None-Match: *` on a write (create-only) while the resource exists.
    Exists,
    /// `If-None-Match` lists a tag that matches a current validator, on a write.
    NoneMatchMatched,
}

/// The outcome of evaluating preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Perform the method.
    Proceed,
    /// GET/HEAD only: respond 304 Not Modified.
    NotModified,
    /// The precondition failed: do not perform the method.
    Failed(Failure),
}

/// Evaluates `pre` against `state` in the order of RFC 9110 §13.2.2 (steps 1-4; range
/// requests are not evaluated). `If-Unmodified-Since` on a present resource without a known
/// last modification date is not evaluated (proceed).
pub fn evaluate(kind: RequestKind, state: &ResourceState<'_>, pre: &Preconditions) -> Decision {
    let (validators, last_modified) = match *state {
        ResourceState::Absent => (None, None),
        ResourceState::Present {
            validators,
            last_modified,
        } => (Some(validators), last_modified),
    };

    if let Some(condition) = &pre.if_match {
        // Step 1: strong comparison; `*` matches any current representation.
        let Some(validators) = validators else {
            return Decision::Failed(Failure::Absent);
        };
        let matched = match condition {
            TagCondition::Any => true,
            TagCondition::Tags(tags) => any_match(tags, validators, EntityTag::strong_eq),
        };
        if !matched {
            return Decision::Failed(Failure::StaleIfMatch);
        }
    } else if let Some(since) = pre.if_unmodified_since {
        // Step 2, only without If-Match.
        if validators.is_none() {
            // The RFC evaluates it only on an existing resource. A client that sends a date
            // expects the resource to exist, so fail closed, as If-Match does.
            return Decision::Failed(Failure::Absent);
        }
        if last_modified.is_some_and(|lm| whole_secs(lm) > whole_secs(since)) {
            return Decision::Failed(Failure::ModifiedSince);
        }
    }

    if let Some(condition) = &pre.if_none_match {
        // Step 3: weak comparison; `*` matches an existing resource.
        let matched = validators.is_some_and(|validators| match condition {
            TagCondition::Any => true,
            TagCondition::Tags(tags) => any_match(tags, validators, EntityTag::weak_eq),
        });
        if matched {
            return match (kind, condition) {
                (RequestKind::Read, _) => Decision::NotModified,
                (RequestKind::Write, TagCondition::Any) => Decision::Failed(Failure::Exists),
                (RequestKind::Write, TagCondition::Tags(_)) => {
                    Decision::Failed(Failure::NoneMatchMatched)
                }
            };
        }
    } else if let (RequestKind::Read, Some(since), Some(lm)) =
        (kind, pre.if_modified_since, last_modified)
    {
        // Step 4, only on reads without If-None-Match; ignored without a Last-Modified.
        if validators.is_some() && whole_secs(lm) <= whole_secs(since) {
            return Decision::NotModified;
        }
    }

    Decision::Proceed
}

/// Whether any listed tag matches any current validator under `eq`.
fn any_match(
    tags: &[EntityTag],
    validators: &[EntityTag],
    eq: fn(&EntityTag, &EntityTag) -> bool,
) -> bool {
    tags.iter()
        .any(|tag| validators.iter().any(|current| eq(tag, current)))
}

/// Seconds since the Unix epoch, rounded down: HTTP-dates have one-second resolution, so a
/// sub-second `Last-Modified` must not count as newer than the date the client saw.
fn whole_secs(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::from(after.as_secs()),
        Err(before) => {
            let before = before.duration();
            -i128::from(before.as_secs()) - i128::from(before.subsec_nanos() > 0)
        }
    }
}

#[cfg(test)]
mod tests;
