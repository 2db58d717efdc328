//! The resources where writers collide most: a shared, bounded [`SpaceSaving`] of conflicts.
//!
//! Entries are named by route and path only, never by query or key-header values (those may
//! carry credentials), so per-user resources of one path add up to one hot spot.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

pub mod topk;

use topk::SpaceSaving;

/// Default number of resources tracked.
pub const DEFAULT_CAPACITY: usize = 256;

/// Longest path kept for display, in bytes: memory stays bounded whatever clients send.
const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Spot {
    route: Arc<str>,
    path: Box<str>,
}

/// One hot spot, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hotspot {
    /// The route id.
    pub route: String,
    /// The resource's path (no query).
    pub path: String,
    /// Conflicts counted (an upper bound).
    pub conflicts: u64,
    /// How much of `conflicts` may belong to resources it displaced.
    pub error: u64,
}

/// Conflict counts by resource, in bounded memory; cheap to clone (clones share the counts).
#[derive(Debug, Clone)]
pub struct Hotspots {
    top: Arc<Mutex<SpaceSaving<Spot>>>,
}

impl Default for Hotspots {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Hotspots {
    /// Tracks at most `capacity` resources.
    pub fn new(capacity: usize) -> Self {
        Self {
            top: Arc::new(Mutex::new(SpaceSaving::new(capacity))),
        }
    }

    /// Counts one conflict on `path` (a query, if any, is dropped) of `route`.
    pub fn record(&self, route: &Arc<str>, path: &str) {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let spot = Spot {
            route: route.clone(),
            path: truncate(path, MAX_PATH).into(),
        };
        // A panic elsewhere while holding the lock leaves counts that are still counts.
        self.top
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(spot);
    }

    /// The `n` resources with the most conflicts, most first.
    pub fn top(&self, n: usize) -> Vec<Hotspot> {
        let top = self.top.lock().unwrap_or_else(PoisonError::into_inner);
        top.top(n)
            .into_iter()
            .map(|counted| Hotspot {
                route: counted.item.route.to_string(),
                path: counted.item.path.into(),
                conflicts: counted.count,
                error: counted.error,
            })
            .collect()
    }

    /// The most resources tracked.
    pub fn capacity(&self) -> usize {
        self.top
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity()
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_dropped_and_long_paths_cut() {
        let hot = Hotspots::new(4);
        let route: Arc<str> = Arc::from("api");
        hot.record(&route, "/items/1?token=secret");
        hot.record(&route, "/items/1");
        let long = format!("/{}", "é".repeat(300));
        hot.record(&route, &long);
        let top = hot.top(10);
        assert_eq!(top[0].path, "/items/1");
        assert_eq!(top[0].conflicts, 2);
        assert!(top[1].path.len() <= MAX_PATH);
        assert!(top.iter().all(|h| !h.path.contains("secret")));
    }
}
