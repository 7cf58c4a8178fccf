//! SMTP AUTH decisions for the Dovecot-protocol server: normalised logins, a
//! deadline on the backend, and brute-force throttling.
//!
//! Failure semantics: a wrong password is a `FAIL` (Postfix: 535); a backend that
//! cannot answer makes the server drop the auth connection (Postfix: 454, a
//! temporary failure), because Postfix turns every `FAIL` into 535 whatever it
//! carries. Users must never be told their password is wrong because the directory
//! was down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postfix_adapter_backend::{AuthOutcome, BackendError, LookupBackend};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::log_throttle::LogThrottle;
use crate::metrics::{LATENCY_BUCKETS, Metrics};
use crate::normalize::Normalizer;
use crate::protocol::dovecot::Mechanism;

/// Brute-force settings.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
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

/// Failure counters per client address and per login, bounded in memory.
pub struct Throttle {
    settings: ThrottleSettings,
    failures: moka::sync::Cache<String, u32>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// Counters forgotten `window` after the last failure; at most 100,000 kept.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(settings.window)
                .build(),
        }
    }

    fn keys(login: &str, ip: Option<&str>) -> [Option<String>; 2] {
        [
            Some(format!("login:{login}")),
            ip.map(|ip| format!("ip:{ip}")),
        ]
    }

    /// The highest failure count of `login` and `ip`.
    pub fn failures(&self, login: &str, ip: Option<&str>) -> u32 {
        Self::keys(login, ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.failures.get(&k))
            .max()
            .unwrap_or(0)
    }

    /// Whether `login` or `ip` is locked out.
    pub fn locked_out(&self, login: &str, ip: Option<&str>) -> bool {
        self.settings.lockout_failures > 0
            && self.failures(login, ip) >= self.settings.lockout_failures
    }

    /// Counts a failure and returns the delay to apply before answering.
    pub fn record_failure(&self, login: &str, ip: Option<&str>) -> Duration {
        let mut highest = 0;
        for key in Self::keys(login, ip).into_iter().flatten() {
            let n = self.failures.get(&key).unwrap_or(0).saturating_add(1);
            self.failures.insert(key, n);
            highest = highest.max(n);
        }
        self.delay_for(highest)
    }

    /// Forgets the failures of `login` after a success (the address keeps its count:
    /// one known password must not unlock guessing others from the same address).
    pub fn record_success(&self, login: &str) {
        self.failures.invalidate(&format!("login:{login}"));
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 || self.settings.base_delay.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        (self.settings.base_delay * factor).min(self.settings.max_delay)
    }
}

/// The SASL metrics, upstream's names plus throttling.
#[derive(Clone, Debug)]
pub struct SaslMetrics {
    /// `sasl_active_connections`.
    pub active_connections: IntGauge,
    /// `sasl_auth_total{mechanism,result}`.
    pub auth: IntCounterVec,
    /// `sasl_auth_duration_seconds{mechanism,result}`.
    pub duration: HistogramVec,
    /// `sasl_connection_pool_full_total`.
    pub pool_full: IntCounter,
    /// `sasl_throttled_total{action}` (new): `delayed` or `locked_out` answers.
    pub throttled: IntCounterVec,
    /// `sasl_backend_unavailable_total` (new): connections dropped so Postfix
    /// answers 454 instead of 535.
    pub unavailable: IntCounter,
}

impl SaslMetrics {
    /// Creates and registers the SASL metrics.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if registration fails.
    pub fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let ns = "userli_postfix_adapter";
        let opts = |n: &str, h: &str| Opts::new(n, h).namespace(ns);
        let m = Self {
            active_connections: IntGauge::with_opts(opts(
                "sasl_active_connections",
                "Number of active SASL connections",
            ))?,
            auth: IntCounterVec::new(
                opts(
                    "sasl_auth_total",
                    "SASL authentications by mechanism and result",
                ),
                &["mechanism", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "sasl_auth_duration_seconds",
                    "Duration of SASL authentications",
                )
                .namespace(ns)
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["mechanism", "result"],
            )?,
            pool_full: IntCounter::with_opts(opts(
                "sasl_connection_pool_full_total",
                "SASL connections refused because all slots were in use",
            ))?,
            throttled: IntCounterVec::new(
                opts(
                    "sasl_throttled_total",
                    "Failed authentications slowed down or locked out",
                ),
                &["action"],
            )?,
            unavailable: IntCounter::with_opts(opts(
                "sasl_backend_unavailable_total",
                "Authentications the backend could not check (connection dropped, Postfix answers 454)",
            ))?,
        };
        let r = metrics.registry();
        r.register(Box::new(m.active_connections.clone()))?;
        r.register(Box::new(m.auth.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.pool_full.clone()))?;
        r.register(Box::new(m.throttled.clone()))?;
        r.register(Box::new(m.unavailable.clone()))?;
        Ok(m)
    }
}

/// The outcome of one authentication, for the connection handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Send `OK` with this (normalised) login.
    Success(String),
    /// Send `FAIL` with this reason, after waiting `delay`.
    Failure {
        /// The reason for the client.
        reason: String,
        /// The brute-force delay.
        delay: Duration,
    },
    /// The backend could not check: drop the connection.
    Unavailable,
}

