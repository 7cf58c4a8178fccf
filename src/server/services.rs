//! The protocol services of a running server: starting their accept loops and
//! draining them at shutdown, the same for every protocol.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::AllowedClients;
use crate::metrics::Metrics;

use super::{AcceptContext, BoundListener, ConnectionHandler, ConnectionMetrics, accept_loop};

/// The protocol services of a running server: their accept loops and connections.
pub(crate) struct Services<'a> {
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Tracks every connection task.
    pub(crate) tracker: TaskTracker,
    /// Who may connect over TCP.
    pub(crate) allowed: Arc<AllowedClients>,
    /// Connection slots of each service.
    pub(crate) max_connections: usize,
    /// The engine's metrics (for `connections_denied_total`).
    pub(crate) metrics: &'a Metrics,
    /// The running accept loops.
    pub(crate) accept_loops: Vec<JoinHandle<()>>,
}

impl Services<'_> {
    /// Starts one accept loop per listener of the service `name` (also its
    /// `listener` metric label), logging `<name> server listening` (tests and
    /// scripts read the addresses from that line).
    pub(crate) fn start<H: ConnectionHandler>(
        &mut self,
        name: &'static str,
        listeners: Vec<BoundListener>,
        handler: H,
        metrics: ConnectionMetrics,
    ) {
        let ctx = AcceptContext {
            slots: Arc::new(Semaphore::new(self.max_connections)),
            metrics,
            shutdown: self.shutdown.clone(),
            tracker: self.tracker.clone(),
            service: name,
            allowed: self.allowed.clone(),
            denied: self.metrics.connections_denied.with_label_values(&[name]),
        };
        let handler = Arc::new(handler);
        let shown = if name == "sasl" { "SASL" } else { name };
        for listener in listeners {
            tracing::info!(addr = %listener.local_addr(), "{shown} server listening");
            self.accept_loops.push(tokio::spawn(accept_loop(
                listener,
                handler.clone(),
                ctx.clone(),
            )));
        }
    }

    /// Stops accepting (listeners close, socket files go), answers what was
    /// received, and waits for the connections up to `grace`.
    pub(crate) async fn drain(self, grace: Duration) {
        let tracker = self.tracker.clone();
        if self.stop(grace).await {
            tracing::info!("All connections closed");
        } else {
            tracing::warn!(
                open_connections = tracker.len(),
                "grace period over, closing remaining connections"
            );
        }
    }

    /// Stops accepting and waits up to `grace` for the connections; whether they
    /// all closed in time.
    pub(crate) async fn stop(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        for task in self.accept_loops {
            let _ = task.await;
        }
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
