//! End-to-end fixtures on loopback sockets (ephemeral ports only):
//!
//! - [`Backend`]: a hyper upstream that records every request it sees (method, URI, version,
//!   headers) and answers from a table of routes, so tests can prove what reached it. A route
//!   may upgrade its connection (`hyper::upgrade::on`).
//! - [`Proxy`]: the ifmatch proxy served in-process on `127.0.0.1:0`.
//! - [`Client`]: an HTTP/1.1 or h2c client that collects responses.
//!
//! ```ignore
//! let backend = Backend::new().route(Method::GET, "/items/1", Reply::ok("{}")).spawn().await;
//! let proxy = Proxy::passthrough(support::config(backend.addr)).await;
//! let answer = Client::http1().get(proxy.url("/items/1")).await;
//! assert_eq!(backend.hits(Method::GET, "/items/1"), 1);
//! ```
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ifmatch::app::Server;
use ifmatch::config::{Config, Overrides};
use ifmatch::proxy::Routes;
use ifmatch::serve::ServeError;
use ifmatch::store::Store;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub mod h2;
pub mod raw;
pub mod rss;
pub mod storm;
pub mod workload;

/// Every test step is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `future`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("test step timed out")
}

/// A body type any test can build.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body sent in these chunks, without a length (chunked on HTTP/1.1).
pub fn chunked(chunks: Vec<Bytes>) -> TestBody {
    let frames = futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
    StreamBody::new(frames).boxed()
}

/// A config with one catch-all route ("default") to `upstream`.
pub fn config(upstream: SocketAddr) -> Config {
    Config::from_overrides(&Overrides {
        upstream: Some(format!("http://{upstream}")),
        ..Overrides::default()
    })
    .expect("valid config")
}

/// A config from TOML text.
pub fn config_toml(text: &str) -> Config {
    Config::from_toml(text, &Overrides::default()).expect("valid config")
}

/// A config with one route ("api") to `upstream`, and `sections` (TOML, e.g. a `[server]`
/// table with the limits under test) before it.
pub fn config_with(upstream: SocketAddr, sections: &str) -> Config {
    config_toml(&format!(
        "{sections}\n[[routes]]\nname = \"api\"\nupstream = \"http://{upstream}\"\n"
    ))
}

/// The value of the first sample of `name` in a Prometheus text exposition `metrics` whose
/// labels include every one of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// An address nothing listens on (bound then released): connections to it are refused.
pub async fn unused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

// ---------------------------------------------------------------------------------------------
// Backend

/// A canned upstream response.
#[derive(Clone, Debug)]
pub struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Reply {
    /// A response with `status` and no body.
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::status(200).body(body)
    }

    /// Adds a header (repeatable: headers are appended).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The response this reply stands for.
    pub fn response(&self) -> Response<TestBody> {
        let mut response = Response::new(full(self.body.clone()));
        *response.status_mut() = self.status;
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        response
    }
}

type HandlerFn = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

#[derive(Clone)]
enum Handler {
    Reply(Reply),
    /// 200 with the request's body, read in full first.
    Echo,
    /// Never answers until the backend handle is dropped (then 503).
    Hang,
    Fn(HandlerFn),
}

/// What the backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Request target as received (origin form).
    pub uri: Uri,
    /// Protocol version on the backend's connection.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
}

/// A recording upstream, built fluently then spawned on `127.0.0.1:0`.
pub struct Backend {
    routes: HashMap<(Method, String), Handler>,
    fallback: Handler,
}

