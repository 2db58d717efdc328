//! `ifmatch storm`: concurrent writers that count lost updates.
//!
//! `--writers` tasks run read-modify-write cycles against `--keys` JSON resources at
//! `{target}{key_prefix}{i}` (created with `If-None-Match: *` when absent): GET the resource,
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
const DEFAULT_KEY_PREFIX: &str = "/items/storm-";
const DEFAULT_MAX_RETRIES: u32 = 10;
const DEFAULT_TIMEOUT: &str = "5s";

/// The `storm` subcommand's flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StormArgs {
    /// Base URL of the API under test (plain http://), e.g. the proxy's listener.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Concurrent writer tasks.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WRITERS)]
    pub writers: usize,
    /// Resources to write to; fewer keys, more collisions.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_KEYS)]
    pub keys: usize,
    /// How long the writers run (10s, 1m, 500ms).
    #[arg(long, value_name = "D", default_value = DEFAULT_DURATION, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after N read-modify-write cycles in total, if sooner than --duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// The JSON integer field to increment.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_FIELD)]
    pub field: String,
    /// Path prefix of the resources: key i is {target}{key-prefix}{i}.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
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
}

impl StormArgs {
    /// The defaults of the command line, against `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            writers: DEFAULT_WRITERS,
            keys: DEFAULT_KEYS,
            duration: Duration::from_secs(10),
            requests: None,
            field: DEFAULT_FIELD.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            json: None,
            no_if_match: false,
            max_retries: DEFAULT_MAX_RETRIES,
            timeout: Duration::from_secs(5),
            no_progress: false,
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
    if args.keys == 0 {
        return Err(StormError::InvalidArgs("--keys must be at least 1"));
    }
    let keys = keys(&args)?;
    let http = Http::new(args.timeout);
    let if_match = !args.no_if_match;
    let mut shutdown = pin!(shutdown);

    let initial = tokio::select! {
        initial = workload::prepare(&http, &keys, &args.field, if_match) => initial?,
        () = &mut shutdown => return Err(StormError::Interrupted),
    };

    let live = Arc::new(Live::default());
    let plan = Arc::new(Plan {
        http: http.clone(),
        keys,
        field: args.field.clone(),
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

    let mut total = Tally::new(plan.keys.len());
    for tally in tallies {
        total.merge(&tally.map_err(StormError::Writer)?);
    }
    let last = workload::read_back(&http, &plan.keys, &args.field).await?;
    let per_key = plan
        .keys
        .iter()
        .zip(initial.into_iter().zip(last))
        .enumerate()
        .map(|(index, (key, (initial, last)))| {
            let url = key.uri.to_string();
            KeyReport::new(key.path.clone(), url, initial, last, total.commits(index))
        })
        .collect();
    let setting = Setting {
        target: args.target.clone(),
        if_match,
        writers: args.writers,
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

/// The resources `{target}{key_prefix}{i}`, checked to be plain-HTTP URLs.
fn keys(args: &StormArgs) -> Result<Vec<Key>, StormError> {
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
                "expected http://host:port".to_owned(),
            ));
        }
    }
    if target.authority().is_none() {
        return Err(invalid(&args.target, "no host".to_owned()));
    }
    if target.query().is_some() {
        return Err(invalid(
            &args.target,
            "a query string cannot prefix keys".to_owned(),
        ));
    }
    if !args.key_prefix.starts_with('/') {
        return Err(invalid(
            &args.key_prefix,
            "--key-prefix must start with '/'".to_owned(),
        ));
    }
    let base = args.target.trim_end_matches('/');
    (0..args.keys)
        .map(|i| {
            let path = format!("{}{i}", args.key_prefix);
            let url = format!("{base}{path}");
            let uri = url
                .parse()
                .map_err(|e: http::uri::InvalidUri| invalid(&url, e.to_string()))?;
            Ok(Key { path, uri })
        })
        .collect()
}
