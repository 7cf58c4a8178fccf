//! SMTP AUTH decisions for the Dovecot-protocol server: canonical logins, a
//! deadline on the backend, brute-force throttling, and overload protection.
//!
//! Failure semantics: a wrong password is a `FAIL` (Postfix: 535); a backend that
//! cannot answer makes the server drop the auth connection (Postfix: 454, a
//! temporary failure), because Postfix turns every `FAIL` into 535 whatever it
//! carries. Users must never be told their password is wrong because the directory
//! was down.
//!
//! Isolation: password checks have their own concurrency caps ([`admission`]) and
//! their own circuit breaker, apart from the lookups'. A flood of wrong passwords
//! (which needs no valid credentials) can therefore never take the backend slots
//! lookups need, never open the lookup breaker, and never turn `/ready` red.

pub(crate) mod admission;
pub(crate) mod login_cache;
mod metrics;
mod throttle;

pub(crate) use admission::Admission;
pub(crate) use login_cache::{LoginCache, LoginCacheSettings, OutageAnswer};
pub(crate) use metrics::SaslMetrics;
pub(crate) use throttle::{Throttle, ThrottleSettings};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postfix_adapter_backend::{AuthOutcome, BackendError, LookupBackend, MAX_PASSWORD_BYTES};

use crate::access::canonical_ip;
use crate::log_throttle::LogThrottle;
use crate::normalize;
use crate::protocol::dovecot::Mechanism;
use crate::resilience::{CircuitBreaker, GuardedBackend};

/// The unit one SMTP client controls, for the in-flight caps and the failure
/// counters: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6 /64, since
/// one host usually holds a whole /64 and could otherwise rotate through it.
pub(crate) fn client_network(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Settings of the SASL service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SaslSettings {
    /// Deadline of one password check.
    pub timeout: Duration,
    /// Brute-force throttling.
    pub throttle: ThrottleSettings,
    /// Password checks in flight at most (`SASL_MAX_CONCURRENT_CHECKS`).
    pub max_checks: usize,
    /// Password checks in flight at most for one SMTP client address
    /// (`SASL_MAX_CHECKS_PER_CLIENT`).
    pub max_checks_per_client: usize,
    /// Consecutive failed checks (errors, not wrong passwords) after which the
    /// checks' own breaker opens (0: never).
    pub breaker_failures: u32,
    /// How long that breaker stays open before one check is let through.
    pub breaker_cooldown: Duration,
    /// Verified logins kept for outages (`SASL_CACHE_*`).
    pub cache: LoginCacheSettings,
}

/// The outcome of one authentication, for the connection handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthResult {
    /// Send `OK` with this (canonical) login.
    Success(String),
    /// Send `FAIL` with this reason, after waiting `delay`.
    Failure {
        /// The reason for the client.
        reason: String,
        /// What is left of the brute-force delay, which counts from the start of
        /// the request so that every failure takes the same time.
        delay: Duration,
    },
    /// The backend could not check, or the check was refused for overload: drop the
    /// connection.
    Unavailable,
}

/// Checks logins; shared by every SASL connection.
pub(crate) struct SaslService {
    backend: GuardedBackend,
    timeout: Duration,
    throttle: Throttle,
    admission: Admission,
    /// Verified logins, when kept (`SASL_CACHE_TTL`, `SASL_CACHE_STALE_TTL`).
    logins: Option<Arc<LoginCache>>,
    metrics: SaslMetrics,
    error_log: LogThrottle,
    stale_log: LogThrottle,
    overload_log: LogThrottle,
}

impl std::fmt::Debug for SaslService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslService")
            .field("timeout", &self.timeout)
            .field("throttle", &self.throttle)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

pub(crate) use postfix_adapter_backend::AUTH_FAILED;

/// The reason for a locked-out login.
pub(crate) const LOCKED_OUT: &str = "too many failed attempts, try again later";

