//! The forwarded writes in flight: bounded in number, and awaited at shutdown.
//!
//! A forwarded write runs to its outcome in a task of its own, which may outlive its client
//! (see [`super::exchange`]). Each holds a permit: past the bound a write gets 503 before it is
//! forwarded, and a proxy that shuts down waits for the permits to come back, so that a write
//! the upstream is still applying is not cut off with its resource's lease (on the memory
//! store, a restarted proxy would then revalidate before the write landed).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many forwarded writes may run at once by default.
pub const DEFAULT_MAX_WRITES_IN_FLIGHT: usize = 10_000;

/// A shared count of forwarded writes in flight (cheap to clone: clones share it).
#[derive(Debug, Clone)]
pub struct WritesInFlight {
    permits: Arc<Semaphore>,
    max: u32,
}

impl WritesInFlight {
    /// At most `max` writes in flight (at least 1, at most `u32::MAX`).
    pub fn new(max: usize) -> Self {
        let max = u32::try_from(max.max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// A permit for one more write, if the bound allows.
    pub(crate) fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// How many writes are in flight now.
    pub fn in_flight(&self) -> usize {
        self.max as usize - self.permits.available_permits()
    }

    /// Completes once no write is in flight (new ones may start afterwards).
    pub async fn drained(&self) {
        // Holding every permit at once means none is out; they are given back at once.
        if let Ok(all) = self.permits.acquire_many(self.max).await {
            drop(all);
        }
    }
}

impl Default for WritesInFlight {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_WRITES_IN_FLIGHT)
    }
}
