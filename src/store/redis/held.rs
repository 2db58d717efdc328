//! Reads held back: what a GET learned waits in this process for a short while
//! (`store.learn_delay`) instead of costing a round trip of its own, because what usually
//! follows a read through the same replica is a write to the same resource (a client's
//! read-modify-write on its keep-alive connection), and that write's lease request carries the
//! held learn to Redis, which applies it first in the same script: one round trip for both.
//! A held learn that no write takes is sent on its own once the delay has passed (counted from
//! the first read it holds), and any other operation of this process on the key sends it
//! first (a read's generation, a load), so that, as seen from this process, the learn took
//! effect before whatever came next: a later read of another representation adds to it rather
//! than replacing it.
//!
//! Holding a learn back is safe for the same reason a remembered generation is
//! ([`Store::read_generation`](crate::store::Store::read_generation)): Redis applies it only if
//! the key's generation is still the one the read saw, so if anything was written meanwhile it
//! is refused, exactly as it would have been at once. Until it arrives, other replicas see the
//! key as it was before the read (usually unknown after a write that sent no `ETag`, which
//! costs a write through them a revalidation), for at most the delay. A process that dies with
//! learns held loses them, which is as safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use redis::ScriptInvocation;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{encode_time, encode_validator};
use crate::key::ResourceKey;
use crate::store::Observation;

/// Most learns held at once; past it a read learns at once, as with no delay.
const CAPACITY: usize = 10_000;

/// A read's observation, in the form of the `LEARN` script's arguments (and `ACQUIRE`'s, which
/// applies a held one first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Learn {
    /// The generation the read saw before it went upstream.
    pub(super) generation: u64,
    kind: &'static str,
    representation: String,
    opaque: String,
    last_modified: String,
}

impl Learn {
    pub(super) fn new(generation: u64, observation: Observation) -> Self {
        let (kind, validator, last_modified) = match observation {
            Observation::Validator {
                validator,
                last_modified,
            } => ("v", Some(validator), last_modified),
            Observation::Absent => ("a", None, None),
            Observation::Unknown => ("u", None, None),
        };
        let (representation, opaque) = encode_validator(validator.as_ref());
        Self {
            generation,
            kind,
            representation,
            opaque: opaque.to_owned(),
            last_modified: encode_time(last_modified),
        }
    }

    /// Appends generation, kind, representation, opaque tag and `Last-Modified` to `call`.
    pub(super) fn push_args(&self, call: &mut ScriptInvocation<'_>) {
        call.arg(self.generation)
            .arg(self.kind)
            .arg(&self.representation)
            .arg(&self.opaque)
            .arg(&self.last_modified);
    }
}

/// The learns this process holds back, at most one per key: a read that begins while one is
/// held sends it first, so only reads that ran at the same time replace one another (the
/// latest to end wins, where at once the first would have won: both are reads of that
/// generation).
pub(super) struct Held {
    /// 0: none are held (every read learns at once).
    delay: Duration,
    entries: DashMap<ResourceKey, (Learn, Instant)>,
    len: AtomicUsize,
    /// Wakes the sender when the first learn is held after none were.
    pub(super) wake: Arc<Notify>,
}

impl Held {
    pub(super) fn new(delay: Duration) -> Self {
        Self {
            delay,
            entries: DashMap::new(),
            len: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Holds `learn` back for `key`, or hands it back to be sent at once (no delay configured,
    /// or too many held). A learn of an older generation than the one held is dropped: it
    /// would be refused (the key moved on since that read began).
    pub(super) fn hold(&self, key: ResourceKey, learn: Learn) -> Result<(), Learn> {
        if self.delay.is_zero() || self.len.load(Ordering::Relaxed) >= CAPACITY {
            return Err(learn);
        }
        let now = Instant::now();
        match self.entries.entry(key) {
            Entry::Occupied(mut held) => {
                // A concurrent read's (a later one sends the held learn first: see
                // `RedisStore::read_generation`). It keeps the first one's time, so that
                // nothing is held past the delay however often the key is read.
                let (first, since) = held.get();
                if first.generation <= learn.generation {
                    let since = *since;
                    held.insert((learn, since));
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert((learn, now));
                if self.len.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.wake.notify_one();
                }
            }
        }
        Ok(())
    }

    /// The learn held for `key`, taken out (a lease request or a load then sends it).
    pub(super) fn take(&self, key: ResourceKey) -> Option<Learn> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let (_, (learn, _)) = self.entries.remove(&key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(learn)
    }

    /// Takes out every learn held for at least the delay at `now`, and says when the next of
    /// those left is due (none: nothing is held).
    pub(super) fn due(&self, now: Instant) -> (Vec<(ResourceKey, Learn)>, Option<Instant>) {
        let mut due_keys = Vec::new();
        let mut next: Option<Instant> = None;
        for entry in &self.entries {
            let at = entry.value().1 + self.delay;
            if at <= now {
                due_keys.push(*entry.key());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let mut due = Vec::with_capacity(due_keys.len());
        for key in due_keys {
            // Held anew since the scan: left for the next round.
            if let Some((key, (learn, _))) = self
                .entries
                .remove_if(&key, |_, (_, at)| *at + self.delay <= now)
            {
                self.len.fetch_sub(1, Ordering::Relaxed);
                due.push((key, learn));
            } else if let Some(entry) = self.entries.get(&key) {
                let at = entry.value().1 + self.delay;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        // One held while the scan ran may have been missed by it, and it raised no wake-up
        // (the count was not zero): look again after a delay rather than strand it.
        if next.is_none() && self.len.load(Ordering::Relaxed) > 0 {
            next = Some(now + self.delay);
        }
        (due, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{key, observed, validator};

    fn learn(generation: u64, tag: &str) -> Learn {
        Learn::new(generation, observed(&validator(tag, 1)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_learn_is_held_for_the_delay_and_the_newest_read_wins() {
        let held = Held::new(Duration::from_millis(50));
        assert_eq!(held.hold(key(1), learn(7, "a")), Ok(()));
        // A later read of the same generation replaces it; one of an older one does not.
        assert_eq!(held.hold(key(1), learn(7, "b")), Ok(()));
        assert_eq!(held.hold(key(1), learn(6, "old")), Ok(()));
        tokio::time::advance(Duration::from_millis(49)).await;
        let (due, next) = held.due(Instant::now());
        assert!(due.is_empty());
        assert!(next.is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        let (due, next) = held.due(Instant::now());
        assert_eq!(due, vec![(key(1), learn(7, "b"))]);
        assert_eq!(next, None);
        assert_eq!(held.take(key(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_takes_the_held_learn_and_no_delay_holds_nothing() {
        let held = Held::new(Duration::from_millis(50));
        held.hold(key(2), learn(3, "a")).unwrap();
        assert_eq!(held.take(key(2)), Some(learn(3, "a")));
        assert_eq!(held.take(key(2)), None);
        assert!(held.due(Instant::now()).0.is_empty());
        let none = Held::new(Duration::ZERO);
        assert_eq!(none.hold(key(2), learn(3, "a")), Err(learn(3, "a")));
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_capacity_a_read_learns_at_once() {
        let held = Held::new(Duration::from_millis(50));
        let many = |i: usize| ResourceKey::from_bytes((i as u128 + 1000).to_le_bytes());
        for i in 0..CAPACITY {
            held.hold(many(i), learn(1, "a")).unwrap();
        }
        assert!(held.hold(key(1), learn(1, "a")).is_err());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(held.due(Instant::now()).0.len(), CAPACITY);
        assert!(held.hold(key(1), learn(1, "a")).is_ok());
    }
}
