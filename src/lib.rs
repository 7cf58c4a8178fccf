//! userli-postfix-adapter: answers Postfix socketmap lookups (`alias`, `domain`,
//! `mailbox`, `senders`) from a pluggable [`LookupBackend`].
//!
//! The engine owns the protocols, normalisation, deadlines, metrics and the
//! listeners; a backend (the userli HTTP API, a fixture file, or your own) only
//! answers questions. To embed it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use userli_postfix_adapter::{Server, config::Config, metrics::Metrics};
//! let config = Config::for_fixture("examples/fixtures/demo.toml");
//! let metrics = Metrics::new()?;
//! let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics)?;
//! let server = Server::bind(config, backend, metrics).await?;
//! println!("socketmap on {:?}", server.socketmap_addrs());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod backend;
pub mod cache;
pub mod config;
pub mod http;
mod log_throttle;
pub mod lookup;
pub mod metrics;
pub mod normalize;
pub mod policy;
pub mod protocol;
pub mod resilience;
pub mod server;

pub use postfix_adapter_backend as backend_api;
pub use postfix_adapter_backend::LookupBackend;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheSettings, CachedBackend};
use crate::config::Config;
use crate::http::{HttpState, Readiness};
use crate::lookup::LookupService;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::resilience::{CircuitBreaker, GuardedBackend};
use crate::server::socketmap::{ConnectionLimits, SocketmapHandler};
use crate::server::{AcceptContext, BindError, BoundListener, LocalAddr};

/// A server with every listener bound, ready to [`run`](Server::run).
///
/// Binding first and running second lets callers (and tests on port 0) learn the
/// real addresses, and makes a bind failure an error before anything is served.
pub struct Server {
    config: Config,
    metrics: Metrics,
    service: Arc<LookupService>,
    breaker: Arc<CircuitBreaker>,
    readiness: Arc<Readiness>,
    socketmap: Vec<BoundListener>,
    http: Vec<BoundListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socketmap", &self.socketmap_addrs())
            .field("http", &self.http_addrs())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the socketmap and metrics listeners of `config`.
    ///
    /// # Errors
    /// [`BindError`] if any listener cannot be bound.
    pub async fn bind(
        config: Config,
        backend: Arc<dyn LookupBackend>,
        metrics: Metrics,
    ) -> Result<Self, BindError> {
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend.name()])
            .set(1);
        let socketmap = server::bind(&config.socketmap_listen, config.unix_socket_mode).await?;
        let http = match server::bind(&config.metrics_listen, config.unix_socket_mode).await {
            Ok(l) => l,
            Err(e) => {
                server::remove_unix_sockets(&socketmap);
                return Err(e);
            }
        };
        let (backend, breaker) = protect(backend, &config, &metrics);
        // The cache keeps the deadline itself, so it can answer stale in time.
        let service = Arc::new(LookupService::new(
            backend,
            Normalizer::new(&config.recipient_delimiter),
            None,
            metrics.clone(),
        ));
        Ok(Self {
            config,
            metrics,
            service,
            breaker,
            readiness: Arc::new(Readiness::default()),
            socketmap,
            http,
        })
    }

    /// The bound socketmap addresses.
    pub fn socketmap_addrs(&self) -> Vec<LocalAddr> {
        self.socketmap
            .iter()
            .map(BoundListener::local_addr)
            .collect()
    }

    /// The bound metrics/health addresses.
    pub fn http_addrs(&self) -> Vec<LocalAddr> {
        self.http.iter().map(BoundListener::local_addr).collect()
    }

    /// The backend lookups go to: the configured one behind the breaker, the
    /// concurrency limit and the cache. Reload through this one so the cache is
    /// cleared too.
    pub fn backend(&self) -> Arc<dyn LookupBackend> {
        self.service.backend().clone()
    }

    /// Serves until `shutdown` completes, then drains: stop accepting, `/ready`
    /// turns 503, answer requests already received, close idle connections, and
    /// return once all connections are closed or the grace period is over.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            metrics,
            service,
            breaker,
            readiness,
            socketmap,
            http,
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let unix_sockets: Vec<_> = socketmap
            .iter()
            .chain(http.iter())
            .filter_map(|l| match l {
                BoundListener::Unix(_, p) => Some(p.clone()),
                BoundListener::Tcp(_) => None,
            })
            .collect();

        let handler = Arc::new(SocketmapHandler::new(
            service.clone(),
            ConnectionLimits {
                max_request_size: config.max_request_size,
                idle_timeout: config.idle_timeout,
                io_timeout: config.io_timeout,
            },
        ));
        let ctx = AcceptContext {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            metrics: metrics.clone(),
            shutdown: token.clone(),
            tracker: tracker.clone(),
            service: "socketmap",
        };
        let mut accept_loops = Vec::new();
        for listener in socketmap {
            tracing::info!(addr = %listener.local_addr(), "socketmap server listening");
            accept_loops.push(tokio::spawn(server::accept_loop(
                listener,
                handler.clone(),
                ctx.clone(),
            )));
        }

        let http_state = HttpState {
            metrics: metrics.clone(),
            backend: service.backend().clone(),
            readiness: readiness.clone(),
            breaker: Some(breaker),
        };
        let http_stop = CancellationToken::new();
        let mut http_tasks = Vec::new();
        for listener in http {
            tracing::info!(addr = %listener.local_addr(), "metrics server listening");
            let app = http::router(http_state.clone());
            let stop = http_stop.clone();
            http_tasks.push(tokio::spawn(async move {
                let result = match listener {
                    BoundListener::Tcp(l) => {
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                    BoundListener::Unix(l, _) => {
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }));
        }
        readiness.set_listening();

        shutdown.await;
        tracing::info!("Shutting down server...");
        readiness.set_stopping();
        token.cancel();
        tracker.close();
        for task in accept_loops {
            let _ = task.await;
        }
        for path in &unix_sockets {
            let _ = std::fs::remove_file(path);
        }
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_ok()
        {
            tracing::info!("All connections closed");
        } else {
            tracing::warn!(
                open_connections = tracker.len(),
                "grace period over, closing remaining connections"
            );
        }
        http_stop.cancel();
        for task in http_tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

/// How long a backend call may run in the background after callers gave up, so a
/// slow but alive backend still fills the cache for the next lookup.
pub fn backend_call_timeout(config: &Config) -> Duration {
    config.lookup_timeout * 2
}

/// Wraps `backend` in the breaker, the concurrency limit and the cache, in that
/// order from the inside out.
fn protect(
    backend: Arc<dyn LookupBackend>,
    config: &Config,
    metrics: &Metrics,
) -> (Arc<dyn LookupBackend>, Arc<CircuitBreaker>) {
    let breaker = Arc::new(CircuitBreaker::new(
        config.breaker_failures,
        config.breaker_cooldown,
        metrics.breaker_state.clone(),
    ));
    let guarded = Arc::new(GuardedBackend::new(
        backend,
        breaker.clone(),
        config.backend_max_concurrency,
        metrics.backend_in_flight.clone(),
    ));
    let settings = CacheSettings {
        positive_ttl: config.cache_ttl,
        negative_ttl: config.negative_cache_ttl,
        stale_ttl: config.cache_stale_ttl,
        max_entries: config.cache_size,
        deadline: config.lookup_timeout,
        call_timeout: backend_call_timeout(config),
    };
    let cached = Arc::new(CachedBackend::new(
        guarded,
        settings,
        metrics.lookup_cache.clone(),
    ));
    (cached, breaker)
}
