//! Brute-force throttling: growing delays and lock-outs per client address and per
//! login, bounded in memory.

use std::net::IpAddr;
use std::time::Duration;

/// Brute-force settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThrottleSettings {
    /// Delay before the `FAIL` of a first failure; doubles with each further one.
    pub base_delay: Duration,
    /// The longest delay (kept well under Postfix's 10 s auth timeout).
    pub max_delay: Duration,
    /// Failures after which a client address or login is locked out for the
    /// window (0: never).
    pub lockout_failures: u32,
    /// How long failures are remembered after the last one.
    pub window: Duration,
}

/// Which counter locked a login out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockScope {
    /// The SMTP client's address guessed too often (whatever logins it tried).
    Client,
    /// The login was guessed too often (from anywhere). Anyone can cause this for
    /// any login, so it locks the owner out too: the trade-off of
    /// `SASL_LOCKOUT_FAILURES`.
    Login,
}

impl LockScope {
    /// The `scope` metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Login => "login",
        }
    }
}

/// A throttle key: one per client address and one per (canonical) login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    Login(String),
}

/// Most failure counters kept (the least useful are forgotten first).
const MAX_COUNTERS: u64 = 100_000;
/// Most bytes the counters may take, logins and bookkeeping included: 100,000
/// counters of ordinary logins fit, 100,000 of the longest possible logins
/// (320 bytes) do not.
const MAX_BYTES: u64 = 32 << 20;
/// What a counter costs beyond its login's bytes (moka's per-entry bookkeeping).
const COUNTER_OVERHEAD_BYTES: usize = 250;

impl Key {
    /// A counter's weight: its bytes, but at least its share of the budget, so
    /// the byte limit also keeps the count limit.
    fn weight(&self) -> u32 {
        let bytes = COUNTER_OVERHEAD_BYTES
            + match self {
                Self::Client(_) => 0,
                Self::Login(login) => login.capacity(),
            };
        let floor = MAX_BYTES.div_ceil(MAX_COUNTERS);
        u32::try_from((bytes as u64).max(floor)).unwrap_or(u32::MAX)
    }
}

