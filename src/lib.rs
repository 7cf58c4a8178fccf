//! userli-postfix-adapter: answers Postfix socketmap lookups (`alias`, `domain`,
//! `mailbox`, `senders`), policy (sending quota) requests and Dovecot-protocol SMTP
//! AUTH from a pluggable [`LookupBackend`].
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
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`protocol`] | pure codecs, no I/O: netstring, socketmap grammar, policy and Dovecot lines, the one [`protocol::framing::Decoder`] shape |
//! | [`server`] | listeners (bind, `ALLOWED_CLIENTS`, socket files), the accept loop, one framed connection type, and each protocol's connection handler |
//! | `lookup` (internal), [`normalize`] | the socketmap request path: keys to addresses, Postfix's extension order, deadlines, failure semantics; [`Lookups`] is its public face |
//! | `cache`, `resilience` (internal) | around any backend: the answer cache (negative entries, coalescing, stale-on-error), the circuit breaker and the concurrency limit |
//! | [`policy`] | sending quotas: decisions, sliding windows, embedded and Redis stores, saving the embedded one |
//! | `sasl` (internal) | SMTP AUTH decisions: canonical logins, throttling, in-flight caps, the logins' own breaker |
//! | `http` (internal) | `/metrics`, `/health`, `/ready` |
//! | [`config`], [`backend`] | settings from defaults, file and environment; building the configured backend |
//! | [`access`], [`metrics`], [`logging`] | who may connect; Prometheus metrics; log output |
//!
//! The internal modules are the engine's own business: they change without
//! notice, so embedders get [`Server`], [`Lookups`], [`config`] and the
//! [`LookupBackend`] trait, not their parts.
//!
//! This file only wires them: [`Server::bind`] builds every service and binds
//! every listener, [`Server::run`] serves until shutdown and drains.

pub mod access;
pub mod backend;
pub(crate) mod cache;
pub mod config;
pub(crate) mod http;
mod log_throttle;
pub mod logging;
pub(crate) mod lookup;
pub mod metrics;
pub mod normalize;
pub mod policy;
pub mod protocol;
mod reload;
pub(crate) mod resilience;
pub(crate) mod sasl;
pub mod server;
pub(crate) mod state_file;

pub use postfix_adapter_backend as backend_api;
pub use postfix_adapter_backend::LookupBackend;
pub use reload::Reloader;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::{Config, ListenAddr};
use crate::http::{HttpHandler, HttpState, Readiness};
use crate::lookup::LookupService;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::policy::store::QuotaStore;
use crate::policy::{PolicyMetrics, PolicyService, StoreFlusher};
use crate::resilience::CircuitBreaker;
use crate::sasl::login_cache::file::LoginCacheFile;
use crate::sasl::{SaslMetrics, SaslService};
use crate::server::policy::PolicyHandler;
use crate::server::sasl::SaslHandler;
use crate::server::socketmap::SocketmapHandler;
use crate::server::{BindError, BoundListener, ConnectionMetrics, LocalAddr};

/// The socketmap request path without a server: normalisation, Postfix's extension
/// order, the deadline and the failure semantics, over a backend as given (no cache,
/// no breaker). What `userli-postfix-adapter query` answers with, and what the
/// request-path benchmarks measure.
#[derive(Debug)]
pub struct Lookups {
    service: LookupService,
}

impl Lookups {
    /// The request path of `config` (recipient delimiter, `LOOKUP_TIMEOUT`) over
    /// `backend`.
    ///
    /// # Errors
    /// A [`ServerError::Metrics`] if the metrics cannot be set up (a bug).
    pub fn new(config: &Config, backend: Arc<dyn LookupBackend>) -> Result<Self, ServerError> {
        Ok(Self {
            service: LookupService::new(
                backend,
                Normalizer::new(&config.lookups.recipient_delimiter),
                config.lookups.timeout,
                Metrics::new()?,
            ),
        })
    }

    /// Answers one socketmap request payload (`map key`), as the server would,
    /// request metrics included.
    pub async fn answer(&self, payload: &[u8]) -> protocol::socketmap::Reply {
        let started = std::time::Instant::now();
        let answer = self.service.answer(payload).await;
        self.service.record(&answer, started);
        answer.reply
    }

    /// Looks `key` up in the map named `map` (`PERM Unknown map name` for a map
    /// the adapter does not serve).
    pub async fn query(&self, map: &str, key: &[u8]) -> protocol::socketmap::Reply {
        match lookup::MapName::parse(map) {
            Some(map) => self.service.lookup(map, key).await,
            None => protocol::socketmap::Reply::Perm(protocol::socketmap::UNKNOWN_MAP_NAME.into()),
        }
    }
}

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
    /// The lookup cache's snapshot in the state directory, when kept.
    cache_persistence: Option<Arc<cache::persist::CachePersistence>>,
    /// The login cache's file in the state directory, when kept.
    login_file: Option<Arc<LoginCacheFile>>,
}

