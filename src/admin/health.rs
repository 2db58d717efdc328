//! Liveness and readiness.

use std::time::Duration;

use http::uri::Authority;
use http::{Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpStream;

use super::reply::{AdminBody, json, problem_with};
use crate::key::ResourceKey;
use crate::proxy::Routes;
use crate::store::Store;

/// One readiness check's result.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `/healthz`: the process answers.
pub fn healthz() -> Response<AdminBody> {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `/readyz`: a config is loaded, every upstream accepts a TCP connection within `timeout`,
/// and the store answers a lookup. 503 problem+json listing the failed checks otherwise.
pub async fn readyz<St: Store>(
    routes: Option<&Routes>,
    store: Option<&St>,
    timeout: Duration,
) -> Response<AdminBody> {
    let mut checks = Vec::new();
    let table = routes.map(Routes::load);
    checks.push(Check {
        name: "config".into(),
        ok: table.as_ref().is_none_or(|t| !t.is_empty()),
        error: None,
    });
    if let Some(table) = &table {
        let probes = table
            .upstreams()
            .into_iter()
            .map(|upstream| probe(upstream, timeout));
        checks.extend(futures_util::future::join_all(probes).await);
    }
    if let Some(store) = store {
        // Any key will do: a lookup proves the store answers.
        let probe = tokio::time::timeout(timeout, store.load(ResourceKey::from_bytes([0; 16])));
        let error = match probe.await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        checks.push(Check {
            name: "store".into(),
            ok: error.is_none(),
            error,
        });
    }
    let ready = checks.iter().all(|c| c.ok);
    if ready {
        return json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "checks": checks }),
        );
    }
    let mut extra = serde_json::Map::new();
    extra.insert(
        "checks".into(),
        serde_json::to_value(&checks).unwrap_or_default(),
    );
    problem_with(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "a readiness check failed",
        extra,
    )
}

async fn probe(upstream: Authority, timeout: Duration) -> Check {
    let port = upstream.port_u16().unwrap_or(80);
    let connect = TcpStream::connect((upstream.host(), port));
    let error = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no connection within {timeout:?}")),
    };
    Check {
        name: format!("upstream {upstream}"),
        ok: error.is_none(),
        error,
    }
}
