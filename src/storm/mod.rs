//! `ifmatch storm`: concurrent writers that count lost updates.
//!
//! `--writers` tasks run read-modify-write cycles against `--keys` JSON resources under the
//! collection `--target` names, `{target}/{key_prefix}{i}` (or the ids of `--keys-list`), created
//! when absent (`--create`: a PUT with `If-None-Match: *`, or a POST to the collection whose
//! answer says where the new resource is): GET the resource,
//! remember its `ETag` and counter field, PUT it back with the counter one higher and
//! `If-Match: <etag>`; on 409 or 412, read again and retry (up to `--max-retries`).
//! `--no-if-match` sends the same writes unconditionally, to show what happens without
//! concurrency control.
//!
//! When the writers stop (after `--duration`, `--requests` cycles, or the shutdown signal),
//! storm reads every counter back. Each write the target acknowledged should have moved its
//! key's counter by one: per key, **lost updates = acknowledged writes − (final counter −
//! initial counter)**, and the [`Report`] sums them. Keep other writers off the keys during a
//! storm, or their increments hide storm's losses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ifmatch::storm::StormError> {
//! use ifmatch::storm::{self, StormArgs};
//!
//! let mut args = StormArgs::new("http://127.0.0.1:8080");
//! args.writers = 16;
//! args.requests = Some(1_000);
//! let report = storm::run(args, std::future::pending()).await?;
//! print!("{}", report.render_table());
//! assert_eq!(report.lost_updates, 0);
//! # Ok(())
//! # }
//! ```

mod client;
mod document;
mod error;
mod progress;
mod report;
mod tally;
mod workload;

use std::future::Future;
use std::hash::RandomState;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::StormError;
pub use report::{Conflicts, Errors, KeyReport, Latency, Report, Throughput};

use client::Http;
use progress::{Live, Progress};
use report::Setting;
use tally::Tally;
use workload::{Budget, Key, Plan};

const DEFAULT_WRITERS: usize = 8;
const DEFAULT_KEYS: usize = 4;
const DEFAULT_DURATION: &str = "10s";
const DEFAULT_FIELD: &str = "counter";
const DEFAULT_KEY_PREFIX: &str = "storm-";
/// The collection of a target given without a path: the demo API's.
const DEFAULT_COLLECTION: &str = "/items";

/// What storm needs of the API under test, for `--help`.
pub const REQUIREMENTS: &str = "\
What storm needs of the API:
  - GET {target}/{key} answers 200 with a JSON object holding an integer counter field
    (--field, default \"counter\"); storm sends every other field back unchanged.
  - PUT {target}/{key} with the whole object replaces it (2xx). With If-Match, a write that
    lost the race is refused with 409 or 412.
  - A strong ETag on each GET, for If-Match: the API's own, or put ifmatch in front of the API
    and storm it through the proxy (ifmatch synthesizes one). Otherwise only --no-if-match runs.
  - Keys that exist, or a way to create them: --create put (default: PUT with
    If-None-Match: *), or --create post (POST {\"counter\": 0} to {target}; the new key is
    the answer's Location, or the \"id\" of the created body). Existing ids: --keys-list 1,2,3
    or --key-start 1 --keys 3 (with --create none, a missing one is an error, not created).
  - Nobody else writes the keys during the storm (their increments hide storm's losses).
{target} is the collection, e.g. http://127.0.0.1:8080/items (without a path: /items).

Exit status: 0 no lost updates; 3 lost updates detected (0 with --allow-lost); 1 the storm
could not run (unreachable target, missing keys, bodies storm cannot increment).";

/// How storm creates a key the target does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Create {
    /// PUT the key with `If-None-Match: *` (create-only).
    #[default]
    Put,
    /// POST to the collection; the created resource (its `Location`, or its body's `id`)
    /// becomes the key.
    Post,
    /// Never: a missing key is an error.
    None,
}
const DEFAULT_MAX_RETRIES: u32 = 10;
const DEFAULT_TIMEOUT: &str = "5s";

/// The `storm` subcommand's flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StormArgs {
    /// The collection under test (plain http://), e.g. http://127.0.0.1:8080/items through the
    /// proxy; keys live under its path (without a path: /items).
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Concurrent writer tasks.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WRITERS)]
    pub writers: usize,
    /// Resources to write to; fewer keys, more collisions.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_KEYS)]
    pub keys: usize,
    /// Number the keys from N (existing ids, e.g. --key-start 1 for 1, 2, ...).
    #[arg(long, value_name = "N", conflicts_with = "keys_list")]
    pub key_start: Option<u64>,
    /// Storm exactly these existing keys (ids under the target), instead of --keys.
    #[arg(long, value_name = "ID,..", value_delimiter = ',', num_args = 1..)]
    pub keys_list: Vec<String>,
    /// How to create a key the target does not have.
    #[arg(long, value_name = "HOW", value_enum, default_value_t = Create::Put)]
    pub create: Create,
    /// How long the writers run (10s, 1m, 500ms).
    #[arg(long, value_name = "D", default_value = DEFAULT_DURATION, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after N read-modify-write cycles in total, if sooner than --duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// The JSON integer field to increment.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_FIELD)]
    pub field: String,
    /// Counter fields per resource. With N > 1 they are {field}0 .. {field}N-1 and writer i
    /// increments only field i mod N: disjoint changes to one hot resource (what a merging
    /// proxy can combine). Lost updates are counted per field.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub fields: usize,
    /// Name prefix of the keys: key i is {target}/{key-prefix}{i} [default: "storm-", or none
    /// with --key-start or --keys-list].
    #[arg(long, value_name = "NAME")]
    pub key_prefix: Option<String>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write unconditionally (no If-Match), to show what happens without concurrency control.
    #[arg(long)]
    pub no_if_match: bool,
    /// Conflicts on one increment before giving it up.
    #[arg(long, value_name = "R", default_value_t = DEFAULT_MAX_RETRIES)]
    pub max_retries: u32,
    /// Deadline for each request.
    #[arg(long, value_name = "D", default_value = DEFAULT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// No live progress line (it is never drawn when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Exit 0 even when lost updates are detected (e.g. to demonstrate them).
    #[arg(long)]
    pub allow_lost: bool,
}