/// The server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener cannot be bound.
    #[error("{setting}: {source}{}", bind_hint(.setting, .source))]
    Bind {
        /// The setting that chose the address.
        setting: &'static str,
        /// Why.
        #[source]
        source: BindError,
    },
    /// The quota store cannot be opened.
    #[error("{}", store_message(.0))]
    Store(#[from] policy::store::StoreError),
    /// Metrics cannot be registered (a bug).
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
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
    /// Builds every service of `config` and binds its listeners. A listener bound
    /// before a later one fails is closed again (and its socket file removed).
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
        let mode = config.listeners.unix_socket_mode;
        let socketmap =
            bind_setting("SOCKETMAP_LISTEN_ADDR", &config.listeners.socketmap, mode).await?;
        let http = bind_setting("METRICS_LISTEN_ADDR", &config.listeners.metrics, mode).await?;
        let policy_listeners =
            bind_optional("POLICY_LISTEN_ADDR", config.listeners.policy.as_ref(), mode).await?;
        let sasl_listeners =
            bind_optional("SASL_LISTEN_ADDR", config.listeners.sasl.as_ref(), mode).await?;

        // Password checks go to the bare backend through their own breaker and
        // slots (see `sasl`): a login flood must never starve lookups.
        let auth_backend = backend.clone();
        let (backend, breaker, cache) = backend::protect(backend, &config, &metrics);
        let policy = match policy_listeners {
            None => None,
            Some(listeners) => {
                let store = policy::open_store(&config, &metrics).await?;
                let service = policy_service(&config, backend.clone(), store, &metrics)?;
                Some((Arc::new(service), listeners))
            }
        };
        // Loaded before any listener serves, so stale answers are there from the
        // first request; after the quota store, whose trouble with the state
        // directory is fatal and said first.
        let cache_persistence = (config.lookups.cache_persist
            && config.lookups.cache_settings().enabled())
        .then(|| {
            cache::persist::CachePersistence::open(&config.policy.state_directory, cache, &metrics)
        })
        .flatten()
        .map(Arc::new);
        let sasl = match sasl_listeners {
            None => None,
            Some(listeners) => {
                let service = sasl_service(&config, auth_backend, &metrics)?;
                Some((Arc::new(service), listeners))
            }
        };
        let persisted_logins = sasl
            .as_ref()
            .and_then(|(service, _)| service.login_cache())
            .filter(|logins| logins.settings().persist);
        let login_file = match persisted_logins {
            Some(logins) => {
                LoginCacheFile::open(&config.policy.state_directory, logins.clone(), &metrics)
                    .map(Arc::new)
            }
            None => {
                // Turned off: no second copy of password hashes left behind.
                LoginCacheFile::remove_leftover(&config.policy.state_directory);
                None
            }
        };
        // The cache keeps the per-call deadline itself, so it can answer stale in time.
        let service = Arc::new(
            LookupService::new(
                backend,
                Normalizer::new(&config.lookups.recipient_delimiter),
                None,
                metrics.clone(),
            )
            .with_overall_deadline(config.lookups.timeout),
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
            cache_persistence,
            login_file,
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

    /// What SIGHUP does: reload the backend, drop the cached logins.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            backend: self.backend(),
            metrics: self.metrics.clone(),
            sasl: self.sasl.as_ref().map(|(service, _)| service.clone()),
            login_file: self.login_file.clone(),
        }
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
            cache_persistence,
            login_file,
        } = self;
        let mut services = server::Services {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            allowed: Arc::new(config.listeners.allowed_clients.clone()),
            max_connections: config.listeners.max_connections,
            metrics: &metrics,
            accept_loops: Vec::new(),
        };

        let handler = SocketmapHandler::new(service.clone(), config.listeners.socketmap_limits());
        services.start(
            "socketmap",
            socketmap,
            handler,
            ConnectionMetrics::socketmap(&metrics),
        );

        let mut flusher = None;
        if let Some((policy, listeners)) = policy {
            let handler = PolicyHandler::new(policy.clone(), config.listeners.policy_limits());
            services.start(
                "policy",
                listeners,
                handler,
                ConnectionMetrics::policy(policy.metrics()),
            );
            flusher = Some(StoreFlusher::spawn(&policy));
        }

        if let Some((sasl, listeners)) = sasl {
            let handler = SaslHandler::new(sasl.clone(), config.listeners.io_timeout);
            services.start(
                "sasl",
                listeners,
                handler,
                ConnectionMetrics::sasl(sasl.metrics()),
            );
        }

        // The metrics listener is served like the protocols, with its own slots,
        // but stopped last: `/ready` answers 503 while the others drain.
        let mut http_services = server::Services {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            allowed: services.allowed.clone(),
            max_connections: config.listeners.metrics_max_connections,
            metrics: &metrics,
            accept_loops: Vec::new(),
        };
        let http_state = HttpState {
            metrics: metrics.clone(),
            backend: service.backend().clone(),
            readiness: readiness.clone(),
            breaker: Some(breaker),
            ready_check: Arc::default(),
        };
        // Aborted if `run` itself is dropped (a caller's timeout, a test): no task
        // outlives the server it serves.
        let health_watch = AbortOnDropHandle::new(tokio::spawn(http::watch_backend_health(
            http_state.clone(),
            http_services.shutdown.clone(),
        )));
        let app = http::router(http_state);
        http_services.start(
            "metrics",
            http,
            HttpHandler::new(app, config.listeners.io_timeout),
            ConnectionMetrics::http(&metrics),
        );
        let snapshots = cache_persistence.map(|persistence| {
            let stop_saving = CancellationToken::new();
            let saver = AbortOnDropHandle::new(tokio::spawn(
                persistence.clone().save_periodically(stop_saving.clone()),
            ));
            (persistence, stop_saving, saver)
        });
        let login_saver = login_file.map(|file| {
            let stop_saving = CancellationToken::new();
            let saver = AbortOnDropHandle::new(tokio::spawn(
                file.clone().save_periodically(stop_saving.clone()),
            ));
            (file, stop_saving, saver)
        });
        readiness.set_listening();

        shutdown.await;
        tracing::info!("Shutting down server...");
        readiness.set_stopping();
        services.drain(config.listeners.shutdown_grace).await;
        if let Some(flusher) = flusher {
            flusher.finish().await;
        }
        http_services.stop(Duration::from_secs(5)).await;
        let _ = health_watch.await;
        if let Some((persistence, stop_saving, saver)) = snapshots {
            stop_saving.cancel();
            let _ = saver.await;
            // What was learnt up to the last request survives the restart.
            persistence.save().await;
        }
        if let Some((file, stop_saving, saver)) = login_saver {
            stop_saving.cancel();
            let _ = saver.await;
            file.save_at_shutdown().await;
        }
    }
}

