//! WebSocket pass-through (RFC 6455 §4 over HTTP/1.1, RFC 9110 §7.8).
//!
//! A GET over HTTP/1.1 with `Connection: upgrade` and `Upgrade: websocket` is forwarded with
//! those two headers (every other hop-by-hop header is still dropped). If the upstream answers
//! 101, the client gets the 101 and the two connections are spliced byte for byte; any other
//! answer is relayed as it is. Nothing else is upgraded: writes, `Upgrade: h2c` and other
//! protocols lose the header as before. A tunnel keeps its client connection's place under
//! `server.max_connections`, is closed after `server.idle_timeout` without a byte either way,
//! and is closed at once on shutdown (it has no request boundary to drain at).

use std::error::Error as StdError;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::serve::connection::Scope;

/// A client's WebSocket handshake, waiting for the upstream's answer.
#[derive(Debug)]
pub(crate) struct Handshake {
    client: OnUpgrade,
    scope: Scope,
}

/// Whether a comma-separated header of `headers` lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

impl Handshake {
    /// Takes the client's side of a WebSocket handshake out of `req`, if it is one on a
    /// connection the server can hand over.
    pub(crate) fn take<B>(req: &mut Request<B>) -> Option<Self> {
        if req.method() != Method::GET
            || req.version() != Version::HTTP_11
            || !lists(req.headers(), &header::CONNECTION, "upgrade")
            || !lists(req.headers(), &header::UPGRADE, "websocket")
        {
            return None;
        }
        let scope = req.extensions().get::<Scope>()?.clone();
        let client = req.extensions_mut().remove::<OnUpgrade>()?;
        Some(Self { client, scope })
    }

    /// Asks the upstream for the upgrade (after the hop-by-hop headers were dropped).
    pub(crate) fn ask(headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }

    /// The upstream switched protocols: tell the client so, and splice the two connections
    /// once both are handed over.
    pub(crate) fn accept<B>(self, response: &mut Response<B>) {
        let upstream = hyper::upgrade::on(&mut *response);
        Self::ask(response.headers_mut());
        tokio::spawn(self.splice(upstream));
    }

    async fn splice(self, upstream: OnUpgrade) {
        let Self { client, scope } = self;
        let tunnel = async {
            let (client, upstream) = tokio::try_join!(client, upstream)?;
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let bytes = tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            Ok::<_, Box<dyn StdError + Send + Sync>>(bytes)
        };
        tokio::select! {
            done = tunnel => match done {
                Ok((up, down)) => tracing::debug!(up, down, "websocket tunnel ended"),
                Err(error) => tracing::debug!(%error, "websocket tunnel failed"),
            },
            why = scope.closing() => tracing::debug!(?why, "websocket tunnel closed"),
        }
    }
}
