//! The one place the proxy's layers are ordered.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::Either;
use tower::{Service, ServiceBuilder};

use super::client::UpstreamClient;
use super::discard::{ClientBody, DiscardLayer, DiscardLimits};
use super::forward::ForwardLayer;
use super::head_limit::HeadLimitLayer;
use super::hotspots::Hotspots;
use super::idempotency::IdempotencyLayer;
use super::observe::ObserveLayer;
use super::request_id::RequestIdLayer;
use super::rescue::RescueLayer;
use super::router::{RouterLayer, Routes};
use crate::guard::{
    Policy, PreconditionLayer, RequestBody, ResponseBody, Versions, WritesInFlight,
};
use crate::serve::HeadLimits;
use crate::store::Store;
use crate::store::idempotency::AnyRecords;

/// The body of every response the proxy sends: the upstream's, streamed, or one it made.
pub type ProxyBody = ResponseBody<Incoming>;

/// Whether writes are guarded.
#[derive(Debug, Clone)]
pub enum Mode<St> {
    /// Enforce preconditions with this store, counting forwarded writes in flight in the
    /// second (for the shutdown to wait for them), remembering representations in the third
    /// (for conflict responses and merges).
    Guard(St, WritesInFlight, Versions),
    /// Forward everything unchecked (a baseline for benchmarks): the same stack minus the guard.
    Passthrough,
}

/// The proxy's request handling from a client's request to the upstream and back.
///
/// `routes` may be a fixed table (`Arc<RouteTable>`) or a reloadable [`Routes`]; conflicts are
/// counted in `hotspots`, if given; request heads over `limits` get 431; what is left unread
/// of a request body is discarded within `discard`; `Idempotency-Key`s are honoured, on the
/// routes that ask for it, with `idempotency`'s records (none: the header passes through).
pub fn stack<St: Store>(
    routes: impl Into<Routes>,
    client: UpstreamClient,
    mode: Mode<St>,
    idempotency: Option<IdempotencyLayer<AnyRecords>>,
    hotspots: Option<Hotspots>,
    limits: HeadLimits,
    discard: DiscardLimits,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let guard = match mode {
        // The router's RouteContext selects each request's policy; this one is never used.
        Mode::Guard(store, writes, versions) => Either::Left(
            PreconditionLayer::new(store)
                .policy(Policy::default())
                .writes_in_flight(writes)
                .versions(versions),
        ),
        Mode::Passthrough => Either::Right(
            ServiceBuilder::new()
                .map_request(|req: Request<ClientBody>| req.map(RequestBody::new))
                .map_response(|res: Response<Incoming>| res.map(ResponseBody::upstream))
                .into_inner(),
        ),
    };
    ServiceBuilder::new()
        // Outermost: every answer below, the 431 included, is one it may have to hold back
        // until the body left unread is discarded, or mark as closing the connection; it only
        // wraps the body, so the head limit still sees the head as the client sent it.
        .layer(DiscardLayer::new(discard))
        // Next: it counts the head as the client sent it, before the request id is added, and
        // a head over the limits costs no routing, store lookup or upstream request (hyper
        // itself only refuses heads past its ceiling). Its 431 echoes the request id itself.
        .layer(HeadLimitLayer::new(limits))
        // Next, so that every other response, the proxy's own problems included, carries the
        // request id, and everything below (logs, upstream) sees it.
        .layer(RequestIdLayer)
        // Above all that can fail, so that every error below, routing and guard included,
        // becomes a response.
        .layer(RescueLayer)
        // Before the guard: the route selects the guard's policy and keys, and unrouted
        // requests are refused before they cost a store lookup.
        .layer(RouterLayer::new(routes))
        // Below the router (metrics are per route), above the guard, whose rejections it
        // reads from the responses to count, log once, and feed the hot spots.
        .layer(ObserveLayer::new(hotspots))
        // Below the router (the route's policy and key headers scope each record) and above
        // the guard: a replay, a 409 in flight or a 422 reaches neither the guard nor the
        // upstream; below Observe, so its answers are counted like the guard's.
        .option_layer(idempotency)
        // Below the router (needs the route) and above forwarding, so that its revalidation
        // GETs are forwarded like any client request.
        .layer(guard)
        // Next to the client: rewrites exactly what goes on the wire, for client and guard alike.
        .layer(ForwardLayer)
        // The pooled connections, with the response timeout.
        .service(client)
}
