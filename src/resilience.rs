//! Protecting the adapter from a failing backend and the backend from the adapter:
//! a circuit breaker and a limit on concurrent backend calls, as a decorator.
//!
//! With the breaker open, a lookup costs microseconds (the cache answers stale or
//! `TEMP` at once) instead of a timeout each; one probe per cool-down finds out when
//! the backend is back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postfix_adapter_backend::{Address, BackendError, LookupBackend, SmtpQuota, async_trait};
use prometheus::IntGauge;
use tokio::sync::Semaphore;

/// Breaker states, also the values of the `circuit_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// Calls fail at once until the cool-down is over.
    Open = 1,
    /// One probe call is in flight; others fail at once.
    HalfOpen = 2,
}

#[derive(Debug)]
struct BreakerInner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// A consecutive-failure circuit breaker.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<BreakerInner>,
    gauge: IntGauge,
}

/// Permission to make one call; report how it went with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use]
pub(crate) struct CallPermit {
    probe: bool,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures (0 disables the breaker) for
    /// `cooldown`; the state is mirrored on `gauge`.
    pub(crate) fn new(threshold: u32, cooldown: Duration, gauge: IntGauge) -> Self {
        gauge.set(BreakerState::Closed as i64);
        Self {
            threshold,
            cooldown,
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                open_until: None,
                probing: false,
            }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(_) if inner.probing => BreakerState::HalfOpen,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// `Some` when a call may go to the backend now.
    pub(crate) fn try_call(&self) -> Option<CallPermit> {
        self.try_call_at(Instant::now())
    }

    fn try_call_at(&self, now: Instant) -> Option<CallPermit> {
        let mut inner = self.lock();
        match inner.open_until {
            None => Some(CallPermit { probe: false }),
            Some(until) if now < until || inner.probing => None,
            Some(_) => {
                inner.probing = true;
                self.gauge.set(BreakerState::HalfOpen as i64);
                Some(CallPermit { probe: true })
            }
        }
    }

    /// Records the outcome of a permitted call.
    pub(crate) fn record(&self, permit: CallPermit, success: bool) {
        self.record_at(permit, success, Instant::now());
    }

    fn record_at(&self, permit: CallPermit, success: bool, now: Instant) {
        let mut inner = self.lock();
        if permit.probe {
            inner.probing = false;
        }
        if success {
            if inner.open_until.is_some() {
                tracing::info!("backend answers again, circuit breaker closed");
            }
            inner.consecutive_failures = 0;
            inner.open_until = None;
            self.gauge.set(BreakerState::Closed as i64);
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let reopen = permit.probe && inner.open_until.is_some();
        let trip = inner.open_until.is_none()
            && self.threshold > 0
            && inner.consecutive_failures >= self.threshold;
        if reopen || trip {
            if trip {
                tracing::warn!(
                    failures = inner.consecutive_failures,
                    cooldown = ?self.cooldown,
                    "backend keeps failing, circuit breaker open"
                );
            }
            inner.open_until = Some(now + self.cooldown);
            self.gauge.set(BreakerState::Open as i64);
        }
    }
}

/// A backend behind a circuit breaker and a concurrency limit.
pub(crate) struct GuardedBackend {
    inner: Arc<dyn LookupBackend>,
    breaker: Arc<CircuitBreaker>,
    slots: Semaphore,
    in_flight: IntGauge,
}

impl std::fmt::Debug for GuardedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBackend")
            .field("inner", &self.inner.name())
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The error callers get while the breaker is open.
fn breaker_open() -> BackendError {
    BackendError::unavailable("circuit breaker open after repeated backend failures")
}

impl GuardedBackend {
    /// Guards `inner` with `breaker` and at most `max_concurrent` calls in flight
    /// (mirrored on `in_flight`).
    pub(crate) fn new(
        inner: Arc<dyn LookupBackend>,
        breaker: Arc<CircuitBreaker>,
        max_concurrent: usize,
        in_flight: IntGauge,
    ) -> Self {
        Self {
            inner,
            breaker,
            slots: Semaphore::new(max_concurrent),
            in_flight,
        }
    }

    async fn call<T, F>(&self, call: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        // The permit is taken before queueing so an open breaker answers at once.
        let permit = self.breaker.try_call().ok_or_else(breaker_open)?;
        let mut guard = CallGuard {
            breaker: &self.breaker,
            permit: Some(permit),
            in_flight: None,
        };
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(BackendError::Other("backend limiter closed".into()));
        };
        self.in_flight.inc();
        guard.in_flight = Some(&self.in_flight);
        let result = call.await;
        if let Some(permit) = guard.permit.take() {
            self.breaker.record(permit, result.is_ok());
        }
        result
    }
}

/// Settles a call however it ends: a call dropped half-way (the caller's deadline)
/// counts as a failure, so a probe can never leave the breaker stuck half-open.
struct CallGuard<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<CallPermit>,
    in_flight: Option<&'a IntGauge>,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if let Some(gauge) = self.in_flight {
            gauge.dec();
        }
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, false);
        }
    }
}

#[async_trait]
impl LookupBackend for GuardedBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.call(self.inner.aliases(address)).await
    }
    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.call(self.inner.domain_exists(domain)).await
    }
    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.call(self.inner.mailbox_exists(address)).await
    }
    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.call(self.inner.senders(address)).await
    }
    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        self.call(self.inner.smtp_quota(login)).await
    }
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<postfix_adapter_backend::AuthOutcome, BackendError> {
        self.call(self.inner.authenticate(login, password)).await
    }
    // Health checks bypass the breaker: they are how `/ready` sees the backend itself.
    async fn health(&self) -> Result<(), BackendError> {
        self.inner.health().await
    }
    async fn reload(&self) -> Result<(), BackendError> {
        self.inner.reload().await
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            threshold,
            Duration::from_secs(10),
            IntGauge::new("g", "g").unwrap(),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let b = breaker(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            let p = b.try_call_at(t0).unwrap();
            b.record_at(p, false, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let p = b.try_call_at(t0).unwrap();
        b.record_at(p, false, t0);
        assert!(b.try_call_at(t0 + Duration::from_secs(1)).is_none(), "open");
        assert_eq!(b.gauge.get(), BreakerState::Open as i64);

        let later = t0 + Duration::from_secs(11);
        let probe = b.try_call_at(later).expect("one probe after the cool-down");
        assert!(b.try_call_at(later).is_none(), "only one probe");
        b.record_at(probe, false, later);
        assert!(
            b.try_call_at(later + Duration::from_secs(1)).is_none(),
            "failed probe reopens"
        );

        let again = later + Duration::from_secs(11);
        let probe = b.try_call_at(again).unwrap();
        b.record_at(probe, true, again);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_call_at(again).is_some());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(2);
        let t = Instant::now();
        let p = b.try_call_at(t).unwrap();
        b.record_at(p, false, t);
        let p = b.try_call_at(t).unwrap();
        b.record_at(p, true, t);
        let p = b.try_call_at(t).unwrap();
        b.record_at(p, false, t);
        assert!(
            b.try_call_at(t).is_some(),
            "1 failure after a success is below 2"
        );
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = breaker(0);
        let t = Instant::now();
        for _ in 0..100 {
            let p = b.try_call_at(t).unwrap();
            b.record_at(p, false, t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
