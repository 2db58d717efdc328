//! The storm's three phases: make sure every key exists, run the writers' read-modify-write
//! cycles, read every counter back.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};
use http::header::{IF_MATCH, IF_NONE_MATCH, LOCATION};
use http::{HeaderValue, StatusCode, Uri};
use tokio::sync::watch;

use super::client::{Failure, Fetched, Http, strong_etag};
use super::document::Document;
use super::progress::Live;
use super::tally::{ErrorKind, Tally};
use super::{Create, StormError};

/// Keys set up or read back at once: enough to be quick, few enough to be polite.
const SETUP_CONCURRENCY: usize = 8;

/// One stormed resource.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// The resource's path, as shown in the report.
    pub(crate) path: String,
    pub(crate) uri: Uri,
}

impl Key {
    /// The resource at `path` on the collection's host.
    pub(crate) fn at(collection: &Uri, path: &str) -> Result<Self, StormError> {
        let authority = collection.authority().map_or("", |a| a.as_str());
        let url = format!("http://{authority}{path}");
        let uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| StormError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            uri,
        })
    }
}

/// What setting up the keys needs.
pub(crate) struct Setup<'a> {
    pub(crate) http: &'a Http,
    /// Where `--create post` posts.
    pub(crate) collection: &'a Uri,
    /// The counter fields, each read (and created at 0).
    pub(crate) fields: &'a [String],
    pub(crate) if_match: bool,
    pub(crate) create: Create,
}

/// Cycles left to start, when `--requests` bounds the storm.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Option<u64>,
    taken: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        self.limit
            .is_none_or(|limit| self.taken.fetch_add(1, Ordering::Relaxed) < limit)
    }
}

/// Everything the writers share.
pub(crate) struct Plan {
    pub(crate) http: Http,
    pub(crate) keys: Vec<Key>,
    /// The counter fields; writer i increments field i mod their number.
    pub(crate) fields: Vec<String>,
    pub(crate) if_match: bool,
    pub(crate) max_retries: u32,
    pub(crate) budget: Budget,
    pub(crate) live: Arc<Live>,
    /// Spreads writers over keys pseudo-randomly, differently on every run.
    pub(crate) picker: RandomState,
}

/// Reads every key's counters (key-major: each key's fields in order), creating the keys that
/// do not exist yet; a key created by POST is replaced by the resource the target made.
pub(crate) async fn prepare(
    setup: &Setup<'_>,
    keys: Vec<Key>,
) -> Result<(Vec<Key>, Vec<i64>), StormError> {
    let prepared: Vec<(Key, Vec<i64>)> = stream::iter(keys)
        .map(|key| prepare_key(setup, key))
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let (keys, counters): (Vec<Key>, Vec<Vec<i64>>) = prepared.into_iter().unzip();
    Ok((keys, counters.into_iter().flatten().collect()))
}

async fn prepare_key(setup: &Setup<'_>, mut key: Key) -> Result<(Key, Vec<i64>), StormError> {
    let http = setup.http;
    let mut fetched = fetch(http, &key.uri).await?;
    if fetched.status == StatusCode::NOT_FOUND {
        match setup.create {
            Create::Put => put_create(http, &key, setup.fields).await?,
            Create::Post => key = post_create(setup).await?,
            Create::None => {
                return Err(StormError::Missing {
                    url: key.uri.to_string(),
                });
            }
        }
        fetched = fetch(http, &key.uri).await?;
    }
    if setup.if_match && fetched.status.is_success() && strong_etag(&fetched.headers).is_none() {
        return Err(StormError::NoEtag {
            url: key.uri.to_string(),
        });
    }
    let counters = setup
        .fields
        .iter()
        .map(|field| counter_of(&fetched, &key.uri, field))
        .collect::<Result<_, _>>()?;
    Ok((key, counters))
}

/// Creates a key, create-only: if another storm created it first, that is as good.
async fn put_create(http: &Http, key: &Key, fields: &[String]) -> Result<(), StormError> {
    let id = key.path.rsplit('/').next().unwrap_or(&key.path);
    let body = Document::initial(Some(id), fields);
    let create_only = Some((IF_NONE_MATCH, HeaderValue::from_static("*")));
    let created = http
        .put(&key.uri, body, create_only)
        .await
        .map_err(|failure| failure.into_error(&key.uri, http.timeout()))?;
    match created.status {
        s if s.is_success() => Ok(()),
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Ok(()),
        status => Err(StormError::CreateRefused {
            method: "PUT",
            url: key.uri.to_string(),
            status,
        }),
    }
}

