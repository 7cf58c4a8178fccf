//! Rate limit for the "token rejected" log line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a rejected token may be logged at most.
pub const UNAUTHORIZED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Lets one event through per interval and counts the ones it held back.
///
/// A wrong token fails *every* lookup, i.e. hundreds per second on a busy relay;
/// logging each would bury everything else, but the operator must still see it.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting one event through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// `Some(n)` when the caller should log now, `n` being the number of events
    /// held back since the last logged one; `None` when it should stay silent.
    pub fn check(&self, now: Instant) -> Option<u64> {
        // A panic while holding this lock cannot leave the state inconsistent, so a
        // poisoned lock is simply reused.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = match state.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.interval,
        };
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(UNAUTHORIZED_LOG_INTERVAL);
        let t0 = Instant::now();
        assert_eq!(limiter.check(t0), Some(0));
        assert_eq!(limiter.check(t0), None);
        assert_eq!(limiter.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.check(t0 + Duration::from_secs(59)), None);
        assert_eq!(limiter.check(t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(limiter.check(t0 + Duration::from_secs(61)), None);
        assert_eq!(limiter.check(t0 + Duration::from_secs(200)), Some(1));
    }

    #[test]
    fn an_earlier_instant_does_not_log_again() {
        // Instants from racing threads may arrive slightly out of order.
        let limiter = LogLimiter::new(UNAUTHORIZED_LOG_INTERVAL);
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(limiter.check(t0), Some(0));
        assert_eq!(limiter.check(t0 - Duration::from_secs(5)), None);
    }
}