impl SaslService {
    /// A service checking passwords with `backend` (the bare backend: the service
    /// puts its own breaker and caps around it).
    pub(crate) fn new(
        backend: Arc<dyn LookupBackend>,
        settings: SaslSettings,
        metrics: SaslMetrics,
    ) -> Self {
        let breaker = Arc::new(CircuitBreaker::new(
            settings.breaker_failures,
            settings.breaker_cooldown,
            metrics.breaker_state.clone(),
        ));
        // Admission caps the checks before they get here, so this limit never queues.
        let backend = GuardedBackend::new(
            backend,
            breaker,
            settings.max_checks.max(1),
            metrics.checks_in_flight.clone(),
        );
        Self {
            backend,
            timeout: settings.timeout,
            throttle: Throttle::new(settings.throttle),
            admission: Admission::new(settings.max_checks, settings.max_checks_per_client),
            logins: settings
                .cache
                .enabled()
                .then(|| Arc::new(LoginCache::new(settings.cache))),
            metrics,
            error_log: LogThrottle::new(Duration::from_secs(10)),
            stale_log: LogThrottle::new(Duration::from_secs(10)),
            overload_log: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// The metrics.
    pub(crate) fn metrics(&self) -> &SaslMetrics {
        &self.metrics
    }

    /// The login cache, when kept.
    pub(crate) fn login_cache(&self) -> Option<&Arc<LoginCache>> {
        self.logins.as_ref()
    }

    /// Drops every cached login (SIGHUP): from then on every login asks the
    /// backend until it passes again.
    pub(crate) fn forget_logins(&self) {
        if let Some(logins) = &self.logins {
            logins.clear();
            self.update_cache_size(logins);
            tracing::info!("login cache dropped");
        }
    }

    fn update_cache_size(&self, logins: &LoginCache) {
        let (entries, bytes) = logins.exact_size();
        self.metrics
            .login_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.metrics
            .login_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a request that failed before reaching the backend (bad encoding,
    /// unsupported mechanism).
    pub(crate) fn count_protocol_error(&self, mechanism: Option<Mechanism>) {
        let label = mechanism.map_or("unsupported", Mechanism::label);
        self.metrics.auth.with_label_values(&[label, "error"]).inc();
    }

    /// Checks `login` and `password`; `client` is the SMTP client's address as
    /// Postfix reports it (`rip=`).
    pub(crate) async fn authenticate(
        &self,
        mechanism: Mechanism,
        login: &str,
        password: &[u8],
        client: Option<&str>,
    ) -> AuthResult {
        let started = Instant::now();
        // An address that does not parse is no address: it shares the allowance of
        // requests without one, and its text never becomes a table key.
        let client = client
            .and_then(|c| c.parse::<IpAddr>().ok())
            .map(client_network);
        let mut result = self.check(login, password, client).await;
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
        if let AuthResult::Failure { delay, .. } = &mut result {
            // Padded from the start: how long the directory took (a hash verified
            // or not) must not show in how long the failure takes.
            *delay = delay.saturating_sub(started.elapsed());
        }
        result
    }

    async fn check(&self, login: &str, password: &[u8], client: Option<IpAddr>) -> AuthResult {
        // An account name, never an address with an extension; one spelling per
        // account, so re-spelling a login cannot dodge its failure counter.
        let address = match normalize::login(login) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(login = ?login, client = ?client, %why, "login cannot be an account name");
                // Counted for the client address only: such a login names no
                // account, and its client-chosen text must not fill the table.
                let delay = self.throttle.record_failure_of_client(client);
                return self.failure(AUTH_FAILED.into(), delay);
            }
        };
        let key = address.as_str();
        if let Some(scope) = self.throttle.locked_out(key, client) {
            self.metrics
                .throttled
                .with_label_values(&["locked_out"])
                .inc();
            self.metrics
                .lockouts
                .with_label_values(&[scope.label()])
                .inc();
            tracing::debug!(login = key, client = ?client, scope = scope.label(), "authentication refused: locked out");
            return AuthResult::Failure {
                reason: LOCKED_OUT.into(),
                delay: self.throttle.settings().max_delay,
            };
        }
        if let Some(logins) = &self.logins
            && let Some(verifier) = logins.answers_fresh(key, password)
        {
            self.metrics
                .login_cache_answers
                .with_label_values(&["fresh"])
                .inc();
            self.throttle.record_success(key);
            logins.keep_on_disk(key, password, &verifier);
            tracing::debug!(
                login = key,
                "authentication succeeded (login cache, within SASL_CACHE_TTL)"
            );
            return AuthResult::Success(key.to_owned());
        }
        let _ticket = match self.admission.try_admit(client) {
            Ok(t) => t,
            Err(refused) => {
                self.metrics
                    .checks_refused
                    .with_label_values(&[refused.label()])
                    .inc();
                if let Some(suppressed) = self.overload_log.allow() {
                    tracing::warn!(
                        limit = refused.label(),
                        similar_warnings_suppressed = suppressed,
                        "too many password checks in flight, dropping the auth connection (Postfix answers 454)"
                    );
                }
                return AuthResult::Unavailable;
            }
        };
        let outcome =
            tokio::time::timeout(self.timeout, self.backend.authenticate(&address, password))
                .await
                .unwrap_or(Err(BackendError::Timeout));
        match outcome {
            Ok(AuthOutcome::Success) => {
                if let Some(logins) = &self.logins {
                    logins.remember(key, password);
                    self.update_cache_size(logins);
                }
                self.throttle.record_success(key);
                tracing::debug!(login = key, "authentication succeeded");
                AuthResult::Success(key.to_owned())
            }
            Ok(AuthOutcome::Failure { reason }) => {
                // Whatever the reason (password, spam lock, password change
                // required): the backend said no, so the cache must not say yes.
                if let Some(logins) = &self.logins {
                    // What userli's backend refuses without asking userli (so
                    // even while userli is down) says nothing about the account.
                    let screened = !password.is_empty()
                        && password.len() <= MAX_PASSWORD_BYTES
                        && std::str::from_utf8(password).is_ok();
                    // Counted only when something went: a flood of wrong
                    // passwords must not run the cache's upkeep each time.
                    if logins.forget_if_refused(key, password, screened) {
                        self.update_cache_size(logins);
                    }
                }
                tracing::debug!(login = key, client = ?client, "authentication failed");
                let delay = self.throttle.record_failure(key, client);
                let reason = if reason.is_empty() {
                    AUTH_FAILED.into()
                } else {
                    reason
                };
                self.failure(reason, delay)
            }
            Err(e) => self.answer_in_outage(key, password, client, &e).await,
        }
    }

    /// The backend could not check: the login cache answers a password it knows,
    /// anything else is an outage (Postfix: 454), never a `FAIL`.
    async fn answer_in_outage(
        &self,
        key: &str,
        password: &[u8],
        client: Option<IpAddr>,
        error: &BackendError,
    ) -> AuthResult {
        let cached = match &self.logins {
            Some(logins) => logins.answer_in_outage(key, password, client).await,
            None => OutageAnswer::Unknown,
        };
        match cached {
            OutageAnswer::Verified => {
                self.metrics
                    .login_cache_answers
                    .with_label_values(&["stale"])
                    .inc();
                self.throttle.record_success(key);
                if let Some(suppressed) = self.stale_log.allow() {
                    tracing::warn!(error = %error, similar_warnings_suppressed = suppressed, "cannot check a password, login answered from the login cache");
                }
                tracing::debug!(
                    login = key,
                    "authentication succeeded (login cache, backend failing)"
                );
                return AuthResult::Success(key.to_owned());
            }
            OutageAnswer::Refuted => {
                // Not the password userli last passed: maybe mistyped, maybe
                // changed since, maybe guessed. Told to retry (454), never that it
                // is wrong, but counted against the client address, so guessing
                // against the cache during an outage meets the lock-out; not
                // against the login, whose owner would be locked out (a `FAIL`)
                // by someone else's guesses while userli cannot say who is right.
                self.metrics
                    .login_cache_answers
                    .with_label_values(&["mismatch"])
                    .inc();
                self.throttle.record_failure_of_client(client);
                tracing::debug!(login = key, client = ?client, "password differs from the cached one while the backend fails: dropping the auth connection (454)");
            }
            OutageAnswer::Unknown => {}
        }
        self.metrics.unavailable.inc();
        if let Some(suppressed) = self.error_log.allow() {
            tracing::warn!(error = %error, similar_warnings_suppressed = suppressed, "cannot check a password, dropping the auth connection (Postfix answers 454)");
        }
        AuthResult::Unavailable
    }

    fn failure(&self, reason: String, delay: Duration) -> AuthResult {
        if !delay.is_zero() {
            self.metrics.throttled.with_label_values(&["delayed"]).inc();
        }
        AuthResult::Failure { reason, delay }
    }
}

#[cfg(test)]
mod tests;