/// Creates a resource by POST to the collection; it is where the answer's `Location` says, or
/// at `{collection}/{id}` with the created body's `id`.
async fn post_create(setup: &Setup<'_>) -> Result<Key, StormError> {
    let (http, collection) = (setup.http, setup.collection);
    let body = Document::initial(None, setup.fields);
    let created = http
        .post(collection, body)
        .await
        .map_err(|failure| failure.into_error(collection, http.timeout()))?;
    if !created.status.is_success() {
        return Err(StormError::CreateRefused {
            method: "POST",
            url: collection.to_string(),
            status: created.status,
        });
    }
    let path = created
        .headers
        .get(LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| location_path(collection, location))
        .or_else(|| {
            let id = Document::id_of(&created.body)?;
            Some(format!("{}/{id}", collection.path().trim_end_matches('/')))
        })
        .ok_or_else(|| StormError::CreatedNowhere {
            url: collection.to_string(),
        })?;
    Key::at(collection, &path)
}

/// The path a `Location` names on the collection's host: an absolute URL there, an absolute
/// path, or a name relative to the collection. `None` for another host.
fn location_path(collection: &Uri, location: &str) -> Option<String> {
    if location.contains("://") || location.starts_with('/') {
        let uri: Uri = location.parse().ok()?;
        let Some(authority) = uri.authority() else {
            return Some(uri.path().to_owned());
        };
        let same = collection.authority().is_some_and(|c| c == authority);
        return (same && uri.scheme_str() == Some("http")).then(|| uri.path().to_owned());
    }
    // `Uri` would read a bare name as an authority: resolve it against the collection.
    let name = location.split(['?', '#']).next()?;
    (!name.is_empty()).then(|| format!("{}/{name}", collection.path().trim_end_matches('/')))
}

