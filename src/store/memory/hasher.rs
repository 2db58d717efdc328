//! The hasher of the store's maps.
//!
//! Guarantees: keys spread as well as SipHash would spread them, and bucket positions stay
//! unpredictable to whoever chooses the URLs (per-store random seeds). It relies on what every
//! caller hashes being a [`ResourceKey`](crate::key::ResourceKey), already a uniform blake3
//! digest: it is not a general-purpose hasher.

use std::hash::{BuildHasher, Hasher};

/// Hashes a resource key cheaply: a multiply-fold with per-store random seeds.
#[derive(Clone)]
pub(super) struct KeyHasherBuilder {
    seeds: [u64; 2],
}

impl KeyHasherBuilder {
    /// A builder with fresh random seeds.
    pub(super) fn new() -> Self {
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seeds: [random.hash_one(0u8), random.hash_one(1u8) | 1],
        }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            hash: self.seeds[0],
            multiplier: self.seeds[1],
        }
    }
}

/// The hasher a [`KeyHasherBuilder`] builds.
pub(super) struct KeyHasher {
    hash: u64,
    multiplier: u64,
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let product =
                u128::from(self.hash ^ u64::from_le_bytes(word)) * u128::from(self.multiplier);
            self.hash = (product as u64) ^ ((product >> 64) as u64);
        }
    }
}
