//! Prometheus metrics of the engine, on a private registry.
//!
//! Names, types and labels of upstream's socketmap and health metrics are kept
//! unchanged so existing dashboards work. Label values are bounded: map names the
//! adapter does not serve collapse into `unknown`, and no label ever carries a key.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const NAMESPACE: &str = "userli_postfix_adapter";

/// Histogram buckets from 100 µs to 30 s: a cache hit and the whole lookup deadline
/// (upstream's stopped at 0.512 s, below its own 5 s budget) both land in a bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Every engine metric; cheap to clone (the collectors are reference-counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `userli_postfix_adapter_request_duration_seconds{handler,status}` (upstream).
    pub(crate) request_duration: HistogramVec,
    /// `userli_postfix_adapter_requests_total{handler,status}` (upstream).
    pub(crate) requests_total: IntCounterVec,
    /// `userli_postfix_adapter_active_connections` (upstream): open socketmap connections.
    pub(crate) active_connections: IntGauge,
    /// `userli_postfix_adapter_connection_pool_usage` (upstream): used connection slots.
    pub(crate) connection_pool_usage: IntGauge,
    /// `userli_postfix_adapter_connection_pool_full_total` (new): connections refused
    /// because every slot was taken.
    pub(crate) connection_pool_full: IntCounter,
    /// `userli_postfix_adapter_health_check_status` (upstream): 1 when `/ready` last
    /// found the backend healthy.
    pub(crate) health_check_status: IntGauge,
    /// `userli_postfix_adapter_socketmap_framing_errors_total{reason}` (new):
    /// connections closed for a netstring error or an I/O timeout.
    pub(crate) framing_errors: IntCounterVec,
    /// `userli_postfix_adapter_backend_errors_total{handler,kind}` (new): backend
    /// failures turned into `TEMP`, by kind (`timeout`, `unavailable`, ...).
    pub(crate) backend_errors: IntCounterVec,
    /// `userli_postfix_adapter_backend_reloads_total{result}` (new): SIGHUP reloads.
    pub(crate) reloads: IntCounterVec,
    /// `userli_postfix_adapter_build_info{version,backend}` (new): always 1.
    pub(crate) build_info: IntGaugeVec,
    /// `userli_postfix_adapter_lookup_cache_total{handler,result}` (upstream, more
    /// results): `hit`, `negative_hit`, `miss`, `coalesced`, `stale`, `error`.
    pub(crate) lookup_cache: IntCounterVec,
    /// `userli_postfix_adapter_circuit_breaker_state` (new): 0 closed, 1 open, 2 half-open.
    pub(crate) breaker_state: IntGauge,
    /// `userli_postfix_adapter_backend_in_flight` (new): backend calls in progress.
    pub(crate) backend_in_flight: IntGauge,
    /// `userli_postfix_adapter_connections_denied_total{listener}` (new): TCP
    /// connections closed because the peer is not in `ALLOWED_CLIENTS`.
    pub(crate) connections_denied: IntCounterVec,
    /// `userli_postfix_adapter_state_files_damaged_total{file}` (new): state files
    /// found damaged at start and set aside.
    pub(crate) state_files_damaged: IntCounterVec,
    /// `userli_postfix_adapter_metrics_active_connections` (new): open connections
    /// on the metrics listener.
    pub(crate) http_active_connections: IntGauge,
    /// `userli_postfix_adapter_metrics_connection_pool_full_total` (new): metrics
    /// connections refused because every slot was taken.
    pub(crate) http_pool_full: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

fn hist(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(LATENCY_BUCKETS.to_vec())
}

