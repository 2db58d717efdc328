//! The bundled legacy API: in-memory JSON items, no ETags, racy read-modify-write.
//!
//! This is the kind of API ifmatch is put in front of. It never sends an `ETag` and ignores
//! `If-Match`; its `PATCH` reads the item, yields to the runtime (as a real service would while
//! it awaits its database), then writes back the merged copy, so two concurrent PATCHes lose
//! one update. Through the proxy, they cannot.
//!
//! | request | answer |
//! |---|---|
//! | `GET /items` | 200, every item, as a JSON array |
//! | `POST /items` | 201 with `Location`, the created item (the API assigns `"id"`) |
//! | `GET /items/{id}` | 200, the item |
//! | `PUT /items/{id}` | 200 (or 201 if new), the whole item replaced |
//! | `PATCH /items/{id}` | 200, top-level fields merged (`null` removes one) |
//! | `DELETE /items/{id}` | 204 |
//!
//! Unknown ids get 404, malformed JSON or a non-object body 400, all with a JSON body. One item,
//! `"1"`, exists at start.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! ifmatch::demo::serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::serve::{local_addr, serve_with_defaults};

/// Largest request body the demo accepts.
const MAX_BODY: usize = 1024 * 1024;

/// Serves the demo API on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    tracing::info!(addr = %local_addr(&listener), "demo api listening");
    let items = Items::seeded();
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let items = items.clone();
        async move { Ok::<_, Infallible>(handle(&items, req).await) }
    });
    serve_with_defaults(listener, service, shutdown, Duration::from_secs(5)).await;
}

#[derive(Clone, Default)]
struct Items {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    items: BTreeMap<String, Map<String, Value>>,
    last_id: u64,
}

impl Items {
    fn seeded() -> Self {
        let items = Self::default();
        let mut seed = Map::new();
        seed.insert("name".into(), json!("widget"));
        seed.insert("stock".into(), json!(10));
        items.lock().create(seed);
        items
    }

    // Never held across an await: every handler locks, copies, unlocks.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn create(&mut self, mut item: Map<String, Value>) -> Map<String, Value> {
        let id = loop {
            self.last_id += 1;
            let id = self.last_id.to_string();
            if !self.items.contains_key(&id) {
                break id;
            }
        };
        item.insert("id".into(), Value::String(id.clone()));
        self.items.insert(id, item.clone());
        item
    }

    /// Items in id order, numeric ids numerically.
    fn list(&self) -> Vec<Value> {
        let mut items: Vec<_> = self.items.iter().collect();
        items.sort_by_key(|(id, _)| (id.len(), *id));
        items
            .into_iter()
            .map(|(_, item)| Value::Object(item.clone()))
            .collect()
    }
}

/// The path's segments as many web frameworks route them: empty and `.` segments dropped
/// (`//items/1/` is `/items/1`), `..` goes up one, and each segment percent-decoded (`%31` is
/// `1`). The query is ignored. So one item has many spellings, which the proxy must see as one.
fn route_segments(path: &str) -> Vec<String> {
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let segment = percent_decode(raw);
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    segments
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(items: &Items, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let segments = route_segments(req.uri().path());
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["items"] => match *req.method() {
            Method::GET | Method::HEAD => {
                json_response(StatusCode::OK, &Value::Array(items.lock().list()))
            }
            Method::POST => match read_object(req).await {
                Ok(item) => {
                    let item = items.lock().create(item);
                    let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
                    let location = format!("/items/{id}");
                    with_location(
                        json_response(StatusCode::CREATED, &Value::Object(item)),
                        &location,
                    )
                }
                Err(response) => response,
            },
            _ => method_not_allowed("GET, HEAD, POST"),
        },
        ["items", id] => {
            let id = (*id).to_owned();
            match *req.method() {
                Method::GET | Method::HEAD => match items.lock().items.get(&id) {
                    Some(item) => json_response(StatusCode::OK, &Value::Object(item.clone())),
                    None => not_found(),
                },
                Method::PUT => put(items, id, req).await,
                Method::PATCH => patch(items, id, req).await,
                Method::DELETE => match items.lock().items.remove(&id) {
                    Some(_) => empty(StatusCode::NO_CONTENT),
                    None => not_found(),
                },
                _ => method_not_allowed("GET, HEAD, PUT, PATCH, DELETE"),
            }
        }
        _ => not_found(),
    }
}

async fn put(items: &Items, id: String, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut item = match read_object(req).await {
        Ok(item) => item,
        Err(response) => return response,
    };
    item.insert("id".into(), Value::String(id.clone()));
    let existed = items
        .lock()
        .items
        .insert(id.clone(), item.clone())
        .is_some();
    let body = Value::Object(item);
    if existed {
        json_response(StatusCode::OK, &body)
    } else {
        with_location(
            json_response(StatusCode::CREATED, &body),
            &format!("/items/{id}"),
        )
    }
}

/// Read, yield, write: the lost update this API is here to demonstrate.
async fn patch(items: &Items, id: String, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let changes = match read_object(req).await {
        Ok(changes) => changes,
        Err(response) => return response,
    };
    let Some(mut item) = items.lock().items.get(&id).cloned() else {
        return not_found();
    };
    tokio::task::yield_now().await;
    for (field, value) in changes {
        if field == "id" {
            continue;
        }
        if value.is_null() {
            item.remove(&field);
        } else {
            item.insert(field, value);
        }
    }
    items.lock().items.insert(id, item.clone());
    json_response(StatusCode::OK, &Value::Object(item))
}

async fn read_object(req: Request<Incoming>) -> Result<Map<String, Value>, Response<Full<Bytes>>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {MAX_BODY} bytes"),
            ));
        }
        Err(_) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "could not read the body",
            ));
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "expected a JSON object",
        )),
        Err(error) => Err(error_response(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON: {error}"),
        )),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn not_found() -> Response<Full<Bytes>> {
    error_response(StatusCode::NOT_FOUND, "not found")
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn with_location(mut response: Response<Full<Bytes>>, location: &str) -> Response<Full<Bytes>> {
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
