//! Table tests of the parsers and of `evaluate` (RFC 9110 §13.1, §13.2.2).

use std::time::Duration;

use super::*;

fn strong(s: &str) -> EntityTag {
    EntityTag::strong(s).unwrap()
}

fn weak(s: &str) -> EntityTag {
    EntityTag::weak(s).unwrap()
}

fn tags(list: &[EntityTag]) -> Option<TagCondition> {
    Some(TagCondition::Tags(list.to_vec()))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Field lines of one request, as they come off the wire.
type Lines<'a> = &'a [(Field, &'a [u8])];

/// 1994-11-06T08:49:37Z, the RFC's example date.
const T: u64 = 784_111_777;
const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

#[test]
fn parse_lists() {
    use Field::*;
    let cases: &[(Lines<'_>, Option<TagCondition>)] = &[
        (&[(IfMatch, b"\"xyzzy\"")], tags(&[strong("xyzzy")])),
        (&[(IfMatch, b"*")], Some(TagCondition::Any)),
        (&[(IfMatch, b"  *\t")], Some(TagCondition::Any)),
        (&[(IfMatch, b"W/\"xyzzy\"")], tags(&[weak("xyzzy")])),
        (&[(IfMatch, b"\"\"")], tags(&[strong("")])),
        (
            &[(IfMatch, b"\"xyzzy\", \"r2d2xxxx\", \"c3piozzzz\"")],
            tags(&[strong("xyzzy"), strong("r2d2xxxx"), strong("c3piozzzz")]),
        ),
        (
            &[(IfMatch, b"\"a\",W/\"b\"")],
            tags(&[strong("a"), weak("b")]),
        ),
        // Commas inside a quoted opaque-tag are part of it.
        (&[(IfMatch, b"\"a,b\"")], tags(&[strong("a,b")])),
        (
            &[(IfMatch, b"\"a,b\", W/\",\"")],
            tags(&[strong("a,b"), weak(",")]),
        ),
        // Empty list elements and OWS are skipped (RFC 9110 §5.6.1).
        (
            &[(IfMatch, b"\"a\", , \"b\"")],
            tags(&[strong("a"), strong("b")]),
        ),
        (
            &[(IfMatch, b", \"a\" ,,\t,\"b\",")],
            tags(&[strong("a"), strong("b")]),
        ),
        (&[(IfMatch, b" , * , ")], Some(TagCondition::Any)),
        // Several lines of one field are one list, in order.
        (
            &[(IfMatch, b"\"a\""), (IfMatch, b"\"b\", \"c\"")],
            tags(&[strong("a"), strong("b"), strong("c")]),
        ),
        // An empty line is fine when another line has members.
        (&[(IfMatch, b""), (IfMatch, b"\"a\"")], tags(&[strong("a")])),
        (&[(IfMatch, b"*"), (IfMatch, b",")], Some(TagCondition::Any)),
        // Duplicates are harmless.
        (
            &[(IfMatch, b"\"a\", \"a\"")],
            tags(&[strong("a"), strong("a")]),
        ),
    ];
    for (lines, want) in cases {
        let got = Preconditions::parse(lines.iter().copied()).unwrap();
        assert_eq!(&got.if_match, want, "{lines:?}");
        assert_eq!(got.if_none_match, None);
        // The same value parses the same way as If-None-Match.
        let inm = lines.iter().map(|&(_, v)| (IfNoneMatch, v));
        let got = Preconditions::parse(inm).unwrap();
        assert_eq!(&got.if_none_match, want, "{lines:?}");
        assert_eq!(got.if_match, None);
    }
}

#[test]
fn parse_list_errors() {
    use EtagError as E;
    use PreconditionError::*;
    let tag = |source| Tag {
        field: Field::IfMatch,
        source,
    };
    let cases: &[(&[&[u8]], PreconditionError)] = &[
        // No members at all.
        (&[b""], Empty(Field::IfMatch)),
        (&[b"   "], Empty(Field::IfMatch)),
        (&[b","], Empty(Field::IfMatch)),
        (&[b" , ,\t, "], Empty(Field::IfMatch)),
        (&[b"", b","], Empty(Field::IfMatch)),
        // `*` must stand alone, once, across all lines.
        (&[b"*, \"a\""], MixedWildcard(Field::IfMatch)),
        (&[b"\"a\", *"], MixedWildcard(Field::IfMatch)),
        (&[b"*, *"], MixedWildcard(Field::IfMatch)),
        (&[b"*", b"*"], MixedWildcard(Field::IfMatch)),
        (&[b"*", b"\"a\""], MixedWildcard(Field::IfMatch)),
        (&[b"W/\"a\"", b"*"], MixedWildcard(Field::IfMatch)),
        // Bad members.
        (&[b"xyzzy"], tag(E::Unquoted)),
        (&[b"\"a\", b"], tag(E::Unquoted)),
        (&[b"w/\"a\""], tag(E::Unquoted)),
        (&[b"**"], tag(E::Unquoted)),
        (&[b"\"*"], tag(E::Unquoted)),
        (&[b"\"a"], tag(E::Unquoted)),
        (&[b"\"a, \"b\""], tag(E::InvalidChar)),
        (&[b"\"a\" \"b\""], tag(E::Trailing)),
        (&[b"\"a\"x, \"b\""], tag(E::Trailing)),
        (&[b"\"a\";q=1"], tag(E::Trailing)),
        (&[b"\"a b\""], tag(E::InvalidChar)),
        (&[b"\"a\x01\""], tag(E::InvalidChar)),
        (&[b"\"a\x7f\""], tag(E::InvalidChar)),
        (&[b"\"\xff\""], tag(E::InvalidChar)),
        (&[b"\"a\"", b"nope"], tag(E::Unquoted)),
        // A bad member is reported even next to `*`.
        (&[b"*, nope"], tag(E::Unquoted)),
    ];
    for (lines, want) in cases {
        let got = Preconditions::parse(lines.iter().map(|&v| (Field::IfMatch, v)));
        assert_eq!(got.as_ref(), Err(want), "{lines:?}");
        // If-None-Match reports its own field.
        let got = Preconditions::parse(lines.iter().map(|&v| (Field::IfNoneMatch, v)));
        let want = match want.clone() {
            Tag { source, .. } => Tag {
                field: Field::IfNoneMatch,
                source,
            },
            Empty(_) => Empty(Field::IfNoneMatch),
            MixedWildcard(_) => MixedWildcard(Field::IfNoneMatch),
        };
        assert_eq!(got, Err(want), "{lines:?}");
    }
}

#[test]
fn parse_dates() {
    for field in [Field::IfModifiedSince, Field::IfUnmodifiedSince] {
        let ok: &[&[u8]] = &[
            DATE,
            b"  Sun, 06 Nov 1994 08:49:37 GMT\t",
            // The obsolete formats a recipient must accept (RFC 9110 §5.6.7).
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ];
        for value in ok {
            let pre = Preconditions::parse([(field, *value)]).unwrap();
            let got = match field {
                Field::IfModifiedSince => pre.if_modified_since,
                _ => pre.if_unmodified_since,
            };
            assert_eq!(got, Some(at(T)), "{:?}", String::from_utf8_lossy(value));
        }
        let bad: &[&[&[u8]]] = &[
            &[b""],
            &[b"   "],
            &[b"yesterday"],
            &[b"784111777"],
            &[b"Sun, 06 Nov 1994 08:49:37"],
            &[b"Sun, 06 Nov 1994 25:49:37 GMT"],
            &[b"Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT"],
            &[b"Sun, 06 Nov 1994 08:49:37 GMT garbage"],
            &[b"\xff"],
            // More than one line, even if each is valid.
            &[DATE, DATE],
            &[DATE, b""],
        ];
        // RFC 9110 §13.1.3, §13.1.4: a recipient MUST ignore an invalid date.
        for lines in bad {
            let got = Preconditions::parse(lines.iter().map(|&v| (field, v)));
            assert_eq!(got, Ok(Preconditions::default()), "{lines:?}");
        }
    }
}

/// Ignoring an invalid date drops that field only; malformed tag lists still fail.
#[test]
fn an_invalid_date_is_ignored_beside_other_fields() {
    let pre = Preconditions::parse([
        (Field::IfUnmodifiedSince, &b"yesterday"[..]),
        (Field::IfMatch, b"\"a\""),
        (Field::IfModifiedSince, b"tomorrow"),
    ])
    .unwrap();
    assert_eq!(pre, if_match(list(&[strong("a")])));
    let got = Preconditions::parse([
        (Field::IfUnmodifiedSince, &b"yesterday"[..]),
        (Field::IfMatch, b"nope"),
    ]);
    assert!(
        matches!(
            got,
            Err(PreconditionError::Tag {
                field: Field::IfMatch,
                ..
            })
        ),
        "{got:?}"
    );
}

#[test]
fn parse_all_fields_in_any_order() {
    let lines: [(Field, &[u8]); 5] = [
        (Field::IfUnmodifiedSince, DATE),
        (Field::IfNoneMatch, b"W/\"n\""),
        (Field::IfMatch, b"\"m1\""),
        (Field::IfModifiedSince, DATE),
        (Field::IfMatch, b"\"m2\""),
    ];
    let want = Preconditions {
        if_match: tags(&[strong("m1"), strong("m2")]),
        if_none_match: tags(&[weak("n")]),
        if_modified_since: Some(at(T)),
        if_unmodified_since: Some(at(T)),
    };
    assert_eq!(Preconditions::parse(lines), Ok(want.clone()));
    let mut reversed = lines;
    reversed.reverse();
    let got = Preconditions::parse(reversed).unwrap();
    assert_eq!(got.if_match, tags(&[strong("m2"), strong("m1")]));
    assert_eq!(got.if_none_match, want.if_none_match);
    assert_eq!(got.if_modified_since, want.if_modified_since);
    assert_eq!(got.if_unmodified_since, want.if_unmodified_since);
}

#[test]
fn parse_nothing() {
    let pre = Preconditions::parse([]).unwrap();
    assert_eq!(pre, Preconditions::default());
    assert!(pre.is_empty());
    assert!(!pre.guards_write());
}

#[test]
fn is_empty_and_guards_write() {
    let cases: &[(Lines<'_>, bool, bool)] = &[
        (&[], true, false),
        (&[(Field::IfMatch, b"\"a\"")], false, true),
        (&[(Field::IfMatch, b"*")], false, true),
        (&[(Field::IfMatch, b"W/\"a\"")], false, true),
        (&[(Field::IfUnmodifiedSince, DATE)], false, true),
        (&[(Field::IfNoneMatch, b"*")], false, true),
        (&[(Field::IfNoneMatch, b"\"a\"")], false, false),
        (&[(Field::IfModifiedSince, DATE)], false, false),
        // An invalid date is ignored: it neither counts as present nor guards a write.
        (&[(Field::IfUnmodifiedSince, b"yesterday")], true, false),
        (&[(Field::IfModifiedSince, b"yesterday")], true, false),
        (
            &[
                (Field::IfUnmodifiedSince, DATE),
                (Field::IfUnmodifiedSince, DATE),
            ],
            true,
            false,
        ),
        (
            &[
                (Field::IfNoneMatch, b"\"a\""),
                (Field::IfModifiedSince, DATE),
            ],
            false,
            false,
        ),
    ];
    for (lines, empty, guards) in cases {
        let pre = Preconditions::parse(lines.iter().copied()).unwrap();
        assert_eq!(pre.is_empty(), *empty, "{lines:?}");
        assert_eq!(pre.guards_write(), *guards, "{lines:?}");
    }
}

fn pre() -> Preconditions {
    Preconditions::default()
}

fn if_match(c: TagCondition) -> Preconditions {
    Preconditions {
        if_match: Some(c),
        ..pre()
    }
}

fn if_none_match(c: TagCondition) -> Preconditions {
    Preconditions {
        if_none_match: Some(c),
        ..pre()
    }
}

fn ius(t: SystemTime) -> Preconditions {
    Preconditions {
        if_unmodified_since: Some(t),
        ..pre()
    }
}

fn ims(t: SystemTime) -> Preconditions {
    Preconditions {
        if_modified_since: Some(t),
        ..pre()
    }
}

/// Combines two precondition sets (each sets different fields).
fn and(a: Preconditions, b: Preconditions) -> Preconditions {
    Preconditions {
        if_match: a.if_match.or(b.if_match),
        if_none_match: a.if_none_match.or(b.if_none_match),
        if_modified_since: a.if_modified_since.or(b.if_modified_since),
        if_unmodified_since: a.if_unmodified_since.or(b.if_unmodified_since),
    }
}

fn list(tags: &[EntityTag]) -> TagCondition {
    TagCondition::Tags(tags.to_vec())
}

/// RFC 9110 §13.2.2 steps 1-4, every branch, for reads and writes.
#[test]
fn evaluate_table() {
    use Decision::{Failed, NotModified, Proceed};
    use Failure::*;
    use TagCondition::Any;

    // Two current representations, both strong; a weak one; none.
    let reps = [strong("json"), strong("xml")];
    let weak_rep = [weak("w")];
    let lm = Some(at(T));
    let just_after = Some(at(T) + Duration::from_millis(999));
    let before_epoch = Some(SystemTime::UNIX_EPOCH - Duration::from_millis(1));
    let present = |validators, last_modified| ResourceState::Present {
        validators,
        last_modified,
    };
    let two = present(&reps, None);
    let two_lm = present(&reps, lm);
    let empty = present(&[], None);
    let weak_only = present(&weak_rep, None);
    let gone = ResourceState::Absent;

    // (name, preconditions, state, read, write)
    #[rustfmt::skip]
    let cases = [
        ("none, present", pre(), two_lm, Proceed, Proceed),
        ("none, absent", pre(), gone, Proceed, Proceed),
        // Step 1: If-Match.
        ("im *, present", if_match(Any), two, Proceed, Proceed),
        ("im *, present without validators", if_match(Any), empty, Proceed, Proceed),
        ("im *, absent", if_match(Any), gone, Failed(Absent), Failed(Absent)),
        ("im tag, absent", if_match(list(&[strong("json")])), gone, Failed(Absent), Failed(Absent)),
        ("im first rep", if_match(list(&[strong("json")])), two, Proceed, Proceed),
        ("im second rep", if_match(list(&[strong("xml")])), two, Proceed, Proceed),
        ("im stale", if_match(list(&[strong("old")])), two, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        ("im list, one matches", if_match(list(&[strong("old"), strong("xml")])), two, Proceed, Proceed),
        ("im list, none matches", if_match(list(&[strong("old"), strong("v0")])), two, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        ("im weak never matches", if_match(list(&[weak("json")])), two, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        ("im weak and strong", if_match(list(&[weak("json"), strong("json")])), two, Proceed, Proceed),
        ("im tag, no validators", if_match(list(&[strong("json")])), empty, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        ("im tag vs weak validator", if_match(list(&[strong("w")])), weak_only, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        // Step 1 settles it: If-Unmodified-Since is not evaluated with If-Match.
        ("im ok, ius stale", and(if_match(list(&[strong("json")])), ius(at(T - 10))), two_lm, Proceed, Proceed),
        ("im stale, ius ok", and(if_match(list(&[strong("old")])), ius(at(T + 10))), two_lm, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        // Step 2: If-Unmodified-Since, at second granularity.
        ("ius equal", ius(at(T)), two_lm, Proceed, Proceed),
        ("ius later", ius(at(T + 1)), two_lm, Proceed, Proceed),
        ("ius earlier", ius(at(T - 1)), two_lm, Failed(ModifiedSince), Failed(ModifiedSince)),
        ("ius, lm has sub-second part", ius(at(T)), present(&reps, just_after), Proceed, Proceed),
        ("ius, lm a second later", ius(at(T)), present(&reps, Some(at(T + 1))), Failed(ModifiedSince), Failed(ModifiedSince)),
        ("ius, lm before epoch", ius(at(0)), present(&reps, before_epoch), Proceed, Proceed),
        ("ius, no last-modified", ius(at(T)), two, Proceed, Proceed),
        ("ius, absent", ius(at(T)), gone, Failed(Absent), Failed(Absent)),
        // Step 3: If-None-Match.
        ("inm *, present", if_none_match(Any), two, NotModified, Failed(Exists)),
        ("inm *, present without validators", if_none_match(Any), empty, NotModified, Failed(Exists)),
        ("inm *, absent", if_none_match(Any), gone, Proceed, Proceed),
        ("inm tag, absent", if_none_match(list(&[strong("json")])), gone, Proceed, Proceed),
        ("inm strong match", if_none_match(list(&[strong("xml")])), two, NotModified, Failed(NoneMatchMatched)),
        ("inm weak matches strong", if_none_match(list(&[weak("json")])), two, NotModified, Failed(NoneMatchMatched)),
        ("inm strong matches weak", if_none_match(list(&[strong("w")])), weak_only, NotModified, Failed(NoneMatchMatched)),
        ("inm no match", if_none_match(list(&[strong("old"), weak("v0")])), two, Proceed, Proceed),
        ("inm list, one matches", if_none_match(list(&[strong("old"), weak("xml")])), two, NotModified, Failed(NoneMatchMatched)),
        ("inm tag, no validators", if_none_match(list(&[strong("json")])), empty, Proceed, Proceed),
        // Steps 1 or 2 pass, then step 3 decides.
        ("im ok, inm matches", and(if_match(list(&[strong("json")])), if_none_match(list(&[strong("json")]))), two, NotModified, Failed(NoneMatchMatched)),
        ("im ok, inm no match", and(if_match(list(&[strong("json")])), if_none_match(list(&[strong("old")]))), two, Proceed, Proceed),
        ("ius ok, inm *", and(ius(at(T)), if_none_match(Any)), two_lm, NotModified, Failed(Exists)),
        // Step 4: If-Modified-Since, reads only, at second granularity.
        ("ims equal", ims(at(T)), two_lm, NotModified, Proceed),
        ("ims later", ims(at(T + 1)), two_lm, NotModified, Proceed),
        ("ims earlier", ims(at(T - 1)), two_lm, Proceed, Proceed),
        ("ims, lm has sub-second part", ims(at(T)), present(&reps, just_after), NotModified, Proceed),
        ("ims, lm a second later", ims(at(T)), present(&reps, Some(at(T + 1))), Proceed, Proceed),
        ("ims, lm before epoch", ims(at(0)), present(&reps, before_epoch), NotModified, Proceed),
        ("ims, no last-modified", ims(at(T)), two, Proceed, Proceed),
        ("ims, absent", ims(at(T)), gone, Proceed, Proceed),
        // With If-None-Match, If-Modified-Since is not evaluated.
        ("inm no match, ims fresh", and(if_none_match(list(&[strong("old")])), ims(at(T))), two_lm, Proceed, Proceed),
        ("inm match, ims stale", and(if_none_match(list(&[strong("json")])), ims(at(T - 1))), two_lm, NotModified, Failed(NoneMatchMatched)),
        // Earlier steps fail before If-Modified-Since is looked at.
        ("im stale, ims fresh", and(if_match(list(&[strong("old")])), ims(at(T))), two_lm, Failed(StaleIfMatch), Failed(StaleIfMatch)),
        ("ius stale, ims fresh", and(ius(at(T - 1)), ims(at(T))), two_lm, Failed(ModifiedSince), Failed(ModifiedSince)),
    ];
    for (name, pre, state, read, write) in cases {
        assert_eq!(
            evaluate(RequestKind::Read, &state, &pre),
            read,
            "read: {name}"
        );
        assert_eq!(
            evaluate(RequestKind::Write, &state, &pre),
            write,
            "write: {name}"
        );
    }
}

/// Parsing and evaluation together, from wire bytes.
#[test]
fn parse_then_evaluate() {
    let current = [strong("a,b")];
    let state = ResourceState::Present {
        validators: &current,
        last_modified: None,
    };
    let pre = Preconditions::parse([(Field::IfMatch, &b"\"x\", \"a,b\""[..])]).unwrap();
    assert_eq!(
        evaluate(RequestKind::Write, &state, &pre),
        Decision::Proceed
    );
    let pre = Preconditions::parse([(Field::IfMatch, &b"\"a\", \"b\""[..])]).unwrap();
    assert_eq!(
        evaluate(RequestKind::Write, &state, &pre),
        Decision::Failed(Failure::StaleIfMatch)
    );
}
