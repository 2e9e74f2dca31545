//! Rate limits for the log lines of errors a client sees (SERVFAIL, FORMERR, a timeout towards an
//! upstream or the authority). Every such error gets a line, until a flood of them (a dead
//! upstream under load, a client sending garbage) would fill the node's disk: then at most
//! [`LINES_PER_SECOND`] a second are written, and the first line of the next second says how
//! many were left out. The hot path is one atomic load and compare-exchange, never a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Error lines written per second at most (plus one saying how many were suppressed).
pub const LINES_PER_SECOND: u32 = 10;

/// What [`ErrorLog::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the line. `suppressed` lines were left out since the last one written (say so first).
    Write { suppressed: u64 },
    /// Leave it out (counted, and reported with the next line written).
    Suppress,
}

/// A fixed-window limiter: the second (since `epoch`) and the lines written in it, in one atomic
/// word, so the window turns over and counts in one compare-exchange.
#[derive(Debug)]
pub struct ErrorLog {
    per_second: u32,
    epoch: Instant,
    /// High 32 bits: the window's second; low 32: lines written in it.
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl ErrorLog {
    pub fn new(per_second: u32) -> Self {
        Self { per_second, epoch: Instant::now(), state: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Whether an error line may be written now.
    pub fn admit(&self) -> Admit {
        let second = u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.admit_at(second)
    }

    /// [`ErrorLog::admit`] at `second` (since the limiter was made): the clock is passed in so
    /// tests need no sleep.
    pub fn admit_at(&self, second: u32) -> Admit {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (window, used) = ((current >> 32) as u32, current as u32);
            let (next, first) = if window != second {
                ((u64::from(second) << 32) | 1, true)
            } else if used < self.per_second {
                (current + 1, false)
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                suppressed_metric().increment(1);
                return Admit::Suppress;
            };
            match self.state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let suppressed = if first { self.suppressed.swap(0, Ordering::Relaxed) } else { 0 };
                    return Admit::Write { suppressed };
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for ErrorLog {
    fn default() -> Self {
        Self::new(LINES_PER_SECOND)
    }
}

fn suppressed_metric() -> &'static metrics::Counter {
    static COUNTER: OnceLock<metrics::Counter> = OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!("nodedns_error_logs_suppressed_total"))
}

/// Help text of the metric the limiter counts into.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "nodedns_error_logs_suppressed_total",
        "Error log lines left out by the rate limit (see the next line written for how many)."
    );
}

/// The process's limiter, shared by every place that logs client-visible errors, so the bound
/// holds for the process whatever mix of errors floods it.
pub fn shared() -> &'static Arc<ErrorLog> {
    static LOG: OnceLock<Arc<ErrorLog>> = OnceLock::new();
    LOG.get_or_init(|| Arc::new(ErrorLog::default()))
}

/// Writes `warn!` lines for a client-visible error through the process's limiter: the fields
/// given, and first a line saying how many were suppressed if some were.
#[macro_export]
macro_rules! client_error {
    ($($fields:tt)*) => {
        match $crate::error_log::shared().admit() {
            $crate::error_log::Admit::Write { suppressed } => {
                if suppressed > 0 {
                    ::tracing::warn!(suppressed, "suppressed {suppressed} similar error lines (rate limit)");
                }
                ::tracing::warn!($($fields)*);
            }
            $crate::error_log::Admit::Suppress => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_at_most_the_bound_per_second_then_says_how_many_went() {
        let log = ErrorLog::new(10);
        let written = (0..1000).filter(|_| matches!(log.admit_at(5), Admit::Write { .. })).count();
        assert_eq!(written, 10);
        assert_eq!(log.admit_at(6), Admit::Write { suppressed: 990 }, "the next second reports them");
        assert_eq!(log.admit_at(6), Admit::Write { suppressed: 0 }, "once");
        // Threads racing for the same second still write the bound, no more.
        let log = Arc::new(ErrorLog::new(10));
        let written: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let log = Arc::clone(&log);
                    s.spawn(move || (0..500).filter(|_| log.admit_at(1) != Admit::Suppress).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(written, 10);
    }
}
