//! One key's entry: 40 bytes, the common validator inline, anything else in a side map.
//!
//! Guarantees:
//! - An [`Entry`] stays 40 bytes (one 48-byte malloc chunk; the table holds a pointer to it).
//! - A known state lives in exactly one place: inline (one strong validator without
//!   `Last-Modified`, its tag a synthesized digest or at most 16 bytes) or in the side map. A
//!   key has a side-map value exactly while its entry says `Spilled`: [`Inner::set`] keeps the
//!   two in step, and [`Inner::forget`] lets go before the entry itself goes.
//! - Expiry applies on every read ([`Inner::known`]), and [`Inner::settle`] makes it explicit,
//!   so that moving `expires_at` never revives a state that had already lapsed.
//! - What a read returns is owned ([`Known`]): no side-map guard outlives a call.
//!
//! Callers must hold the key's `entries` shard lock for every call here (a `&mut Entry` from
//! the map, or a new entry under its vacant slot): the side map is touched only under it (lock
//! order: `entries`, then `spilled`). Generations are not touched here; callers stamp them.

use std::time::SystemTime;

use super::Inner;
use crate::etag::{EntityTag, SYNTHESIZED_PREFIX};
use crate::key::ResourceKey;
use crate::store::{KeyState, Observation, Outcome, Representation, Validator};

/// Most representations tracked per resource; a new one past this replaces them all.
const MAX_REPRESENTATIONS: usize = 4;

/// One key's state, kept small: 40 bytes (one 48-byte malloc chunk), the common validator inline.
pub(super) struct Entry {
    pub(super) generation: u64,
    /// The inline validator's representation (`State::Inline` only).
    representation: u64,
    /// The inline validator's tag (`State::Inline` only).
    tag: CompactTag,
    /// Coarse expiry, in seconds since the store was created.
    pub(super) expires_at: u32,
    state: State,
    pub(super) leased: bool,
    /// Touched since the eviction scan last passed it.
    pub(super) visited: bool,
}

/// Where an entry's state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    /// Known not to exist.
    Absent,
    /// One validator, no `Last-Modified`: in the entry's `representation` and `tag`.
    Inline,
    /// In the side map.
    Spilled,
}

/// A strong entity-tag in 17 bytes: a synthesized tag's 16-byte digest, or an opaque-tag of at
/// most 16 bytes. The two encodings cannot collide (`len` tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CompactTag {
    /// Length of the opaque-tag in `bytes`, or [`CompactTag::DIGEST`].
    len: u8,
    bytes: [u8; 16],
}

/// A known present state that does not fit inline: the side map's value.
#[derive(Clone)]
pub(super) struct Present {
    validators: Box<[Validator]>,
    last_modified: Option<SystemTime>,
}

/// A state to store.
pub(super) enum Held {
    Unknown,
    Absent,
    Present(Present),
}

/// What an entry says right now, expiry applied (owned: a spilled state is cloned out, so that
/// no side-map guard is held while the entry changes).
pub(super) enum Known {
    Unknown,
    Absent,
    Inline {
        representation: Representation,
        tag: CompactTag,
    },
    Spilled(Present),
}

impl Inner {
    /// What `entry` (the entry of `key`) says at `now`.
    pub(super) fn known(&self, key: &ResourceKey, entry: &Entry, now: u32) -> Known {
        if now >= entry.expires_at {
            return Known::Unknown;
        }
        match entry.state {
            State::Unknown => Known::Unknown,
            State::Absent => Known::Absent,
            State::Inline => Known::Inline {
                representation: Representation(entry.representation),
                tag: entry.tag,
            },
            // Not expected to be missing: spilled states change only with the entry.
            State::Spilled => self.spilled.get(key).map_or(Known::Unknown, |present| {
                Known::Spilled(Present::clone(&present))
            }),
        }
    }

    /// Stores `held` in `entry` (the entry of `key`), inline when it fits.
    pub(super) fn set(&self, key: &ResourceKey, entry: &mut Entry, held: Held) {
        let was_spilled = entry.state == State::Spilled;
        entry.state = match held {
            Held::Unknown => State::Unknown,
            Held::Absent => State::Absent,
            Held::Present(present) => match present.inline() {
                Some((representation, tag)) => {
                    entry.representation = representation.0;
                    entry.tag = tag;
                    State::Inline
                }
                None => {
                    self.spilled.insert(*key, present);
                    State::Spilled
                }
            },
        };
        if was_spilled && entry.state != State::Spilled {
            self.spilled.remove(key);
        }
    }

