//! Rate-limiting for log lines that a failing dependency would otherwise emit once
//! per request (thousands per second when the backend is down).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one log line through per interval and counts the ones it held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    /// `Some(n)` when the caller should log now, `n` being how many lines were
    /// suppressed since the last one; `None` when it should stay quiet.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.last {
            Some(last) if now.duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count_of_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(0));
        assert_eq!(t.allow_at(start + Duration::from_secs(1)), None);
        assert_eq!(t.allow_at(start + Duration::from_secs(9)), None);
        assert_eq!(t.allow_at(start + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow_at(start + Duration::from_secs(11)), None);
    }
}
