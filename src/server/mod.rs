//! Listening, accepting and connection bookkeeping, generic over the protocol.
//!
//! A protocol is a `ConnectionHandler`: it gets a byte stream and a shutdown
//! token. Everything around it (connection slots, socket options, accept-error
//! back-off, draining at shutdown) is shared, so the socketmap server and later
//! servers behave alike.

mod connection;
mod listener;
mod read_deadlines;
mod services;
use read_deadlines::ReadDeadlines;
pub use read_deadlines::SHUTDOWN_DRAIN;
pub(crate) use services::Services;
pub(crate) mod policy;
pub(crate) mod sasl;
pub(crate) mod socketmap;

pub use listener::{BindError, BoundListener, LocalAddr, SocketFile, bind};

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::AllowedClients;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};

/// Serves one connection of a protocol.
pub(crate) trait ConnectionHandler: Send + Sync + 'static {
    /// Serves `stream` until the peer closes it, an error occurs, or `shutdown` is
    /// cancelled and the connection has nothing left to answer.
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Shared state of the accept loops of one service.
#[derive(Clone)]
pub(crate) struct AcceptContext {
    /// Connection slots; a connection that finds none is closed at once.
    pub(crate) slots: Arc<Semaphore>,
    /// The service's connection gauges and pool-full counter.
    pub(crate) metrics: ConnectionMetrics,
    /// Cancelled when the process shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// A name for logs, such as `socketmap`; also the `listener` metric label.
    pub(crate) service: &'static str,
    /// Who may connect over TCP (`ALLOWED_CLIENTS`).
    pub(crate) allowed: Arc<AllowedClients>,
    /// Counts TCP connections refused for `allowed`.
    pub(crate) denied: IntCounter,
}

/// The connection metrics of one service.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionMetrics {
    /// Open connections.
    pub(crate) active: IntGauge,
    /// Used connection slots, where the service has such a gauge (socketmap).
    pub(crate) pool_usage: Option<IntGauge>,
    /// Connections refused because every slot was taken.
    pub(crate) pool_full: IntCounter,
}

impl ConnectionMetrics {
    /// The socketmap service's metrics.
    pub(crate) fn socketmap(metrics: &Metrics) -> Self {
        Self {
            active: metrics.active_connections.clone(),
            pool_usage: Some(metrics.connection_pool_usage.clone()),
            pool_full: metrics.connection_pool_full.clone(),
        }
    }

    /// The policy service's metrics.
    pub(crate) fn policy(metrics: &crate::policy::PolicyMetrics) -> Self {
        Self {
            active: metrics.active_connections.clone(),
            pool_usage: None,
            pool_full: metrics.pool_full.clone(),
        }
    }

    /// The metrics listener's own connection metrics.
    pub(crate) fn http(metrics: &Metrics) -> Self {
        Self {
            active: metrics.http_active_connections.clone(),
            pool_usage: None,
            pool_full: metrics.http_pool_full.clone(),
        }
    }

    /// The SASL service's metrics.
    pub(crate) fn sasl(metrics: &crate::sasl::SaslMetrics) -> Self {
        Self {
            active: metrics.active_connections.clone(),
            pool_usage: None,
            pool_full: metrics.pool_full.clone(),
        }
    }
}

/// Keeps the connection gauges right however a connection task ends.
struct ConnectionGuard {
    metrics: ConnectionMetrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnectionGuard {
    fn new(metrics: ConnectionMetrics, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics.active.inc();
        if let Some(g) = &metrics.pool_usage {
            g.inc();
        }
        Self {
            metrics,
            _permit: permit,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.active.dec();
        if let Some(g) = &self.metrics.pool_usage {
            g.dec();
        }
    }
}

/// Accepts connections on `listener` until shutdown, one task per connection.
pub(crate) async fn accept_loop<H: ConnectionHandler>(
    listener: BoundListener,
    handler: Arc<H>,
    ctx: AcceptContext,
) {
    let full_log = LogThrottle::new(Duration::from_secs(10));
    let denied_log = LogThrottle::new(Duration::from_secs(10));
    let error_log = LogThrottle::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = accept(&listener) => r,
        };
        let stream = match accepted {
            Ok((s, peer)) => {
                backoff = Duration::from_millis(5);
                if let Some(peer) = peer
                    && !ctx.allowed.allows(peer)
                {
                    // Before a slot or a task: a denied peer costs an accept and a close.
                    ctx.denied.inc();
                    if let Some(suppressed) = denied_log.allow() {
                        tracing::warn!(
                            service = ctx.service,
                            %peer,
                            allowed = %ctx.allowed,
                            similar_warnings_suppressed = suppressed,
                            "connection from outside ALLOWED_CLIENTS closed"
                        );
                    }
                    drop(s);
                    continue;
                }
                s
            }
            Err(e) => {
                // Usually EMFILE: spinning on it would burn a core and flood the log.
                if let Some(suppressed) = error_log.allow() {
                    tracing::error!(service = ctx.service, error = %e, similar_errors_suppressed = suppressed, "accept failed");
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            ctx.metrics.pool_full.inc();
            if let Some(suppressed) = full_log.allow() {
                tracing::warn!(
                    service = ctx.service,
                    similar_warnings_suppressed = suppressed,
                    "Connection pool full, rejecting connection"
                );
            }
            drop(stream);
            continue;
        };
        let guard = ConnectionGuard::new(ctx.metrics.clone(), permit);
        let handler = handler.clone();
        // A child token per connection: waiting on the shared token would make every
        // connection contend for its lock on every request.
        let shutdown = ctx.shutdown.child_token();
        ctx.tracker.spawn(async move {
            let _guard = guard;
            match stream {
                Accepted::Tcp(s) => handler.serve(s, shutdown).await,
                Accepted::Unix(s) => handler.serve(s, shutdown).await,
            }
        });
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Accepts one connection; with the peer's address for TCP (UNIX peers are
/// governed by the socket file's mode).
async fn accept(listener: &BoundListener) -> std::io::Result<(Accepted, Option<IpAddr>)> {
    match listener {
        BoundListener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            // Replies are single small writes that Postfix waits for: never delay them.
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            Ok((Accepted::Tcp(stream), Some(peer.ip())))
        }
        BoundListener::Unix(l, _) | BoundListener::InheritedUnix(l) => {
            Ok((Accepted::Unix(l.accept().await?.0), None))
        }
    }
}
