//! The proxy without its guard (`--passthrough`): what it does to every request on the way to
//! the upstream and back.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use hyper::body::Incoming;
use ifmatch::admin::{Admin, serve_admin};
use support::{
    Backend, Client, Proxy, Reply, bounded, chunked, config, config_toml, full, request,
    unused_addr,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test]
async fn status_headers_and_body_pass_through() {
    bounded(async {
        let backend = Backend::new()
            .route(
                Method::PUT,
                "/things/7",
                Reply::status(201)
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .header("x-upstream", "yes")
                    .header("content-type", "text/plain")
                    .body("created"),
            )
            .spawn()
            .await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;

        let answer = Client::http1()
            .send(
                request(Method::PUT, &proxy.url("/things/7?x=1&y=%20"))
                    .header("x-client", "hello")
                    .header("authorization", "Bearer t")
                    .body(full("payload"))
                    .unwrap(),
            )
            .await;

        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.body, "created");
        assert_eq!(answer.header("x-upstream"), "yes");
        assert_eq!(answer.header("content-type"), "text/plain");
        let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);

        let seen = backend.last(Method::PUT, "/things/7");
        assert_eq!(seen.uri, "/things/7?x=1&y=%20");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.headers["x-client"], "hello");
        assert_eq!(seen.headers["authorization"], "Bearer t");
        assert_eq!(seen.headers["content-length"], "7");
        assert_eq!(backend.hits(Method::PUT, "/things/7"), 1);
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    bounded(async {
        let backend = Backend::new()
            .route(
                Method::GET,
                "/hop",
                Reply::ok("ok")
                    .header("connection", "x-resp-hop")
                    .header("x-resp-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-connection", "keep-alive")
                    .header("proxy-authenticate", "Basic realm=x")
                    .header("trailer", "x-sum")
                    .header("upgrade", "foo/1")
                    .header("x-end-to-end", "kept"),
            )
            .spawn()
            .await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;

        let answer = Client::http1()
            .send(
                request(Method::GET, &proxy.url("/hop"))
                    .header("connection", "keep-alive, x-req-hop")
                    .header("x-req-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-connection", "keep-alive")
                    .header("te", "trailers")
                    .header("trailer", "x-sum")
                    .header("proxy-authorization", "Basic c2VjcmV0")
                    .header("x-end-to-end", "kept")
                    .body(full(""))
                    .unwrap(),
            )
            .await;

        assert_eq!(answer.status, StatusCode::OK);
        for name in [
            "x-resp-hop",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "trailer",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(!answer.headers.contains_key(name), "client got {name}");
        }
        assert_eq!(answer.header("x-end-to-end"), "kept");

        let seen = backend.last(Method::GET, "/hop");
        for name in [
            "x-req-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "proxy-authorization",
        ] {
            assert!(!seen.headers.contains_key(name), "backend got {name}");
        }
        // The proxy's own connection to the upstream may say keep-alive, never the client's list.
        if let Some(connection) = seen.headers.get("connection") {
            assert!(!connection.to_str().unwrap().contains("x-req-hop"));
        }
        assert_eq!(seen.headers["x-end-to-end"], "kept");
    })
    .await;
}

#[tokio::test]
async fn forwarding_headers_are_added_and_host_is_preserved() {
    bounded(async {
        let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;
        let client = Client::http1();

        client.get(proxy.url("/a")).await;
        let seen = backend.last(Method::GET, "/a");
        let proxy_authority = proxy.addr.to_string();
        assert_eq!(seen.headers["host"], proxy_authority.as_str());
        assert_eq!(seen.headers["x-forwarded-host"], proxy_authority.as_str());
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["via"], "1.1 ifmatch");

        client
            .send(
                request(Method::GET, &proxy.url("/b"))
                    .header("host", "api.example.com")
                    .header("x-forwarded-for", "203.0.113.9")
                    .header("x-forwarded-proto", "https")
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        let seen = backend.last(Method::GET, "/b");
        assert_eq!(seen.headers["host"], "api.example.com");
        assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        // Set by a TLS-terminating proxy in front: kept.
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    })
    .await;
}