/// The metrics could not be set up: a collector was registered twice or has an
/// invalid name (a bug, never an operator error). The metrics library's own error is
/// its [`source`](std::error::Error::source), so no type of it is part of our API.
#[derive(Debug, thiserror::Error)]
#[error("cannot register the metrics: {0}")]
pub struct MetricsError(#[source] prometheus::Error);

impl MetricsError {
    /// Wraps a registration failure of a service's own metrics.
    pub(crate) fn registering(error: prometheus::Error) -> Self {
        Self(error)
    }
}

impl Metrics {
    /// Creates the metrics on a fresh registry, including process metrics.
    ///
    /// # Errors
    /// A [`MetricsError`] if a collector cannot be registered (a bug).
    pub fn new() -> Result<Self, MetricsError> {
        Self::register_all().map_err(MetricsError)
    }

    fn register_all() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            request_duration: HistogramVec::new(
                hist("request_duration_seconds", "Duration of socketmap requests"),
                &["handler", "status"],
            )?,
            requests_total: IntCounterVec::new(
                opts("requests_total", "Total number of socketmap requests"),
                &["handler", "status"],
            )?,
            active_connections: IntGauge::with_opts(opts(
                "active_connections",
                "Number of active socketmap connections",
            ))?,
            connection_pool_usage: IntGauge::with_opts(opts(
                "connection_pool_usage",
                "Number of used socketmap connection slots",
            ))?,
            connection_pool_full: IntCounter::with_opts(opts(
                "connection_pool_full_total",
                "Socketmap connections refused because all slots were in use",
            ))?,
            health_check_status: IntGauge::with_opts(opts(
                "health_check_status",
                "Backend health as seen by the last readiness check (1 healthy, 0 not)",
            ))?,
            framing_errors: IntCounterVec::new(
                opts(
                    "socketmap_framing_errors_total",
                    "Socketmap connections closed because of a framing error or timeout",
                ),
                &["reason"],
            )?,
            backend_errors: IntCounterVec::new(
                opts(
                    "backend_errors_total",
                    "Backend failures answered with a temporary error",
                ),
                &["handler", "kind"],
            )?,
            reloads: IntCounterVec::new(
                opts(
                    "backend_reloads_total",
                    "Backend reloads (SIGHUP) by result",
                ),
                &["result"],
            )?,
            build_info: IntGaugeVec::new(
                opts("build_info", "Version and backend of the running adapter"),
                &["version", "backend"],
            )?,
            lookup_cache: IntCounterVec::new(
                opts("lookup_cache_total", "Lookup cache outcomes"),
                &["handler", "result"],
            )?,
            breaker_state: IntGauge::with_opts(opts(
                "circuit_breaker_state",
                "Backend circuit breaker: 0 closed, 1 open, 2 half-open",
            ))?,
            backend_in_flight: IntGauge::with_opts(opts(
                "backend_in_flight",
                "Backend calls in progress",
            ))?,
            connections_denied: IntCounterVec::new(
                opts(
                    "connections_denied_total",
                    "TCP connections closed at once because the peer is not in ALLOWED_CLIENTS",
                ),
                &["listener"],
            )?,
            state_files_damaged: IntCounterVec::new(
                opts(
                    "state_files_damaged_total",
                    "State files found damaged at start, moved aside (*.corrupt-<time>) and started afresh",
                ),
                &["file"],
            )?,
            http_active_connections: IntGauge::with_opts(opts(
                "metrics_active_connections",
                "Number of open connections on the metrics listener",
            ))?,
            http_pool_full: IntCounter::with_opts(opts(
                "metrics_connection_pool_full_total",
                "Metrics listener connections refused because all slots were in use",
            ))?,
            registry,
        };
        for file in ["policy-windows", "lookup-cache", "sasl-login-cache"] {
            m.state_files_damaged.with_label_values(&[file]);
        }
        // Every series with a known label set starts at zero, so dashboards and
        // alerts see "none yet" rather than "no data".
        for listener in ["socketmap", "policy", "sasl", "metrics"] {
            m.connections_denied.with_label_values(&[listener]);
        }
        for reason in ["framing", "read_timeout", "write_timeout"] {
            m.framing_errors.with_label_values(&[reason]);
        }
        for map in ["alias", "domain", "mailbox", "senders"] {
            for kind in [
                "unavailable",
                "timeout",
                "invalid_response",
                "unauthorized",
                "other",
            ] {
                m.backend_errors.with_label_values(&[map, kind]);
            }
        }
        for result in ["success", "error"] {
            m.reloads.with_label_values(&[result]);
        }
        for handler in ["alias", "domain", "mailbox", "senders", "smtp_quota"] {
            for result in ["hit", "negative_hit", "miss", "coalesced", "stale", "error"] {
                m.lookup_cache.with_label_values(&[handler, result]);
            }
        }
        m.registry
            .register(Box::new(m.connections_denied.clone()))?;
        m.registry.register(Box::new(m.lookup_cache.clone()))?;
        m.registry.register(Box::new(m.breaker_state.clone()))?;
        m.registry.register(Box::new(m.backend_in_flight.clone()))?;
        m.registry.register(Box::new(m.request_duration.clone()))?;
        m.registry.register(Box::new(m.requests_total.clone()))?;
        m.registry
            .register(Box::new(m.active_connections.clone()))?;
        m.registry
            .register(Box::new(m.connection_pool_usage.clone()))?;
        m.registry
            .register(Box::new(m.connection_pool_full.clone()))?;
        m.registry
            .register(Box::new(m.health_check_status.clone()))?;
        m.registry.register(Box::new(m.framing_errors.clone()))?;
        m.registry.register(Box::new(m.backend_errors.clone()))?;
        m.registry.register(Box::new(m.reloads.clone()))?;
        m.registry.register(Box::new(m.build_info.clone()))?;
        m.registry
            .register(Box::new(m.state_files_damaged.clone()))?;
        m.registry
            .register(Box::new(m.http_active_connections.clone()))?;
        m.registry.register(Box::new(m.http_pool_full.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Counts a damaged state file `file` (a fixed name, never a path) set aside.
    pub(crate) fn state_file_damaged(&self, file: &str) {
        self.state_files_damaged.with_label_values(&[file]).inc();
    }

    /// The registry, for backends that register their own metrics and for `/metrics`.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }

    /// The duration histogram for one `handler`/`status` pair, resolved once per
    /// request path instead of per label lookup.
    pub(crate) fn request_histogram(&self, handler: &str, status: &str) -> Histogram {
        self.request_duration.with_label_values(&[handler, status])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_names() {
        let m = Metrics::new().unwrap();
        m.requests_total
            .with_label_values(&["alias", "success"])
            .inc();
        m.request_histogram("alias", "success").observe(0.001);
        m.active_connections.set(1);
        let text = m.render();
        for name in [
            "userli_postfix_adapter_requests_total{handler=\"alias\",status=\"success\"} 1",
            "userli_postfix_adapter_request_duration_seconds_bucket{handler=\"alias\",status=\"success\",le=\"30\"} 1",
            "userli_postfix_adapter_active_connections 1",
            "userli_postfix_adapter_connection_pool_usage 0",
            "userli_postfix_adapter_health_check_status 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
