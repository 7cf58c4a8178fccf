//! The policy (rate-limit) server's decisions: per-login hourly and daily sending
//! quotas, checked at the end of each message.
//!
//! Quotas come from the backend ([`LookupBackend::smtp_quota`], cached like lookups);
//! counts live in a [`store::QuotaStore`]. Any failure of either fails open
//! (`DUNNO`, as upstream) unless configured to defer.

mod flusher;
pub mod redis_store;
pub mod store;
pub mod window;

pub(crate) use flusher::StoreFlusher;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use postfix_adapter_backend::LookupBackend;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::log_throttle::LogThrottle;
use crate::metrics::{LATENCY_BUCKETS, Metrics};
use crate::normalize::{self, Normalizer};
use crate::protocol::policy::{Action, PolicyRequest};
use crate::resilience::CircuitBreaker;
use store::{QuotaStore, StoreError};

/// The most one message may weigh with `POLICY_COUNT=recipients`. Postfix's
/// `smtpd_recipient_limit` is 1000 by default; a client number beyond this is
/// clamped, so no sum of weights can come near overflowing a counter.
pub(crate) const MAX_RECIPIENT_WEIGHT: u64 = 100_000;

/// The weight of a message from its `recipient_count` attribute: at least 1, at
/// most [`MAX_RECIPIENT_WEIGHT`]; a number too long for any integer type weighs the
/// most, anything that is no number weighs 1.
pub(crate) fn recipient_weight(value: &str) -> u64 {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 1;
    }
    digits
        .parse::<u64>()
        .unwrap_or(MAX_RECIPIENT_WEIGHT)
        .clamp(1, MAX_RECIPIENT_WEIGHT)
}

/// What is counted against the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CountMode {
    /// One per message (upstream).
    Messages,
    /// One per recipient (`recipient_count`).
    Recipients,
}

/// Policy settings.
#[derive(Debug, Clone)]
pub(crate) struct PolicySettings {
    /// The text after `REJECT`/`DEFER` (`RATE_LIMIT_MESSAGE`).
    pub message: String,
    /// Answer `DEFER` instead of `REJECT` when over quota.
    pub defer_over_quota: bool,
    /// Answer `DEFER` instead of `DUNNO` when the backend or store fails.
    pub fail_closed: bool,
    /// Use the envelope sender when there is no `sasl_username` (upstream did).
    pub sender_fallback: bool,
    /// Messages or recipients.
    pub count: CountMode,
    /// Deadline for the quota lookup and the store, each.
    pub timeout: Duration,
    /// Consecutive store failures after which checks fail at once, without
    /// waiting for the store, for `store_breaker_cooldown` (0: never).
    pub store_breaker_failures: u32,
    /// How long the store breaker stays open before one check is let through.
    pub store_breaker_cooldown: Duration,
}

/// The policy metrics, upstream's names and labels.
#[derive(Clone, Debug)]
pub(crate) struct PolicyMetrics {
    /// `policy_active_connections`.
    pub active_connections: IntGauge,
    /// `policy_requests_total{stage,action}`.
    pub requests: IntCounterVec,
    /// `policy_request_duration_seconds{stage,action}`.
    pub duration: HistogramVec,
    /// `quota_exceeded_total`.
    pub quota_exceeded: IntCounter,
    /// `quota_checks_total{result}`.
    pub quota_checks: IntCounterVec,
    /// `policy_connection_pool_full_total`.
    pub pool_full: IntCounter,
    /// `ratelimit_backend_errors_total{operation}`: store failures, `check` (as
    /// upstream) and `save` (the embedded store's file).
    pub store_errors: IntCounterVec,
    /// `ratelimit_store_duration_seconds{store}` (new): store latency.
    pub store_duration: HistogramVec,
    /// `policy_quota_errors_total` (new): quota lookups that failed.
    pub quota_errors: IntCounter,
    /// `ratelimit_store_circuit_breaker_state` (new): 0 closed, 1 open, 2 half-open.
    pub store_breaker_state: IntGauge,
}