#[tokio::test]
async fn host_is_the_upstream_when_not_preserved() {
    bounded(async {
        let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
        let proxy = Proxy::passthrough(config_toml(&format!(
            "[[routes]]\nname = \"r\"\nupstream = \"http://{}\"\npreserve_host = false\n",
            backend.addr
        )))
        .await;

        Client::http1().get(proxy.url("/x")).await;
        let seen = backend.last(Method::GET, "/x");
        assert_eq!(seen.headers["host"], backend.addr.to_string().as_str());
        assert_eq!(
            seen.headers["x-forwarded-host"],
            proxy.addr.to_string().as_str()
        );
    })
    .await;
}

#[tokio::test]
async fn host_and_longest_prefix_select_the_upstream() {
    bounded(async {
        let root = Backend::new().fallback(Reply::ok("root")).spawn().await;
        let api = Backend::new().fallback(Reply::ok("api")).spawn().await;
        let special = Backend::new().fallback(Reply::ok("special")).spawn().await;
        let proxy = Proxy::passthrough(config_toml(&format!(
            r#"
            [[routes]]
            name = "root"
            upstream = "http://{}"
            [[routes]]
            name = "api"
            path_prefix = "/api"
            upstream = "http://{}"
            [[routes]]
            name = "special"
            host = "Special.Example"
            upstream = "http://{}"
            "#,
            root.addr, api.addr, special.addr
        )))
        .await;
        let client = Client::http1();
        let get = |path: &str, host: &str| {
            request(Method::GET, &proxy.url(path))
                .header("host", host)
                .body(full(""))
                .unwrap()
        };

        assert_eq!(client.send(get("/api/items", "a")).await.body, "api");
        assert_eq!(client.send(get("/api", "a")).await.body, "api");
        assert_eq!(client.send(get("/apix", "a")).await.body, "root");
        assert_eq!(client.send(get("/", "a")).await.body, "root");
        assert_eq!(
            client
                .send(get("/api/items", "special.example:8080"))
                .await
                .body,
            "special"
        );
        assert_eq!(api.hits(Method::GET, "/api/items"), 1);
        assert_eq!(special.hits(Method::GET, "/api/items"), 1);
    })
    .await;
}

#[tokio::test]
async fn no_route_is_404_problem_json() {
    bounded(async {
        let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
        let proxy = Proxy::passthrough(config_toml(&format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://{}\"\n",
            backend.addr
        )))
        .await;

        let answer = Client::http1().get(proxy.url("/other?q=1")).await;
        let problem = answer.assert_problem(404, "no-route");
        assert_eq!(problem["instance"], "/other");
        assert!(backend.seen().is_empty(), "the backend was not hit");
    })
    .await;
}

#[tokio::test]
async fn upstream_down_is_502_and_the_proxy_recovers_when_it_returns() {
    bounded(async {
        let addr = unused_addr().await;
        let proxy = Proxy::passthrough(config(addr)).await;
        let client = Client::http1();

        let answer = client.get(proxy.url("/items")).await;
        let problem = answer.assert_problem(502, "upstream-unavailable");
        assert_eq!(problem["instance"], "/items");

        let backend = Backend::new()
            .route(Method::GET, "/items", Reply::ok("back"))
            .spawn_on(addr)
            .await;
        let answer = client.get(proxy.url("/items")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "back");

        // Down again while the pool holds a connection to it: 502 again, not a hang.
        backend.stop().await;
        let answer = client.get(proxy.url("/items")).await;
        answer.assert_problem(502, "upstream-unavailable");
    })
    .await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    bounded(async {
        let backend = Backend::new().hang(Method::GET, "/slow").spawn().await;
        let mut config = config(backend.addr);
        config.server.response_timeout = std::time::Duration::from_millis(100);
        let proxy = Proxy::passthrough(config).await;

        let answer = Client::http1().get(proxy.url("/slow")).await;
        answer.assert_problem(504, "upstream-timeout");
        assert_eq!(backend.hits(Method::GET, "/slow"), 1);
    })
    .await;
}

