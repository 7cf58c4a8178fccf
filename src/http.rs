//! The metrics and health endpoints: `/metrics`, `/health` (liveness), `/ready`
//! (upstream's: serving and the backend healthy) and `/serving` (this instance can
//! serve: listeners up, not draining, whatever the backend's state).
//!
//! Bodies and status codes match upstream's so existing probes keep working;
//! `/ready` also turns 503 while listeners are not up or the process is stopping.
//!
//! The listener is one like the others (`server::accept_loop`): `ALLOWED_CLIENTS`,
//! its own connection slots, and [`HttpHandler`] serving each connection with a
//! deadline for a request's headers (which also ends a kept-alive connection left
//! idle) and a bounded lifetime. `/ready` asks the backend at most once per
//! [`READY_REUSE`], however many probes ask at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use postfix_adapter_backend::{BackendError, LookupBackend};

use crate::metrics::Metrics;
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::server::ConnectionHandler;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// How long `/ready` waits for the backend's health check (upstream: 2 s).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the backend's health is checked in the background.
pub(crate) const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long one backend health answer serves every `/ready` asking.
pub(crate) const READY_REUSE: Duration = Duration::from_secs(1);
/// The longest a metrics connection lives: a client that stops reading a
/// response must not hold a slot for ever. Prometheus reconnects transparently.
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// How long a connection may finish its response once shutdown begins.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

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
    /// The shared backend health answer.
    pub ready_check: Arc<ReadyCheck>,
}

/// The backend health answer `/ready` reuses: one check at a time, its answer
/// kept for [`READY_REUSE`], so a crowd of probes costs one backend call.
#[derive(Debug, Default)]
pub(crate) struct ReadyCheck {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
}

impl ReadyCheck {
    /// The backend's health, from the last check if it is recent enough.
    async fn health(&self, backend: &dyn LookupBackend) -> Result<(), String> {
        // Callers queue here while one checks, then read its answer.
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < READY_REUSE
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(READY_TIMEOUT, backend.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(BackendError::Timeout)) | Err(_) => Err("timeout".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
        };
        *last = Some((tokio::time::Instant::now(), answer.clone()));
        answer
    }
}

/// Serves HTTP/1 on one connection of the metrics listener.
pub(crate) struct HttpHandler {
    app: Router,
    header_timeout: Duration,
}

impl HttpHandler {
    /// Serves `app`; a request's headers must arrive within `header_timeout`.
    pub(crate) fn new(app: Router, header_timeout: Duration) -> Self {
        Self {
            app,
            header_timeout,
        }
    }
}

impl ConnectionHandler for HttpHandler {
    async fn serve<S>(self: Arc<Self>, stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper_util::service::TowerToHyperService::new(self.app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The header deadline also runs while a kept-alive connection waits for
        // its next request, so it is the idle timeout too.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep(MAX_CONNECTION_AGE) => return,
            () = shutdown.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
    }
}

/// The router; testable without sockets.
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", any(metrics))
        .route("/health", any(health))
        .route("/ready", any(ready))
        .route("/serving", any(serving))
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

fn unavailable(why: &str) -> Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": why, "status": "unavailable"}),
    )
}

/// Why this instance cannot serve at all (not started, or draining), if so.
fn not_serving(state: &HttpState) -> Option<&'static str> {
    if state.readiness.stopping.load(Ordering::SeqCst) {
        Some("shutting down")
    } else if !state.readiness.listening.load(Ordering::SeqCst) {
        Some("listeners not started")
    } else {
        None
    }
}

/// The backend's health as `/ready` and `health_check_status` report it: the
/// breaker's verdict while it is open (no call), else the shared health check.
pub(crate) async fn backend_health(state: &HttpState) -> Result<(), String> {
    let health = match &state.breaker {
        Some(breaker) if breaker.state() == BreakerState::Open => {
            Err("circuit breaker open: the backend keeps failing".to_owned())
        }
        _ => state.ready_check.health(state.backend.as_ref()).await,
    };
    state
        .metrics
        .health_check_status
        .set(i64::from(health.is_ok()));
    health
}

