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

use crate::quick_hash::QuickBuild;

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
///
/// The items stay in their slots; a binary min-heap of slot numbers, by count, keeps the
/// least counted one at its root, so counting an item held or replacing the least counted
/// one is a hash look-up and `log2(capacity)` steps, never a scan of every slot.
#[derive(Debug, Clone)]
pub struct SpaceSaving<K> {
    capacity: usize,
    slots: Vec<Counted<K>>,
    /// Slot numbers, a min-heap by their count.
    heap: Vec<usize>,
    /// Each slot's place in `heap`.
    place: Vec<usize>,
    /// Never more than `capacity` keys, so [`QuickBuild`] is safe whoever picks them.
    index: HashMap<K, usize, QuickBuild>,
}

impl<K: Eq + Hash + Clone> SpaceSaving<K> {
    /// A summary of at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            slots: Vec::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
            place: Vec::with_capacity(capacity),
            index: HashMap::with_capacity_and_hasher(capacity, QuickBuild::default()),
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
            self.sift_down(self.place[slot]);
            return;
        }
        if self.slots.len() < self.capacity {
            let slot = self.slots.len();
            self.index.insert(item.clone(), slot);
            self.slots.push(Counted {
                item,
                count: 1,
                error: 0,
            });
            self.heap.push(slot);
            self.place.push(slot);
            self.sift_up(slot);
            return;
        }
        // The least counted item makes room, and the new one inherits its count.
        let slot = self.heap[0];
        let evicted = &mut self.slots[slot];
        let floor = evicted.count;
        self.index.remove(&evicted.item);
        self.index.insert(item.clone(), slot);
        *evicted = Counted {
            item,
            count: floor + 1,
            error: floor,
        };
        self.sift_down(0);
    }

    fn count_at(&self, at: usize) -> u64 {
        self.slots[self.heap[at]].count
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.place[self.heap[a]] = a;
        self.place[self.heap[b]] = b;
    }

    /// Moves the heap entry at `at` up past every parent counted more.
    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.count_at(parent) <= self.count_at(at) {
                return;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    /// Moves the heap entry at `at` down past every child counted less.
    fn sift_down(&mut self, mut at: usize) {
        loop {
            let left = 2 * at + 1;
            if left >= self.heap.len() {
                return;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.count_at(right) < self.count_at(left) {
                right
            } else {
                left
            };
            if self.count_at(at) <= self.count_at(child) {
                return;
            }
            self.swap(at, child);
            at = child;
        }
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
        self.heap.clear();
        self.place.clear();
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
    fn the_least_counted_item_is_the_one_replaced() {
        let mut top = SpaceSaving::new(3);
        for item in ["a", "a", "a", "b", "c", "c", "d"] {
            top.record(item);
        }
        let held: Vec<_> = top
            .top(3)
            .iter()
            .map(|c| (c.item, c.count, c.error))
            .collect();
        assert_eq!(held, [("a", 3, 0), ("c", 2, 0), ("d", 2, 1)]);
        // "b" comes back and replaces the least counted again (c or d, at 2).
        top.record("b");
        let held = top.top(3);
        assert_eq!((held[0].item, held[0].count), ("a", 3));
        assert!(
            held.iter()
                .any(|c| (c.item, c.count, c.error) == ("b", 3, 2))
        );
    }

    #[test]
    fn the_guarantees_hold_on_skewed_random_streams() {
        let mut seed = 7u64;
        for round in 0..50usize {
            let capacity = 1 + round % 9;
            let stream: Vec<u32> = (0..400)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    // Skewed: low items are far more frequent.
                    let r = (seed >> 33) as u32 % 1000;
                    r * r / 40_000
                })
                .collect();
            let mut top = SpaceSaving::new(capacity);
            for &item in &stream {
                top.record(item);
            }
            let held = top.top(capacity);
            let truth = |item: u32| stream.iter().filter(|&&i| i == item).count() as u64;
            // Every occurrence is counted once, in some slot.
            let total: u64 = held.iter().map(|c| c.count).sum();
            assert_eq!(total, stream.len() as u64, "round {round}");
            for counted in &held {
                let real = truth(counted.item);
                assert!(
                    counted.count >= real,
                    "round {round}: {counted:?} under {real}"
                );
                assert!(
                    counted.count - counted.error <= real,
                    "round {round}: {counted:?}"
                );
            }
            // Every item more frequent than total / capacity is held.
            for item in 0..25 {
                if truth(item) * capacity as u64 > stream.len() as u64 {
                    assert!(held.iter().any(|c| c.item == item), "round {round}: {item}");
                }
            }
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
