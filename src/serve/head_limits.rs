//! The request head limits, as the data plane enforces them and as hyper parses heads.
//!
//! The proxy's head limit layer refuses a head over the configured limits with problem+json;
//! hyper, which parses the head before any service sees it, is given a higher hard ceiling
//! ([`HeadLimits::ceiling`]), past which it answers its own bare 431.

use crate::config::ServerConfig;

/// hyper's read buffer cannot be smaller than this (it panics otherwise).
const HYPER_MIN_BUF_SIZE: usize = 8192;
/// How far past the configured limits hyper's ceiling sits, at most: the extra a client can
/// make the proxy parse before it is refused.
const MAX_EXTRA_BYTES: usize = 1 << 20;
const MAX_EXTRA_HEADERS: usize = 100;
/// hyper's own field limit, which it parses into a stack array; a higher one costs a heap
/// allocation per request.
pub(crate) const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The largest request head accepted: its size in bytes and its number of fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes in a request head, serialized as HTTP/1.1 (request line, field lines, and
    /// the final CRLF).
    pub max_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
}

impl HeadLimits {
    /// The limits of `server` (`max_header_bytes`, `max_headers`).
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            max_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
        }
    }

    /// hyper's hard limits: twice the bytes (at most 1 MiB more); for fields, hyper's own
    /// limit of 100, or, for a configured limit above it, twice that (at most 100 more).
    ///
    /// The field ceiling stays at hyper's default whenever it can: a higher one costs every
    /// request a heap allocation, so past 100 fields (never a browser's or an SDK's request)
    /// the answer is hyper's bare 431.
    pub fn ceiling(self) -> Self {
        let max_headers = if self.max_headers <= HYPER_DEFAULT_MAX_HEADERS {
            HYPER_DEFAULT_MAX_HEADERS
        } else {
            self.max_headers
                .saturating_add(self.max_headers.min(MAX_EXTRA_HEADERS))
        };
        Self {
            max_bytes: self
                .max_bytes
                .saturating_add(self.max_bytes.min(MAX_EXTRA_BYTES))
                .max(HYPER_MIN_BUF_SIZE),
            max_headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: usize, max_headers: usize) -> HeadLimits {
        HeadLimits {
            max_bytes,
            max_headers,
        }
    }

    #[test]
    fn the_ceiling_is_twice_the_limits_capped() {
        // Fields: hyper's own 100 up to it, so that no request pays for a larger array.
        assert_eq!(limits(65536, 100).ceiling(), limits(131_072, 100));
        assert_eq!(limits(8192, 1).ceiling(), limits(16384, 100));
        assert_eq!(limits(8192, 101).ceiling(), limits(16384, 201));
        assert_eq!(
            limits(16 << 20, 10_000).ceiling(),
            limits((16 << 20) + (1 << 20), 10_100)
        );
        // Below hyper's minimum read buffer (config validation refuses it anyway).
        assert_eq!(limits(100, 5).ceiling().max_bytes, HYPER_MIN_BUF_SIZE);
        // No upper bound in the config for the field count: no overflow either.
        assert_eq!(limits(1, usize::MAX).ceiling().max_headers, usize::MAX);
    }
}