/// Failure counters per client address and per login, bounded in memory.
pub(crate) struct Throttle {
    settings: ThrottleSettings,
    failures: moka::sync::Cache<Key, u32>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// Counters forgotten `window` after the last failure; at most
    /// [`MAX_COUNTERS`] kept in at most [`MAX_BYTES`].
    pub(crate) fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            failures: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|key: &Key, _: &u32| key.weight())
                .time_to_idle(settings.window)
                .build(),
        }
    }

    /// The bytes the counters hold, as the table counts them.
    #[cfg(test)]
    fn weighted_bytes(&self) -> u64 {
        self.failures.run_pending_tasks();
        self.failures.weighted_size()
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    fn keys(login: Option<&str>, client: Option<IpAddr>) -> [Option<Key>; 2] {
        [
            client.map(Key::Client),
            login.map(|l| Key::Login(l.to_owned())),
        ]
    }

    /// The highest failure count of `login` and `client`.
    #[cfg(test)]
    pub(crate) fn failures(&self, login: &str, client: Option<IpAddr>) -> u32 {
        Self::keys(Some(login), client)
            .into_iter()
            .flatten()
            .filter_map(|k| self.failures.get(&k))
            .max()
            .unwrap_or(0)
    }

    /// Whether `login` or `client` is locked out, and by which counter (the client
    /// address's first: it is the one an attacker cannot choose).
    pub(crate) fn locked_out(&self, login: &str, client: Option<IpAddr>) -> Option<LockScope> {
        let limit = self.settings.lockout_failures;
        if limit == 0 {
            return None;
        }
        let over = |key: Key| self.failures.get(&key).is_some_and(|n| n >= limit);
        if client.is_some_and(|ip| over(Key::Client(ip))) {
            return Some(LockScope::Client);
        }
        over(Key::Login(login.to_owned())).then_some(LockScope::Login)
    }

    /// Counts a failure of `login` from `client` and returns the delay to apply.
    pub(crate) fn record_failure(&self, login: &str, client: Option<IpAddr>) -> Duration {
        self.record(Self::keys(Some(login), client))
    }

    /// Counts a failure of `client` alone (a login that names no account).
    pub(crate) fn record_failure_of_client(&self, client: Option<IpAddr>) -> Duration {
        self.record(Self::keys(None, client))
    }

    fn record(&self, keys: [Option<Key>; 2]) -> Duration {
        let mut highest = 0;
        for key in keys.into_iter().flatten() {
            // Atomic per key: concurrent failures must not overwrite each other's
            // count (a get-then-insert lost increments under a guessing burst).
            let n = self
                .failures
                .entry(key)
                .and_upsert_with(|old| old.map_or(0, |e| *e.value()).saturating_add(1))
                .into_value();
            highest = highest.max(n);
        }
        // A first failure with no key at all still waits the base delay.
        self.delay_for(highest.max(1))
    }

    /// Forgets the failures of `login` after a success (the address keeps its count:
    /// one known password must not unlock guessing others from the same address).
    pub(crate) fn record_success(&self, login: &str) {
        self.failures.invalidate(&Key::Login(login.to_owned()));
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 || self.settings.base_delay.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        (self.settings.base_delay * factor).min(self.settings.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(lockout: u32) -> Throttle {
        Throttle::new(ThrottleSettings {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            lockout_failures: lockout,
            window: Duration::from_secs(60),
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let t = throttle(0);
        let delays: Vec<u128> = (0..6)
            .map(|_| t.record_failure("u@x", ip("192.0.2.1")).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(t.locked_out("u@x", None), None, "lock-out disabled");
    }

    #[test]
    fn counters_are_per_address_and_per_login() {
        let t = throttle(3);
        for i in 0..3 {
            t.record_failure(&format!("user{i}@x"), ip("192.0.2.1"));
        }
        assert_eq!(
            t.locked_out("fresh@x", ip("192.0.2.1")),
            Some(LockScope::Client),
            "address guessed 3 logins"
        );
        assert_eq!(t.locked_out("fresh@x", ip("192.0.2.2")), None);
        for i in 0..3 {
            t.record_failure("victim@x", ip(&format!("198.51.100.{i}")));
        }
        assert_eq!(
            t.locked_out("victim@x", ip("203.0.113.9")),
            Some(LockScope::Login),
            "login guessed from anywhere"
        );
    }

    #[test]
    fn a_client_failure_without_a_login_counts_for_the_client_only() {
        let t = throttle(2);
        t.record_failure_of_client(ip("192.0.2.7"));
        t.record_failure_of_client(ip("192.0.2.7"));
        assert_eq!(
            t.locked_out("anyone@x", ip("192.0.2.7")),
            Some(LockScope::Client)
        );
        assert_eq!(t.locked_out("anyone@x", ip("192.0.2.8")), None);
        assert_eq!(
            t.record_failure_of_client(None),
            Duration::from_millis(100),
            "no key, still the base delay"
        );
    }

    #[test]
    fn concurrent_failures_are_all_counted() {
        let t = std::sync::Arc::new(throttle(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        t.record_failure("u@x", ip("192.0.2.1"));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.failures("u@x", None), 2000);
        assert_eq!(t.failures("nobody@x", ip("192.0.2.1")), 2000);
    }

    #[test]
    fn the_counters_are_bounded_in_bytes_whatever_the_logins() {
        let t = throttle(0);
        let long = "l".repeat(300);
        for i in 0..120_000 {
            t.record_failure(&format!("{long}{i}@x"), None);
        }
        let bytes = t.weighted_bytes();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes weighed");
        assert!(bytes > MAX_BYTES / 2, "the budget is used: {bytes}");
        assert!(t.failures.entry_count() < 70_000);
    }

    #[test]
    fn success_forgets_the_logins_failures_only() {
        let t = throttle(0);
        t.record_failure("u@x", ip("192.0.2.1"));
        t.record_failure("u@x", ip("192.0.2.1"));
        t.record_success("u@x");
        assert_eq!(t.failures("u@x", None), 0);
        assert_eq!(t.failures("u@x", ip("192.0.2.1")), 2);
    }
}
