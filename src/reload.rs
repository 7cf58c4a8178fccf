//! What SIGHUP does, as a handle: reload the backend's data and drop the cached
//! logins, so an operator can make a password change or an account lock take
//! effect at once (`systemctl reload userli-postfix-adapter`).

use std::sync::Arc;

use postfix_adapter_backend::LookupBackend;

use crate::metrics::Metrics;
use crate::sasl::SaslService;
use crate::sasl::login_cache::file::LoginCacheFile;

/// Reloads a running [`Server`](crate::Server); from [`Server::reloader`](crate::Server::reloader).
#[derive(Clone)]
pub struct Reloader {
    pub(crate) backend: Arc<dyn LookupBackend>,
    pub(crate) metrics: Metrics,
    pub(crate) sasl: Option<Arc<SaslService>>,
    pub(crate) login_file: Option<Arc<LoginCacheFile>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads the backend (which clears the lookup cache) and drops every cached
    /// login, in memory and on disk. Whether the backend reloaded.
    pub async fn reload(&self) -> bool {
        let reloaded = crate::backend::reload(self.backend.as_ref(), &self.metrics).await;
        if let Some(sasl) = &self.sasl {
            sasl.forget_logins();
        }
        if let Some(file) = &self.login_file {
            file.save().await;
        }
        reloaded
    }
}
