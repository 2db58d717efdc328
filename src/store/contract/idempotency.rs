//! The [`IdempotencyStore`] contract as a test suite, run against every backend:
//! `idempotency_contract_tests!(MemoryRecords::default());`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::idempotency::Fingerprint;
use crate::key::ResourceKey;
use crate::store::idempotency::{Began, Claim, Held, IdempotencyStore, Recorded, StoredResponse};

/// Long enough never to expire in a passing test.
const HOLD: Duration = Duration::from_secs(60);

/// A distinct fingerprint per `n`.
pub(crate) fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

/// A response with `status`, a `Location` and `body`.
pub(crate) fn response_of(status: u16, body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: StatusCode::from_u16(status).expect("valid status"),
        headers: vec![
            (
                HeaderName::from_static("location"),
                HeaderValue::from_static("/items/7"),
            ),
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
        ],
        body: Bytes::copy_from_slice(body),
    }
}

/// What a request with `fingerprint` left.
pub(crate) fn record_of(fingerprint: Fingerprint, response: Option<StoredResponse>) -> Recorded {
    Recorded {
        fingerprint,
        response,
    }
}

fn record_key(n: u8) -> ResourceKey {
    ResourceKey::from_bytes([n; 16])
}

async fn take<R: IdempotencyStore>(records: &R, key: ResourceKey, hold: Duration) -> Claim {
    match records
        .begin(key, fingerprint(1), hold)
        .await
        .expect("begin")
    {
        Began::Taken(claim) => claim,
        Began::Held(held) => panic!("a free key was held: {held:?}"),
    }
}

