//! The stormed resource's representation: a JSON object with an integer counter field.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::StormError;

/// A resource's JSON object and the value of its counter field.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    object: Map<String, Value>,
    counter: i64,
}

/// Why a body is not a document storm can increment.
#[derive(Debug)]
pub(crate) enum BodyError {
    NotJson(serde_json::Error),
    NotAnObject,
    MissingField,
    NotAnInteger(Value),
}

impl BodyError {
    pub(crate) fn into_error(self, url: String, field: &str) -> StormError {
        let field = field.to_owned();
        match self {
            BodyError::NotJson(source) => StormError::NotJson { url, source },
            BodyError::NotAnObject => StormError::NotAnObject { url },
            BodyError::MissingField => StormError::MissingField { url, field },
            BodyError::NotAnInteger(value) => StormError::NotAnInteger {
                url,
                field,
                value: value.to_string(),
            },
        }
    }
}

impl Document {
    pub(crate) fn parse(body: &[u8], field: &str) -> Result<Self, BodyError> {
        let Value::Object(object) = serde_json::from_slice(body).map_err(BodyError::NotJson)?
        else {
            return Err(BodyError::NotAnObject);
        };
        let value = object.get(field).ok_or(BodyError::MissingField)?;
        let counter = value
            .as_i64()
            .ok_or_else(|| BodyError::NotAnInteger(value.clone()))?;
        Ok(Self { object, counter })
    }

    /// A fresh resource: `{"id": id, field: 0, ...}` (each of `fields` at 0), or without the
    /// `id` for the target to name.
    pub(crate) fn initial(id: Option<&str>, fields: &[String]) -> Bytes {
        let mut object = Map::new();
        if let Some(id) = id {
            object.insert("id".to_owned(), Value::from(id));
        }
        for field in fields {
            object.insert(field.clone(), Value::from(0));
        }
        Bytes::from(Value::Object(object).to_string())
    }

    /// The `id` of a created resource's JSON body (a string or an integer), as a path segment.
    pub(crate) fn id_of(body: &[u8]) -> Option<String> {
        let Value::Object(object) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        let id = match object.get("id")? {
            Value::String(id) => id.clone(),
            Value::Number(id) if id.is_u64() || id.is_i64() => id.to_string(),
            _ => return None,
        };
        (!id.is_empty() && !id.contains(['/', '?', '#'])).then_some(id)
    }

    pub(crate) fn counter(&self) -> i64 {
        self.counter
    }

    /// The same object with the counter one higher; `None` if it would overflow.
    pub(crate) fn incremented(mut self, field: &str) -> Option<Bytes> {
        let next = self.counter.checked_add(1)?;
        self.object.insert(field.to_owned(), Value::from(next));
        Some(Bytes::from(Value::Object(self.object).to_string()))
    }
}
