//! The upstream connections: HTTP/1.1 senders kept per upstream authority and reused.
//!
//! Each connection's future runs in a task of its own, spawned once when the connection is
//! made; a request is handed to it through its [`SendRequest`], with no pool task or channel of
//! the pool's own in between. A sender goes back into its upstream's list as soon as the
//! response head arrives: it is ready for another request only once that response's body has
//! been read to its end, and a checkout takes only a ready one, so a connection still
//! streaming a body, upgraded (101), closed by either side, or dropped mid-body (hyper closes
//! it) is never handed out, and is removed from the list as soon as it is seen closed.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::super::timed_body::TimedBody;
use crate::quick_hash::QuickBuild;

/// A connection to an upstream, ready to take a request.
pub(super) type Sender = SendRequest<TimedBody>;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, name not resolved).
    #[error("tcp connect to {0} failed")]
    Tcp(Authority, #[source] io::Error),
    /// The TCP connection was not made within `server.connect_timeout`.
    #[error("tcp connect to {0} timed out after {1:?}")]
    Timeout(Authority, Duration),
    /// The HTTP/1.1 handshake failed.
    #[error("http/1.1 handshake with {0} failed")]
    Handshake(Authority, #[source] hyper::Error),
}

/// Senders per upstream, bounded in number and in idle time.
#[derive(Debug)]
pub(super) struct Pool {
    /// Keyed by upstream authority, from the route table: [`QuickBuild`] is safe here.
    senders: Mutex<HashMap<Spelled, Vec<Pooled>, QuickBuild>>,
    /// Most senders kept per upstream (idle, or finishing a response).
    max_per_host: usize,
    /// A sender unused for this long is closed.
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Whether the task that closes idle connections runs.
    reaping: AtomicBool,
}

/// An authority compared and hashed as spelled. `Authority`'s own `Eq` and `Hash` ignore
/// ASCII case a byte at a time, which cost a forwarded request more than the rest of its
/// checkout and check-in; the pool's authorities come from the route table, so one upstream
/// always has one spelling (and two spellings would only keep two lists).
#[derive(Debug, Clone)]
struct Spelled(Authority);

impl PartialEq for Spelled {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Spelled {}

// As `str` hashes, so that a look-up by `&str` finds it (`Borrow`'s contract).
impl Hash for Spelled {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl Borrow<str> for Spelled {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

#[derive(Debug)]
struct Pooled {
    sender: Sender,
    /// When it was put back: its last response's head arrived.
    since: Instant,
}

impl Pooled {
    /// Whether it can never be used again: closed, or idle past the timeout.
    fn spent(&self, idle_timeout: Duration) -> bool {
        self.sender.is_closed() || (self.sender.is_ready() && self.since.elapsed() >= idle_timeout)
    }
}

impl Pool {
    pub(super) fn new(
        max_per_host: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            senders: Mutex::new(HashMap::default()),
            max_per_host,
            idle_timeout,
            connect_timeout,
            reaping: AtomicBool::new(false),
        }
    }

    /// A ready sender to `authority`, if one is kept; spent ones seen on the way are dropped
    /// (which closes them).
    pub(super) fn checkout(&self, authority: &Authority) -> Option<Sender> {
        let mut senders = self.senders.lock().ok()?;
        let list = senders.get_mut(authority.as_str())?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].spent(self.idle_timeout) {
                list.swap_remove(i);
            } else if list[i].sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    /// Keeps `sender` for a later request, unless it is closed or its upstream has as many as
    /// it may keep (then it is dropped: hyper closes it once its response is read).
    pub(super) fn checkin(self: &Arc<Self>, authority: Authority, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut senders) = self.senders.lock() else {
            return;
        };
        let list = senders.entry(Spelled(authority)).or_default();
        if list.len() < self.max_per_host {
            list.push(Pooled {
                sender,
                since: Instant::now(),
            });
        }
        drop(senders);
        self.reap_in_background();
    }

    /// A new connection to `authority`, its connection future spawned.
    pub(super) async fn connect(&self, authority: &Authority) -> Result<Sender, ConnectError> {
        let port = authority.port_u16().unwrap_or(80);
        let connect = TcpStream::connect((authority.host(), port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ConnectError::Tcp(authority.clone(), error)),
            Err(_elapsed) => {
                return Err(ConnectError::Timeout(
                    authority.clone(),
                    self.connect_timeout,
                ));
            }
        };
        // Best effort, as for any client: a socket that refuses the options still works.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ConnectError::Handshake(authority.clone(), error))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle past the timeout even when no
    /// request comes to look; it ends with the pool.
    fn reap_in_background(self: &Arc<Self>) {
        // A load first: on every check-in but the first, nothing is written.
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
            }
        });
    }

    /// Drops every spent sender.
    fn reap(&self) {
        if let Ok(mut senders) = self.senders.lock() {
            for list in senders.values_mut() {
                list.retain(|pooled| !pooled.spent(self.idle_timeout));
            }
            senders.retain(|_, list| !list.is_empty());
        }
    }

    /// Senders kept for `authority` (for tests).
    #[cfg(test)]
    pub(super) fn kept(&self, authority: &Authority) -> usize {
        self.senders.lock().map_or(0, |senders| {
            senders.get(authority.as_str()).map_or(0, Vec::len)
        })
    }
}

#[cfg(test)]
mod key_tests {
    use std::hash::BuildHasher;

    use super::*;

    fn spelled(text: &str) -> Spelled {
        Spelled(text.parse().expect("an authority"))
    }

    #[test]
    fn a_spelled_authority_hashes_as_its_text_and_apart_from_others() {
        let build = QuickBuild::default();
        let hash = |text: &str| build.hash_one(spelled(text));
        // `Borrow<str>`'s contract: equal hashes for the key and the text it is looked up by.
        assert_eq!(hash("api.example:8080"), build.hash_one("api.example:8080"));
        let distinct: std::collections::HashSet<u64> = (0..1000)
            .map(|i| hash(&format!("10.0.{}.{}:80", i / 256, i % 256)))
            .chain([hash("api.example:8080"), hash("api.example:8081")])
            .collect();
        assert_eq!(distinct.len(), 1002);
    }

    #[test]
    fn a_kept_list_is_found_by_the_authority_it_was_kept_under() {
        let mut map: HashMap<Spelled, u32, QuickBuild> = HashMap::default();
        map.insert(spelled("127.0.0.1:3000"), 1);
        let authority: Authority = "127.0.0.1:3000".parse().expect("an authority");
        assert_eq!(map.get(authority.as_str()), Some(&1));
        assert_eq!(map.get("127.0.0.1:3001"), None);
        // Another spelling is another list: the route table spells each upstream one way.
        assert_eq!(map.get("LOCALHOST:3000"), None);
    }
}
