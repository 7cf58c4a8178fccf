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

pub mod access;
pub mod backend;
pub mod cache;
pub mod config;
pub mod http;
mod log_throttle;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod normalize;
pub mod policy;
pub mod protocol;
pub mod resilience;
pub mod sasl;
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
use crate::policy::store::{EmbeddedStore, QuotaStore};
use crate::policy::{CountMode, PolicyMetrics, PolicyService, PolicySettings};
use crate::resilience::{CircuitBreaker, GuardedBackend};
use crate::sasl::{SaslMetrics, SaslService, SaslSettings, ThrottleSettings};
use crate::server::policy::{PolicyHandler, PolicyLimits};
use crate::server::sasl::SaslHandler;
use crate::server::socketmap::{ConnectionLimits, SocketmapHandler};
use crate::server::{AcceptContext, BindError, BoundListener, ConnectionMetrics, LocalAddr};

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
    policy: Option<(Arc<PolicyService>, Vec<BoundListener>)>,
    sasl: Option<(Arc<SaslService>, Vec<BoundListener>)>,
}

/// The server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The quota store cannot be opened.
    #[error("STATE_DIRECTORY/REDIS_URL: {0}")]
    Store(#[from] policy::store::StoreError),
    /// Metrics cannot be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
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
    /// [`ServerError`] if any listener cannot be bound or the quota store cannot
    /// be opened.
    pub async fn bind(
        config: Config,
        backend: Arc<dyn LookupBackend>,
        metrics: Metrics,
    ) -> Result<Self, ServerError> {
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend.name()])
            .set(1);
        let mode = config.unix_socket_mode;
        let socketmap = server::bind(&config.socketmap_listen, mode).await?;
        let http = match server::bind(&config.metrics_listen, mode).await {
            Ok(l) => l,
            Err(e) => {
                server::remove_unix_sockets(&socketmap);
                return Err(e.into());
            }
        };
        let policy_listeners = match &config.policy_listen {
            None => Vec::new(),
            Some(addr) => match server::bind(addr, mode).await {
                Ok(l) => l,
                Err(e) => {
                    server::remove_unix_sockets(&socketmap);
                    server::remove_unix_sockets(&http);
                    return Err(e.into());
                }
            },
        };
        let sasl_listeners = match &config.sasl_listen {
            None => Vec::new(),
            Some(addr) => match server::bind(addr, mode).await {
                Ok(l) => l,
                Err(e) => {
                    for l in [&socketmap, &http, &policy_listeners] {
                        server::remove_unix_sockets(l);
                    }
                    return Err(e.into());
                }
            },
        };
        // Password checks go to the bare backend through their own breaker and
        // slots (see `sasl`): a login flood must never starve lookups.
        let auth_backend = backend.clone();
        let (backend, breaker) = protect(backend, &config, &metrics);
        // The cache keeps the deadline itself, so it can answer stale in time.
        let policy = if policy_listeners.is_empty() {
            None
        } else {
            let store = match open_store(&config).await {
                Ok(s) => s,
                Err(e) => {
                    for l in [&socketmap, &http, &policy_listeners, &sasl_listeners] {
                        server::remove_unix_sockets(l);
                    }
                    return Err(e);
                }
            };
            let service = PolicyService::new(
                backend.clone(),
                store,
                Normalizer::new(&config.recipient_delimiter),
                PolicySettings {
                    message: config.rate_limit_message.clone(),
                    defer_over_quota: config.policy_defer_over_quota,
                    fail_closed: config.policy_fail_closed,
                    sender_fallback: config.policy_sender_fallback,
                    count: if config.policy_count_recipients {
                        CountMode::Recipients
                    } else {
                        CountMode::Messages
                    },
                    timeout: config.lookup_timeout,
                    // The backend's breaker settings serve the store too: both say
                    // how soon to stop waiting for something that keeps failing.
                    store_breaker_failures: config.breaker_failures,
                    store_breaker_cooldown: config.breaker_cooldown,
                },
                PolicyMetrics::register(&metrics).map_err(ServerError::Metrics)?,
            );
            Some((Arc::new(service), policy_listeners))
        };
        let sasl = if sasl_listeners.is_empty() {
            None
        } else {
            let service = SaslService::new(
                auth_backend,
                SaslSettings {
                    timeout: config.lookup_timeout,
                    throttle: ThrottleSettings {
                        base_delay: config.sasl_failure_delay,
                        max_delay: config.sasl_max_failure_delay,
                        lockout_failures: config.sasl_lockout_failures,
                        window: config.sasl_failure_window,
                    },
                    max_checks: config.sasl_max_checks,
                    max_checks_per_client: config.sasl_max_checks_per_client,
                    breaker_failures: config.breaker_failures,
                    breaker_cooldown: config.breaker_cooldown,
                },
                SaslMetrics::register(&metrics).map_err(ServerError::Metrics)?,
            );
            Some((Arc::new(service), sasl_listeners))
        };
        // The cache keeps the deadline itself, so it can answer stale in time.
        let service = Arc::new(
            LookupService::new(
                backend,
                Normalizer::new(&config.recipient_delimiter),
                None,
                metrics.clone(),
            )
            .with_overall_deadline(config.lookup_timeout),
        );
        Ok(Self {
            config,
            metrics,
            service,
            breaker,
            readiness: Arc::new(Readiness::default()),
            socketmap,
            http,
            policy,
            sasl,
        })
    }

    /// The bound socketmap addresses.
    pub fn socketmap_addrs(&self) -> Vec<LocalAddr> {
        self.socketmap
            .iter()
            .map(BoundListener::local_addr)
            .collect()
    }

    /// The bound policy addresses (empty when the policy server is off).
    pub fn policy_addrs(&self) -> Vec<LocalAddr> {
        self.policy
            .iter()
            .flat_map(|(_, ls)| ls.iter().map(BoundListener::local_addr))
            .collect()
    }

    /// The bound SASL addresses (empty when the SASL server is off).
    pub fn sasl_addrs(&self) -> Vec<LocalAddr> {
        self.sasl
            .iter()
            .flat_map(|(_, ls)| ls.iter().map(BoundListener::local_addr))
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
            policy,
            sasl,
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let unix_sockets: Vec<_> = socketmap
            .iter()
            .chain(http.iter())
            .chain(policy.iter().flat_map(|(_, ls)| ls.iter()))
            .chain(sasl.iter().flat_map(|(_, ls)| ls.iter()))
            .filter_map(|l| match l {
                BoundListener::Unix(_, p) => Some(p.clone()),
                BoundListener::Tcp(_) | BoundListener::InheritedUnix(_) => None,
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
        let allowed = Arc::new(config.allowed_clients.clone());
        let ctx = AcceptContext {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            metrics: ConnectionMetrics::socketmap(&metrics),
            shutdown: token.clone(),
            tracker: tracker.clone(),
            service: "socketmap",
            allowed: allowed.clone(),
            denied: metrics.connections_denied.with_label_values(&["socketmap"]),
        };
        let mut accept_loops = Vec::new();
        spawn_accept_loops("socketmap", socketmap, &handler, &ctx, &mut accept_loops);

        let mut flusher = None;
        if let Some((policy_service, listeners)) = policy {
            let handler = Arc::new(PolicyHandler::new(
                policy_service.clone(),
                PolicyLimits {
                    idle_timeout: config.policy_idle_timeout,
                    io_timeout: config.io_timeout,
                },
            ));
            let policy_metrics = policy_service.metrics();
            let ctx = AcceptContext {
                slots: Arc::new(Semaphore::new(config.max_connections)),
                metrics: ConnectionMetrics {
                    active: policy_metrics.active_connections.clone(),
                    pool_usage: None,
                    pool_full: policy_metrics.pool_full.clone(),
                },
                shutdown: token.clone(),
                tracker: tracker.clone(),
                service: "policy",
                allowed: allowed.clone(),
                denied: metrics.connections_denied.with_label_values(&["policy"]),
            };
            tracing::info!(
                store = policy_service.store().name(),
                "policy quota store ready"
            );
            spawn_accept_loops("policy", listeners, &handler, &ctx, &mut accept_loops);
            let store = policy_service.store().clone();
            let stop = token.clone();
            let save_errors = policy_service
                .metrics()
                .store_errors
                .with_label_values(&["save"]);
            flusher = Some((
                store.clone(),
                save_errors.clone(),
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(STORE_FLUSH_INTERVAL);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        if let Err(e) = store.flush().await {
                            // Counted so the store-errors alert fires: quotas still
                            // hold in memory, but a restart would forget them.
                            save_errors.inc();
                            tracing::error!(error = %e, "cannot save the quota windows");
                        }
                    }
                }),
            ));
        }

        if let Some((sasl_service, listeners)) = sasl {
            let handler = Arc::new(SaslHandler::new(sasl_service.clone(), config.io_timeout));
            let sasl_metrics = sasl_service.metrics();
            let ctx = AcceptContext {
                slots: Arc::new(Semaphore::new(config.max_connections)),
                metrics: ConnectionMetrics {
                    active: sasl_metrics.active_connections.clone(),
                    pool_usage: None,
                    pool_full: sasl_metrics.pool_full.clone(),
                },
                shutdown: token.clone(),
                tracker: tracker.clone(),
                service: "sasl",
                allowed: allowed.clone(),
                denied: metrics.connections_denied.with_label_values(&["sasl"]),
            };
            spawn_accept_loops("SASL", listeners, &handler, &ctx, &mut accept_loops);
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
            let allowed = allowed.clone();
            let denied = metrics.connections_denied.with_label_values(&["metrics"]);
            http_tasks.push(tokio::spawn(async move {
                let result = match listener {
                    BoundListener::Tcp(l) => {
                        let l = http::AdmittedTcp::new(l, allowed, denied);
                        axum::serve(l, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                    BoundListener::Unix(l, _) | BoundListener::InheritedUnix(l) => {
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
        if let Some((store, save_errors, task)) = flusher {
            task.abort();
            if let Err(e) = store.flush().await {
                save_errors.inc();
                tracing::error!(error = %e, "cannot save the quota windows at shutdown");
            }
        }
        http_stop.cancel();
        for task in http_tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

/// Starts one accept loop per listener, logging `<name> server listening` (tests and
/// scripts read the addresses from that line).
fn spawn_accept_loops<H: server::ConnectionHandler>(
    name: &str,
    listeners: Vec<BoundListener>,
    handler: &Arc<H>,
    ctx: &AcceptContext,
    loops: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr(), "{name} server listening");
        loops.push(tokio::spawn(server::accept_loop(
            listener,
            handler.clone(),
            ctx.clone(),
        )));
    }
}

/// How often the embedded quota store is saved; a crash loses at most this much.
const STORE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Opens the quota store: Redis when `REDIS_URL` is set, else the embedded one.
async fn open_store(config: &Config) -> Result<Arc<dyn QuotaStore>, ServerError> {
    if let Some(url) = &config.redis_url {
        let store =
            policy::redis_store::RedisStore::connect(url.expose(), config.lookup_timeout).await?;
        return Ok(Arc::new(store));
    }
    Ok(Arc::new(EmbeddedStore::open(&config.state_directory)?))
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
