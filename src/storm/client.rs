//! The HTTP edge of a storm: one pooled client, bounded bodies, failures sorted by kind.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::StormError;

/// Bodies past this size are a failure, not a reason to exhaust memory.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A response, read in full.
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A request that got no complete response.
pub(crate) enum Failure {
    /// No connection could be made.
    Connect(hyper_util::client::legacy::Error),
    /// No complete response within the timeout.
    Timeout,
    /// The exchange broke after connecting.
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl Failure {
    /// The setup-phase error for this failure on `uri`.
    pub(crate) fn into_error(self, uri: &Uri, timeout: Duration) -> StormError {
        let url = uri.to_string();
        match self {
            Failure::Connect(source) => StormError::Unreachable { url, source },
            Failure::Timeout => StormError::Timeout {
                url,
                after: timeout,
            },
            Failure::Transport(source) => StormError::Transport { url, source },
        }
    }
}

/// A pooled HTTP/1.1 client with a per-request deadline.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    pub(crate) fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        // Small request/response pairs: Nagle would only add latency to the figures.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, timeout }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) async fn get(&self, uri: &Uri) -> Result<Fetched, Failure> {
        let mut req = Request::new(Full::default());
        *req.uri_mut() = uri.clone();
        self.send(req).await
    }

    /// PUT a JSON body, with an optional precondition header.
    pub(crate) async fn put(
        &self,
        uri: &Uri,
        body: Bytes,
        precondition: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Fetched, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::PUT;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some((name, value)) = precondition {
            headers.insert(name, value);
        }
        self.send(req).await
    }

    /// POST a JSON body (to create a resource in a collection).
    pub(crate) async fn post(&self, uri: &Uri, body: Bytes) -> Result<Fetched, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Fetched, Failure> {
        let exchange = async {
            let response = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Connect(e)
                } else {
                    Failure::Transport(e.into())
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(Failure::Transport)?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// The response's entity-tag, if it is strong and well-formed (RFC 9110 §8.8.3).
///
/// A weak tag never matches under `If-Match`'s strong comparison, so it is as good as none.
pub(crate) fn strong_etag(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(ETAG)?;
    let bytes = value.as_bytes();
    let quoted = bytes.len() >= 2 && bytes.starts_with(b"\"") && bytes.ends_with(b"\"");
    quoted.then(|| value.clone())
}
