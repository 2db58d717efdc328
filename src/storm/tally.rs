//! What one writer counts as it goes; the writers' tallies add up to the report.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::report::{Conflicts, Errors};

/// Latencies are recorded in microseconds, up to a minute (3 significant figures).
const LATENCY_MAX_US: u64 = 60_000_000;

/// Why a request of a cycle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    Transport,
    Status4xx,
    Status5xx,
    StatusOther,
    BadBody,
    NoEtag,
}

/// What one writer counted.
pub(crate) struct Tally {
    pub(crate) cycles: u64,
    pub(crate) reads: u64,
    pub(crate) attempts: u64,
    commits_per_key: Vec<u64>,
    pub(crate) conflicts: Conflicts,
    pub(crate) gave_up: u64,
    pub(crate) errors: Errors,
    pub(crate) uncertain: u64,
    pub(crate) read_latency: Histogram<u64>,
    pub(crate) write_latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant, valid histogram bounds")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}

impl Tally {
    pub(crate) fn new(keys: usize) -> Self {
        Self {
            cycles: 0,
            reads: 0,
            attempts: 0,
            commits_per_key: vec![0; keys],
            conflicts: Conflicts::default(),
            gave_up: 0,
            errors: Errors::default(),
            uncertain: 0,
            read_latency: histogram(),
            write_latency: histogram(),
        }
    }

    pub(crate) fn cycle(&mut self) {
        self.cycles += 1;
    }

    /// A GET that got a response (of any status) after `latency`.
    pub(crate) fn read(&mut self, latency: Duration) {
        self.reads += 1;
        self.read_latency.saturating_record(micros(latency));
    }

    /// A GET that got no response.
    pub(crate) fn read_failed(&mut self) {
        self.reads += 1;
    }

    /// A PUT sent; `latency` if it got a response.
    pub(crate) fn attempt(&mut self, latency: Option<Duration>) {
        self.attempts += 1;
        if let Some(latency) = latency {
            self.write_latency.saturating_record(micros(latency));
        }
    }

    pub(crate) fn commit(&mut self, key: usize) {
        if let Some(commits) = self.commits_per_key.get_mut(key) {
            *commits += 1;
        }
    }

    pub(crate) fn conflict(&mut self, status: http::StatusCode) {
        self.conflicts.total += 1;
        if status == http::StatusCode::PRECONDITION_FAILED {
            self.conflicts.status_412 += 1;
        } else {
            self.conflicts.status_409 += 1;
        }
    }

    pub(crate) fn gave_up(&mut self) {
        self.gave_up += 1;
    }

    pub(crate) fn error(&mut self, kind: ErrorKind) {
        self.errors.count(kind);
    }

    /// A write whose outcome is unknown: it may have applied without storm counting a commit.
    pub(crate) fn uncertain(&mut self) {
        self.uncertain += 1;
    }

    /// Commits acknowledged on key `index`.
    pub(crate) fn commits(&self, index: usize) -> u64 {
        self.commits_per_key.get(index).copied().unwrap_or(0)
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        self.cycles += other.cycles;
        self.reads += other.reads;
        self.attempts += other.attempts;
        for (mine, theirs) in self.commits_per_key.iter_mut().zip(&other.commits_per_key) {
            *mine += theirs;
        }
        self.conflicts.total += other.conflicts.total;
        self.conflicts.status_409 += other.conflicts.status_409;
        self.conflicts.status_412 += other.conflicts.status_412;
        self.gave_up += other.gave_up;
        self.errors.add(&other.errors);
        self.uncertain += other.uncertain;
        self.read_latency
            .add(&other.read_latency)
            .expect("histograms share their bounds");
        self.write_latency
            .add(&other.write_latency)
            .expect("histograms share their bounds");
    }
}