impl StormArgs {
    /// The defaults of the command line, against `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            writers: DEFAULT_WRITERS,
            keys: DEFAULT_KEYS,
            key_start: None,
            keys_list: Vec::new(),
            create: Create::Put,
            duration: Duration::from_secs(10),
            requests: None,
            field: DEFAULT_FIELD.to_owned(),
            fields: 1,
            key_prefix: None,
            json: None,
            no_if_match: false,
            max_retries: DEFAULT_MAX_RETRIES,
            timeout: Duration::from_secs(5),
            no_progress: false,
            allow_lost: false,
        }
    }
}

/// Runs a storm to its end (duration, request budget, or `shutdown`) and reports it.
///
/// When `shutdown` completes, writers finish the write in flight, the counters are read back,
/// and the report is marked interrupted. With `--json FILE`, the report is also written there.
pub async fn run(
    args: StormArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, StormError> {
    if args.writers == 0 {
        return Err(StormError::InvalidArgs("--writers must be at least 1"));
    }
    if args.keys == 0 && args.keys_list.is_empty() {
        return Err(StormError::InvalidArgs("--keys must be at least 1"));
    }
    if args.fields == 0 {
        return Err(StormError::InvalidArgs("--fields must be at least 1"));
    }
    let fields = field_names(&args.field, args.fields);
    let (collection, keys) = keys(&args)?;
    let http = Http::new(args.timeout);
    let if_match = !args.no_if_match;
    let mut shutdown = pin!(shutdown);

    let setup = workload::Setup {
        http: &http,
        collection: &collection,
        fields: &fields,
        if_match,
        create: args.create,
    };
    let (keys, initial) = tokio::select! {
        prepared = workload::prepare(&setup, keys) => prepared?,
        () = &mut shutdown => return Err(StormError::Interrupted),
    };

    let live = Arc::new(Live::default());
    let plan = Arc::new(Plan {
        http: http.clone(),
        keys,
        fields: fields.clone(),
        if_match,
        max_retries: args.max_retries,
        budget: Budget::new(args.requests),
        live: live.clone(),
        picker: RandomState::new(),
    });
    let progress = Progress::start(live, !args.no_progress);
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for id in 0..args.writers {
        writers.spawn(workload::writer(plan.clone(), id, stopped.clone()));
    }

    let mut tallies = Vec::with_capacity(args.writers);
    let interrupted = {
        let all_done = async {
            while let Some(tally) = writers.join_next().await {
                tallies.push(tally);
            }
        };
        tokio::select! {
            () = all_done => false,
            () = tokio::time::sleep(args.duration) => false,
            () = &mut shutdown => true,
        }
    };
    stop.send_replace(true);
    while let Some(tally) = writers.join_next().await {
        tallies.push(tally);
    }
    let elapsed = started.elapsed();
    drop(progress);

    let mut total = Tally::new(plan.keys.len() * fields.len());
    for tally in tallies {
        total.merge(&tally.map_err(StormError::Writer)?);
    }
    let last = workload::read_back(&http, &plan.keys, &fields).await?;
    // One row per key and field, key-major (the tally's slot order).
    let slots = plan
        .keys
        .iter()
        .flat_map(|key| fields.iter().map(move |field| (key, field)));
    let per_key = slots
        .zip(initial.into_iter().zip(last))
        .enumerate()
        .map(|(index, ((key, field), (initial, last)))| {
            let url = key.uri.to_string();
            let shown = if fields.len() > 1 {
                format!("{} {field}", key.path)
            } else {
                key.path.clone()
            };
            KeyReport::new(shown, url, initial, last, total.commits(index))
        })
        .collect();
    let setting = Setting {
        target: args.target.clone(),
        if_match,
        writers: args.writers,
        fields: fields.len(),
        elapsed,
        interrupted,
    };
    let report = Report::new(setting, &total, per_key);
    if let Some(path) = &args.json {
        tokio::fs::write(path, report.to_json())
            .await
            .map_err(|source| StormError::WriteJson {
                path: path.clone(),
                source,
            })?;
    }
    Ok(report)
}

/// The counter fields: `field` alone, or `{field}0` .. `{field}{n-1}`.
fn field_names(field: &str, n: usize) -> Vec<String> {
    if n == 1 {
        vec![field.to_owned()]
    } else {
        (0..n).map(|i| format!("{field}{i}")).collect()
    }
}

/// The collection `--target` names and the keys under it, `{collection}/{name}`, checked to be
/// plain-HTTP URLs.
fn keys(args: &StormArgs) -> Result<(Uri, Vec<Key>), StormError> {
    let invalid = |url: &str, reason: String| StormError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let target: Uri = args
        .target
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&args.target, e.to_string()))?;
    match target.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(invalid(
                &args.target,
                format!("scheme {other} is not supported: storm speaks plain http://"),
            ));
        }
        None => {
            return Err(invalid(
                &args.target,
                "expected http://host:port/collection".to_owned(),
            ));
        }
    }
    let Some(authority) = target.authority() else {
        return Err(invalid(&args.target, "no host".to_owned()));
    };
    if target.query().is_some() {
        return Err(invalid(
            &args.target,
            "a query string cannot prefix keys".to_owned(),
        ));
    }
    // Named keys are storm's own; numbered or listed ones are the target's ids as they are.
    let prefix = match &args.key_prefix {
        Some(prefix) => prefix.as_str(),
        None if args.key_start.is_some() || !args.keys_list.is_empty() => "",
        None => DEFAULT_KEY_PREFIX,
    };
    if prefix.starts_with('/') {
        return Err(invalid(
            prefix,
            "--key-prefix names keys under the target's path: put the collection in --target \
             (http://host:port/items) and the start of the names in --key-prefix"
                .to_owned(),
        ));
    }
    let collection_path = match target.path().trim_end_matches('/') {
        "" => DEFAULT_COLLECTION,
        path => path,
    };
    let collection: Uri = format!("http://{authority}{collection_path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&args.target, e.to_string()))?;
    let names: Vec<String> = if args.keys_list.is_empty() {
        let start = args.key_start.unwrap_or(0);
        (0..args.keys as u64)
            .map(|i| format!("{prefix}{}", start.saturating_add(i)))
            .collect()
    } else {
        args.keys_list
            .iter()
            .map(|id| format!("{prefix}{}", id.trim()))
            .collect()
    };
    if names
        .iter()
        .any(|name| name.is_empty() || name.contains('/'))
    {
        return Err(StormError::InvalidArgs(
            "a key must be a non-empty name without '/' (an id under the target)",
        ));
    }
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    if distinct.len() != names.len() {
        return Err(StormError::InvalidArgs("--keys-list names a key twice"));
    }
    let keys = names
        .iter()
        .map(|name| Key::at(&collection, &format!("{collection_path}/{name}")))
        .collect::<Result<_, _>>()?;
    Ok((collection, keys))
}
