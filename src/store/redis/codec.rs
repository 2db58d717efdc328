//! How store values are written into a key's hash fields and read back: validators as
//! `<16 hex representation><opaque tag>` records, times as `secs.nanos`, generations as decimal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::etag::EntityTag;
use crate::store::{BoxError, KeyState, Representation, StoreError, Validator};

pub(super) fn malformed(script: &str) -> StoreError {
    let error: BoxError = format!("unexpected reply from the {script} script").into();
    StoreError::Unavailable(error)
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(super) fn encode_validator(validator: Option<&Validator>) -> (String, &str) {
    match validator {
        Some(v) => (format!("{:016x}", v.representation.0), v.tag.opaque()),
        None => (String::new(), ""),
    }
}

/// `secs.nanos` since the epoch; a time before it is dropped (no HTTP-date can say it).
pub(super) fn encode_time(time: Option<SystemTime>) -> String {
    time.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(String::new, |d| {
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        })
}

pub(super) fn decode_time(text: &str) -> Option<SystemTime> {
    let (secs, nanos) = text.split_once('.')?;
    let duration = Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    UNIX_EPOCH.checked_add(duration)
}

pub(super) fn decode_generation(text: &str) -> Result<u64, StoreError> {
    text.parse().map_err(|_| malformed("generation"))
}

pub(super) fn decode_state(
    s: &str,
    validators: &str,
    last_modified: &str,
) -> Result<KeyState, StoreError> {
    match s {
        "a" => Ok(KeyState::Absent),
        "p" => {
            let validators = validators
                .split_terminator('\n')
                .map(decode_validator)
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| malformed("validators"))?;
            Ok(KeyState::Present {
                validators,
                last_modified: decode_time(last_modified),
            })
        }
        _ => Ok(KeyState::Unknown),
    }
}

pub(super) fn decode_validator(record: &str) -> Option<Validator> {
    let representation = u64::from_str_radix(record.get(..16)?, 16).ok()?;
    let tag = EntityTag::strong(record.get(16..)?).ok()?;
    Some(Validator {
        tag,
        representation: Representation(representation),
    })
}
