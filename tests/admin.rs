//! The admin API, metrics, hot spots, request ids and reload, over loopback.
//!
//! The Prometheus recorder is process-wide: each test uses its own route name, so counts from
//! other tests in this binary never mix into its assertions.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use ifmatch::config::Overrides;
use support::{
    Backend, Client, Proxy, Reply, TestBody, bounded, config_toml, full, request, sample,
    unused_addr,
};

/// One catch-all route named `route` to `upstream`, plus `extra` TOML.
fn routed(route: &str, upstream: std::net::SocketAddr, extra: &str) -> ifmatch::config::Config {
    config_toml(&format!(
        "{extra}\n[[routes]]\nname = \"{route}\"\nupstream = \"http://{upstream}\"\n"
    ))
}

/// A backend whose every resource has the strong ETag "v1".
async fn etag_backend() -> support::BackendHandle {
    Backend::new()
        .fallback(Reply::ok("{}").header("etag", "\"v1\""))
        .spawn()
        .await
}

fn put(url: &str, if_match: &str) -> http::Request<TestBody> {
    request(Method::PUT, url)
        .header("if-match", if_match)
        .body(full("{}"))
        .unwrap()
}

fn with_token(method: Method, url: &str, token: Option<&str>) -> http::Request<TestBody> {
    let mut builder = request(method, url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(full("")).unwrap()
}

#[tokio::test]
async fn health_is_open_and_readiness_checks_upstreams() {
    bounded(async {
        let backend = etag_backend().await;
        let proxy = Proxy::with_admin(routed("ready", backend.addr, "")).await;
        let client = Client::http1();
        let health = client.get(proxy.admin_url("/healthz")).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.json()["status"], "ok");
        let ready = client.get(proxy.admin_url("/readyz")).await;
        assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
        assert_eq!(ready.json()["status"], "ready");

        let down = Proxy::with_admin(routed("down", unused_addr().await, "")).await;
        let problem = client
            .get(down.admin_url("/readyz"))
            .await
            .assert_problem(503, "not-ready");
        let failed: Vec<_> = problem["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .collect();
        assert_eq!(failed.len(), 1, "{problem}");
        assert!(failed[0]["name"].as_str().unwrap().starts_with("upstream"));

        client
            .get(proxy.admin_url("/nope"))
            .await
            .assert_problem(404, "not-found");
        let wrong = client
            .send(with_token(Method::POST, &proxy.admin_url("/healthz"), None))
            .await;
        wrong.assert_problem(405, "method-not-allowed");
        assert_eq!(wrong.header("allow"), "GET, HEAD");
    })
    .await;
}

#[tokio::test]
async fn token_guards_metrics_and_admin_but_not_health() {
    bounded(async {
        let backend = etag_backend().await;
        let config = routed("token", backend.addr, "[admin]\ntoken = \"s3cret\"\n");
        let proxy = Proxy::with_admin(config).await;
        let client = Client::http1();
        for path in ["/metrics", "/admin/hotspots", "/admin/resources?path=/a"] {
            let url = proxy.admin_url(path);
            for token in [None, Some("wrong")] {
                let answer = client.send(with_token(Method::GET, &url, token)).await;
                answer.assert_problem(401, "unauthorized");
                assert_eq!(
                    answer.header("www-authenticate"),
                    "Bearer realm=\"ifmatch-admin\""
                );
            }
            let answer = client
                .send(with_token(Method::GET, &url, Some("s3cret")))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {:?}", answer.body);
        }
        let purge = with_token(
            Method::DELETE,
            &proxy.admin_url("/admin/resources?path=/a"),
            None,
        );
        client.send(purge).await.assert_problem(401, "unauthorized");
        assert_eq!(
            client.get(proxy.admin_url("/healthz")).await.status,
            StatusCode::OK
        );
    })
    .await;
}

#[tokio::test]
async fn inspect_shows_what_was_learned_and_purge_forces_a_revalidation() {
    bounded(async {
        let backend = etag_backend().await;
        let proxy = Proxy::with_admin(routed("inspect", backend.addr, "")).await;
        let client = Client::http1();
        let resource = proxy.admin_url("/admin/resources?path=/items/1");

        let unknown = client.get(&resource).await.json();
        assert_eq!(unknown["state"], "unknown", "{unknown}");
        assert_eq!(unknown["route"], "inspect");

        assert_eq!(
            client.get(proxy.url("/items/1")).await.status,
            StatusCode::OK
        );
        let known = client.get(&resource).await.json();
        assert_eq!(known["state"], "present", "{known}");
        assert_eq!(known["validators"][0]["etag"], "\"v1\"");
        assert_eq!(known["lease_held"], false);
        assert_eq!(known["path"], "/items/1");
        let key = known["key"].as_str().unwrap().to_owned();
        let by_key = client
            .get(proxy.admin_url(&format!("/admin/resources?key={key}")))
            .await
            .json();
        assert_eq!(by_key["state"], "present");

        // Known: a conditional write goes straight through, no revalidation.
        let gets_before = backend.hits(Method::GET, "/items/1");
        let answer = client.send(put(&proxy.url("/items/1"), "\"v1\"")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(backend.hits(Method::GET, "/items/1"), gets_before);

        let purged = client
            .send(with_token(Method::DELETE, &resource, None))
            .await
            .json();
        assert_eq!(purged["resource"]["key"], key.as_str(), "{purged}");
        assert_eq!(client.get(&resource).await.json()["state"], "unknown");

        // Purged: the next write revalidates with a GET first.
        let answer = client.send(put(&proxy.url("/items/1"), "\"v1\"")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(backend.hits(Method::GET, "/items/1"), gets_before + 1);

        client
            .get(proxy.admin_url("/admin/resources"))
            .await
            .assert_problem(400, "bad-query");
        client
            .get(proxy.admin_url("/admin/resources?key=zz"))
            .await
            .assert_problem(400, "bad-query");
    })
    .await;
}

#[tokio::test]
async fn metrics_move_when_a_conflict_happens() {
    bounded(async {
        let backend = etag_backend().await;
        let proxy = Proxy::with_admin(routed("metrics-conflict", backend.addr, "")).await;
        let client = Client::http1();
        let route = "route=\"metrics-conflict\"";
        let conflict = [route, "reason=\"stale-precondition\""];
        let before = client.get(proxy.admin_url("/metrics")).await;
        assert!(
            before.header("content-type").starts_with("text/plain"),
            "{before:?}"
        );
        let before = String::from_utf8_lossy(&before.body).into_owned();
        // Registered at zero from the start, so an alert on it reads 0, not "no data".
        assert_eq!(
            sample(&before, "ifmatch_conflicts_total", &conflict),
            Some(0.0)
        );

        let answer = client.send(put(&proxy.url("/items/9"), "\"stale\"")).await;
        answer.assert_problem(409, "stale-precondition");
        let answer = client
            .send(
                request(Method::PUT, &proxy.url("/items/9"))
                    .header("if-match", "nope")
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        answer.assert_problem(400, "malformed-precondition");

        let after = client.get(proxy.admin_url("/metrics")).await;
        let after = String::from_utf8_lossy(&after.body).into_owned();
        assert_eq!(
            sample(&after, "ifmatch_conflicts_total", &conflict),
            Some(1.0),
            "{after}"
        );
        assert_eq!(
            sample(
                &after,
                "ifmatch_requests_total",
                &[route, "method=\"PUT\"", "status=\"4xx\""]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&after, "ifmatch_malformed_precondition_total", &[route]),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &after,
                "ifmatch_revalidations_total",
                &[route, "outcome=\"present\""]
            ),
            Some(1.0)
        );
        assert!(sample(&after, "ifmatch_lease_wait_seconds_count", &[route]).is_some());
        assert!(sample(&after, "ifmatch_upstream_duration_seconds_count", &[route]).is_some());
        assert!(
            sample(&after, "ifmatch_store_misses_total", &[]).is_some(),
            "{after}"
        );
    })
    .await;
}

#[tokio::test]
async fn hotspots_put_the_most_contended_resource_first() {
    bounded(async {
        let backend = etag_backend().await;
        let proxy = Proxy::with_admin(routed("hot", backend.addr, "")).await;
        let client = Client::http1();
        // Skewed: one hot resource gets most stale writes, a tail of others a few each.
        for round in 0..12 {
            let answer = client
                .send(put(&proxy.url("/items/hot?x=1"), "\"old\""))
                .await;
            assert_eq!(answer.status, StatusCode::CONFLICT);
            let cold = format!("/items/cold-{}", round % 4);
            let answer = client.send(put(&proxy.url(&cold), "\"old\"")).await;
            assert_eq!(answer.status, StatusCode::CONFLICT);
        }
        let listed = client
            .get(proxy.admin_url("/admin/hotspots?n=2"))
            .await
            .json();
        let hotspots = listed["hotspots"].as_array().unwrap();
        assert_eq!(hotspots.len(), 2, "{listed}");
        assert_eq!(hotspots[0]["path"], "/items/hot", "{listed}");
        assert_eq!(hotspots[0]["route"], "hot");
        assert_eq!(hotspots[0]["conflicts"], 12);
        assert_eq!(hotspots[1]["conflicts"], 3);
        client
            .get(proxy.admin_url("/admin/hotspots?n=zero"))
            .await
            .assert_problem(400, "bad-query");
    })
    .await;
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_reaches_the_upstream() {
    bounded(async {
        let backend = etag_backend().await;
        let proxy = Proxy::with_admin(routed("rid", backend.addr, "")).await;
        let client = Client::http1();

        let given = request(Method::GET, &proxy.url("/given"))
            .header("x-request-id", "req-42")
            .body(full(""))
            .unwrap();
        let answer = client.send(given).await;
        assert_eq!(answer.header("x-request-id"), "req-42");
        assert_eq!(
            backend.last(Method::GET, "/given").headers["x-request-id"],
            "req-42"
        );

        let answer = client.get(proxy.url("/generated")).await;
        let id = answer.header("x-request-id").to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(
            backend.last(Method::GET, "/generated").headers["x-request-id"],
            id.as_str()
        );

        let invalid = request(Method::GET, &proxy.url("/invalid"))
            .header("x-request-id", "has spaces in it")
            .body(full(""))
            .unwrap();
        let answer = client.send(invalid).await;
        assert_ne!(answer.header("x-request-id"), "has spaces in it");
        assert_eq!(answer.header("x-request-id").len(), 32);

        // The proxy's own responses carry it too.
        let rejected = client.send(put(&proxy.url("/r"), "\"stale\"")).await;
        assert_eq!(rejected.status, StatusCode::CONFLICT);
        assert_eq!(rejected.header("x-request-id").len(), 32);
    })
    .await;
}

#[tokio::test]
async fn reload_keeps_the_running_write_bounds() {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-bounds.toml");
    let file = |timeouts: &str| {
        format!(
            "[server]\n{timeouts}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n"
        )
    };
    std::fs::write(&path, file("")).unwrap();
    let config = ifmatch::config::Config::load(&path, &Overrides::default()).unwrap();
    let started = Duration::from_secs(30);
    let routes =
        ifmatch::proxy::Routes::new(ifmatch::proxy::RouteTable::new(config.routes().unwrap()));
    assert_eq!(
        routes.load().write_bounds(),
        Some((started, Duration::from_secs(60)))
    );
    // A longer run than the lease TTL the store started with was checked against: not applied.
    std::fs::write(
        &path,
        file("response_timeout = \"90s\"\nwrite_outcome_timeout = \"300s\""),
    )
    .unwrap();
    ifmatch::proxy::reload(&path, &Overrides::default(), &routes).unwrap();
    assert_eq!(
        routes.load().write_bounds(),
        Some((started, Duration::from_secs(60)))
    );
}

#[tokio::test]
async fn reload_swaps_routes_and_refuses_a_bad_file() {
    bounded(async {
        let backend = etag_backend().await;
        let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-reload.toml");
        let route = |extra: &str| {
            format!(
                "[[routes]]\nname = \"reloaded\"\nupstream = \"http://{}\"\n{extra}",
                backend.addr
            )
        };
        std::fs::write(&path, route("")).unwrap();
        let config = ifmatch::config::Config::load(&path, &Overrides::default()).unwrap();
        let proxy = Proxy::with_admin(config).await;
        let routes = proxy.routes.clone().unwrap();
        let client = Client::http1();
        let blind = || {
            request(Method::PUT, &proxy.url("/x"))
                .body(full(""))
                .unwrap()
        };
        assert_eq!(client.send(blind()).await.status, StatusCode::OK);

        std::fs::write(&path, route("require_if_match = true\n")).unwrap();
        assert_eq!(
            ifmatch::proxy::reload(&path, &Overrides::default(), &routes).unwrap(),
            1
        );
        client
            .send(blind())
            .await
            .assert_problem(428, "precondition-required");

        std::fs::write(
            &path,
            "[[routes]]\nname = \"broken\"\nupstream = \"ftp://nope\"\n",
        )
        .unwrap();
        let error = ifmatch::proxy::reload(&path, &Overrides::default(), &routes).unwrap_err();
        assert!(
            error.to_string().contains("invalid configuration"),
            "{error}"
        );
        // The previous table stays in force.
        client
            .send(blind())
            .await
            .assert_problem(428, "precondition-required");
        let inspected = client
            .get(proxy.admin_url("/admin/resources?path=/x"))
            .await
            .json();
        assert_eq!(inspected["route"], "reloaded");
    })
    .await;
}

#[tokio::test]
async fn the_data_port_serves_no_admin_route() {
    bounded(async {
        // The upstream answers everything, so any answer that is not its own came from ifmatch.
        let backend = Backend::new()
            .fallback(Reply::ok("from upstream"))
            .spawn()
            .await;
        let config = routed("dataport", backend.addr, "[admin]\ntoken = \"s3cret\"\n");
        let proxy = Proxy::with_admin(config).await;
        let client = Client::http1();
        let paths = [
            "/healthz",
            "/readyz",
            "/metrics",
            "/admin/hotspots",
            "/admin/resources?path=/a",
        ];
        for path in paths {
            let answer = client.get(proxy.url(path)).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            assert_eq!(answer.body, "from upstream", "{path}");
        }
        let purge = with_token(
            Method::DELETE,
            &proxy.url("/admin/resources?path=/a"),
            Some("s3cret"),
        );
        assert_eq!(client.send(purge).await.body, "from upstream");
        assert_eq!(backend.seen().len(), paths.len() + 1, "all forwarded");
    })
    .await;
}