    /// Makes an expiry explicit before the expiry time moves, so that refreshing the expiry
    /// can never revive a state that had already lapsed.
    pub(super) fn settle(&self, key: &ResourceKey, entry: &mut Entry, now: u32) {
        if now >= entry.expires_at {
            self.set(key, entry, Held::Unknown);
        }
    }

    /// Lets go of what `entry` (the entry of `key`) keeps in the side map, before the entry
    /// itself is removed.
    pub(super) fn forget(&self, key: &ResourceKey, entry: &Entry) {
        if entry.state == State::Spilled {
            self.spilled.remove(key);
        }
    }
}

impl Entry {
    /// An entry that knows nothing yet.
    pub(super) fn new(generation: u64, expires_at: u32) -> Self {
        Self {
            generation,
            representation: 0,
            tag: CompactTag {
                len: 0,
                bytes: [0; 16],
            },
            expires_at,
            state: State::Unknown,
            leased: false,
            visited: false,
        }
    }

    /// Whether the entry holds a known state (present or absent) at `now`.
    pub(super) fn holds(&self, now: u32) -> bool {
        now < self.expires_at && self.state != State::Unknown
    }
}

impl Present {
    /// The one validator and its compact tag, if this state fits inline.
    fn inline(&self) -> Option<(Representation, CompactTag)> {
        match (&*self.validators, self.last_modified) {
            ([only], None) => Some((only.representation, CompactTag::new(&only.tag)?)),
            _ => None,
        }
    }
}

impl CompactTag {
    /// Marks a synthesized tag's digest.
    const DIGEST: u8 = u8::MAX;

    /// The compact form of a strong tag, if it has one.
    fn new(tag: &EntityTag) -> Option<Self> {
        if tag.is_weak() {
            return None;
        }
        let mut bytes = [0u8; 16];
        if tag.is_synthesized() {
            // The shape is checked: "ifm-" and 32 lowercase hex digits.
            let hex = &tag.opaque().as_bytes()[SYNTHESIZED_PREFIX.len()..];
            for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
                *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
            return Some(Self {
                len: Self::DIGEST,
                bytes,
            });
        }
        let opaque = tag.opaque().as_bytes();
        let len = u8::try_from(opaque.len()).ok().filter(|&n| n <= 16)?;
        bytes[..opaque.len()].copy_from_slice(opaque);
        Some(Self { len, bytes })
    }

    /// The tag back, exactly as it was stored.
    fn to_tag(self) -> EntityTag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let opaque = if self.len == Self::DIGEST {
            let mut opaque = String::with_capacity(SYNTHESIZED_PREFIX.len() + 32);
            opaque.push_str(SYNTHESIZED_PREFIX);
            for byte in self.bytes {
                opaque.push(char::from(HEX[usize::from(byte >> 4)]));
                opaque.push(char::from(HEX[usize::from(byte & 15)]));
            }
            opaque
        } else {
            String::from_utf8_lossy(&self.bytes[..usize::from(self.len)]).into_owned()
        };
        // It was a valid strong tag when it was stored.
        EntityTag::strong(&opaque).expect("a stored entity-tag stays valid")
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

impl Held {
    /// The state a lease holder's outcome leaves, or `None` if it leaves the state as it was.
    pub(super) fn written(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Replaced {
                validator,
                last_modified,
            } => Some(Held::Present(Present {
                validators: Box::new([validator]),
                last_modified,
            })),
            Outcome::Deleted => Some(Held::Absent),
            Outcome::Unknown => Some(Held::Unknown),
            // A refused write says nothing new about the resource.
            Outcome::Unchanged => None,
        }
    }
}

impl Known {
    /// The state as the store's callers see it.
    pub(super) fn into_state(self) -> KeyState {
        match self {
            Known::Unknown => KeyState::Unknown,
            Known::Absent => KeyState::Absent,
            Known::Inline {
                representation,
                tag,
            } => KeyState::Present {
                validators: vec![Validator {
                    tag: tag.to_tag(),
                    representation,
                }],
                last_modified: None,
            },
            Known::Spilled(present) => KeyState::Present {
                validators: present.validators.into_vec(),
                last_modified: present.last_modified,
            },
        }
    }