/// Checks the backend every [`HEALTH_CHECK_INTERVAL`] from start until `stop`, so
/// `health_check_status` (and the alert on it) tells the truth without anyone
/// calling `/ready`.
pub(crate) async fn watch_backend_health(state: HttpState, stop: CancellationToken) {
    let mut failing = false;
    loop {
        // The check itself may hang until the backend's deadline: stop must not wait for it.
        let health = tokio::select! {
            () = stop.cancelled() => return,
            health = backend_health(&state) => health,
        };
        match (&health, failing) {
            (Err(why), false) => tracing::warn!(error = %why, "backend health check failed"),
            (Ok(()), true) => tracing::info!("backend health check passes again"),
            _ => {}
        }
        failing = health.is_err();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
        }
    }
}

/// Upstream's readiness: serving, and the backend healthy.
async fn ready(State(state): State<HttpState>) -> Response {
    if let Some(why) = not_serving(&state) {
        return unavailable(why);
    }
    match backend_health(&state).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Err(why) => {
            tracing::warn!(error = %why, "readiness check failed");
            unavailable(&why)
        }
    }
}

/// Whether this instance can serve (listeners up, not draining), whatever the
/// backend's state: during a backend outage it still answers from its cache,
/// so a load balancer should keep sending it mail lookups.
async fn serving(State(state): State<HttpState>) -> Response {
    match not_serving(&state) {
        Some(why) => unavailable(why),
        None => json(StatusCode::OK, &serde_json::json!({"status": "serving"})),
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
            ready_check: Arc::default(),
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
    async fn a_crowd_of_ready_probes_costs_one_backend_call_per_second() {
        let backend = Arc::new(healthy().unhealthy(Fault::Delay(Duration::from_millis(200))));
        let mut st = state(healthy(), true);
        st.backend = backend.clone();
        let probes: Vec<_> = (0..300)
            .map(|_| {
                let st = st.clone();
                tokio::spawn(async move { get(st, "/ready").await.0 })
            })
            .collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap(), StatusCode::OK);
        }
        assert_eq!(backend.take_calls(), ["health"], "300 probes, one check");
        // Within the second: the same answer again, no call.
        assert_eq!(get(st.clone(), "/ready").await.0, StatusCode::OK);
        assert_eq!(backend.call_count(), 0);
        tokio::time::sleep(READY_REUSE).await;
        assert_eq!(get(st, "/ready").await.0, StatusCode::OK);
        assert_eq!(
            backend.take_calls(),
            ["health"],
            "a second later, a new check"
        );
    }

    #[tokio::test]
    async fn serving_ignores_the_backend_and_follows_the_listeners() {
        let down = || healthy().unhealthy(Fault::Other("connection refused".into()));
        let (s, _, body) = get(state(down(), true), "/serving").await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::OK, "{\"status\":\"serving\"}\n"),
            "a backend outage is no reason to take this instance out"
        );
        let (s, _, _) = get(state(down(), true), "/ready").await;
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "/ready stays upstream's"
        );
        let (s, _, body) = get(state(healthy(), false), "/serving").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("listeners not started"));
        let st = state(healthy(), true);
        st.readiness.set_stopping();
        let (s, _, body) = get(st, "/serving").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_health_gauge_follows_the_backend_without_any_probe() {
        let backend = Arc::new(healthy());
        let mut st = state(healthy(), true);
        st.backend = backend.clone();
        let stop = CancellationToken::new();
        let watch = tokio::spawn(watch_backend_health(st.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(st.metrics.health_check_status.get(), 1, "checked at start");
        tokio::time::sleep(HEALTH_CHECK_INTERVAL * 3).await;
        let checks = backend.take_calls().len();
        assert!((3..=5).contains(&checks), "{checks} checks in 3 intervals");
        let mut down = state(healthy().unhealthy(Fault::Unavailable), true);
        down.metrics = st.metrics.clone();
        let watch_down = tokio::spawn(watch_backend_health(down, stop.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            st.metrics.health_check_status.get(),
            0,
            "a failing check says 0"
        );
        stop.cancel();
        watch.await.unwrap();
        watch_down.await.unwrap();
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
