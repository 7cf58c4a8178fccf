//! Building the configured backend, and reloading it on SIGHUP.

use std::sync::Arc;

use postfix_adapter_backend::LookupBackend;

use crate::cache::CachedBackend;
#[allow(unused_imports)]
use crate::config::{BackendKind, Config};
use crate::metrics::Metrics;
use crate::resilience::{CircuitBreaker, GuardedBackend};

/// The configured backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The backend was compiled out (cargo feature disabled).
    #[error("LOOKUP_BACKEND={0} is not compiled into this binary")]
    NotCompiled(&'static str),
    /// A configuration value the backend needs is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// The backend refused to start.
    #[error("{0}")]
    Backend(String),
}

/// Builds the backend `config` selects, registering its metrics on `metrics`.
///
/// # Errors
/// [`BuildError`] when the backend cannot start (bad fixture file, bad URL, ...).
pub fn build_backend(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<dyn LookupBackend>, BuildError> {
    let _ = metrics;
    match config.backend.kind {
        #[cfg(feature = "backend-userli")]
        BackendKind::Userli => {
            use postfix_adapter_backend_userli::{UserliBackend, UserliConfig};
            let token = config
                .backend
                .userli_token
                .as_ref()
                .ok_or(BuildError::Missing("USERLI_TOKEN is required"))?;
            let mut userli =
                UserliConfig::new(config.backend.userli_base_url.clone(), token.expose());
            // Callers get their answer (or stale, or TEMP) at the engine's deadline;
            // the request itself may run a little longer so a slow but alive userli
            // still fills the cache.
            userli.timeout = config.lookups.backend_call_timeout();
            userli.max_idle_per_host = config.lookups.backend_max_concurrency;
            let backend = UserliBackend::new(userli, Some(metrics.registry()))
                .map_err(|e| BuildError::Backend(e.to_string()))?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-fixture")]
        BackendKind::Fixture => {
            use postfix_adapter_backend_fixture::FixtureBackend;
            let path = config
                .backend
                .fixture_path
                .as_ref()
                .ok_or(BuildError::Missing("FIXTURE_PATH is required"))?;
            let backend =
                FixtureBackend::load(path).map_err(|e| BuildError::Backend(e.to_string()))?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-http")]
        BackendKind::Http => {
            use postfix_adapter_backend_http::{ClientSettings, HttpBackend};
            let description = config.backend.http.as_ref().ok_or(BuildError::Missing(
                "LOOKUP_BACKEND=http needs an [http] table in the config file",
            ))?;
            let settings = ClientSettings {
                timeout: config.lookups.backend_call_timeout(),
                max_idle_per_host: config.lookups.backend_max_concurrency,
                ..ClientSettings::default()
            };
            let lookup = |name: &str| description.var(name);
            let backend = HttpBackend::new(
                &description.spec,
                &lookup,
                &settings,
                Some(metrics.registry()),
            )
            .map_err(|e| BuildError::Backend(e.to_string()))?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-sql")]
        BackendKind::Sql => {
            use postfix_adapter_backend_sql::SqlBackend;
            if config.backend.sql_url.is_none() {
                return Err(BuildError::Missing("SQL_URL is required"));
            }
            // Inside the lookup deadline: a statement's connection is held until
            // it ends, so one the callers gave up on must not keep the pool busy.
            let sql = config.backend.sql_config(config.lookups.timeout);
            let backend = SqlBackend::new(&sql).map_err(|e| BuildError::Backend(e.to_string()))?;
            Ok(Arc::new(backend))
        }
        BackendKind::Custom => Err(BuildError::Missing(
            "a custom backend is passed to Server::bind, not built from the configuration",
        )),
        #[allow(unreachable_patterns)]
        other => Err(BuildError::NotCompiled(other.as_str())),
    }
}

/// Reloads `backend` (SIGHUP), logging and counting the result. On failure the
/// backend keeps its previous data.
pub async fn reload(backend: &dyn LookupBackend, metrics: &Metrics) -> bool {
    match backend.reload().await {
        Ok(()) => {
            metrics.reloads.with_label_values(&["success"]).inc();
            tracing::info!(backend = backend.name(), "backend reloaded");
            true
        }
        Err(e) => {
            metrics.reloads.with_label_values(&["error"]).inc();
            tracing::error!(backend = backend.name(), error = %e, "backend reload failed, keeping the previous data");
            false
        }
    }
}

/// Wraps `backend` in the breaker, the concurrency limit and the cache, in that
/// order from the inside out; also returns the breaker and the cache itself (for
/// its snapshot).
pub(crate) fn protect(
    backend: Arc<dyn LookupBackend>,
    config: &Config,
    metrics: &Metrics,
) -> (
    Arc<dyn LookupBackend>,
    Arc<CircuitBreaker>,
    Arc<CachedBackend>,
) {
    let breaker = Arc::new(CircuitBreaker::new(
        config.lookups.breaker_failures,
        config.lookups.breaker_cooldown,
        metrics.breaker_state.clone(),
    ));
    let guarded = Arc::new(GuardedBackend::new(
        backend,
        breaker.clone(),
        config.lookups.backend_max_concurrency,
        metrics.backend_in_flight.clone(),
    ));
    let settings = config.lookups.cache_settings();
    let cached = Arc::new(CachedBackend::new(
        guarded,
        settings,
        metrics.lookup_cache.clone(),
    ));
    (cached.clone(), breaker, cached)
}
