//! JSON Pointers (RFC 6901): the path of a member or element inside a JSON document.

use std::fmt;

use serde_json::Value;

/// A JSON Pointer as its reference tokens, unescaped; the empty pointer is the whole document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// The pointer to the whole document.
    pub fn root() -> Self {
        Self::default()
    }

    /// This pointer with `token` appended.
    pub fn child(&self, token: &str) -> Self {
        let mut tokens = self.0.clone();
        tokens.push(token.to_owned());
        Self(tokens)
    }

    /// Its reference tokens, unescaped.
    pub fn tokens(&self) -> &[String] {
        &self.0
    }

    /// Whether `self` is `other` or one of its ancestors: changing one then touches the other.
    pub fn covers(&self, other: &Pointer) -> bool {
        other.0.starts_with(&self.0)
    }

    /// Whether changes at `self` and at `other` touch the same part of a document.
    pub fn overlaps(&self, other: &Pointer) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The value at this pointer in `doc`, if any. Only objects are walked: arrays are
    /// compared as whole values, so no pointer this module makes goes into one.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0
            .iter()
            .try_fold(doc, |value, token| value.as_object()?.get(token))
    }
}

/// The RFC 6901 string form: each token after a `/`, with `~` as `~0` and `/` as `~1`.
impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.0 {
            f.write_str("/")?;
            f.write_str(&token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

impl serde::Serialize for Pointer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
