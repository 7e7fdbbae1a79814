//! The one retry policy for work that failed for a reason that may pass (a push rejected
//! because the base branch moved, a remote that did not answer, a failed intake): exponential
//! backoff from [`FIRST_DELAY`] to [`MAX_DELAY`]. The state lives in task state (not in
//! memory), so a restart or a new leader keeps waiting instead of hammering.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first retry waits this long: long enough for a push race or a brief network blip to
/// clear, short enough that a human does not notice.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Backoff stops growing here: an outage of minutes is retried about once a minute.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Consecutive transient failures of one piece of work and when it may run again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Retry {
    pub failures: u32,
    /// Milliseconds since the Unix epoch.
    pub not_before_ms: u64,
    /// The last failure, in words, for `hyperloopctl status`.
    pub reason: String,
}

/// The delay before retry number `failures` (1 = after the first failure).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

impl Retry {
    /// Records one more failure at `now_ms`.
    pub fn failed(previous: Option<&Retry>, reason: String, now_ms: u64) -> Retry {
        let failures = previous.map_or(0, |r| r.failures) + 1;
        let wait = u64::try_from(delay(failures).as_millis()).unwrap_or(u64::MAX);
        Retry {
            failures,
            not_before_ms: now_ms.saturating_add(wait),
            reason,
        }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_stops_at_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_retry_counts_failures_and_waits_from_now() {
        let first = Retry::failed(None, "push rejected".into(), 10_000);
        assert_eq!((first.failures, first.not_before_ms), (1, 11_000));
        assert!(!first.due(10_999));
        assert!(first.due(11_000));
        let second = Retry::failed(Some(&first), "again".into(), 20_000);
        assert_eq!((second.failures, second.not_before_ms), (2, 22_000));
    }
}
