//! Sliding hour and day windows of one sender, in one-minute buckets.
//!
//! Buckets keep the memory per sender bounded (at most 1440 entries, whatever the
//! sender does: rejected attempts are added to a bucket, not appended as upstream's
//! sorted-set members were). The windows are exact to the minute.

use std::collections::VecDeque;

use postfix_adapter_backend::SmtpQuota;
use serde::{Deserialize, Serialize};

/// Minutes in the hour window.
pub const HOUR_MINUTES: u64 = 60;
/// Minutes in the day window.
pub const DAY_MINUTES: u64 = 24 * 60;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the message is within both limits.
    pub allowed: bool,
    /// Messages (or recipients) in the last hour, this one included.
    pub hour: u64,
    /// Messages (or recipients) in the last day, this one included.
    pub day: u64,
}

impl Verdict {
    /// Applies `limits` to counts that include the current attempt; exactly
    /// `limit` messages per window are allowed.
    pub fn judge(limits: SmtpQuota, hour: u64, day: u64) -> Self {
        let over = |limit: u32, count: u64| limit > 0 && count > u64::from(limit);
        Self {
            allowed: !over(limits.per_hour, hour) && !over(limits.per_day, day),
            hour,
            day,
        }
    }
}

/// One sender's buckets: (minute since the Unix epoch, count), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    buckets: VecDeque<(u64, u64)>,
}

impl Windows {
    /// Drops buckets older than a day before `now_minute`.
    pub fn expire(&mut self, now_minute: u64) {
        while let Some(&(minute, _)) = self.buckets.front() {
            if minute.saturating_add(DAY_MINUTES) <= now_minute {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records `weight` at `now_minute` (rejected attempts count too, so a sender
    /// who keeps trying stays blocked) and returns the hour and day counts.
    pub fn record(&mut self, now_minute: u64, weight: u64) -> (u64, u64) {
        self.expire(now_minute);
        match self.buckets.back_mut() {
            Some((minute, count)) if *minute >= now_minute => *count = count.saturating_add(weight),
            _ => self.buckets.push_back((now_minute, weight)),
        }
        self.counts(now_minute)
    }

    /// The hour and day counts at `now_minute`, without recording.
    pub fn counts(&self, now_minute: u64) -> (u64, u64) {
        let mut hour = 0;
        let mut day = 0;
        for &(minute, count) in &self.buckets {
            if minute.saturating_add(DAY_MINUTES) > now_minute {
                day = u64::saturating_add(day, count);
                if minute.saturating_add(HOUR_MINUTES) > now_minute {
                    hour = u64::saturating_add(hour, count);
                }
            }
        }
        (hour, day)
    }

    /// Whether nothing is left in the day window.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Number of buckets (bounded by [`DAY_MINUTES`]).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_hour: u32, per_day: u32) -> SmtpQuota {
        SmtpQuota { per_hour, per_day }
    }

    #[test]
    fn exactly_the_limit_is_allowed() {
        let mut w = Windows::default();
        let t = 1_000_000;
        let verdicts: Vec<bool> = (0..4)
            .map(|_| {
                let (h, d) = w.record(t, 1);
                Verdict::judge(quota(3, 0), h, d).allowed
            })
            .collect();
        assert_eq!(verdicts, [true, true, true, false]);
    }

    #[test]
    fn rejected_attempts_keep_counting() {
        let mut w = Windows::default();
        let t = 1_000_000;
        for _ in 0..7 {
            w.record(t, 1);
        }
        assert_eq!(w.counts(t), (7, 7));
    }

    #[test]
    fn hour_and_day_windows_slide() {
        let mut w = Windows::default();
        let t = 1_000_000;
        w.record(t, 2);
        assert_eq!(w.counts(t + 59), (2, 2));
        assert_eq!(w.counts(t + 60), (0, 2), "out of the hour");
        assert_eq!(w.counts(t + DAY_MINUTES - 1), (0, 2));
        assert_eq!(w.counts(t + DAY_MINUTES), (0, 0), "out of the day");
        w.record(t + DAY_MINUTES, 1);
        assert_eq!(w.len(), 1, "expired buckets are dropped");
    }

    #[test]
    fn zero_limits_mean_unlimited_and_day_limit_applies() {
        assert!(Verdict::judge(quota(0, 0), 1_000, 1_000).allowed);
        assert!(!Verdict::judge(quota(0, 5), 1, 6).allowed);
        assert!(Verdict::judge(quota(10, 5), 5, 5).allowed);
    }

    #[test]
    fn memory_is_bounded() {
        let mut w = Windows::default();
        for minute in 0..10 * DAY_MINUTES {
            for _ in 0..3 {
                w.record(minute, 1);
            }
        }
        assert!(w.len() <= DAY_MINUTES as usize);
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut w = Windows::default();
        let t = 1_000_000;
        w.record(t, u64::MAX);
        assert_eq!(w.record(t, u64::MAX), (u64::MAX, u64::MAX), "same bucket");
        assert_eq!(w.record(t + 1, 5), (u64::MAX, u64::MAX), "sum of buckets");
        assert!(!Verdict::judge(quota(10, 0), u64::MAX, u64::MAX).allowed);
    }

    #[test]
    fn recipients_weigh_more() {
        let mut w = Windows::default();
        let (h, _) = w.record(5, 3);
        assert!(!Verdict::judge(quota(2, 0), h, h).allowed);
    }
}
