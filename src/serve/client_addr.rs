//! The client's address, as the accept loop knows it.

use std::net::SocketAddr;

use http::HeaderValue;

/// The client's address, put in each request's extensions by the accept loop.
///
/// Made once per connection: it carries the address already formatted for
/// `X-Forwarded-For`, so that each request only clones it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    addr: SocketAddr,
    forwarded_for: Option<HeaderValue>,
}

impl ClientAddr {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_canonical().to_string()).ok();
        Self {
            addr,
            forwarded_for,
        }
    }

    /// The client's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's IP as `X-Forwarded-For` carries it.
    pub(crate) fn forwarded_for(&self) -> Option<&HeaderValue> {
        self.forwarded_for.as_ref()
    }
}
