//! HTTP client metrics, under the names upstream used so dashboards keep working.

use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Upstream's buckets stopped at 5.12 s and its request histograms at 0.512 s
/// (`upstream-behaviour.md` §14.31), which hid exactly the slow calls that matter;
/// these span a fast local API (1 ms) up to any timeout an operator may configure.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const LABELS: &[&str] = &["endpoint", "status_code"];

/// The `endpoint` label of every route the backend calls.
pub const ENDPOINT_LABELS: [&str; 7] = [
    "alias",
    "domain",
    "mailbox",
    "senders",
    "smtp_quota",
    "auth",
    "health",
];

/// The label used when no HTTP status was received (transport error, timeout, or
/// the call was cancelled by the engine's deadline), as upstream does.
pub const STATUS_ERROR: &str = "error";

/// The HTTP client's request counter and latency histogram.
#[derive(Clone, Debug)]
pub struct Metrics {
    duration: HistogramVec,
    requests: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry` when given.
    ///
    /// # Errors
    /// When registering fails (the names are taken).
    pub fn new(registry: Option<&Registry>) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "userli_postfix_adapter_http_client_duration_seconds",
                "Duration of HTTP requests to the directory API (userli, or the generic HTTP backend).",
            )
            .buckets(BUCKETS.to_vec()),
            LABELS,
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "userli_postfix_adapter_http_client_requests_total",
                "HTTP requests to the directory API (userli, or the generic HTTP backend).",
            ),
            LABELS,
        )?;
        if let Some(registry) = registry {
            registry.register(Box::new(duration.clone()))?;
            registry.register(Box::new(requests.clone()))?;
        }
        // Every endpoint's "200" series exists from the start, at 0, so dashboards
        // show 0 rather than "No data" before the first call.
        for endpoint in ENDPOINT_LABELS {
            duration.with_label_values(&[endpoint, "200"]);
            requests.with_label_values(&[endpoint, "200"]);
        }
        Ok(Self { duration, requests })
    }

    fn observe(&self, endpoint: &str, status: &str, elapsed: Duration) {
        let labels = [endpoint, status];
        self.duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests.with_label_values(&labels).inc();
    }
}

/// Records one HTTP exchange exactly once.
///
/// The engine cancels a lookup by dropping its future; the guard still records the
/// attempt then (as `error`, like any call without an answer), so calls that the
/// engine's deadline cut short do not vanish from the metrics.
#[derive(Debug)]
pub struct Observation<'a> {
    metrics: &'a Metrics,
    endpoint: &'static str,
    start: Instant,
    status: Option<u16>,
    done: bool,
}

impl<'a> Observation<'a> {
    /// Starts timing one exchange with `endpoint` (the metric label).
    pub fn start(metrics: &'a Metrics, endpoint: &'static str) -> Self {
        Self {
            metrics,
            endpoint,
            start: Instant::now(),
            status: None,
            done: false,
        }
    }

    /// Remembers the status once the response head arrived; a later body failure is
    /// still attributed to that status, as upstream measured up to the response head.
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Ends the observation now (rather than at drop).
    pub fn finish(mut self) {
        self.record();
    }

    fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        match self.status {
            Some(code) => self
                .metrics
                .observe(self.endpoint, &code.to_string(), elapsed),
            None => self.metrics.observe(self.endpoint, STATUS_ERROR, elapsed),
        }
    }
}

impl Drop for Observation<'_> {
    fn drop(&mut self) {
        self.record();
    }
}
