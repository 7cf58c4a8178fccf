//! The metrics and health endpoints: `/metrics`, `/health` (liveness), `/ready`.
//!
//! Bodies and status codes match upstream's so existing probes keep working;
//! `/ready` also turns 503 while listeners are not up or the process is stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use postfix_adapter_backend::{BackendError, LookupBackend};

use crate::access::AllowedClients;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::server::BoundListener;
use prometheus::IntCounter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `/ready` waits for the backend's health check (upstream: 2 s).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Process state `/ready` reports on.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    listening: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// Marks every listener as bound and serving.
    pub(crate) fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }
    /// Marks the process as shutting down.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// Engine metrics, rendered by `/metrics`.
    pub metrics: Metrics,
    /// The backend `/ready` checks.
    pub backend: Arc<dyn LookupBackend>,
    /// Listener and shutdown state.
    pub readiness: Arc<Readiness>,
    /// The backend circuit breaker; open means not ready.
    pub breaker: Option<Arc<CircuitBreaker>>,
}

/// A TCP listener for the metrics server that closes connections from outside
/// `ALLOWED_CLIENTS` before HTTP sees them, as the protocol listeners do.
pub(crate) struct AdmittedTcp {
    inner: tokio::net::TcpListener,
    allowed: Arc<AllowedClients>,
    denied: IntCounter,
    log: LogThrottle,
}

impl AdmittedTcp {
    /// Wraps `inner`, counting refused connections on `denied`.
    pub(crate) fn new(
        inner: tokio::net::TcpListener,
        allowed: Arc<AllowedClients>,
        denied: IntCounter,
    ) -> Self {
        Self {
            inner,
            allowed,
            denied,
            log: LogThrottle::new(Duration::from_secs(10)),
        }
    }
}

impl axum::serve::Listener for AdmittedTcp {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) if self.allowed.allows(peer.ip()) => return (stream, peer),
                Ok((stream, peer)) => {
                    self.denied.inc();
                    if let Some(suppressed) = self.log.allow() {
                        tracing::warn!(
                            service = "metrics",
                            peer = %peer.ip(),
                            allowed = %self.allowed,
                            similar_warnings_suppressed = suppressed,
                            "connection from outside ALLOWED_CLIENTS closed"
                        );
                    }
                    drop(stream);
                }
                // EMFILE and friends: back off instead of spinning (as axum does).
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The router; testable without sockets.
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", any(metrics))
        .route("/health", any(health))
        .route("/ready", any(ready))
        .fallback(not_found)
        .with_state(state)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    // serde_json's map is sorted, so keys come out as upstream's (`error` before `status`).
    let mut text = body.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<HttpState>) -> Response {
    let unavailable = |why: String| {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": why, "status": "unavailable"}),
        )
    };
    if state.readiness.stopping.load(Ordering::SeqCst) {
        return unavailable("shutting down".into());
    }
    if !state.readiness.listening.load(Ordering::SeqCst) {
        return unavailable("listeners not started".into());
    }
    if let Some(breaker) = &state.breaker
        && breaker.state() == BreakerState::Open
    {
        state.metrics.health_check_status.set(0);
        return unavailable("circuit breaker open: the backend keeps failing".into());
    }
    let result = tokio::time::timeout(READY_TIMEOUT, state.backend.health())
        .await
        .unwrap_or(Err(BackendError::Timeout));
    match result {
        Ok(()) => {
            state.metrics.health_check_status.set(1);
            json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
        }
        Err(e) => {
            state.metrics.health_check_status.set(0);
            tracing::warn!(error = %e, "readiness check failed");
            let why = match e {
                BackendError::Timeout => "timeout".to_owned(),
                other => other.to_string(),
            };
            unavailable(why)
        }
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// Serves `/metrics`, `/health` and `/ready` on every listener until `stop`.
pub(crate) fn serve(
    listeners: Vec<BoundListener>,
    state: HttpState,
    allowed: &Arc<AllowedClients>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|listener| {
            tracing::info!(addr = %listener.local_addr(), "metrics server listening");
            let app = router(state.clone());
            let stop = stop.clone();
            let allowed = allowed.clone();
            let denied = state
                .metrics
                .connections_denied
                .with_label_values(&["metrics"]);
            tokio::spawn(async move {
                let result = match listener {
                    BoundListener::Tcp(l) => {
                        let l = AdmittedTcp::new(l, allowed, denied);
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                    // The socket file goes when `_file` does, after serving ends.
                    BoundListener::Unix(l, _file) => {
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                    BoundListener::InheritedUnix(l) => {
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "metrics server failed");
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use postfix_adapter_backend::testkit::{Fault, StubBackend};
    use tower::ServiceExt;

    fn healthy() -> StubBackend {
        StubBackend::new()
    }

    fn state(backend: StubBackend, listening: bool) -> HttpState {
        let readiness = Arc::new(Readiness::default());
        if listening {
            readiness.set_listening();
        }
        HttpState {
            metrics: Metrics::new().unwrap(),
            backend: Arc::new(backend),
            readiness,
            breaker: None,
        }
    }

    async fn get(state: HttpState, path: &str) -> (StatusCode, String, String) {
        let resp = router(state)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_is_upstreams_body() {
        let (s, ct, body) = get(state(healthy(), true), "/health").await;
        assert_eq!(
            (s, ct.as_str(), body.as_str()),
            (StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n")
        );
    }

    #[tokio::test]
    async fn ready_when_backend_healthy() {
        let st = state(healthy(), true);
        let metrics = st.metrics.clone();
        let (s, _, body) = get(st, "/ready").await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::OK, "{\"status\":\"ready\"}\n")
        );
        assert_eq!(metrics.health_check_status.get(), 1);
    }

    #[tokio::test]
    async fn not_ready_on_backend_error_with_sorted_keys() {
        let (s, _, body) = get(
            state(
                healthy().unhealthy(Fault::Other("connection refused".into())),
                true,
            ),
            "/ready",
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "{\"error\":\"connection refused\",\"status\":\"unavailable\"}\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_on_backend_timeout() {
        let (s, _, body) = get(state(healthy().unhealthy(Fault::Hang), true), "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "{\"error\":\"timeout\",\"status\":\"unavailable\"}\n");
    }

    #[tokio::test]
    async fn not_ready_before_listening_or_while_stopping() {
        let (s, _, body) = get(state(healthy(), false), "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("listeners not started"));
        let st = state(healthy(), true);
        st.readiness.set_stopping();
        let (s, _, body) = get(st, "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"));
    }

    #[tokio::test]
    async fn metrics_and_404() {
        let (s, ct, body) = get(state(healthy(), true), "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("text/plain"));
        assert!(body.contains("userli_postfix_adapter_active_connections"));
        let (s, _, body) = get(state(healthy(), true), "/nope").await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::NOT_FOUND, "404 page not found\n")
        );
    }
}
