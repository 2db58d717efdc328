//! The figures of a storm: the report, as a table for people and as JSON for machines.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::tally::{ErrorKind, Tally};

/// The per-key table in [`Report::render_table`] shows at most this many rows.
const TABLE_KEYS: usize = 20;

/// Writes rejected as conflicts, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conflicts {
    /// All conflicts.
    pub total: u64,
    /// `409 Conflict` answers.
    pub status_409: u64,
    /// `412 Precondition Failed` answers.
    pub status_412: u64,
}

/// Failed requests, by kind. A failed cycle is abandoned, not retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// All errors.
    pub total: u64,
    /// No connection could be made.
    pub connect: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// The connection broke mid-exchange, or the body was oversized.
    pub transport: u64,
    /// A 4xx other than a conflict.
    pub status_4xx: u64,
    /// A 5xx.
    pub status_5xx: u64,
    /// A 1xx or 3xx final status.
    pub status_other: u64,
    /// A read whose body is not a JSON object with an integer counter.
    pub bad_body: u64,
    /// A read without a strong `ETag` while writes are conditional.
    pub no_etag: u64,
}

impl Errors {
    pub(crate) fn count(&mut self, kind: ErrorKind) {
        self.total += 1;
        let slot = match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Transport => &mut self.transport,
            ErrorKind::Status4xx => &mut self.status_4xx,
            ErrorKind::Status5xx => &mut self.status_5xx,
            ErrorKind::StatusOther => &mut self.status_other,
            ErrorKind::BadBody => &mut self.bad_body,
            ErrorKind::NoEtag => &mut self.no_etag,
        };
        *slot += 1;
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.total += other.total;
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.transport += other.transport;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.status_other += other.status_other;
        self.bad_body += other.bad_body;
        self.no_etag += other.no_etag;
    }

    fn breakdown(&self) -> String {
        let kinds = [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("transport", self.transport),
            ("4xx", self.status_4xx),
            ("5xx", self.status_5xx),
            ("other status", self.status_other),
            ("bad body", self.bad_body),
            ("no etag", self.no_etag),
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        parts.join(", ")
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// Rates over the storm's duration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Committed increments per second.
    pub commits_per_sec: f64,
    /// Writes sent per second.
    pub writes_per_sec: f64,
    /// Requests (reads and writes) per second.
    pub requests_per_sec: f64,
}

/// One resource's accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// The key's path (`--key-prefix` plus its index).
    pub path: String,
    /// The full URL.
    pub url: String,
    /// The counter when the storm started.
    pub initial_counter: i64,
    /// The counter read back after the storm.
    pub final_counter: i64,
    /// Writes the target acknowledged with a 2xx.
    pub commits: u64,
    /// Acknowledged writes missing from the final counter.
    pub lost: u64,
    /// Increments in the final counter that no acknowledged write explains.
    pub unexplained: u64,
}

impl KeyReport {
    /// Accounts one key: every commit should have moved the counter by exactly one.
    pub fn new(path: String, url: String, initial: i64, last: i64, commits: u64) -> Self {
        let applied = i128::from(last) - i128::from(initial);
        let missing = i128::from(commits) - applied;
        let clamp = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
        Self {
            path,
            url,
            initial_counter: initial,
            final_counter: last,
            commits,
            lost: clamp(missing),
            unexplained: clamp(-missing),
        }
    }
}

/// A finished storm's figures; [`render_table`](Self::render_table) for people,
/// [`to_json`](Self::to_json) for CI and plots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The target URL.
    pub target: String,
    /// Whether writes carried `If-Match` (not `--no-if-match`).
    pub if_match: bool,
    /// Concurrent writer tasks.
    pub writers: usize,
    /// Resources stormed.
    pub keys: usize,
    /// Counter fields per resource (`--fields`): each writer increments one; the per-key rows
    /// are then one per key and field.
    pub fields: usize,
    /// Seconds the writers ran.
    pub elapsed_secs: f64,
    /// Stopped early by the shutdown signal (Ctrl-C).
    pub interrupted: bool,
    /// Acknowledged writes missing from the final state, summed over keys. The headline.
    pub lost_updates: u64,
    /// Read-modify-write cycles started (each one increment, retries included).
    pub cycles: u64,
    /// GETs the writers sent (setup and read-back excluded).
    pub reads: u64,
    /// PUTs sent.
    pub attempts: u64,
    /// PUTs acknowledged with a 2xx.
    pub commits: u64,
    /// PUTs rejected with 409 or 412.
    pub conflicts: Conflicts,
    /// Cycles abandoned after `--max-retries` conflicts.
    pub gave_up: u64,
    /// Failed requests, by kind.
    pub errors: Errors,
    /// Writes with an unknown outcome (timeout, broken connection, 5xx): they may have
    /// applied, which can hide a lost update. Nonzero means `lost_updates` is a lower bound.
    pub uncertain_writes: u64,
    /// Increments no acknowledged write explains, summed over keys: uncertain writes that did
    /// apply, or a writer other than this storm.
    pub unexplained_increments: u64,
    /// GET latency.
    pub read_latency_ms: Latency,
    /// PUT latency.
    pub write_latency_ms: Latency,
    /// Rates over `elapsed_secs`.
    pub throughput: Throughput,
    /// Per-key accounting, in key order.
    pub per_key: Vec<KeyReport>,
}

/// What the storm was, beside what it counted.
pub(crate) struct Setting {
    pub(crate) target: String,
    pub(crate) if_match: bool,
    pub(crate) writers: usize,
    /// Counter fields per key (at least 1).
    pub(crate) fields: usize,
    pub(crate) elapsed: Duration,
    pub(crate) interrupted: bool,
}

