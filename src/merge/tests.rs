//! Table tests of the comparison, and a property test of the merge.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn pointers(list: &[Pointer]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[test]
fn pointers_escape_per_rfc_6901() {
    let pointer = Pointer::root().child("a/b").child("m~n").child("");
    assert_eq!(pointer.to_string(), "/a~1b/m~0n/");
    assert_eq!(Pointer::root().to_string(), "");
    let doc = json!({"a/b": {"m~n": {"": 1}}});
    assert_eq!(pointer.get(&doc), Some(&json!(1)));
}

#[test]
fn changes_table() {
    let cases: &[(Value, Value, &[&str])] = &[
        (json!({"a": 1}), json!({"a": 1}), &[]),
        (json!({"a": 1}), json!({"a": 2}), &["/a"]),
        // Nested objects: the deepest member that differs.
        (
            json!({"a": {"b": 1, "c": 1}}),
            json!({"a": {"b": 2, "c": 1}}),
            &["/a/b"],
        ),
        // Added and removed members.
        (json!({"a": 1}), json!({"a": 1, "b": 2}), &["/b"]),
        (json!({"a": 1, "b": 2}), json!({"a": 1}), &["/b"]),
        // Arrays are whole values.
        (json!({"a": [1, 2]}), json!({"a": [1, 2, 3]}), &["/a"]),
        (json!({"a": [{"x": 1}]}), json!({"a": [{"x": 2}]}), &["/a"]),
        (json!({"a": [1, 2]}), json!({"a": [1, 2]}), &[]),
        // null is a value, absent is not: they differ.
        (json!({"a": null}), json!({}), &["/a"]),
        (json!({}), json!({"a": null}), &["/a"]),
        (json!({"a": null}), json!({"a": null}), &[]),
        // Numbers compare by value, whatever their spelling.
        (
            json!({"a": 1}),
            serde_json::from_str(r#"{"a": 1.0}"#).unwrap(),
            &[],
        ),
        (
            json!({"a": 1}),
            serde_json::from_str(r#"{"a": 1e0}"#).unwrap(),
            &[],
        ),
        (json!({"a": 1}), json!({"a": 1.5}), &["/a"]),
        (json!({"a": -1}), json!({"a": u64::MAX}), &["/a"]),
        (json!({"a": u64::MAX}), json!({"a": u64::MAX - 1}), &["/a"]),
        // A type change at a member is a change of the member.
        (json!({"a": {"b": 1}}), json!({"a": 1}), &["/a"]),
        // A document that is not an object is one value.
        (json!([1]), json!([2]), &[""]),
        (json!({"a": 1}), json!("x"), &[""]),
        // Keys needing escapes.
        (json!({"a/b": 1}), json!({"a/b": 2}), &["/a~1b"]),
    ];
    for (from, to, want) in cases {
        assert_eq!(pointers(&changes(from, to)), *want, "{from} -> {to}");
    }
}

#[test]
fn compare_table() {
    struct Case {
        base: Value,
        current: Value,
        yours: Value,
        conflicts: &'static [&'static str],
        yours_changed: &'static [&'static str],
        theirs_changed: &'static [&'static str],
    }
    let cases = [
        // Disjoint fields.
        Case {
            base: json!({"a": 1, "b": 1}),
            current: json!({"a": 2, "b": 1}),
            yours: json!({"a": 1, "b": 2}),
            conflicts: &[],
            yours_changed: &["/b"],
            theirs_changed: &["/a"],
        },
        // The same field, differently.
        Case {
            base: json!({"a": 1}),
            current: json!({"a": 2}),
            yours: json!({"a": 3}),
            conflicts: &["/a"],
            yours_changed: &["/a"],
            theirs_changed: &["/a"],
        },
        // The same field, to the same value: still a conflict (two increments of 1 both
        // write 2; merging them would acknowledge both and keep one).
        Case {
            base: json!({"a": 1}),
            current: json!({"a": 2}),
            yours: json!({"a": 2.0}),
            conflicts: &["/a"],
            yours_changed: &["/a"],
            theirs_changed: &["/a"],
        },
        // A member and one inside it: the conflict is at the outer one.
        Case {
            base: json!({"a": {"b": 1}}),
            current: json!({"a": null}),
            yours: json!({"a": {"b": 2}}),
            conflicts: &["/a"],
            yours_changed: &["/a/b"],
            theirs_changed: &["/a"],
        },
        // Sibling members of one nested object do not conflict.
        Case {
            base: json!({"a": {"b": 1, "c": 1}}),
            current: json!({"a": {"b": 2, "c": 1}}),
            yours: json!({"a": {"b": 1, "c": 2}}),
            conflicts: &[],
            yours_changed: &["/a/c"],
            theirs_changed: &["/a/b"],
        },
        // Arrays are whole values: two different appends conflict.
        Case {
            base: json!({"tags": ["x"]}),
            current: json!({"tags": ["x", "y"]}),
            yours: json!({"tags": ["x", "z"]}),
            conflicts: &["/tags"],
            yours_changed: &["/tags"],
            theirs_changed: &["/tags"],
        },
        // Removed on one side, changed on the other.
        Case {
            base: json!({"a": 1}),
            current: json!({}),
            yours: json!({"a": 2}),
            conflicts: &["/a"],
            yours_changed: &["/a"],
            theirs_changed: &["/a"],
        },
        // Removed on both sides: a conflict too.
        Case {
            base: json!({"a": 1, "b": 1}),
            current: json!({"b": 1}),
            yours: json!({"b": 1}),
            conflicts: &["/a"],
            yours_changed: &["/a"],
            theirs_changed: &["/a"],
        },
        // null set on one side, absent on the other: they differ.
        Case {
            base: json!({"a": 1}),
            current: json!({"a": null}),
            yours: json!({}),
            conflicts: &["/a"],
            yours_changed: &["/a"],
            theirs_changed: &["/a"],
        },
    ];
    for case in cases {
        let comparison = compare(&case.base, &case.current, &case.yours);
        let conflicts: Vec<String> = comparison
            .conflicts
            .iter()
            .map(|c| c.pointer.to_string())
            .collect();
        let what = format!("{} / {} / {}", case.base, case.current, case.yours);
        assert_eq!(conflicts, case.conflicts, "{what}");
        assert_eq!(
            pointers(&comparison.your_changes),
            case.yours_changed,
            "{what}"
        );
        assert_eq!(
            pointers(&comparison.their_changes),
            case.theirs_changed,
            "{what}"
        );
        assert_eq!(
            merge(&case.base, &case.current, &case.yours).is_ok(),
            case.conflicts.is_empty(),
            "{what}"
        );
    }
}

