//! Why a storm could not run: bad arguments, or a target that cannot be stormed.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

/// A storm that could not start, or whose result could not be verified.
///
/// Failures *during* the storm are not errors: they are counted by kind in the
/// [`Report`](super::Report). These are the failures that leave no meaningful report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StormError {
    /// The arguments cannot describe a storm (no writers, no keys).
    #[error("invalid arguments: {0}")]
    InvalidArgs(&'static str),
    /// The target (plus key prefix) is not a usable `http://` URL.
    #[error("invalid target url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made to the target.
    #[error("cannot reach {url}")]
    Unreachable {
        /// The resource being requested.
        url: String,
        /// The connector's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The target did not answer within `--timeout`.
    #[error("{url} did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The resource being requested.
        url: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection failed after it was made (reset, malformed HTTP, oversized body).
    #[error("request to {url} failed")]
    Transport {
        /// The resource being requested.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The target answered with a status storm cannot work with.
    #[error("{method} {url} returned {status}")]
    Status {
        /// The request method.
        method: &'static str,
        /// The resource being requested.
        url: String,
        /// The status received.
        status: StatusCode,
    },
    /// A key does not exist and `--create none` forbids creating it.
    #[error(
        "GET {url} returned 404 Not Found: name existing keys (--keys-list, --key-start), \
         or let storm create them (--create put or --create post)"
    )]
    Missing {
        /// The resource.
        url: String,
    },
    /// The target refused to create a key.
    #[error(
        "{method} {url} returned {status} when creating a key: if the API creates with POST to \
         the collection, pass --create post; to use existing keys, --keys-list or --key-start \
         with --create none"
    )]
    CreateRefused {
        /// The request method.
        method: &'static str,
        /// Where it was sent.
        url: String,
        /// The status received.
        status: StatusCode,
    },
    /// A POST created a resource but said neither where (`Location`) nor its `id`.
    #[error(
        "POST {url} created a resource but its answer has neither a Location header nor a \
         JSON body with an \"id\": storm cannot find it (use --keys-list with existing ids)"
    )]
    CreatedNowhere {
        /// The collection.
        url: String,
    },
    /// The resource's body is not JSON.
    #[error("body of {url} is not JSON")]
    NotJson {
        /// The resource.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The resource's body is JSON but not an object.
    #[error("body of {url} is not a JSON object")]
    NotAnObject {
        /// The resource.
        url: String,
    },
    /// The resource has no counter field.
    #[error("body of {url} has no {field:?} field (choose another with --field)")]
    MissingField {
        /// The resource.
        url: String,
        /// The counter field.
        field: String,
    },
    /// The counter field is not an integer.
    #[error("field {field:?} of {url} is not an integer: {value}")]
    NotAnInteger {
        /// The resource.
        url: String,
        /// The counter field.
        field: String,
        /// The value found, as JSON.
        value: String,
    },
    /// If-Match mode, but the target gives the resource no strong entity-tag to match.
    #[error(
        "GET {url} carried no strong ETag, so writes cannot be conditional: \
         put ifmatch in front of the target, or pass --no-if-match"
    )]
    NoEtag {
        /// The resource.
        url: String,
    },
    /// Shutdown was requested before the writers started.
    #[error("interrupted before the storm started")]
    Interrupted,
    /// A writer task died (a bug in storm, never the target's fault).
    #[error("a writer task failed")]
    Writer(#[source] tokio::task::JoinError),
    /// `--json FILE` could not be written.
    #[error("cannot write the JSON report to {path}")]
    WriteJson {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