impl Default for Backend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend {
    /// A backend answering 404 to everything.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            fallback: Handler::Reply(Reply::status(404).body("backend: no such route")),
        }
    }

    /// Answers `method path` (path without query) with `reply`.
    pub fn route(mut self, method: Method, path: &str, reply: Reply) -> Self {
        self.routes
            .insert((method, path.to_owned()), Handler::Reply(reply));
        self
    }

    /// Answers `method path` with the request's own body.
    pub fn echo(mut self, method: Method, path: &str) -> Self {
        self.routes.insert((method, path.to_owned()), Handler::Echo);
        self
    }

    /// Never answers `method path` while the handle lives.
    pub fn hang(mut self, method: Method, path: &str) -> Self {
        self.routes.insert((method, path.to_owned()), Handler::Hang);
        self
    }

    /// Answers `method path` with `f`.
    pub fn route_fn<F, Fut>(mut self, method: Method, path: &str, f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let f: HandlerFn = Arc::new(move |req| Box::pin(f(req)));
        self.routes
            .insert((method, path.to_owned()), Handler::Fn(f));
        self
    }

    /// Answers every unrouted request with `reply`.
    pub fn fallback(mut self, reply: Reply) -> Self {
        self.fallback = Handler::Reply(reply);
        self
    }

    /// Serves on a fresh ephemeral port.
    pub async fn spawn(self) -> BackendHandle {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        self.serve(listener)
    }

    /// Serves on `addr` (e.g. to bring back an upstream that was down).
    pub async fn spawn_on(self, addr: SocketAddr) -> BackendHandle {
        let listener = TcpListener::bind(addr).await.expect("bind backend again");
        self.serve(listener)
    }

    fn serve(self, listener: TcpListener) -> BackendHandle {
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let (count_tx, count_rx) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let (release_tx, release_rx) = watch::channel(());
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let routes = Arc::new(self.routes);
        let fallback = self.fallback;
        let recorder = seen.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            recorder.lock().expect("seen lock").push(Seen {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
            });
            count_tx.send_modify(|n| *n += 1);
            let handler = routes
                .get(&(req.method().clone(), req.uri().path().to_owned()))
                .unwrap_or(&fallback)
                .clone();
            let mut release = release_rx.clone();
            async move {
                let response = match handler {
                    Handler::Reply(reply) => reply.response(),
                    Handler::Echo => match req.into_body().collect().await {
                        Ok(body) => Response::new(full(body.to_bytes())),
                        Err(error) => Reply::status(400).body(error.to_string()).response(),
                    },
                    Handler::Hang => {
                        // Completes only when the handle (the sender) is dropped.
                        while release.changed().await.is_ok() {}
                        Reply::status(503).response()
                    }
                    Handler::Fn(f) => f(req).await,
                };
                Ok::<_, Infallible>(response)
            }
        });
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
                            .into_owned();
                        connections.spawn(connection);
                    }
                }
            }
            // Dropping the set aborts every connection: the upstream is gone.
            connections.shutdown().await;
        });
        BackendHandle {
            addr,
            seen,
            count: count_rx,
            _release: release_tx,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }
}

/// A running [`Backend`]. Dropping it stops the backend and releases hanging requests.
pub struct BackendHandle {
    /// Where the backend listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Receiver<usize>,
    _release: watch::Sender<()>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl BackendHandle {
    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// How many `method path` requests (path without query) reached the backend.
    pub fn hits(&self, method: Method, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.uri.path() == path)
            .count()
    }

    /// The last `method path` request seen.
    pub fn last(&self, method: Method, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.method == method && s.uri.path() == path)
            .unwrap_or_else(|| panic!("backend never saw {method} {path}"))
    }

    /// Waits until the backend has seen at least `n` requests in total.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut count = self.count.clone();
        bounded(count.wait_for(|seen| *seen >= n))
            .await
            .expect("backend alive");
    }

    /// Stops the backend and waits until its port is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            bounded(task).await.expect("backend task");
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy

/// The ifmatch proxy, served in-process.
pub struct Proxy;

impl Proxy {
    /// Serves `config` with the guard (in-memory store).
    pub async fn spawn(config: Config) -> ProxyHandle {
        Self::spawn_server(Server::new(config).expect("valid config")).await
    }

    /// Serves `config` without the guard.
    pub async fn passthrough(config: Config) -> ProxyHandle {
        Self::spawn_server(Server::new(config).expect("valid config").passthrough(true)).await
    }

