//! Addresses a routed request to its upstream: rewrites the URI, drops hop-by-hop headers
//! (RFC 9110 §7.6.1) in both directions, sets `Host` and adds `Via` and `X-Forwarded-*`. A
//! WebSocket handshake keeps its upgrade headers and, if the upstream accepts it, becomes a
//! tunnel (see [`upgrade`](super::upgrade)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::client::UpstreamError;
use super::router::Target;
use super::upgrade::Handshake;
use crate::serve::ClientAddr;

/// Headers meaningful only for one connection (RFC 9110 §7.6.1), besides those `Connection`
/// names. `Proxy-Connection` and `Keep-Alive` are obsolete but still sent by old clients.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "trailer",
];

/// [`HOP_BY_HOP_NAMES`] as header names.
static HOP_BY_HOP: [HeaderName; 9] = {
    let n = &HOP_BY_HOP_NAMES;
    [
        HeaderName::from_static(n[0]),
        HeaderName::from_static(n[1]),
        HeaderName::from_static(n[2]),
        HeaderName::from_static(n[3]),
        HeaderName::from_static(n[4]),
        HeaderName::from_static(n[5]),
        HeaderName::from_static(n[6]),
        HeaderName::from_static(n[7]),
        HeaderName::from_static(n[8]),
    ]
};

/// Bit `n` set: some hop-by-hop name is `n` bytes long. A name of another length is none of
/// them, which one shift tells instead of nine comparisons.
const HOP_BY_HOP_LENGTHS: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < HOP_BY_HOP_NAMES.len() {
        mask |= 1 << HOP_BY_HOP_NAMES[i].len();
        i += 1;
    }
    mask
};

fn is_hop_by_hop(name: &HeaderName) -> bool {
    let len = name.as_str().len();
    len < 64 && HOP_BY_HOP_LENGTHS >> len & 1 == 1 && HOP_BY_HOP.contains(name)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers: every header `Connection` names, then the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names is cheaper than nine hashed
    // removals. `Connection` is in the set, so names it lists are never skipped.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Applies [`Forward`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardLayer;

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forward { inner }
    }
}

/// Rewrites a request routed by the [`Router`](super::Router) for its upstream, and the
/// upstream's response for the client.
#[derive(Debug, Clone)]
pub struct Forward<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Forward<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = UpstreamError>,
{
    type Response = Response<RB>;
    type Error = UpstreamError;
    type Future = ForwardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let handshake = Handshake::take(&mut req);
        match address(&mut req) {
            Ok(()) => {
                if handshake.is_some() {
                    Handshake::ask(req.headers_mut());
                }
                ForwardFuture {
                    kind: Kind::Forwarded {
                        inner: self.inner.call(req),
                    },
                    handshake,
                }
            }
            Err(error) => ForwardFuture {
                kind: Kind::Failed { error: Some(error) },
                handshake: None,
            },
        }
    }
}

/// Rewrites `req` in place for the upstream in its [`Target`].
fn address<B>(req: &mut Request<B>) -> Result<(), UpstreamError> {
    // Requests the guard makes itself carry the original request's extensions.
    let (upstream, preserve_host) = req
        .extensions()
        .get::<Target>()
        .map(|target| (target.upstream.clone(), target.preserve_host))
        .ok_or(UpstreamError::Internal("the request was not routed"))?;
    let forwarded_for = req
        .extensions()
        .get::<ClientAddr>()
        .and_then(|client| client.forwarded_for().cloned());

    // RFC 9112 §3.2.2: an absolute-form target overrides Host; h2 has only :authority.
    let client_host = match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let received = req.version();

    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| UpstreamError::Internal("invalid upstream uri"))?;
    // The upstream is spoken to in HTTP/1.1 whatever the client used.
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let host = match (&client_host, preserve_host) {
        (Some(client_host), true) => Some(client_host.clone()),
        _ => HeaderValue::from_str(upstream.as_str()).ok(),
    };
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    append_via(headers, received);
    if let Some(client) = forwarded_for {
        append_to_list(headers, &X_FORWARDED_FOR, client);
    }
    // An earlier proxy (a TLS-terminating load balancer) knows better: keep what it set.
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(client_host) = client_host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), client_host);
        }
    }
    Ok(())
}

/// RFC 9110 §7.6.3: a gateway sends `Via` on the requests it forwards.
fn append_via(headers: &mut HeaderMap, received: Version) {
    let hop = match received {
        Version::HTTP_09 => "0.9 ifmatch",
        Version::HTTP_10 => "1.0 ifmatch",
        Version::HTTP_2 => "2 ifmatch",
        Version::HTTP_3 => "3 ifmatch",
        _ => "1.1 ifmatch",
    };
    append_to_list(headers, &header::VIA, HeaderValue::from_static(hop));
}