/// Checks logins; shared by every SASL connection.
pub struct SaslService {
    backend: Arc<dyn LookupBackend>,
    normalizer: Normalizer,
    timeout: Duration,
    throttle: Throttle,
    metrics: SaslMetrics,
    error_log: LogThrottle,
}

impl std::fmt::Debug for SaslService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslService")
            .field("timeout", &self.timeout)
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}

/// The reason for a failed login, as userli words it.
pub const AUTH_FAILED: &str = "authentication failed";

impl SaslService {
    /// A service checking passwords with `backend` within `timeout`.
    pub fn new(
        backend: Arc<dyn LookupBackend>,
        normalizer: Normalizer,
        timeout: Duration,
        throttle: ThrottleSettings,
        metrics: SaslMetrics,
    ) -> Self {
        Self {
            backend,
            normalizer,
            timeout,
            throttle: Throttle::new(throttle),
            metrics,
            error_log: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &SaslMetrics {
        &self.metrics
    }

    /// Counts a request that failed before reaching the backend (bad encoding,
    /// unsupported mechanism).
    pub fn count_protocol_error(&self, mechanism: Option<Mechanism>) {
        let label = mechanism.map_or("unsupported", Mechanism::label);
        self.metrics.auth.with_label_values(&[label, "error"]).inc();
    }

    /// Checks `login` and `password`; `ip` is the SMTP client's address.
    pub async fn authenticate(
        &self,
        mechanism: Mechanism,
        login: &str,
        password: &[u8],
        ip: Option<&str>,
    ) -> AuthResult {
        let started = Instant::now();
        let result = self.check(login, password, ip).await;
        let label = match &result {
            AuthResult::Success(_) => "success",
            AuthResult::Failure { .. } => "invalid_credentials",
            AuthResult::Unavailable => "error",
        };
        self.metrics
            .auth
            .with_label_values(&[mechanism.label(), label])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[mechanism.label(), label])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn check(&self, login: &str, password: &[u8], ip: Option<&str>) -> AuthResult {
        let Ok(address) = self.normalizer.address(login.as_bytes()) else {
            let delay = self.throttle.record_failure(login, ip);
            return self.failure(AUTH_FAILED.into(), delay);
        };
        let key = address.as_str();
        if self.throttle.locked_out(key, ip) {
            self.metrics
                .throttled
                .with_label_values(&["locked_out"])
                .inc();
            tracing::debug!(login = key, ip, "authentication refused: locked out");
            return AuthResult::Failure {
                reason: "too many failed attempts, try again later".into(),
                delay: self.throttle.settings.max_delay,
            };
        }
        let outcome =
            tokio::time::timeout(self.timeout, self.backend.authenticate(&address, password))
                .await
                .unwrap_or(Err(BackendError::Timeout));
        match outcome {
            Ok(AuthOutcome::Success) => {
                self.throttle.record_success(key);
                tracing::debug!(login = key, "authentication succeeded");
                AuthResult::Success(key.to_owned())
            }
            Ok(AuthOutcome::Failure { reason }) => {
                tracing::debug!(login = key, ip, "authentication failed");
                let delay = self.throttle.record_failure(key, ip);
                let reason = if reason.is_empty() {
                    AUTH_FAILED.into()
                } else {
                    reason
                };
                self.failure(reason, delay)
            }
            Err(e) => {
                self.metrics.unavailable.inc();
                if let Some(suppressed) = self.error_log.allow() {
                    tracing::warn!(error = %e, similar_warnings_suppressed = suppressed, "cannot check a password, dropping the auth connection (Postfix answers 454)");
                }
                AuthResult::Unavailable
            }
        }
    }

    fn failure(&self, reason: String, delay: Duration) -> AuthResult {
        if !delay.is_zero() {
            self.metrics.throttled.with_label_values(&["delayed"]).inc();
        }
        AuthResult::Failure { reason, delay }
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

    #[test]
    fn delays_grow_and_are_capped() {
        let t = throttle(0);
        let delays: Vec<u128> = (0..6)
            .map(|_| t.record_failure("u@x", Some("192.0.2.1")).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert!(!t.locked_out("u@x", None), "lock-out disabled");
    }

    #[test]
    fn counters_are_per_address_and_per_login() {
        let t = throttle(3);
        for i in 0..3 {
            t.record_failure(&format!("user{i}@x"), Some("192.0.2.1"));
        }
        assert!(
            t.locked_out("fresh@x", Some("192.0.2.1")),
            "address guessed 3 logins"
        );
        assert!(!t.locked_out("fresh@x", Some("192.0.2.2")));
        for _ in 0..3 {
            t.record_failure("victim@x", Some(&format!("198.51.100.{}", 1)));
        }
        assert!(
            t.locked_out("victim@x", Some("203.0.113.9")),
            "login guessed from anywhere"
        );
    }

    #[test]
    fn success_forgets_the_logins_failures_only() {
        let t = throttle(0);
        t.record_failure("u@x", Some("192.0.2.1"));
        t.record_failure("u@x", Some("192.0.2.1"));
        t.record_success("u@x");
        assert_eq!(t.failures("u@x", None), 0);
        assert_eq!(t.failures("u@x", Some("192.0.2.1")), 2);
    }
}
