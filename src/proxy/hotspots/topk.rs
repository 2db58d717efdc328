//! Space-saving top-k (Metwally, Agrawal, El Abbadi, 2005): the most frequent items of an
//! unbounded stream in a fixed number of counters.
//!
//! Each of the `capacity` slots holds an item, its count, and the count's possible
//! overestimate. An item not held replaces the least counted one and inherits its count (as
//! the overestimate) plus one. Guarantees: a count is at most `error` above the item's true
//! frequency, never below it; every item seen more than `total / capacity` times is held.
//!
//! ```
//! use ifmatch::proxy::hotspots::topk::SpaceSaving;
//! let mut top = SpaceSaving::new(2);
//! for item in ["a", "b", "a", "c", "a"] {
//!     top.record(item);
//! }
//! assert_eq!(top.top(1)[0].item, "a");
//! ```

use std::collections::HashMap;
use std::hash::Hash;

/// One counted item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted<K> {
    /// The item.
    pub item: K,
    /// Its count (an upper bound of its true frequency).
    pub count: u64,
    /// How much of `count` may be inherited from evicted items.
    pub error: u64,
}

/// A space-saving top-k summary holding at most `capacity` items.
#[derive(Debug, Clone)]
pub struct SpaceSaving<K> {
    capacity: usize,
    slots: Vec<Counted<K>>,
    index: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> SpaceSaving<K> {
    /// A summary of at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            slots: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
        }
    }

    /// The most items held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one occurrence of `item`.
    pub fn record(&mut self, item: K) {
        if let Some(&slot) = self.index.get(&item) {
            self.slots[slot].count += 1;
            return;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(item.clone(), self.slots.len());
            self.slots.push(Counted {
                item,
                count: 1,
                error: 0,
            });
            return;
        }
        // A linear scan: capacities are small and this runs only for items not yet held.
        let Some((slot, _)) = self.slots.iter().enumerate().min_by_key(|(_, c)| c.count) else {
            return;
        };
        let evicted = &mut self.slots[slot];
        let floor = evicted.count;
        self.index.remove(&evicted.item);
        self.index.insert(item.clone(), slot);
        *evicted = Counted {
            item,
            count: floor + 1,
            error: floor,
        };
    }

    /// The `n` most counted items, most counted first (ties in no particular order).
    pub fn top(&self, n: usize) -> Vec<Counted<K>> {
        let mut all = self.slots.clone();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.error.cmp(&b.error)));
        all.truncate(n);
        all
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_while_under_capacity() {
        let mut top = SpaceSaving::new(3);
        for item in ["a", "b", "a", "c", "a", "b"] {
            top.record(item);
        }
        let counts: Vec<_> = top
            .top(3)
            .iter()
            .map(|c| (c.item, c.count, c.error))
            .collect();
        assert_eq!(counts, [("a", 3, 0), ("b", 2, 0), ("c", 1, 0)]);
        assert_eq!(top.top(1).len(), 1);
    }

    #[test]
    fn a_new_item_inherits_the_smallest_count() {
        let mut top = SpaceSaving::new(2);
        for item in ["a", "a", "b", "c"] {
            top.record(item);
        }
        // "b" (count 1) made room for "c": c's count 2 may include 1 of b's.
        let held = top.top(2);
        assert_eq!(held[0].item, "a");
        assert_eq!((held[1].item, held[1].count, held[1].error), ("c", 2, 1));
    }

    #[test]
    fn heavy_hitters_survive_a_long_tail_and_counts_bound_the_truth() {
        let mut top = SpaceSaving::new(8);
        let mut truth: HashMap<u32, u64> = HashMap::new();
        // One hot item (1 in 4), one warm (1 in 8), and a tail of 1000 distinct cold items.
        for i in 0..4000u32 {
            let item = match i % 8 {
                0 | 4 => 0,
                2 => 1,
                _ => 1000 + i % 1000,
            };
            *truth.entry(item).or_default() += 1;
            top.record(item);
        }
        let held = top.top(8);
        assert_eq!(held.len(), 8);
        assert_eq!(held[0].item, 0);
        assert_eq!(held[1].item, 1);
        for counted in &held {
            let real = truth[&counted.item];
            assert!(counted.count >= real, "{counted:?} under {real}");
            assert!(
                counted.count - counted.error <= real,
                "{counted:?} vs {real}"
            );
        }
    }

    #[test]
    fn zero_capacity_still_holds_one() {
        let mut top = SpaceSaving::new(0);
        top.record(1);
        top.record(2);
        assert_eq!(top.capacity(), 1);
        assert_eq!(top.top(5).len(), 1);
        top.clear();
        assert!(top.top(5).is_empty());
    }
}