/// Appends `item` to the comma-separated list in `name`, as one line.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, item: HeaderValue) {
    match headers.entry(name) {
        // Most requests carry no such list yet: then the item is the list, with no copy.
        Entry::Vacant(entry) => {
            entry.insert(item);
        }
        Entry::Occupied(mut entry) => {
            let mut chain: Vec<&[u8]> = entry.iter().map(HeaderValue::as_bytes).collect();
            chain.push(item.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&chain.join(&b", "[..])) {
                entry.insert(value);
            }
        }
    }
}

pin_project! {
    /// The upstream's response with its hop-by-hop headers removed.
    pub struct ForwardFuture<F> {
        #[pin]
        kind: Kind<F>,
        handshake: Option<Handshake>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Forwarded { #[pin] inner: F },
        Failed { error: Option<UpstreamError> },
    }
}

impl<F, RB> Future for ForwardFuture<F>
where
    F: Future<Output = Result<Response<RB>, UpstreamError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Forwarded { inner } => {
                let mut response = std::task::ready!(inner.poll(cx))?;
                strip_hop_by_hop(response.headers_mut());
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    match this.handshake.take() {
                        Some(handshake) => handshake.accept(&mut response),
                        // The client's connection could not follow it to another protocol.
                        None => {
                            return Poll::Ready(Err(UpstreamError::Internal(
                                "the upstream switched protocols unasked",
                            )));
                        }
                    }
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or(UpstreamError::Internal("future polled after completion")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(builder: http::request::Builder, preserve_host: bool) -> Request<()> {
        let mut req = builder.body(()).unwrap();
        req.extensions_mut().insert(Target {
            route: "r".into(),
            upstream: "10.0.0.1:3000".parse().unwrap(),
            preserve_host,
            metrics: std::sync::Arc::new(crate::telemetry::RouteMetrics::new("r".into())),
        });
        req.extensions_mut()
            .insert(ClientAddr::new("192.0.2.7:5555".parse().unwrap()));
        req
    }

    #[test]
    fn each_hop_by_hop_name_is_one_and_names_of_the_same_lengths_are_not() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        // The first three are as long as hop-by-hop names (10, 7, 17 bytes); the rest are not.
        for other in [
            "user-agent",
            "expires",
            "x-forwarded-proto",
            "host",
            "x-request-id",
            "t",
        ] {
            let name = HeaderName::from_static(other);
            assert!(!is_hop_by_hop(&name), "{other}");
        }
        let long = HeaderName::from_bytes(&[b'x'; 100]).unwrap();
        assert!(!is_hop_by_hop(&long));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
            ("authorization", "Bearer kept"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-end-to-end"]);
    }

    #[test]
    fn origin_form_request_is_addressed_to_the_upstream() {
        let mut req = routed(
            Request::put("/items/1?x=1")
                .header("host", "api.example:8080")
                .header("x-forwarded-for", "198.51.100.1")
                .header("via", "1.0 edge")
                .header("via", "1.1 lb"),
            true,
        );
        address(&mut req).unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:3000/items/1?x=1");
        assert_eq!(req.version(), Version::HTTP_11);
        let h = req.headers();
        assert_eq!(h["host"], "api.example:8080");
        assert_eq!(h["x-forwarded-host"], "api.example:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 192.0.2.7");
        // Each list is sent as one line, earlier hops first.
        assert_eq!(h.get_all("via").iter().count(), 1);
        assert_eq!(h["via"], "1.0 edge, 1.1 lb, 1.1 ifmatch");
    }

    #[test]
    fn h2_authority_becomes_host_unless_host_is_not_preserved() {
        let builder = || {
            Request::get("http://api.example/x")
                .version(Version::HTTP_2)
                .header("x-forwarded-proto", "https")
        };
        let mut req = routed(builder(), true);
        address(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "api.example");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        assert_eq!(req.headers()["via"], "2 ifmatch");

        let mut req = routed(builder(), false);
        address(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "10.0.0.1:3000");
        assert_eq!(req.headers()["x-forwarded-host"], "api.example");
    }

    #[test]
    fn unrouted_request_is_an_internal_error() {
        let mut req = Request::get("/").body(()).unwrap();
        assert!(matches!(address(&mut req), Err(UpstreamError::Internal(_))));
    }
}