#[test]
fn a_conflict_shows_all_three_values_and_omits_absent_ones() {
    let comparison = compare(&json!({"a": 1}), &json!({}), &json!({"a": 2}));
    let shown = serde_json::to_value(&comparison.conflicts).unwrap();
    assert_eq!(shown, json!([{"pointer": "/a", "base": 1, "yours": 2}]));
    let comparison = compare(&json!({"a": 1}), &json!({"a": null}), &json!({"a": 2}));
    let shown = serde_json::to_value(&comparison.conflicts).unwrap();
    assert_eq!(
        shown,
        json!([{"pointer": "/a", "base": 1, "current": null, "yours": 2}])
    );
}

#[test]
fn merge_applies_additions_removals_and_nested_changes() {
    let base = json!({"a": {"b": 1, "c": 1}, "d": 1, "e": 1});
    let current = json!({"a": {"b": 2, "c": 1}, "d": 1, "e": 1, "f": 1});
    let yours = json!({"a": {"b": 1, "c": 1, "g": 1}, "e": 1});
    let (merged, _) = merge(&base, &current, &yours).unwrap();
    assert_eq!(
        merged,
        json!({"a": {"b": 2, "c": 1, "g": 1}, "e": 1, "f": 1})
    );
    // Nothing changed by the client: the current version, as it is.
    let (merged, comparison) = merge(&base, &current, &base).unwrap();
    assert_eq!(merged, current);
    assert!(comparison.your_changes.is_empty());
}

