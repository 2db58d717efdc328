//! Field-level comparison and three-way merge of JSON documents, for the conflict response.
//!
//! When a write's `If-Match` is stale, three documents are in play: the version the client
//! edited (the *base*, named by its `If-Match`), the *current* version, and the client's own
//! document (*yours*). [`compare`] lists where each side changed the base, as JSON Pointers
//! (RFC 6901), and where both changed the same part differently (the conflicts); [`merge`]
//! applies the client's changes to the current version when no part conflicts, which is what
//! a client would do on a retry that re-applies its edit to a fresh read.
//!
//! The model, chosen so that it never invents a change:
//! - objects are compared member by member, recursively; arrays and scalars are whole values
//!   (an array's elements have no identity a merge could trust: an insert shifts them all);
//! - `null` is a value and an absent member is not one: `{"a": null}` and `{}` differ at `/a`;
//! - numbers compare by value: `1` and `1.0` are the same number ([`same`]);
//! - two changes overlap when one pointer is the other or holds it (`/a` and `/a/b`), and
//!   overlapping changes conflict even when both wrote the same value: two increments of one
//!   count both write the same number, and merging them would lose one.
//!
//! Pure: no I/O, no async.
//!
//! ```
//! use ifmatch::merge::{compare, merge};
//! use serde_json::json;
//! let base = json!({"name": "widget", "stock": 10, "price": 5});
//! let current = json!({"name": "widget", "stock": 9, "price": 5});
//! let yours = json!({"name": "widget", "stock": 10, "price": 6});
//! let (merged, _) = merge(&base, &current, &yours).unwrap();
//! assert_eq!(merged, json!({"name": "widget", "stock": 9, "price": 6}));
//!
//! let yours = json!({"name": "widget", "stock": 11, "price": 5});
//! let comparison = compare(&base, &current, &yours);
//! assert_eq!(comparison.conflicts[0].pointer.to_string(), "/stock");
//! assert!(merge(&base, &current, &yours).is_err());
//! ```

mod compare;
mod pointer;
#[cfg(test)]
mod tests;

pub use compare::{Comparison, Conflict, Refused, changes, compare, merge, same};
pub use pointer::Pointer;
