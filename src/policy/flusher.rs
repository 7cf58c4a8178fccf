//! Saving the embedded quota store: every few seconds while serving, and once more
//! when the server stops, so a restart does not reset quotas.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

use super::PolicyService;
use super::store::QuotaStore;

/// How often the embedded quota store is saved; a crash loses at most this much.
pub(crate) const STORE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The running save task of one policy service.
pub(crate) struct StoreFlusher {
    store: Arc<dyn QuotaStore>,
    save_errors: IntCounter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StoreFlusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFlusher")
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

impl StoreFlusher {
    /// Starts saving `service`'s store every [`STORE_FLUSH_INTERVAL`].
    pub(crate) fn spawn(service: &PolicyService) -> Self {
        let store = service.store().clone();
        let save_errors = service.metrics().store_errors.with_label_values(&["save"]);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (store, save_errors, stop) = (store.clone(), save_errors.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(STORE_FLUSH_INTERVAL);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = store.flush().await {
                        // Counted so the store-errors alert fires: quotas still hold
                        // in memory, but a restart would forget them.
                        save_errors.inc();
                        tracing::error!(error = %e, "cannot save the quota windows");
                    }
                }
            }
        });
        Self {
            store,
            save_errors,
            stop,
            task,
        }
    }

    /// Stops the periodic saves and saves once more (at shutdown, after the last
    /// policy connection has closed).
    pub(crate) async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = self.store.flush().await {
            self.save_errors.inc();
            tracing::error!(error = %e, "cannot save the quota windows at shutdown");
        }
    }
}