/// Small JSON documents over few names, so that random edits often collide.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0i64..3).prop_map(Value::from),
        Just(json!(1.0)),
        prop::collection::vec(0i64..2, 0..3).prop_map(Value::from),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec!["a", "b", "c", "d"]);
    leaf().prop_recursive(3, 24, 4, move |inner| {
        prop::collection::btree_map(names.clone(), inner, 0..4).prop_map(|map| {
            Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
    })
}

/// `doc` with some of its members (at any depth) replaced, removed or added.
fn edited(doc: Value) -> impl Strategy<Value = Value> {
    let edits = prop::collection::vec(
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..3),
            prop::option::of(leaf()),
        ),
        0..3,
    );
    edits.prop_map(move |edits| {
        let mut doc = doc.clone();
        for (path, value) in edits {
            edit(&mut doc, &path, value);
        }
        doc
    })
}

fn edit(doc: &mut Value, path: &[&str], value: Option<Value>) {
    let Some(object) = doc.as_object_mut() else {
        return;
    };
    let (first, rest) = (path[0], &path[1..]);
    if rest.is_empty() {
        match value {
            Some(value) => object.insert(first.to_owned(), value),
            None => object.remove(first),
        };
    } else if let Some(child) = object.get_mut(first) {
        edit(child, rest, value);
    }
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "d"]),
        document(),
        0..4,
    )
    .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn three() -> impl Strategy<Value = (Value, Value, Value)> {
    object().prop_flat_map(|base| (Just(base.clone()), edited(base.clone()), edited(base)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Disjoint change sets merge into a document holding both; overlapping ones are refused,
    /// even when both sides wrote the same value.
    #[test]
    fn merge_keeps_both_sides_or_refuses((base, current, yours) in three()) {
        let mine = changes(&base, &yours);
        let theirs = changes(&base, &current);
        let disjoint = mine.iter().all(|m| theirs.iter().all(|t| !m.overlaps(t)));
        match merge(&base, &current, &yours) {
            Ok((merged, _)) => {
                prop_assert!(disjoint, "overlapping changes merged: {mine:?} / {theirs:?}");
                for pointer in &mine {
                    let (got, want) = (pointer.get(&merged), pointer.get(&yours));
                    prop_assert!(got.zip(want).is_some_and(|(g, w)| same(g, w)) || (got.is_none() && want.is_none()),
                        "your change at {pointer} is lost: {merged}");
                }
                for pointer in &theirs {
                    let (got, want) = (pointer.get(&merged), pointer.get(&current));
                    prop_assert!(got.zip(want).is_some_and(|(g, w)| same(g, w)) || (got.is_none() && want.is_none()),
                        "their change at {pointer} is lost: {merged}");
                }
                // Nothing else moved: every difference from the current version is yours.
                for pointer in changes(&current, &merged) {
                    prop_assert!(mine.iter().any(|m| m.overlaps(&pointer)), "stray change at {pointer}");
                }
            }
            Err(Refused(comparison)) => {
                prop_assert!(!disjoint, "disjoint changes refused: {mine:?} / {theirs:?}");
                prop_assert!(!comparison.conflicts.is_empty());
            }
        }
        if disjoint {
            prop_assert!(merge(&base, &current, &yours).is_ok());
        }
    }
}

#[test]
fn comparing_wide_documents_takes_time_linear_in_their_size() {
    // Every member changed on one side or the other, none on both: a document a client may
    // send (bounded by `max_hash_bytes`, 8 MiB by default, far wider than this).
    let n = 30_000;
    let wide = |mine: i64, theirs: i64| -> Value {
        let mut object = serde_json::Map::new();
        for i in 0..n {
            object.insert(format!("m{i}"), json!(mine));
            object.insert(format!("t{i}"), json!(theirs));
        }
        Value::Object(object)
    };
    let (base, current, yours) = (wide(0, 0), wide(0, 1), wide(1, 0));
    let started = std::time::Instant::now();
    let comparison = compare(&base, &current, &yours);
    assert!(comparison.conflicts.is_empty());
    assert_eq!(comparison.your_changes.len(), n);
    assert_eq!(comparison.their_changes.len(), n);
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(3),
        "a three-way comparison of {n} x {n} changes took {elapsed:?}"
    );
}
