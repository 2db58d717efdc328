//! Unread request bodies on HTTP/1.1: when the proxy answers a request without reading all of
//! its body (a rejected write, a 404, a 503, a 431), the rest is read and discarded, as nginx
//! does (`ngx_http_discard_request_body`), so that the connection can carry the client's next
//! request. hyper reuses an HTTP/1.1 connection only if the request body was read to its end
//! (it tries one read of what is buffered, then gives up on the connection), and it decides
//! that after the response head is written: without this layer, a client whose body was still
//! in flight gets its answer without `Connection: close`, then finds the connection closed
//! (or reset) under its next request.
//!
//! The discard is bounded: at most `server.discard_body_bytes`, all there within
//! `server.body_read_timeout` of the request's head. Past either bound, when the client waits
//! for a `100 Continue` it was never sent, or when the upstream client gave up on the body
//! part-way (the upstream failed, or the body timed out: the answer should not wait on a
//! client that may send the rest only once answered), the answer says `Connection: close`
//! (RFC 9112 §9.6) and the connection closes gracefully: the server keeps reading and discarding what
//! the client still sends for a while after its answer (lingering close), so that the client
//! reads the whole answer before the connection ends, never a reset.
//!
//! The response waits for the discard: hyper writes it only once the body is read, so that
//! it knows the connection is reusable, and the answer can still say `Connection: close` when
//! the body turns out too large or too slow. A client sends its body before it reads the
//! answer anyway.
//!
//! Only a body nothing has read is discarded: one handed to the upstream is the upstream
//! client's to read, so a discarded body never reaches the upstream, and the guard's lease and
//! store are done with the request before the discard starts. HTTP/2 streams are left alone: dropping a stream's body after its response
//! ends it with `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1, h2 does it) and the connection stays
//! up.

mod body;
mod decide;
mod future;
mod layer;
mod service;

pub use body::ClientBody;
pub use future::DiscardFuture;
pub use layer::{DiscardLayer, DiscardLimits};
pub use service::Discard;