/// Binds `addr`, the value of `setting`.
async fn bind_setting(
    setting: &'static str,
    addr: &ListenAddr,
    mode: u32,
) -> Result<Vec<BoundListener>, ServerError> {
    server::bind(addr, mode)
        .await
        .map_err(|source| ServerError::Bind { setting, source })
}

/// Binds `addr` if the service is on.
async fn bind_optional(
    setting: &'static str,
    addr: Option<&ListenAddr>,
    mode: u32,
) -> Result<Option<Vec<BoundListener>>, ServerError> {
    match addr {
        None => Ok(None),
        Some(addr) => bind_setting(setting, addr, mode).await.map(Some),
    }
}

/// What to do about a listener that cannot be bound, when the cause says it.
fn bind_hint(setting: &str, error: &BindError) -> String {
    let BindError::Io { source, .. } = error else {
        return String::new();
    };
    match source.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            " (another process listens there: stop it, or choose another address in {setting})"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; a UNIX socket needs a writable directory: choose another address in {setting})"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!(" (no interface has that address: fix {setting})")
        }
        _ => String::new(),
    }
}

/// A quota store error with the setting to fix, and how.
fn store_message(error: &policy::store::StoreError) -> String {
    use policy::store::StoreError;
    match error {
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            format!(
                "STATE_DIRECTORY: {error} (set STATE_DIRECTORY to a directory this user may write, or POLICY_LISTEN_ADDR=off to run without the policy server)"
            )
        }
        StoreError::Io { .. } | StoreError::Corrupt { .. } => format!(
            "STATE_DIRECTORY: {error} (set STATE_DIRECTORY to a writable directory, or POLICY_LISTEN_ADDR=off)"
        ),
        StoreError::Remote(_) | StoreError::Rejected(_) => error.to_string(),
    }
}

fn policy_service(
    config: &Config,
    backend: Arc<dyn LookupBackend>,
    store: Arc<dyn QuotaStore>,
    metrics: &Metrics,
) -> Result<PolicyService, ServerError> {
    Ok(PolicyService::new(
        backend,
        store,
        Normalizer::new(&config.lookups.recipient_delimiter),
        config.policy.settings(&config.lookups),
        PolicyMetrics::register(metrics).map_err(metrics::MetricsError::registering)?,
    ))
}

fn sasl_service(
    config: &Config,
    backend: Arc<dyn LookupBackend>,
    metrics: &Metrics,
) -> Result<SaslService, ServerError> {
    Ok(SaslService::new(
        backend,
        config.sasl.settings(&config.lookups),
        SaslMetrics::register(metrics).map_err(metrics::MetricsError::registering)?,
    ))
}