impl Report {
    /// Adds up the writers' tallies and the per-key accounting.
    pub(crate) fn new(setting: Setting, tally: &Tally, per_key: Vec<KeyReport>) -> Self {
        let secs = setting.elapsed.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let commits = per_key.iter().map(|k| k.commits).sum();
        Self {
            target: setting.target,
            if_match: setting.if_match,
            writers: setting.writers,
            keys: per_key.len() / setting.fields.max(1),
            fields: setting.fields.max(1),
            elapsed_secs: secs,
            interrupted: setting.interrupted,
            lost_updates: per_key.iter().map(|k| k.lost).sum(),
            cycles: tally.cycles,
            reads: tally.reads,
            attempts: tally.attempts,
            commits,
            conflicts: tally.conflicts.clone(),
            gave_up: tally.gave_up,
            errors: tally.errors.clone(),
            uncertain_writes: tally.uncertain,
            unexplained_increments: per_key.iter().map(|k| k.unexplained).sum(),
            read_latency_ms: Latency::of(&tally.read_latency),
            write_latency_ms: Latency::of(&tally.write_latency),
            throughput: Throughput {
                commits_per_sec: rate(commits),
                writes_per_sec: rate(tally.attempts),
                requests_per_sec: rate(tally.attempts + tally.reads),
            },
            per_key,
        }
    }

    /// The human report: the lost-update verdict first, then the figures and the per-key table.
    pub fn render_table(&self) -> String {
        self.to_string()
    }

    /// The same figures as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Plain fields and string keys only: serialization cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes to JSON")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.if_match {
            "If-Match"
        } else {
            "no If-Match"
        };
        writeln!(
            f,
            "storm {}: {mode}, {}, {}{}, {:.2}s{}",
            self.target,
            plural(self.writers, "writer"),
            plural(self.keys, "key"),
            if self.fields > 1 {
                format!(" of {}", plural(self.fields, "field"))
            } else {
                String::new()
            },
            self.elapsed_secs,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        )?;
        writeln!(f)?;
        if self.lost_updates == 0 {
            writeln!(
                f,
                "  no lost updates   (every acknowledged write is in the final state)"
            )?;
        } else {
            writeln!(
                f,
                "  LOST UPDATES DETECTED: {}   ({} acknowledged writes are missing from the \
                 final state)",
                self.lost_updates, self.lost_updates
            )?;
        }
        writeln!(f)?;
        let t = &self.throughput;
        writeln!(f, "  {:<12}{:>10}", "cycles", self.cycles)?;
        writeln!(f, "  {:<12}{:>10}", "reads", self.reads)?;
        writeln!(
            f,
            "  {:<12}{:>10}   {:.1}/s",
            "writes", self.attempts, t.writes_per_sec
        )?;
        writeln!(
            f,
            "  {:<12}{:>10}   {:.1}/s",
            "commits", self.commits, t.commits_per_sec
        )?;
        writeln!(
            f,
            "  {:<12}{:>10}   409: {}, 412: {}",
            "conflicts", self.conflicts.total, self.conflicts.status_409, self.conflicts.status_412
        )?;
        writeln!(
            f,
            "  {:<12}{:>10}   after max retries",
            "gave up", self.gave_up
        )?;
        writeln!(
            f,
            "  {:<12}{:>10}{}",
            "errors",
            self.errors.total,
            match self.errors.breakdown() {
                kinds if kinds.is_empty() => kinds,
                kinds => format!("   {kinds}"),
            }
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<12}{:>10}{:>10}{:>10}{:>10}",
            "latency ms", "p50", "p90", "p99", "max"
        )?;
        for (name, l) in [
            ("read", &self.read_latency_ms),
            ("write", &self.write_latency_ms),
        ] {
            writeln!(
                f,
                "  {name:<12}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                l.p50, l.p90, l.p99, l.max
            )?;
        }
        writeln!(f)?;
        self.fmt_keys(f)?;
        if self.uncertain_writes > 0 {
            writeln!(
                f,
                "\n  note: {} writes had an unknown outcome (timeout, broken connection, 5xx); \
                 any that applied can hide a lost update, so the count is a lower bound",
                self.uncertain_writes
            )?;
        }
        if self.unexplained_increments > 0 {
            writeln!(
                f,
                "\n  note: counters rose {} more than the acknowledged writes explain \
                 (writes with an unknown outcome that applied, or another writer)",
                self.unexplained_increments
            )?;
        }
        Ok(())
    }
}

impl Report {
    /// The per-key table; with many keys, the ones that lost the most.
    fn fmt_keys(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .per_key
            .iter()
            .map(|k| k.path.len())
            .max()
            .unwrap_or(0)
            .max(3);
        writeln!(
            f,
            "  {:<width$}{:>12}{:>12}{:>10}{:>8}",
            "key", "initial", "final", "commits", "lost"
        )?;
        let mut rows: Vec<&KeyReport> = self.per_key.iter().collect();
        if rows.len() > TABLE_KEYS {
            rows.sort_by_key(|k| std::cmp::Reverse(k.lost));
            rows.truncate(TABLE_KEYS);
        }
        for k in &rows {
            writeln!(
                f,
                "  {:<width$}{:>12}{:>12}{:>10}{:>8}",
                k.path, k.initial_counter, k.final_counter, k.commits, k.lost
            )?;
        }
        if self.per_key.len() > rows.len() {
            writeln!(
                f,
                "  ... {} more keys (the most lost shown; all of them in --json)",
                self.per_key.len() - rows.len()
            )?;
        }
        Ok(())
    }
}