#[tokio::test]
async fn twelve_mib_streams_intact_both_ways() {
    bounded(async {
        let backend = Backend::new().echo(Method::PUT, "/blob").spawn().await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;
        let blob: Bytes = (0..12 * 1024 * 1024)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<u8>>()
            .into();
        let client = Client::http1();

        // With a length.
        let answer = client
            .send(
                request(Method::PUT, &proxy.url("/blob"))
                    .body(full(blob.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len(), blob.len());
        assert!(answer.body == blob, "echoed body differs");

        // Chunked, in uneven pieces.
        let pieces = blob.chunks(1_000_003).map(Bytes::copy_from_slice).collect();
        let answer = client
            .send(
                request(Method::PUT, &proxy.url("/blob"))
                    .body(chunked(pieces))
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body == blob, "echoed chunked body differs");
        assert_eq!(backend.hits(Method::PUT, "/blob"), 2);
    })
    .await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_forwarded_as_http1() {
    bounded(async {
        let backend = Backend::new()
            .route(Method::GET, "/items", Reply::ok("[]").header("x-up", "1"))
            .spawn()
            .await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;

        let answer = Client::h2c().get(proxy.url("/items")).await;
        assert_eq!(answer.version, Version::HTTP_2);
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "[]");
        assert_eq!(answer.header("x-up"), "1");

        let seen = backend.last(Method::GET, "/items");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.headers["host"], proxy.addr.to_string().as_str());
        assert_eq!(seen.headers["via"], "2 ifmatch");
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    bounded(async {
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = std::sync::Mutex::new(Some(release_rx));
        let backend = Backend::new()
            .route_fn(
                Method::GET,
                "/slow",
                move |_req: http::Request<Incoming>| {
                    let release = release_rx.lock().unwrap().take();
                    async move {
                        if let Some(release) = release {
                            let _ = release.await;
                        }
                        http::Response::new(full("finished"))
                    }
                },
            )
            .spawn()
            .await;
        let mut proxy = Proxy::passthrough(config(backend.addr)).await;
        let url = proxy.url("/slow");
        let in_flight = tokio::spawn(async move { Client::http1().get(url).await });
        backend.wait_for_requests(1).await;

        let addr = proxy.addr;
        let serve = proxy.begin_shutdown();
        // Wait until the proxy has stopped accepting, with the request still in flight.
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        let answer = in_flight.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "finished");
        serve.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn admin_answers_health_and_readiness() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(serve_admin(
            listener,
            Admin::<ifmatch::MemoryStore>::default(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let client = Client::http1();
        for path in ["/healthz", "/readyz"] {
            let answer = client.get(format!("http://{addr}{path}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
        }
        assert_eq!(
            client.get(format!("http://{addr}/nope")).await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

/// A body error from the client mid-request is not the upstream's fault, but the connection to
/// it is gone: the proxy must answer (or drop the connection) without panicking, and keep serving.
#[tokio::test]
async fn proxy_keeps_serving_after_a_client_aborts() {
    bounded(async {
        let backend = Backend::new()
            .echo(Method::PUT, "/x")
            .fallback(Reply::ok("ok"))
            .spawn()
            .await;
        let proxy = Proxy::passthrough(config(backend.addr)).await;
        {
            use tokio::io::AsyncWriteExt;
            let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            stream
                .write_all(b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\npartial")
                .await
                .unwrap();
            backend.wait_for_requests(1).await;
        }
        let answer = Client::http1().get(proxy.url("/after")).await;
        assert_eq!(answer.status, StatusCode::OK);
    })
    .await;
}