    /// Serves a configured server (e.g. with its own store) on `127.0.0.1:0`.
    pub async fn spawn_server<St: Store>(server: Server<St>) -> ProxyHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stop_rx.await;
        }));
        ProxyHandle {
            addr,
            admin: None,
            routes: None,
            stop: Some(stop_tx),
            task,
        }
    }

    /// Serves `config` with the guard and the admin API, each on `127.0.0.1:0`.
    pub async fn with_admin(config: Config) -> ProxyHandle {
        Self::spawn_with_admin(Server::new(config).expect("valid config")).await
    }

    /// Serves a configured server and its admin API, each on `127.0.0.1:0`.
    pub async fn spawn_with_admin<St: Store>(server: Server<St>) -> ProxyHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("local addr");
        let admin_addr = admin.local_addr().expect("local addr");
        let routes = server.routes();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_with_admin(listener, admin, async {
            let _ = stop_rx.await;
        }));
        ProxyHandle {
            addr,
            admin: Some(admin_addr),
            routes: Some(routes),
            stop: Some(stop_tx),
            task,
        }
    }
}

/// A running [`Proxy`]. Dropping it shuts the proxy down.
pub struct ProxyHandle {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where its admin API listens, if served.
    pub admin: Option<SocketAddr>,
    /// Its live route table, if served with the admin API (for reload tests).
    pub routes: Option<Routes>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl ProxyHandle {
    /// `http://<proxy>/<path>`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// `http://<admin>/<path>` (panics without an admin listener).
    pub fn admin_url(&self, path_and_query: &str) -> String {
        let admin = self.admin.expect("proxy served with its admin API");
        format!("http://{admin}{path_and_query}")
    }

    /// Starts a graceful shutdown; returns the serve task to await.
    pub fn begin_shutdown(&mut self) -> &mut JoinHandle<Result<(), ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        &mut self.task
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Demo API

/// The bundled demo API (`ifmatch::demo`), served in-process. Dropping it stops it.
pub struct DemoHandle {
    /// Where the demo API listens.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl DemoHandle {
    /// Serves the demo API on `127.0.0.1:0`.
    pub async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind demo");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(ifmatch::demo::serve(listener, async {
            let _ = stop_rx.await;
        }));
        Self { addr, _stop: stop }
    }

    /// `http://<demo>/<path>`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// A response read in full.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Protocol version the client got.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// A header as text (panics when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("text header")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a problem+json response with `status` and the problem `slug`.
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.header("content-type"), "application/problem+json");
        let problem = self.json();
        assert_eq!(problem["status"], status, "{problem}");
        assert_eq!(
            problem["type"],
            format!("urn:ifmatch:problem:{slug}"),
            "{problem}"
        );
        problem
    }
}

/// An HTTP client for tests (a fresh connection pool per client).
#[derive(Clone)]
pub struct Client {
    inner: legacy::Client<HttpConnector, TestBody>,
}

impl Client {
    /// HTTP/1.1.
    pub fn http1() -> Self {
        Self {
            inner: legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 over cleartext, with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self {
            inner: legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> Answer {
        bounded(async {
            let response = self.inner.request(req).await.expect("response");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("response body").to_bytes();
            Answer {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            }
        })
        .await
    }

    /// `GET url`.
    pub async fn get(&self, url: impl AsRef<str>) -> Answer {
        self.send(
            request(Method::GET, url.as_ref())
                .body(full(""))
                .expect("request"),
        )
        .await
    }

    /// `method url` with a JSON body.
    pub async fn json(
        &self,
        method: Method,
        url: impl AsRef<str>,
        body: &serde_json::Value,
    ) -> Answer {
        self.send(
            request(method, url.as_ref())
                .header("content-type", "application/json")
                .body(full(body.to_string()))
                .expect("request"),
        )
        .await
    }
}

/// A request builder for `method url`.
pub fn request(method: Method, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}