/// Reads every key's counters after the storm (key-major, as [`prepare`]).
pub(crate) async fn read_back(
    http: &Http,
    keys: &[Key],
    fields: &[String],
) -> Result<Vec<i64>, StormError> {
    let counters: Vec<Vec<i64>> = stream::iter(keys)
        .map(|key| async move {
            let fetched = fetch(http, &key.uri).await?;
            fields
                .iter()
                .map(|field| counter_of(&fetched, &key.uri, field))
                .collect::<Result<Vec<i64>, _>>()
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(counters.into_iter().flatten().collect())
}

async fn fetch(http: &Http, uri: &Uri) -> Result<Fetched, StormError> {
    http.get(uri)
        .await
        .map_err(|failure| failure.into_error(uri, http.timeout()))
}

fn counter_of(fetched: &Fetched, uri: &Uri, field: &str) -> Result<i64, StormError> {
    if !fetched.status.is_success() {
        return Err(StormError::Status {
            method: "GET",
            url: uri.to_string(),
            status: fetched.status,
        });
    }
    Document::parse(&fetched.body, field)
        .map(|doc| doc.counter())
        .map_err(|e| e.into_error(uri.to_string(), field))
}

/// One writer: read-modify-write cycles until the budget is spent or `stop` turns true.
pub(crate) async fn writer(plan: Arc<Plan>, id: usize, mut stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::new(plan.keys.len() * plan.fields.len());
    // Each writer keeps to one field: with several, writers' changes are disjoint.
    let slot = id % plan.fields.len().max(1);
    let field = plan.fields.get(slot).map_or("", String::as_str);
    let mut cycle: u64 = 0;
    'cycles: loop {
        if *stop.borrow() || !plan.budget.take() {
            break;
        }
        cycle += 1;
        tally.cycle();
        let index = pick(&plan, id, cycle);
        let key = &plan.keys[index];
        let mut retries = 0;
        loop {
            // A read changes nothing: when the storm ends, drop it rather than wait.
            let read = tokio::select! {
                read = read(&plan, key, field, &mut tally) => read,
                () = stopped(&mut stop) => break 'cycles,
            };
            let (etag, doc) = match read {
                Ok(read) => read,
                Err(kind) => {
                    fail(&plan, &mut tally, kind);
                    break;
                }
            };
            if *stop.borrow() {
                break 'cycles;
            }
            // A write runs to its end (bounded by --timeout): cut short, its outcome is unknown.
            match write(&plan, key, field, (etag, doc), &mut tally).await {
                Written::Committed => {
                    tally.commit(index * plan.fields.len() + slot);
                    plan.live.commit();
                    break;
                }
                Written::Conflict(status) => {
                    tally.conflict(status);
                    plan.live.conflict();
                    if retries >= plan.max_retries {
                        tally.gave_up();
                        break;
                    }
                    retries += 1;
                }
                Written::Failed { kind, uncertain } => {
                    if uncertain {
                        tally.uncertain();
                    }
                    fail(&plan, &mut tally, kind);
                    break;
                }
            }
        }
    }
    tally
}

fn pick(plan: &Plan, writer: usize, cycle: u64) -> usize {
    let spread = plan.picker.hash_one((writer, cycle));
    // The remainder is below the key count, which is a usize.
    usize::try_from(spread % plan.keys.len() as u64).unwrap_or(0)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

fn fail(plan: &Plan, tally: &mut Tally, kind: ErrorKind) {
    tally.error(kind);
    plan.live.error();
}

async fn read(
    plan: &Plan,
    key: &Key,
    field: &str,
    tally: &mut Tally,
) -> Result<(Option<HeaderValue>, Document), ErrorKind> {
    let started = Instant::now();
    let fetched = match plan.http.get(&key.uri).await {
        Ok(fetched) => fetched,
        Err(failure) => {
            tally.read_failed();
            return Err(failure_kind(&failure));
        }
    };
    tally.read(started.elapsed());
    if !fetched.status.is_success() {
        return Err(status_kind(fetched.status));
    }
    let etag = strong_etag(&fetched.headers);
    if plan.if_match && etag.is_none() {
        return Err(ErrorKind::NoEtag);
    }
    let doc = Document::parse(&fetched.body, field).map_err(|_| ErrorKind::BadBody)?;
    Ok((etag, doc))
}

enum Written {
    Committed,
    Conflict(StatusCode),
    Failed { kind: ErrorKind, uncertain: bool },
}

async fn write(
    plan: &Plan,
    key: &Key,
    field: &str,
    (etag, doc): (Option<HeaderValue>, Document),
    tally: &mut Tally,
) -> Written {
    let Some(body) = doc.incremented(field) else {
        return Written::Failed {
            kind: ErrorKind::BadBody,
            uncertain: false,
        };
    };
    let precondition = if plan.if_match {
        etag.map(|etag| (IF_MATCH, etag))
    } else {
        None
    };
    let started = Instant::now();
    match plan.http.put(&key.uri, body, precondition).await {
        Ok(fetched) => {
            tally.attempt(Some(started.elapsed()));
            match fetched.status {
                s if s.is_success() => Written::Committed,
                s @ (StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED) => {
                    Written::Conflict(s)
                }
                s => Written::Failed {
                    kind: status_kind(s),
                    // The spec's rule: after a 5xx the write may or may not have applied.
                    uncertain: s.is_server_error(),
                },
            }
        }
        Err(failure) => {
            tally.attempt(None);
            Written::Failed {
                kind: failure_kind(&failure),
                // A failed connect never sent the write; anything later may have applied.
                uncertain: !matches!(failure, Failure::Connect(_)),
            }
        }
    }
}

fn failure_kind(failure: &Failure) -> ErrorKind {
    match failure {
        Failure::Connect(_) => ErrorKind::Connect,
        Failure::Timeout => ErrorKind::Timeout,
        Failure::Transport(_) => ErrorKind::Transport,
    }
}

fn status_kind(status: StatusCode) -> ErrorKind {
    if status.is_client_error() {
        ErrorKind::Status4xx
    } else if status.is_server_error() {
        ErrorKind::Status5xx
    } else {
        ErrorKind::StatusOther
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_names_a_path_on_the_collections_host() {
        let collection: Uri = "http://api:3000/items".parse().unwrap();
        let cases: &[(&str, Option<&str>)] = &[
            ("/items/7", Some("/items/7")),
            ("/elsewhere/7?x=1", Some("/elsewhere/7")),
            ("http://api:3000/items/7", Some("/items/7")),
            ("http://other:3000/items/7", None),
            ("https://api:3000/items/7", None),
            ("7", Some("/items/7")),
            ("", None),
        ];
        for (location, want) in cases {
            assert_eq!(
                location_path(&collection, location).as_deref(),
                *want,
                "{location:?}"
            );
        }
    }
}
