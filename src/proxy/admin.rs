//! The admin listener: liveness and readiness for orchestrators. (Metrics and the key API
//! come later, in their own module.)

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::server::{ServeError, connection_builder, local_addr, serve_connections};
use crate::config::ServerConfig;

/// Serves `/healthz` and `/readyz` on `listener` until `shutdown`.
///
/// # Errors
/// None yet; the signature leaves room for checks that can fail.
pub async fn serve_admin(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tracing::info!(addr = %local_addr(&listener), "admin listening");
    let service = tower::service_fn(|req: Request<Incoming>| async move {
        Ok::<_, Infallible>(respond(req.method(), req.uri().path()))
    });
    serve_connections(
        listener,
        connection_builder(&ServerConfig::default()),
        service,
        shutdown,
        Duration::from_secs(1),
    )
    .await;
    Ok(())
}

fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        // The data plane serves as soon as it is listening; the store is in memory.
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, "ready\n"),
        (_, "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
