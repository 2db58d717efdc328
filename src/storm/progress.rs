//! The live progress line on stderr: elapsed, commits/s, conflicts/s, errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// Redraw often enough to look live, rarely enough to cost nothing.
const REFRESH: Duration = Duration::from_millis(250);

/// Counters the writers bump as they go, for the progress line only (the report adds up
/// each writer's own tally).
#[derive(Debug, Default)]
pub(crate) struct Live {
    commits: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    pub(crate) fn commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        let commits = self.commits.load(Ordering::Relaxed);
        let conflicts = self.conflicts.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        format!(
            "{commits} commits ({:.0}/s)  {conflicts} conflicts ({:.0}/s)  {errors} errors",
            commits as f64 / secs,
            conflicts as f64 / secs,
        )
    }
}

/// The progress line while it is shown; cleared when dropped.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Shows the line on stderr when `enabled` and stderr is a terminal; otherwise draws nothing.
    pub(crate) fn start(live: Arc<Live>, enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if bar.is_hidden() {
            return Self { bar, ticker: None };
        }
        let style = ProgressStyle::with_template("{spinner} storm {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(REFRESH);
        let started = Instant::now();
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut interval = tokio::time::interval(REFRESH);
                loop {
                    interval.tick().await;
                    bar.set_message(live.line(started.elapsed()));
                }
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
