//! The bundled demo API, direct and behind the proxy.

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::{Client, DemoHandle, Proxy, bounded, config, full, request};

#[tokio::test]
async fn items_crud() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let client = Client::http1();

        let seed = client.get(demo.url("/items/1")).await;
        assert_eq!(seed.status, StatusCode::OK);
        assert_eq!(seed.header("content-type"), "application/json");
        assert!(
            !seed.headers.contains_key("etag"),
            "the demo never sends ETags"
        );
        assert_eq!(
            seed.json(),
            json!({"id": "1", "name": "widget", "stock": 10})
        );

        let created = client
            .json(
                Method::POST,
                demo.url("/items"),
                &json!({"name": "gadget", "id": "ignored"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.header("location"), "/items/2");
        assert_eq!(created.json(), json!({"id": "2", "name": "gadget"}));

        let patched = client
            .json(
                Method::PATCH,
                demo.url("/items/2"),
                &json!({"stock": 3, "name": null}),
            )
            .await;
        assert_eq!(patched.status, StatusCode::OK);
        assert_eq!(patched.json(), json!({"id": "2", "stock": 3}));

        let replaced = client
            .json(Method::PUT, demo.url("/items/2"), &json!({"name": "new"}))
            .await;
        assert_eq!(replaced.status, StatusCode::OK);
        assert_eq!(replaced.json(), json!({"id": "2", "name": "new"}));

        let upserted = client
            .json(Method::PUT, demo.url("/items/abc"), &json!({"name": "x"}))
            .await;
        assert_eq!(upserted.status, StatusCode::CREATED);
        assert_eq!(upserted.header("location"), "/items/abc");

        let list = client.get(demo.url("/items")).await;
        let ids: Vec<_> = list
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["id"].clone())
            .collect();
        assert_eq!(ids, [json!("1"), json!("2"), json!("abc")]);

        let deleted = client
            .send(
                request(Method::DELETE, &demo.url("/items/2"))
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        let gone = client.get(demo.url("/items/2")).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.json(), json!({"error": "not found"}));
    })
    .await;
}

#[tokio::test]
async fn bad_requests_are_json_errors() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let client = Client::http1();
        let send = |method, path: &str, body: &'static str| {
            request(method, &demo.url(path)).body(full(body)).unwrap()
        };

        for (method, path, body, status) in [
            (Method::POST, "/items", "{not json", 400),
            (Method::POST, "/items", "[1, 2]", 400),
            (Method::PUT, "/items/1", "", 400),
            (Method::PATCH, "/items/404", "{}", 404),
            (Method::DELETE, "/items/404", "", 404),
            (Method::GET, "/nothing", "", 404),
            (Method::DELETE, "/items", "", 405),
        ] {
            let answer = client.send(send(method.clone(), path, body)).await;
            assert_eq!(answer.status.as_u16(), status, "{method} {path}");
            assert!(answer.json()["error"].is_string(), "{method} {path}");
        }
    })
    .await;
}

#[tokio::test]
async fn demo_behind_the_passthrough_proxy() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::passthrough(config(demo.addr)).await;
        let client = Client::http1();

        let created = client
            .json(
                Method::POST,
                proxy.url("/items"),
                &json!({"name": "via proxy"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let location = created.header("location").to_owned();
        let read = client.get(proxy.url(&location)).await;
        assert_eq!(read.json()["name"], "via proxy");
    })
    .await;
}
