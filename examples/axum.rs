//! The guard in front of an axum app, in-process: no proxy, same guarantee.
//!
//! ```text
//! cargo run --example axum
//! curl -i localhost:3001/notes/1                                  # ETag: "ifm-…"
//! curl -i -X PUT localhost:3001/notes/1 -H 'If-Match: "ifm-…"' -d 'v2'   # 200
//! curl -i -X PUT localhost:3001/notes/1 -H 'If-Match: "ifm-…"' -d 'v3'   # 409, same tag
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use ifmatch::{MemoryStore, Policy, PreconditionLayer};
use tower::Layer;

type Notes = Arc<Mutex<HashMap<String, String>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let notes: Notes = Arc::new(Mutex::new(HashMap::from([("1".into(), "v1".into())])));
    // A legacy handler: no ETags, no preconditions, last write wins.
    let app = Router::new()
        .route("/notes/{id}", get(read).put(write))
        .with_state(notes);

    // The guard wraps the whole app: it learns validators from the GETs the app answers and
    // rejects stale PUTs before the handler runs.
    let guarded = PreconditionLayer::new(MemoryStore::default())
        .policy(Policy::default())
        .layer(app);
    let app = Router::new().fallback_service(guarded);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

async fn read(State(notes): State<Notes>, Path(id): Path<String>) -> Result<String, StatusCode> {
    let notes = notes
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    notes.get(&id).cloned().ok_or(StatusCode::NOT_FOUND)
}

async fn write(State(notes): State<Notes>, Path(id): Path<String>, body: String) -> StatusCode {
    match notes.lock() {
        Ok(mut notes) => {
            notes.insert(id, body);
            StatusCode::OK
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