    /// The state after `observation`, or `None` if it confirms the current one.
    pub(super) fn after(&self, observation: Observation) -> Option<Held> {
        let (validator, last_modified) = match observation {
            Observation::Unknown => {
                return (!matches!(self, Known::Unknown)).then_some(Held::Unknown);
            }
            Observation::Absent => {
                return (!matches!(self, Known::Absent)).then_some(Held::Absent);
            }
            Observation::Validator {
                validator,
                last_modified,
            } => (validator, last_modified),
        };
        let inline;
        let present = match self {
            Known::Inline {
                representation,
                tag,
            } => {
                // The common confirming read: compared without allocating.
                if last_modified.is_none()
                    && validator.representation == *representation
                    && CompactTag::new(&validator.tag) == Some(*tag)
                {
                    return None;
                }
                inline = Present {
                    validators: Box::new([Validator {
                        tag: tag.to_tag(),
                        representation: *representation,
                    }]),
                    last_modified: None,
                };
                Some(&inline)
            }
            Known::Spilled(present) => Some(present),
            Known::Unknown | Known::Absent => None,
        };
        let validators: Box<[Validator]> = match present {
            Some(present) => {
                let held = present
                    .validators
                    .iter()
                    .find(|v| v.representation == validator.representation);
                match held {
                    Some(held) if held.tag == validator.tag => {
                        if present.last_modified == last_modified {
                            return None;
                        }
                        present.validators.clone()
                    }
                    // A new representation of the same state.
                    None if present.validators.len() < MAX_REPRESENTATIONS => {
                        let mut all = present.validators.to_vec();
                        all.push(validator);
                        all.into_boxed_slice()
                    }
                    // The resource changed (or too many representations): start over.
                    _ => Box::new([validator]),
                }
            }
            None => Box::new([validator]),
        };
        Some(Held::Present(Present {
            validators,
            last_modified,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::contract::{self, key, observed, validator};
    use crate::store::{MemoryStore, Store};

    #[test]
    fn entries_stay_small() {
        // The table slot is a pointer; the entry is one 48-byte malloc chunk (40 usable).
        assert!(size_of::<Box<Entry>>() <= 8);
        assert!(size_of::<Entry>() <= 40, "{}", size_of::<Entry>());
    }

    #[test]
    fn compact_tags_round_trip() {
        let digest = blake3::hash(b"body");
        let tags = [
            EntityTag::synthesized(&digest),
            EntityTag::strong("").unwrap(),
            EntityTag::strong("0123456789abcdef").unwrap(),
            // Starts like a synthesized tag but is not one: kept as text.
            EntityTag::strong("ifm-0123").unwrap(),
        ];
        for tag in tags {
            let compact = CompactTag::new(&tag).expect("fits");
            assert_eq!(compact.to_tag(), tag);
        }
        assert_eq!(
            CompactTag::new(&EntityTag::synthesized(&digest))
                .unwrap()
                .len,
            CompactTag::DIGEST
        );
        assert!(CompactTag::new(&EntityTag::strong("0123456789abcdefg").unwrap()).is_none());
        assert!(CompactTag::new(&EntityTag::weak("a").unwrap()).is_none());
        let upper = EntityTag::strong("ifm-0123456789ABCDEF0123456789ABCDEF").unwrap();
        assert!(CompactTag::new(&upper).is_none());
    }

    #[tokio::test]
    async fn spilled_states_round_trip_and_are_released() {
        let store = MemoryStore::default();
        let long = Validator {
            tag: EntityTag::strong("a-tag-longer-than-sixteen-bytes").unwrap(),
            representation: Representation(1),
        };
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, observed(&long)).await.unwrap());
        assert_eq!(
            store.load(key(1)).await.unwrap().state,
            contract::present(&[long])
        );
        assert_eq!(store.inner.spilled.len(), 1);
        // Back to an inline state: the side map lets go.
        let short = validator("short", 1);
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, observed(&short)).await.unwrap());
        assert_eq!(
            store.load(key(1)).await.unwrap().state,
            contract::present(&[short])
        );
        assert_eq!(store.inner.spilled.len(), 0);
        // Purged while spilled.
        let lm = Observation::Validator {
            validator: validator("short", 1),
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let g = store.load(key(1)).await.unwrap().generation;
        assert!(store.learn(key(1), g, lm).await.unwrap());
        assert_eq!(store.inner.spilled.len(), 1);
        assert!(store.purge(key(1)).await.unwrap());
        assert_eq!(store.inner.spilled.len(), 0);
    }
}
