//! The SASL server's metrics: upstream's names, plus throttling and overload.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::{LATENCY_BUCKETS, Metrics};

/// The SASL metrics, upstream's names plus throttling and overload protection.
#[derive(Clone, Debug)]
pub(crate) struct SaslMetrics {
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
    /// `sasl_lockouts_total{scope}` (new): locked-out answers by the counter that
    /// locked them, `client` (the SMTP client's address) or `login`.
    pub lockouts: IntCounterVec,
    /// `sasl_backend_unavailable_total` (new): connections dropped so Postfix
    /// answers 454 instead of 535.
    pub unavailable: IntCounter,
    /// `sasl_checks_refused_total{limit}` (new): checks refused without asking the
    /// backend because a client (`client`) or everyone (`total`) had too many in
    /// flight; the connection is dropped (Postfix: 454).
    pub checks_refused: IntCounterVec,
    /// `sasl_checks_in_flight` (new): password checks waiting for the backend.
    pub checks_in_flight: IntGauge,
    /// `sasl_circuit_breaker_state` (new): the login checks' own breaker, 0 closed,
    /// 1 open, 2 half-open.
    pub breaker_state: IntGauge,
    /// `sasl_login_cache_answers_total{answer}` (new): logins the login cache
    /// answered: `fresh` (succeeded within `SASL_CACHE_TTL` without asking the
    /// backend), `stale` (succeeded while the backend failed), `mismatch` (another
    /// password while the backend failed: dropped, Postfix answers 454).
    pub login_cache_answers: IntCounterVec,
    /// `sasl_login_cache_entries` (new): verified logins held.
    pub login_cache_entries: IntGauge,
    /// `sasl_login_cache_bytes` (new): their bytes, as the byte limit counts them.
    pub login_cache_bytes: IntGauge,
}

impl SaslMetrics {
    /// Creates and registers the SASL metrics.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if registration fails.
    pub(crate) fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
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
            lockouts: IntCounterVec::new(
                opts(
                    "sasl_lockouts_total",
                    "Authentications refused because the client address or the login failed too often",
                ),
                &["scope"],
            )?,
            unavailable: IntCounter::with_opts(opts(
                "sasl_backend_unavailable_total",
                "Authentications the backend could not check (connection dropped, Postfix answers 454)",
            ))?,
            checks_refused: IntCounterVec::new(
                opts(
                    "sasl_checks_refused_total",
                    "Password checks refused without asking the backend because too many were in flight (connection dropped, Postfix answers 454)",
                ),
                &["limit"],
            )?,
            checks_in_flight: IntGauge::with_opts(opts(
                "sasl_checks_in_flight",
                "Password checks waiting for the backend",
            ))?,
            breaker_state: IntGauge::with_opts(opts(
                "sasl_circuit_breaker_state",
                "Circuit breaker of the password checks: 0 closed, 1 open, 2 half-open",
            ))?,
            login_cache_answers: IntCounterVec::new(
                opts(
                    "sasl_login_cache_answers_total",
                    "Logins answered by the login cache: fresh (within SASL_CACHE_TTL, backend not asked), stale (backend failing), mismatch (backend failing, another password: Postfix answers 454)",
                ),
                &["answer"],
            )?,
            login_cache_entries: IntGauge::with_opts(opts(
                "sasl_login_cache_entries",
                "Verified logins held by the login cache",
            ))?,
            login_cache_bytes: IntGauge::with_opts(opts(
                "sasl_login_cache_bytes",
                "Bytes of the login cache, as SASL_CACHE_MAX_BYTES counts them",
            ))?,
        };
        for label in ["fresh", "stale", "mismatch"] {
            m.login_cache_answers.with_label_values(&[label]);
        }
        for label in ["client", "login"] {
            m.lockouts.with_label_values(&[label]);
        }
        for label in ["client", "total"] {
            m.checks_refused.with_label_values(&[label]);
        }
        let r = metrics.registry();
        r.register(Box::new(m.active_connections.clone()))?;
        r.register(Box::new(m.auth.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.pool_full.clone()))?;
        r.register(Box::new(m.throttled.clone()))?;
        r.register(Box::new(m.lockouts.clone()))?;
        r.register(Box::new(m.unavailable.clone()))?;
        r.register(Box::new(m.checks_refused.clone()))?;
        r.register(Box::new(m.checks_in_flight.clone()))?;
        r.register(Box::new(m.breaker_state.clone()))?;
        r.register(Box::new(m.login_cache_answers.clone()))?;
        r.register(Box::new(m.login_cache_entries.clone()))?;
        r.register(Box::new(m.login_cache_bytes.clone()))?;
        for mechanism in ["PLAIN", "LOGIN", "unsupported"] {
            for result in ["success", "invalid_credentials", "error"] {
                m.auth.with_label_values(&[mechanism, result]);
                m.duration.with_label_values(&[mechanism, result]);
            }
        }
        for action in ["delayed", "locked_out"] {
            m.throttled.with_label_values(&[action]);
        }
        Ok(m)
    }
}
