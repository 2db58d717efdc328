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

use crate::etag::{EntityTag, EtagError};

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
    #[error("malformed {field:?}: {source}")]
    Tag {
        /// Which header.
        field: Field,
        /// What is wrong with the tag.
        #[source]
        source: EtagError,
    },
    /// The field has no members (empty value, or only commas).
    #[error("empty {0:?}")]
    Empty(Field),
    /// `*` appears together with entity-tags, or more than once.
    #[error("{0:?} mixes * with entity-tags")]
    MixedWildcard(Field),
    /// A date field is not a valid HTTP-date, or appears more than once.
    #[error("{0:?} is not a single valid HTTP-date")]
    Date(Field),
}

impl Preconditions {
    /// Parses field lines in any order; lines of the same list field are combined.
    pub fn parse<'a>(
        fields: impl IntoIterator<Item = (Field, &'a [u8])>,
    ) -> Result<Self, PreconditionError> {
        todo!()
    }

    /// Whether no precondition is present at all.
    pub fn is_empty(&self) -> bool {
        todo!()
    }

    /// Whether the request carries a precondition that makes a write safe to require
    /// (`If-Match`, `If-Unmodified-Since`, or the create-only `If-None-Match: *`).
    pub fn guards_write(&self) -> bool {
        todo!()
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
    todo!()
}
