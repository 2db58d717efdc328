//! The idempotency records on Redis/Valkey, so that replicas share them and they survive a
//! restart of the proxy.
//!
//! The records share the validator store's connection, key prefix and timeout. Each record key
//! is **one hash**, `<prefix>idem:<hex key>`, apart from the validator hashes;
//! every operation is one Lua script on it (atomic, one round trip). Fields: `s` (`f` in
//! flight, `d` done), `f` (fingerprint, hex), `t` (the claim's token, while in flight), `r`
//! (`1` when the response was recorded), `c`, `h`, `b` (status, headers as
//! `name:value\n` lines, body). Expiry is the hash's own (`PEXPIRE`): the claim's hold while in
//! flight, the retention once done; Redis drops it, so no clock is compared and replicas'
//! clocks do not matter. Record and release check the token: a claim that expired and was
//! taken again by another replica is never overwritten or released by the first.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use redis::Script;

use super::codec::{malformed, millis};
use super::connection::Connection;
use super::{RedisStore, bounded};
use crate::idempotency::Fingerprint;
use crate::key::ResourceKey;
use crate::store::StoreError;
use crate::store::idempotency::{
    Began, Claim, Held, IdempotencyStore, Recorded, StoredResponse, decode_headers, encode_headers,
};

/// What a held key's hash says, shared by `begin` and `lookup`: `{'f', fingerprint}` in
/// flight, `{'d', fingerprint, replayable, status, headers, body}` done, `{}` nothing.
const HELD: &str = r#"
local k = KEYS[1]
local function held()
  local s = redis.call('HGET', k, 's')
  if not s then return nil end
  local f = redis.call('HGET', k, 'f') or ''
  if s == 'f' then return {'f', f} end
  return {'d', f, redis.call('HGET', k, 'r') or '0', redis.call('HGET', k, 'c') or '',
    redis.call('HGET', k, 'h') or '', redis.call('HGET', k, 'b') or ''}
end
"#;

/// ARGV: token, fingerprint, hold ms -> `{'t'}` taken, or what is held.
const BEGIN: &str = r#"
local found = held()
if found then return found end
redis.call('HSET', k, 's', 'f', 'f', ARGV[2], 't', ARGV[1])
redis.call('PEXPIRE', k, ARGV[3])
return {'t'}
"#;

/// ARGV: token, retention ms, replayable, status, headers, body -> 1 recorded, 0 not ours.
const RECORD: &str = r#"
if redis.call('HGET', k, 's') ~= 'f' or redis.call('HGET', k, 't') ~= ARGV[1] then return 0 end
redis.call('HDEL', k, 't')
redis.call('HSET', k, 's', 'd', 'r', ARGV[3], 'c', ARGV[4], 'h', ARGV[5], 'b', ARGV[6])
redis.call('PEXPIRE', k, ARGV[2])
return 1
"#;

/// ARGV: token -> 1 released, 0 not ours.
const RELEASE: &str = r#"
if redis.call('HGET', k, 's') ~= 'f' or redis.call('HGET', k, 't') ~= ARGV[1] then return 0 end
redis.call('DEL', k)
return 1
"#;

/// -> what is held, or `{}`.
const LOOKUP: &str = r#"
return held() or {}
"#;

/// The Redis idempotency records (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct RedisRecords {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    prefix: String,
    timeout: Duration,
    begin: Script,
    record: Script,
    release: Script,
    lookup: Script,
    token_seed: u64,
    tokens: AtomicU64,
}

impl RedisRecords {
    /// Records beside `store`'s validators: on its connection (lazy and reconnecting), under
    /// its key prefix, with its timeout.
    pub fn new(store: &RedisStore) -> Self {
        let script = |body: &str| Script::new(&format!("{HELD}{body}"));
        let random = std::collections::hash_map::RandomState::new();
        let store = &store.inner;
        Self {
            inner: Arc::new(Inner {
                conn: store.conn.clone(),
                prefix: format!("{}idem:", store.prefix),
                timeout: store.timeout,
                begin: script(BEGIN),
                record: script(RECORD),
                release: script(RELEASE),
                lookup: script(LOOKUP),
                token_seed: random.hash_one(std::process::id()),
                tokens: AtomicU64::new(0),
            }),
        }
    }
}