impl PolicyMetrics {
    /// Creates and registers the policy metrics on `metrics`' registry.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if registration fails (registered twice).
    pub(crate) fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let ns = "userli_postfix_adapter";
        let opts = |n: &str, h: &str| Opts::new(n, h).namespace(ns);
        let m = Self {
            active_connections: IntGauge::with_opts(opts(
                "policy_active_connections",
                "Number of active policy connections",
            ))?,
            requests: IntCounterVec::new(
                opts(
                    "policy_requests_total",
                    "Policy requests by stage and action",
                ),
                &["stage", "action"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "policy_request_duration_seconds",
                    "Duration of policy decisions",
                )
                .namespace(ns)
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["stage", "action"],
            )?,
            quota_exceeded: IntCounter::with_opts(opts(
                "quota_exceeded_total",
                "Messages over a sending quota",
            ))?,
            quota_checks: IntCounterVec::new(
                opts("quota_checks_total", "Quota checks performed"),
                &["result"],
            )?,
            pool_full: IntCounter::with_opts(opts(
                "policy_connection_pool_full_total",
                "Policy connections refused because all slots were in use",
            ))?,
            store_errors: IntCounterVec::new(
                opts(
                    "ratelimit_backend_errors_total",
                    "Failures of the rate-limit store: checks (the message was let through, or deferred when failing closed) and saves of the state file",
                ),
                &["operation"],
            )?,
            store_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ratelimit_store_duration_seconds",
                    "Rate-limit store latency",
                )
                .namespace(ns)
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["store"],
            )?,
            quota_errors: IntCounter::with_opts(opts(
                "policy_quota_errors_total",
                "Quota lookups that failed (messages were let through unless failing closed)",
            ))?,
            store_breaker_state: IntGauge::with_opts(opts(
                "ratelimit_store_circuit_breaker_state",
                "Rate-limit store circuit breaker: 0 closed, 1 open, 2 half-open",
            ))?,
        };
        let r = metrics.registry();
        r.register(Box::new(m.active_connections.clone()))?;
        r.register(Box::new(m.requests.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.quota_exceeded.clone()))?;
        r.register(Box::new(m.quota_checks.clone()))?;
        r.register(Box::new(m.pool_full.clone()))?;
        r.register(Box::new(m.store_errors.clone()))?;
        r.register(Box::new(m.store_duration.clone()))?;
        r.register(Box::new(m.quota_errors.clone()))?;
        r.register(Box::new(m.store_breaker_state.clone()))?;
        for stage in ["skip", "check"] {
            for action in ["dunno", "reject", "defer", "error"] {
                m.requests.with_label_values(&[stage, action]);
                m.duration.with_label_values(&[stage, action]);
            }
        }
        m.quota_checks.with_label_values(&["checked"]);
        for operation in ["check", "save"] {
            m.store_errors.with_label_values(&[operation]);
        }
        Ok(m)
    }
}

/// A decision and where it was made, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The action to send.
    pub action: Action,
    /// `skip` (not the end of a message) or `check`.
    pub stage: &'static str,
    /// The `action` label; `error` when a failure let the message through.
    pub label: &'static str,
}

