//! A small, fast, non-keyed hasher for the proxy's own bounded tables.
//!
//! The standard `HashMap` hashes with keyed SipHash so that a client cannot choose keys that
//! all land in one bucket. Some tables do not need that: their keys come from the
//! configuration (upstream authorities), or the table never holds more than a few hundred
//! entries (hot spots), so the worst a crafted key can do is a scan of that bounded table.
//! Those tables use this hasher, a folded multiply over eight bytes at a time: a few
//! instructions a word, where SipHash, fed one byte at a time by `Authority`'s `Hash`, cost as
//! much per look-up as the rest of the request's pool checkout.

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`QuickHasher`]s: `HashMap<K, V, QuickBuild>`.
pub type QuickBuild = BuildHasherDefault<QuickHasher>;

/// See the module documentation. Not for tables whose size a client controls.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuickHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl QuickHasher {
    /// A folded multiply: the 128-bit product's halves xored, so every bit of the word
    /// reaches every bit of the state (a plain multiply only carries bits upwards).
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            // The last bytes as one word, their count in the top byte: "a" and "a\0" differ.
            let mut word = [0; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(word) ^ (tail.len() as u64) << 56);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply mixes upwards only, and the low bits pick the bucket: the murmur3
        // finalizer spreads every bit into them.
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn distinct_keys_hash_apart_and_equal_ones_together() {
        let hash = |key: &(&str, &str)| QuickBuild::default().hash_one(key);
        assert_eq!(hash(&("api", "/items/1")), hash(&("api", "/items/1")));
        // Where one string ends and the next begins is part of the hash.
        assert_ne!(hash(&("ap", "i/items/1")), hash(&("api", "/items/1")));
        let paths: Vec<String> = (0..10_000).map(|i| format!("/items/{i}")).collect();
        let hashes: HashSet<u64> = paths.iter().map(|p| hash(&("api", p.as_str()))).collect();
        assert_eq!(hashes.len(), paths.len());
        // The low bits (the bucket) spread too: 10,000 keys over 1,024 buckets.
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(buckets.len() > 1000, "{}", buckets.len());
    }
}
