//! Field-level comparison of JSON documents, and the three-way merge built on it.

use std::collections::BTreeSet;
use std::ops::Bound;

use serde_json::{Number, Value};

use super::pointer::Pointer;

/// The pointers at which `from` and `to` differ, in document order: each member added,
/// removed or changed, at the deepest object member where they differ. Arrays and scalars
/// are whole values (an array that gained an element is one change, at the array), and
/// `null` is a value (`{"a": null}` and `{}` differ at `/a`). Numbers compare by value
/// ([`same`]).
pub fn changes(from: &Value, to: &Value) -> Vec<Pointer> {
    let mut out = Vec::new();
    walk(Pointer::root(), Some(from), Some(to), &mut out);
    out
}

fn walk(at: Pointer, from: Option<&Value>, to: Option<&Value>, out: &mut Vec<Pointer>) {
    match (from, to) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                walk(at.child(name), a.get(name), b.get(name), out);
            }
        }
        (Some(a), Some(b)) if same(a, b) => {}
        (None, None) => {}
        _ => out.push(at),
    }
}

/// Whether two JSON values are the same value. Numbers compare by what they denote, not how
/// they are spelled: `1`, `1.0` and `1e0` are one number (RFC 8259 §6 gives JSON numbers no
/// type, and serializers differ: one writes `1.0` where another writes `1`), so re-encoding
/// a document never counts as a change. Integers beyond 2^53 compare exactly with each other.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(name, x)| y.get(name).is_some_and(|y| same(x, y)))
        }
        _ => a == b,
    }
}

fn same_number(x: &Number, y: &Number) -> bool {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        return x == y;
    }
    if x.is_f64() || y.is_f64() {
        return x.as_f64() == y.as_f64();
    }
    // Integers beyond 64 bits (kept as written: `arbitrary_precision`): JSON spells an
    // integer one way (no leading zeros, no `+`), so the same digits are the same number.
    x.to_string() == y.to_string()
}

/// A part of the document both sides changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    /// Where (the shorter of the two changes when one holds the other).
    pub pointer: Pointer,
    /// The value there in the version the client edited; absent: no such member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Value>,
    /// The value there now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Value>,
    /// The value there in the client's document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yours: Option<Value>,
}

/// The three-way comparison of the version a client edited (base), the current version, and
/// the client's document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// Parts changed on both sides (to the same value too: see [`compare`]).
    pub conflicts: Vec<Conflict>,
    /// Where the client's document differs from the base.
    pub your_changes: Vec<Pointer>,
    /// Where the current version differs from the base.
    pub their_changes: Vec<Pointer>,
}

/// Compares the client's document `yours` and the `current` version with the `base` both
/// started from. Two changes overlap when one pointer is the other or holds it (`/a` and
/// `/a/b`), and overlapping changes conflict, even when both sides wrote the same value
/// there: two clients that each added one to a count of 5 both send 6, and taking that as
/// agreement would acknowledge one increment and keep neither twice. Only the proxy's
/// byte-identical check (a body that *is* the current representation) treats sameness as done.
pub fn compare(base: &Value, current: &Value, yours: &Value) -> Comparison {
    let your_changes = changes(base, yours);
    let their_changes = changes(base, current);
    // Looked up, not scanned: a document's changes may number hundreds of thousands on each
    // side, and every pair would be compared. In pointer order a pointer's descendants follow
    // it directly, so the overlapping changes of one of mine are its ancestors (itself
    // included), then whether the next of theirs lies below it: the same list, in the same
    // order, as comparing every pair.
    let theirs: BTreeSet<&Pointer> = their_changes.iter().collect();
    let mut seen = BTreeSet::new();
    let mut conflicts = Vec::new();
    let mut conflict = |pointer: &Pointer| {
        if seen.insert(pointer.clone()) {
            conflicts.push(Conflict {
                pointer: pointer.clone(),
                base: pointer.get(base).cloned(),
                current: pointer.get(current).cloned(),
                yours: pointer.get(yours).cloned(),
            });
        }
    };
    for mine in &your_changes {
        let mut ancestor = Pointer::root();
        for token in mine.tokens() {
            if theirs.contains(&ancestor) {
                conflict(&ancestor);
            }
            ancestor = ancestor.child(token);
        }
        let below = theirs
            .range::<&Pointer, _>((Bound::Excluded(mine), Bound::Unbounded))
            .next()
            .is_some_and(|next| mine.covers(next));
        if theirs.contains(mine) || below {
            conflict(mine);
        }
    }
    Comparison {
        conflicts,
        your_changes,
        their_changes,
    }
}

/// Why a merge was refused: the comparison that shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused(pub Comparison);

/// The client's changes (from `base` to `yours`) applied to `current`, when they touch no
/// part of the document the intervening changes (from `base` to `current`) touched; with the
/// comparison that allowed it. Otherwise refused, with the conflicts.
pub fn merge(base: &Value, current: &Value, yours: &Value) -> Result<(Value, Comparison), Refused> {
    let comparison = compare(base, current, yours);
    if !comparison.conflicts.is_empty() {
        return Err(Refused(comparison));
    }
    let mut merged = current.clone();
    for pointer in &comparison.your_changes {
        if !apply(&mut merged, pointer, pointer.get(yours)) {
            return Err(Refused(comparison));
        }
    }
    Ok((merged, comparison))
}

/// Sets (or, with `None`, removes) the member at `pointer`; false when its parent is not an
/// object in `doc` (never for changes that passed [`compare`] without conflicts).
fn apply(doc: &mut Value, pointer: &Pointer, value: Option<&Value>) -> bool {
    let Some((last, parents)) = pointer.tokens().split_last() else {
        // The whole document.
        *doc = value.cloned().unwrap_or(Value::Null);
        return true;
    };
    let mut parent = doc;
    for token in parents {
        match parent
            .as_object_mut()
            .and_then(|object| object.get_mut(token))
        {
            Some(child) => parent = child,
            None => return false,
        }
    }
    let Some(object) = parent.as_object_mut() else {
        return false;
    };
    match value {
        Some(value) => {
            object.insert(last.clone(), value.clone());
        }
        None => {
            object.remove(last);
        }
    }
    true
}