/// Decides policy requests; shared by every policy connection.
pub(crate) struct PolicyService {
    backend: Arc<dyn LookupBackend>,
    store: Arc<dyn QuotaStore>,
    /// Extensions of envelope senders (`POLICY_SENDER_FALLBACK`), never of logins.
    normalizer: Normalizer,
    settings: PolicySettings,
    metrics: PolicyMetrics,
    warn_log: LogThrottle,
    /// A dead Redis must cost nothing per message, not a timeout each: Postfix's
    /// smtpd waits for every decision.
    store_breaker: CircuitBreaker,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("store", &self.store.name())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PolicyService {
    /// A service checking quotas from `backend` against counts in `store`.
    pub(crate) fn new(
        backend: Arc<dyn LookupBackend>,
        store: Arc<dyn QuotaStore>,
        normalizer: Normalizer,
        settings: PolicySettings,
        metrics: PolicyMetrics,
    ) -> Self {
        let store_breaker = CircuitBreaker::new(
            settings.store_breaker_failures,
            settings.store_breaker_cooldown,
            metrics.store_breaker_state.clone(),
        );
        metrics.store_duration.with_label_values(&[store.name()]);
        Self {
            backend,
            store,
            normalizer,
            settings,
            metrics,
            warn_log: LogThrottle::new(Duration::from_secs(10)),
            store_breaker,
        }
    }

    /// The metrics.
    pub(crate) fn metrics(&self) -> &PolicyMetrics {
        &self.metrics
    }

    /// The store, to flush it at shutdown.
    pub(crate) fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    fn failure(&self) -> Decision {
        if self.settings.fail_closed {
            Decision {
                action: Action::Defer(
                    "4.3.0 Temporary quota check failure, please try again later".into(),
                ),
                stage: "check",
                label: "error",
            }
        } else {
            Decision {
                action: Action::Dunno,
                stage: "check",
                label: "error",
            }
        }
    }

    /// Decides one request and records its metrics.
    pub(crate) async fn decide(&self, request: &PolicyRequest) -> Decision {
        let started = Instant::now();
        let decision = self.decide_inner(request).await;
        self.metrics
            .requests
            .with_label_values(&[decision.stage, decision.label])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[decision.stage, decision.label])
            .observe(started.elapsed().as_secs_f64());
        decision
    }

    async fn decide_inner(&self, request: &PolicyRequest) -> Decision {
        let dunno = |stage| Decision {
            action: Action::Dunno,
            stage,
            label: "dunno",
        };
        if request.value("protocol_state") != "END-OF-MESSAGE" {
            return dunno("skip");
        }
        let mut identity = request.value("sasl_username");
        let from_sender = identity.is_empty() && self.settings.sender_fallback;
        if from_sender {
            identity = request.value("sender");
        }
        if identity.is_empty() {
            return dunno("check");
        }
        // An account name in its one canonical spelling, so re-spelling a login
        // (case, IDN domain) cannot open a fresh bucket. A SASL login is never
        // extension-stripped: `first-last@` is an account of its own.
        let login = match normalize::login(identity) {
            Ok(login) => login,
            Err(why) => {
                tracing::debug!(identity = ?identity, %why, "identity is no account name, not rate limited");
                return dunno("check");
            }
        };
        // One deadline for the whole resolution, however many questions it takes.
        let resolved = tokio::time::timeout(self.settings.timeout, async {
            match self.backend.smtp_quota(&login).await {
                // An envelope sender is an address: as Postfix does for its tables,
                // the address as given first, and only when that names no account the
                // address without its extension (`user+list@` counts as `user@`,
                // while an account `first-last@` keeps its own count).
                Ok(None) if from_sender => match self.without_extension(identity) {
                    Some(stripped) => {
                        let quota = self.backend.smtp_quota(&stripped).await;
                        (stripped, quota)
                    }
                    None => (login.clone(), Ok(None)),
                },
                quota => (login.clone(), quota),
            }
        })
        .await;
        let (login, quota) = resolved.unwrap_or_else(|_| {
            (
                login.clone(),
                Err(postfix_adapter_backend::BackendError::Timeout),
            )
        });
        let quota = match quota {
            Ok(Some(q)) if !q.is_unlimited() => q,
            Ok(_) => return dunno("check"),
            Err(e) => {
                self.metrics.quota_errors.inc();
                if let Some(suppressed) = self.warn_log.allow() {
                    tracing::warn!(error = %e, similar_warnings_suppressed = suppressed, "Failed to fetch quota, allowing message");
                }
                return self.failure();
            }
        };

        let weight = match self.settings.count {
            CountMode::Messages => 1,
            CountMode::Recipients => recipient_weight(request.value("recipient_count")),
        };
        let Some(permit) = self.store_breaker.try_call() else {
            return self.store_failure("store unavailable (circuit breaker open)");
        };
        let store_started = Instant::now();
        let verdict = tokio::time::timeout(
            self.settings.timeout,
            self.store
                .check(login.as_str(), quota, weight, SystemTime::now()),
        )
        .await;
        self.metrics
            .store_duration
            .with_label_values(&[self.store.name()])
            .observe(store_started.elapsed().as_secs_f64());
        // A store that answered, even with a refusal of this one request's data,
        // is alive: only failures to answer count against the breaker, so one
        // client's odd request can never switch quotas off for everyone.
        self.store_breaker.record(
            permit,
            matches!(verdict, Ok(Ok(_)) | Ok(Err(StoreError::Rejected(_)))),
        );
        let verdict = match verdict {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.store_failure(&e.to_string()),
            Err(_) => return self.store_failure("timeout"),
        };
        self.metrics
            .quota_checks
            .with_label_values(&["checked"])
            .inc();
        if verdict.allowed {
            return dunno("check");
        }
        self.metrics.quota_exceeded.inc();
        tracing::info!(
            queue_id = request.value("queue_id"),
            hour = verdict.hour,
            day = verdict.day,
            per_hour = quota.per_hour,
            per_day = quota.per_day,
            "Rate limit exceeded"
        );
        tracing::debug!(login = login.as_str(), "Rate limit exceeded for this login");
        let text = self.settings.message.clone();
        if self.settings.defer_over_quota {
            Decision {
                action: Action::Defer(text),
                stage: "check",
                label: "defer",
            }
        } else {
            Decision {
                action: Action::Reject(text),
                stage: "check",
                label: "reject",
            }
        }
    }

