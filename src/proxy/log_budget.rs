//! A per-process budget of log lines per second, so a storm of refused writes cannot flood the
//! log: past the budget, lines are counted instead of written, and the count is reported once
//! when the next second's first line is admitted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines admitted per second by [`LogBudget::rejections`].
pub const REJECTION_LINES_PER_SEC: u64 = 20;

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it; before it, if nonzero, report this many lines suppressed since the last report.
    Log {
        /// Lines dropped in earlier seconds and not yet reported.
        suppressed: u64,
    },
    /// Over budget: count it, do not write it.
    Suppress,
}

/// At most `per_sec` lines in each one-second window; lock-free.
#[derive(Debug)]
pub struct LogBudget {
    per_sec: u64,
    /// The current window, in whole seconds since `epoch`.
    window: AtomicU64,
    /// Lines admitted or refused in the current window.
    used: AtomicU64,
    /// Lines refused and not yet reported.
    suppressed: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_sec` lines per second.
    pub const fn new(per_sec: u64) -> Self {
        Self {
            per_sec,
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The process's budget for "write rejected" lines.
    pub fn rejections() -> &'static Self {
        static BUDGET: LogBudget = LogBudget::new(REJECTION_LINES_PER_SEC);
        &BUDGET
    }

    /// Admits or suppresses one line now.
    pub fn admit(&self) -> Admit {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        // +1: window 0 is the initial value, so the first line always opens a window.
        self.admit_at(epoch.elapsed().as_secs() + 1)
    }

    /// Admits or suppresses one line in second `now` (monotonic, whole seconds).
    pub fn admit_at(&self, now: u64) -> Admit {
        let window = self.window.load(Ordering::Relaxed);
        if now > window
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This caller opened the window. A line racing this reset may be counted in
            // either window: the budget is approximate by one or two lines, never unbounded.
            self.used.store(1, Ordering::Relaxed);
            return Admit::Log {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            };
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_sec {
            Admit::Log { suppressed: 0 }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_sec_lines_then_one_count() {
        let budget = LogBudget::new(3);
        let second: Vec<Admit> = (0..10).map(|_| budget.admit_at(1)).collect();
        let logged = second
            .iter()
            .filter(|a| matches!(a, Admit::Log { .. }))
            .count();
        assert_eq!(logged, 3);
        assert_eq!(second[0], Admit::Log { suppressed: 0 });
        assert_eq!(second[9], Admit::Suppress);
        // The next second's first line reports the seven dropped; the count starts again.
        assert_eq!(budget.admit_at(2), Admit::Log { suppressed: 7 });
        assert_eq!(budget.admit_at(2), Admit::Log { suppressed: 0 });
        assert_eq!(budget.admit_at(2), Admit::Log { suppressed: 0 });
        assert_eq!(budget.admit_at(2), Admit::Suppress);
        // A quiet gap: nothing to report but the one line of second 2.
        assert_eq!(budget.admit_at(9), Admit::Log { suppressed: 1 });
        assert_eq!(budget.admit_at(10), Admit::Log { suppressed: 0 });
    }
}
