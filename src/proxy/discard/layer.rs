//! The discard layer and its limits.

use std::time::Duration;

use tower::Layer;

use super::Discard;
use crate::config::ServerConfig;

/// How much of an unread body is read to keep its connection, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Most bytes read and discarded.
    pub max_bytes: u64,
    /// The whole body must have arrived this long after the request's head.
    pub timeout: Duration,
}

impl DiscardLimits {
    /// The limits of `server` (`discard_body_bytes`, `body_read_timeout`).
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            max_bytes: u64::try_from(server.discard_body_bytes).unwrap_or(u64::MAX),
            timeout: server.body_read_timeout,
        }
    }
}

/// Applies [`Discard`].
#[derive(Debug, Clone, Copy)]
pub struct DiscardLayer {
    limits: DiscardLimits,
}

impl DiscardLayer {
    /// Discards unread bodies within `limits`.
    pub fn new(limits: DiscardLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for DiscardLayer {
    type Service = Discard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Discard::new(inner, self.limits)
    }
}