    /// The canonical account of an envelope sender without its extension, if it
    /// has one.
    fn without_extension(&self, sender: &str) -> Option<postfix_adapter_backend::Address> {
        let key = self.normalizer.address(sender.as_bytes()).ok()?;
        normalize::login(key.without_extension()?.as_str()).ok()
    }

    fn store_failure(&self, why: &str) -> Decision {
        self.metrics
            .store_errors
            .with_label_values(&["check"])
            .inc();
        if let Some(suppressed) = self.warn_log.allow() {
            tracing::warn!(
                store = self.store.name(),
                error = why,
                similar_warnings_suppressed = suppressed,
                "rate-limit store failed, allowing message"
            );
        }
        self.failure()
    }
}

/// Opens the quota store: Redis when `REDIS_URL` is set, else the embedded one.
/// A damaged state file is set aside (logged at error, counted in
/// `state_files_damaged_total{file="policy-windows"}`) and the windows start empty.
pub(crate) async fn open_store(
    config: &crate::config::Config,
    metrics: &Metrics,
) -> Result<Arc<dyn QuotaStore>, store::StoreError> {
    if let Some(url) = &config.policy.redis_url {
        let ca = match &config.policy.redis_tls_ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                store::StoreError::Remote(format!("REDIS_TLS_CA_FILE {}: {e}", path.display()))
            })?),
        };
        // Never longer than the decision's own deadline: otherwise that deadline
        // would cut an operation short before the store could notice the failure
        // and check the connection before the next one.
        let op_timeout = config.policy.redis_timeout.min(config.lookups.timeout);
        let store =
            redis_store::RedisStore::connect_with_ca(url.expose(), op_timeout, ca.as_deref())
                .await?;
        return Ok(Arc::new(store));
    }
    let store = store::EmbeddedStore::open(&config.policy.state_directory)?;
    if store.set_aside().is_some() {
        metrics.state_file_damaged("policy-windows");
    }
    // The Redis store says itself whether it could connect.
    tracing::info!(
        store = "embedded",
        directory = %config.policy.state_directory.display(),
        "policy quota store ready"
    );
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests;