/// Waits (bounded) until `key` is free again, as its expiry makes it.
async fn until_free<R: IdempotencyStore>(records: &R, key: ResourceKey) -> Claim {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Began::Taken(claim) = records
            .begin(key, fingerprint(1), HOLD)
            .await
            .expect("begin")
        {
            return claim;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates one `#[tokio::test]` per idempotency contract check, each on a fresh `$records`.
macro_rules! idempotency_contract_tests {
    ($records:expr) => {
        $crate::store::contract::idempotency_contract_tests!(@each $records;
            first_take_wins_and_the_rest_see_it_in_flight,
            a_record_is_replayed_byte_for_byte,
            a_release_lets_a_retry_take_the_key,
            an_expired_claim_can_neither_record_nor_release,
            a_record_expires_after_its_retention,
            a_not_replayable_mark_is_kept,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_takes_take_once() {
            $crate::store::contract::concurrent_takes_take_once($records).await
        }
    };
    (@each $records:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::store::contract::$check($records).await
            }
        )*
    };
}
pub(crate) use idempotency_contract_tests;

/// The first take gets the key; a second, same fingerprint or not, sees the first in flight.
pub(crate) async fn first_take_wins_and_the_rest_see_it_in_flight<R: IdempotencyStore>(records: R) {
    let key = record_key(1);
    assert_eq!(records.lookup(key).await.expect("lookup"), None);
    take(&records, key, HOLD).await;
    for n in [1, 2] {
        let again = records
            .begin(key, fingerprint(n), HOLD)
            .await
            .expect("begin");
        assert_eq!(again, Began::Held(Held::InFlight(fingerprint(1))));
    }
    assert_eq!(
        records.lookup(key).await.expect("lookup"),
        Some(Held::InFlight(fingerprint(1)))
    );
    // Other keys are untouched.
    take(&records, record_key(2), HOLD).await;
}

/// A recorded response comes back exactly: status, headers in order, binary body.
pub(crate) async fn a_record_is_replayed_byte_for_byte<R: IdempotencyStore>(records: R) {
    let key = record_key(1);
    let claim = take(&records, key, HOLD).await;
    let body: Vec<u8> = (0..=255u8).chain(*b"\n\r\0:end").collect();
    let recorded = record_of(fingerprint(1), Some(response_of(201, &body)));
    assert!(
        records
            .record(&claim, recorded.clone(), HOLD)
            .await
            .expect("record")
    );
    let again = records
        .begin(key, fingerprint(2), HOLD)
        .await
        .expect("begin");
    assert_eq!(again, Began::Held(Held::Done(recorded.clone())));
    assert_eq!(
        records.lookup(key).await.expect("lookup"),
        Some(Held::Done(recorded))
    );
    // Recorded once: the claim is spent.
    assert!(!records.release(&claim).await.expect("release"));
}

/// A released key is free: the retry takes it, and its record is the one kept.
pub(crate) async fn a_release_lets_a_retry_take_the_key<R: IdempotencyStore>(records: R) {
    let key = record_key(1);
    let first = take(&records, key, HOLD).await;
    assert!(records.release(&first).await.expect("release"));
    assert_eq!(records.lookup(key).await.expect("lookup"), None);
    let second = take(&records, key, HOLD).await;
    assert_ne!(first.token, second.token);
    // The first attempt's late record is refused: the second holds the key.
    let late = record_of(fingerprint(1), Some(response_of(500, b"late")));
    assert!(!records.record(&first, late, HOLD).await.expect("record"));
    let kept = record_of(fingerprint(1), Some(response_of(201, b"second")));
    assert!(
        records
            .record(&second, kept.clone(), HOLD)
            .await
            .expect("record")
    );
    assert_eq!(
        records.lookup(key).await.expect("lookup"),
        Some(Held::Done(kept))
    );
}

/// A claim that outlived its hold (a crashed replica) frees the key; its holder's late record
/// or release then changes nothing for the next holder.
pub(crate) async fn an_expired_claim_can_neither_record_nor_release<R: IdempotencyStore>(
    records: R,
) {
    let key = record_key(1);
    let stale = take(&records, key, Duration::from_millis(200)).await;
    let next = until_free(&records, key).await;
    let late = record_of(fingerprint(1), Some(response_of(201, b"late")));
    assert!(!records.record(&stale, late, HOLD).await.expect("record"));
    assert!(!records.release(&stale).await.expect("release"));
    assert_eq!(
        records.lookup(key).await.expect("lookup"),
        Some(Held::InFlight(fingerprint(1)))
    );
    assert!(records.release(&next).await.expect("release"));
}

/// Past its retention a record is gone and the key can be used again.
pub(crate) async fn a_record_expires_after_its_retention<R: IdempotencyStore>(records: R) {
    let key = record_key(1);
    let claim = take(&records, key, HOLD).await;
    let recorded = record_of(fingerprint(1), Some(response_of(201, b"{}")));
    let retention = Duration::from_millis(200);
    assert!(
        records
            .record(&claim, recorded, retention)
            .await
            .expect("record")
    );
    until_free(&records, key).await;
}

/// A completion whose response could not be kept is still a completion.
pub(crate) async fn a_not_replayable_mark_is_kept<R: IdempotencyStore>(records: R) {
    let key = record_key(1);
    let claim = take(&records, key, HOLD).await;
    let mark = record_of(fingerprint(1), None);
    assert!(
        records
            .record(&claim, mark.clone(), HOLD)
            .await
            .expect("record")
    );
    let again = records
        .begin(key, fingerprint(1), HOLD)
        .await
        .expect("begin");
    assert_eq!(again, Began::Held(Held::Done(mark)));
}

/// 16 concurrent takes of one key: exactly one gets it.
pub(crate) async fn concurrent_takes_take_once<R: IdempotencyStore>(records: R) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let records = records.clone();
            tokio::spawn(async move {
                records
                    .begin(record_key(1), fingerprint(1), HOLD)
                    .await
                    .expect("begin")
            })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        if matches!(task.await.expect("task"), Began::Taken(_)) {
            taken += 1;
        }
    }
    assert_eq!(taken, 1);
}
