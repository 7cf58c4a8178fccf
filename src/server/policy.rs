//! One policy connection: read attribute blocks, decide, reply `action=...`.
//!
//! Postfix keeps a policy connection for up to `smtpd_policy_service_max_idle`
//! (300 s) and treats a connection the server closed as dead only after a 1 s
//! retry delay, so idle connections are kept far longer than that.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::policy::PolicyService;
use crate::protocol::policy::PolicyDecoder;

use super::ConnectionHandler;
use super::connection::{Closed, Connection, Wait};

/// Limits of one policy connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicyLimits {
    /// Close a connection idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Deadline for a started request to be complete (counted from its first byte)
    /// and for each reply.
    pub io_timeout: Duration,
}

/// The policy protocol handler.
#[derive(Debug)]
pub(crate) struct PolicyHandler {
    service: Arc<PolicyService>,
    limits: PolicyLimits,
}

impl PolicyHandler {
    /// A handler deciding with `service`.
    pub(crate) fn new(service: Arc<PolicyService>, limits: PolicyLimits) -> Self {
        Self { service, limits }
    }
}

impl ConnectionHandler for PolicyHandler {
    async fn serve<S>(self: Arc<Self>, stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = Connection::new(
            stream,
            PolicyDecoder::default(),
            self.limits.io_timeout,
            4096,
        );
        let wait = Wait {
            idle: self.limits.idle_timeout,
            shutdown: Some(&shutdown),
        };
        loop {
            let request = match conn.next(wait).await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(Closed::Decode(e)) => {
                    // The protocol's rule for a server in trouble: no reply, log, close.
                    tracing::warn!(error = %e, "malformed policy request, closing connection");
                    return;
                }
                Err(Closed::Io(e)) => {
                    tracing::debug!(error = %e, "policy connection error");
                    return;
                }
                Err(Closed::ReadTimeout | Closed::WriteTimeout) => return,
            };
            let decision = self.service.decide(&request).await;
            if conn.write(&decision.action.render()).await.is_err() {
                tracing::debug!("policy reply not written, closing connection");
                return;
            }
        }
    }
}
