//! The embedded idempotency records: one map under a mutex (every operation is short and
//! never awaits while holding it), bounded by count and bytes, with expiry.
//!
//! Invariants: `bytes` is the sum of the sizes of the slots in `map`; every slot has one entry
//! in `order` with its `seq` (older entries of a replaced or removed slot are stale and skipped,
//! and compacted away when they outnumber the live ones). Eviction pops the oldest entry first
//! and never evicts a live claim (it is moved to the back): a take finds no room only when every
//! slot is one, and is then refused (the store is full: the caller's failure policy applies).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Began, Claim, Held, IdempotencyStore, RecordStats, Recorded};
use crate::idempotency::Fingerprint;
use crate::key::ResourceKey;
use crate::store::StoreError;

/// What a slot costs besides its response: key, fingerprint, token, bookkeeping.
const SLOT_OVERHEAD: usize = 128;

/// Bounds of the memory records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRecordsConfig {
    /// Most keys held (claims and records).
    pub max_records: usize,
    /// Most bytes held (recorded bodies and headers, plus a fixed overhead per key).
    pub max_bytes: usize,
}

impl Default for MemoryRecordsConfig {
    fn default() -> Self {
        Self {
            max_records: 100_000,
            max_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The in-memory idempotency records (cheap to clone: clones share them).
#[derive(Debug, Clone)]
pub struct MemoryRecords {
    table: Arc<Mutex<Table>>,
    config: MemoryRecordsConfig,
}

impl Default for MemoryRecords {
    fn default() -> Self {
        Self::new(MemoryRecordsConfig::default())
    }
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<ResourceKey, Slot>,
    order: VecDeque<(ResourceKey, u64)>,
    seq: u64,
    bytes: usize,
    evictions: u64,
    tokens: u64,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    expires: Instant,
    size: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    InFlight {
        fingerprint: Fingerprint,
        token: u64,
    },
    Done(Recorded),
}

impl Slot {
    fn held(&self) -> Held {
        match &self.state {
            State::InFlight { fingerprint, .. } => Held::InFlight(*fingerprint),
            State::Done(recorded) => Held::Done(recorded.clone()),
        }
    }

    fn is_claimed_by(&self, token: &str) -> bool {
        matches!(&self.state, State::InFlight { token: t, .. } if token.parse() == Ok(*t))
    }
}

impl MemoryRecords {
    /// Records bounded by `config`.
    pub fn new(config: MemoryRecordsConfig) -> Self {
        Self {
            table: Arc::default(),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic under the lock leaves the table consistent (no operation panics midway on
        // purpose); keep serving rather than fail every request after it.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Table {
    /// The live slot of `key`, dropping it if expired.
    fn live(&mut self, key: ResourceKey, now: Instant) -> Option<&Slot> {
        if self.map.get(&key).is_some_and(|slot| slot.expires <= now) {
            self.remove(key);
        }
        self.map.get(&key)
    }

    fn remove(&mut self, key: ResourceKey) -> Option<Slot> {
        let slot = self.map.remove(&key)?;
        self.bytes -= slot.size;
        Some(slot)
    }

    fn insert(&mut self, key: ResourceKey, expires: Instant, size: usize, state: State) {
        self.seq += 1;
        let seq = self.seq;
        self.order.push_back((key, seq));
        self.bytes += size;
        let slot = Slot {
            seq,
            expires,
            size,
            state,
        };
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= old.size;
        }
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(key, seq)| map.get(key).is_some_and(|slot| slot.seq == *seq));
        }
    }

    /// Evicts until one more slot of `size` fits; false if only live claims are left.
    fn make_room(&mut self, size: usize, config: MemoryRecordsConfig, now: Instant) -> bool {
        let mut passes = self.order.len();
        while self.map.len() >= config.max_records || self.bytes + size > config.max_bytes {
            let Some((key, seq)) = self.order.pop_front() else {
                return false;
            };
            let Some(slot) = self.map.get(&key).filter(|slot| slot.seq == seq) else {
                continue;
            };
            let expired = slot.expires <= now;
            if matches!(slot.state, State::InFlight { .. }) && !expired {
                self.order.push_back((key, seq));
                if passes == 0 {
                    return false;
                }
                passes -= 1;
                continue;
            }
            self.remove(key);
            if !expired {
                self.evictions += 1;
            }
        }
        true
    }
}

impl IdempotencyStore for MemoryRecords {
    async fn begin(
        &self,
        key: ResourceKey,
        fingerprint: Fingerprint,
        hold: Duration,
    ) -> Result<Began, StoreError> {
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(slot) = table.live(key, now) {
            return Ok(Began::Held(slot.held()));
        }
        if !table.make_room(SLOT_OVERHEAD, self.config, now) {
            return Err(StoreError::Unavailable(
                "idempotency records full of requests in flight".into(),
            ));
        }
        table.tokens += 1;
        let token = table.tokens;
        let state = State::InFlight { fingerprint, token };
        table.insert(key, now + hold, SLOT_OVERHEAD, state);
        Ok(Began::Taken(Claim {
            key,
            token: token.to_string(),
        }))
    }

    async fn record(
        &self,
        claim: &Claim,
        mut recorded: Recorded,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut table = self.lock();
        if !table
            .live(claim.key, now)
            .is_some_and(|slot| slot.is_claimed_by(&claim.token))
        {
            return Ok(false);
        }
        table.remove(claim.key);
        let mut size = SLOT_OVERHEAD + recorded.response.as_ref().map_or(0, |r| r.size());
        // A response larger than the whole bound can never fit: evicting every other record
        // for it would only turn their retries into second executions.
        if size > self.config.max_bytes || !table.make_room(size, self.config, now) {
            // No room for the response: keep the mark that the request completed, which a
            // retry must see (it then gets 409, never a second execution). The claim's own
            // slot was just freed, so the mark fits.
            recorded.response = None;
            size = SLOT_OVERHEAD;
            table.make_room(size, self.config, now);
        }
        table.insert(claim.key, now + retention, size, State::Done(recorded));
        Ok(true)
    }

    async fn release(&self, claim: &Claim) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut table = self.lock();
        if table
            .live(claim.key, now)
            .is_some_and(|slot| slot.is_claimed_by(&claim.token))
        {
            table.remove(claim.key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn lookup(&self, key: ResourceKey) -> Result<Option<Held>, StoreError> {
        let now = Instant::now();
        Ok(self.lock().live(key, now).map(Slot::held))
    }

    fn stats(&self) -> Option<RecordStats> {
        let table = self.lock();
        Some(RecordStats {
            records: table.map.len() as u64,
            bytes: table.bytes as u64,
            evictions: table.evictions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::idempotency_contract_tests;

    idempotency_contract_tests!(MemoryRecords::default());

    fn bounded(max_records: usize, max_bytes: usize) -> MemoryRecords {
        MemoryRecords::new(MemoryRecordsConfig {
            max_records,
            max_bytes,
        })
    }

    #[tokio::test]
    async fn a_flood_of_keys_stays_within_count_and_bytes() {
        use crate::store::contract::{fingerprint, record_of, response_of};
        let records = bounded(50, 50 * 1024);
        for n in 0..5_000u32 {
            let key = ResourceKey::new("r", "idempotency-key", Some(&n.to_string()), []);
            let Began::Taken(claim) = records
                .begin(key, fingerprint(1), Duration::from_secs(60))
                .await
                .expect("room")
            else {
                panic!("fresh key held");
            };
            let recorded = record_of(fingerprint(1), Some(response_of(201, &[b'x'; 2000])));
            assert!(
                records
                    .record(&claim, recorded, Duration::from_secs(60))
                    .await
                    .unwrap()
            );
            let stats = records.stats().unwrap();
            assert!(stats.records <= 50, "{stats:?}");
            assert!(stats.bytes <= 50 * 1024, "{stats:?}");
        }
        let stats = records.stats().unwrap();
        assert!(stats.evictions >= 4_950 - 50, "{stats:?}");
        let table = records.lock();
        assert!(table.order.len() <= 2 * table.map.len() + 1024);
    }

    #[tokio::test]
    async fn live_claims_are_never_evicted() {
        use crate::store::contract::fingerprint;
        let records = bounded(3, 1 << 20);
        let key = |n: u8| ResourceKey::from_bytes([n; 16]);
        let hold = Duration::from_secs(60);
        for n in 0..3 {
            let began = records.begin(key(n), fingerprint(n), hold).await.unwrap();
            assert!(matches!(began, Began::Taken(_)));
        }
        // Full of live claims: a fourth take is refused rather than evict one.
        assert!(matches!(
            records.begin(key(9), fingerprint(9), hold).await,
            Err(StoreError::Unavailable(_))
        ));
        for n in 0..3 {
            assert_eq!(
                records.lookup(key(n)).await.unwrap(),
                Some(Held::InFlight(fingerprint(n)))
            );
        }
    }

    #[tokio::test]
    async fn a_response_that_can_never_fit_evicts_no_other_record() {
        use crate::store::contract::{fingerprint, record_of, response_of};
        let records = bounded(10, 4 * 1024);
        let hold = Duration::from_secs(60);
        let mut keys = Vec::new();
        for n in 1..=3u8 {
            let key = ResourceKey::from_bytes([n; 16]);
            let Began::Taken(claim) = records.begin(key, fingerprint(n), hold).await.unwrap()
            else {
                panic!("held");
            };
            let small = record_of(fingerprint(n), Some(response_of(201, b"{}")));
            assert!(records.record(&claim, small, hold).await.unwrap());
            keys.push(key);
        }
        let key = ResourceKey::from_bytes([9; 16]);
        let Began::Taken(claim) = records.begin(key, fingerprint(9), hold).await.unwrap() else {
            panic!("held");
        };
        let big = record_of(fingerprint(9), Some(response_of(201, &[b'x'; 8 * 1024])));
        assert!(records.record(&claim, big, hold).await.unwrap());
        // The others' retries must still be replays, not second executions.
        for (n, key) in (1..=3u8).zip(keys) {
            let held = records.lookup(key).await.unwrap();
            assert!(
                matches!(held, Some(Held::Done(_))),
                "record {n} evicted: {held:?}"
            );
        }
        assert_eq!(records.stats().unwrap().evictions, 0);
    }

    #[tokio::test]
    async fn a_response_larger_than_the_room_keeps_the_completed_mark() {
        use crate::store::contract::{fingerprint, record_of, response_of};
        let records = bounded(10, 4 * 1024);
        let key = ResourceKey::from_bytes([1; 16]);
        let Began::Taken(claim) = records
            .begin(key, fingerprint(1), Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("held");
        };
        let big = record_of(fingerprint(1), Some(response_of(201, &[b'x'; 8 * 1024])));
        assert!(
            records
                .record(&claim, big, Duration::from_secs(60))
                .await
                .unwrap()
        );
        let held = records.lookup(key).await.unwrap();
        assert_eq!(held, Some(Held::Done(record_of(fingerprint(1), None))));
    }
}