impl Inner {
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: ResourceKey,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut call = script.key(format!("{}{key}", self.prefix));
        for arg in args {
            call.arg(*arg);
        }
        let mut conn = self.conn.clone();
        bounded(self.timeout, call.invoke_async(&mut conn)).await
    }
}

/// Decodes a `HELD` reply.
fn decode_held(reply: &[Vec<u8>]) -> Result<Option<Held>, StoreError> {
    let fingerprint = |hex: &[u8]| {
        std::str::from_utf8(hex)
            .ok()
            .and_then(Fingerprint::from_hex)
            .ok_or_else(|| malformed("idempotency fingerprint"))
    };
    match reply {
        [] => Ok(None),
        [s, f] if s == b"f" => Ok(Some(Held::InFlight(fingerprint(f)?))),
        [s, f, replayable, status, headers, body] if s == b"d" => {
            let response = if replayable == b"1" {
                let status = std::str::from_utf8(status)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| malformed("idempotency status"))?;
                let headers =
                    decode_headers(headers).ok_or_else(|| malformed("idempotency headers"))?;
                Some(StoredResponse {
                    status,
                    headers,
                    body: Bytes::copy_from_slice(body),
                })
            } else {
                None
            };
            Ok(Some(Held::Done(Recorded {
                fingerprint: fingerprint(f)?,
                response,
            })))
        }
        _ => Err(malformed("idempotency record")),
    }
}

impl IdempotencyStore for RedisRecords {
    async fn begin(
        &self,
        key: ResourceKey,
        fingerprint: Fingerprint,
        hold: Duration,
    ) -> Result<Began, StoreError> {
        let inner = &self.inner;
        let n = inner.tokens.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:016x}{n:x}", inner.token_seed);
        let (hex, hold) = (fingerprint.to_hex(), millis(hold).max(1).to_string());
        let args: [&[u8]; 3] = [token.as_bytes(), hex.as_bytes(), hold.as_bytes()];
        let reply: Vec<Vec<u8>> = inner.run(&inner.begin, key, &args).await?;
        if matches!(reply.as_slice(), [t] if t == b"t") {
            return Ok(Began::Taken(Claim { key, token }));
        }
        decode_held(&reply)?
            .map(Began::Held)
            .ok_or_else(|| malformed("idempotency begin"))
    }

    async fn record(
        &self,
        claim: &Claim,
        recorded: Recorded,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let retention = millis(retention).max(1).to_string();
        let (replayable, status, headers, body) = match &recorded.response {
            Some(response) => (
                &b"1"[..],
                response.status.as_u16().to_string(),
                encode_headers(&response.headers),
                response.body.clone(),
            ),
            None => (&b"0"[..], String::new(), Vec::new(), Bytes::new()),
        };
        let args: [&[u8]; 6] = [
            claim.token.as_bytes(),
            retention.as_bytes(),
            replayable,
            status.as_bytes(),
            &headers,
            &body,
        ];
        Ok(inner.run::<i64>(&inner.record, claim.key, &args).await? == 1)
    }

    async fn release(&self, claim: &Claim) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let args: [&[u8]; 1] = [claim.token.as_bytes()];
        Ok(inner.run::<i64>(&inner.release, claim.key, &args).await? == 1)
    }

    async fn lookup(&self, key: ResourceKey) -> Result<Option<Held>, StoreError> {
        let inner = &self.inner;
        let reply: Vec<Vec<u8>> = inner.run(&inner.lookup, key, &[]).await?;
        decode_held(&reply)
    }
}

impl fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRecords")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedisStoreConfig;
    use crate::store::contract::idempotency_contract_tests;
    use crate::store::redis::tests::server;

    fn records() -> RedisRecords {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let store = RedisStore::new(RedisStoreConfig {
            url: server().url(),
            key_prefix: format!("idem{}-{n}:", std::process::id()),
            timeout: Duration::from_secs(2),
            ..RedisStoreConfig::default()
        })
        .expect("valid url");
        RedisRecords::new(&store)
    }

    idempotency_contract_tests!(records());
}
