//! The idempotency records: what the proxy holds per `Idempotency-Key`, beside (and apart from)
//! the validator store, with the same two backends.
//!
//! Per record key (route, key headers, key: see [`crate::idempotency::record_key`]) a store holds
//! nothing, an **in-flight** claim (the fingerprint of the request that took the key, and the
//! claim's token), or a **completed** record (the fingerprint and the response, or the mark that
//! it cannot be replayed). The contract:
//!
//! - [`IdempotencyStore::begin`] takes the key atomically when nothing is held, with an expiry
//!   (`hold`) so that a crashed replica never blocks a key for good; else it returns what is
//!   held. Two requests never both take a key: across replicas sharing Redis, one script.
//! - [`IdempotencyStore::record`] turns the claim into a record kept for `retention`, and
//!   [`IdempotencyStore::release`] gives the key back; both only while the claim is still the
//!   one held (its token): a claim that expired and was taken again is never overwritten.
//! - A claim is never released by being dropped: a request whose outcome is unknown keeps the
//!   key until its expiry, so that a retry cannot run beside it.
//!
//! The memory store is bounded by count and bytes (oldest records go first; claims in flight are
//! never evicted, and a take finds no room only when every slot is a live claim). Records do not
//! survive a restart of the process; on Redis they do, and replicas share them.

mod any;
mod memory;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

pub use any::AnyRecords;
pub use memory::{MemoryRecords, MemoryRecordsConfig};

use super::StoreError;
use crate::idempotency::Fingerprint;
use crate::key::ResourceKey;

/// A recorded response, replayed byte for byte: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The end-to-end headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

impl StoredResponse {
    /// Bytes it takes: body, header names and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 2)
                .sum::<usize>()
    }
}

/// What a completed request left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The first request's fingerprint.
    pub fingerprint: Fingerprint,
    /// Its response; `None` when it could not be recorded (too large, or its body failed).
    pub response: Option<StoredResponse>,
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A request with this fingerprint took the key and has no outcome yet.
    InFlight(Fingerprint),
    /// A request completed.
    Done(Recorded),
}

/// Proof of having taken a key: only its holder may record or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The record key.
    pub key: ResourceKey,
    /// This take's token (unique per take).
    pub token: String,
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Began {
    /// Nothing was held: the key is ours.
    Taken(Claim),
    /// Something was.
    Held(Held),
}

/// Counters of a store that keeps them (the memory store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Keys held (claims and records).
    pub records: u64,
    /// Bytes they take, as counted against the bound.
    pub bytes: u64,
    /// Records evicted to make room.
    pub evictions: u64,
}

/// The idempotency record store, shared by the embedded and the networked backends.
pub trait IdempotencyStore: Clone + Send + Sync + 'static {
    /// Takes `key` for a request with `fingerprint` if nothing is held, until `hold` passes;
    /// else what is held.
    fn begin(
        &self,
        key: ResourceKey,
        fingerprint: Fingerprint,
        hold: Duration,
    ) -> impl Future<Output = Result<Began, StoreError>> + Send;

    /// Records the response of the request that holds `claim`, kept for `retention`. Whether it
    /// was recorded (not if the claim expired meanwhile).
    fn record(
        &self,
        claim: &Claim,
        recorded: Recorded,
        retention: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the key back, if `claim` still holds it. Whether it did.
    fn release(&self, claim: &Claim) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// What `key` holds now (for the admin API).
    fn lookup(
        &self,
        key: ResourceKey,
    ) -> impl Future<Output = Result<Option<Held>, StoreError>> + Send;

    /// Counters, if the store keeps them.
    fn stats(&self) -> Option<RecordStats> {
        None
    }
}

/// Headers as one byte string, `name:value\n` each (a name holds no `:`, a value no `\n`).
pub(crate) fn encode_headers(headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The inverse of [`encode_headers`]; `None` if the bytes are not such a list.
pub(crate) fn decode_headers(bytes: &[u8]) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let at = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..at]).ok()?;
        let value = HeaderValue::from_bytes(&line[at + 1..]).ok()?;
        headers.push((name, value));
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let headers = vec![
            (
                HeaderName::from_static("location"),
                HeaderValue::from_static("/items/7"),
            ),
            (
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("a:b, c"),
            ),
            (
                HeaderName::from_static("x-empty"),
                HeaderValue::from_static(""),
            ),
        ];
        let encoded = encode_headers(&headers);
        assert_eq!(decode_headers(&encoded), Some(headers));
        assert_eq!(decode_headers(b"no colon\n"), None);
        assert_eq!(decode_headers(b""), Some(Vec::new()));
    }
}
