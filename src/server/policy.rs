//! One policy connection: read attribute blocks, decide, reply `action=...`.
//!
//! Postfix keeps a policy connection for up to `smtpd_policy_service_max_idle`
//! (300 s) and treats a connection the server closed as dead only after a 1 s
//! retry delay, so idle connections are kept far longer than that.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::policy::PolicyService;
use crate::protocol::policy::PolicyDecoder;

use super::{ConnectionHandler, ReadDeadlines};

/// Limits of one policy connection.
#[derive(Debug, Clone, Copy)]
pub struct PolicyLimits {
    /// Close a connection idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Deadline for a started request to be complete (counted from its first byte)
    /// and for each reply.
    pub io_timeout: Duration,
}

/// The policy protocol handler.
#[derive(Debug)]
pub struct PolicyHandler {
    service: Arc<PolicyService>,
    limits: PolicyLimits,
}

impl PolicyHandler {
    /// A handler deciding with `service`.
    pub fn new(service: Arc<PolicyService>, limits: PolicyLimits) -> Self {
        Self { service, limits }
    }
}

impl ConnectionHandler for PolicyHandler {
    async fn serve<S>(self: Arc<Self>, mut stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut decoder = PolicyDecoder::default();
        let mut buf = BytesMut::with_capacity(4096);
        let mut deadlines = ReadDeadlines::new(self.limits.io_timeout);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(request)) => {
                        deadlines.request_complete();
                        let decision = self.service.decide(&request).await;
                        let reply = decision.action.render();
                        let written =
                            tokio::time::timeout(self.limits.io_timeout, stream.write_all(&reply))
                                .await;
                        if !matches!(written, Ok(Ok(()))) {
                            tracing::debug!("policy reply not written, closing connection");
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The protocol's rule for a server in trouble: no reply, log, close.
                        tracing::warn!(error = %e, "malformed policy request, closing connection");
                        return;
                    }
                }
            }
            let mid_request = decoder.in_request(&buf);
            if !mid_request {
                // Stray empty lines between requests start nothing.
                deadlines.request_complete();
                if shutdown.is_cancelled() && deadlines.drained() {
                    return;
                }
            }
            let mut read = std::pin::pin!(stream.read_buf(&mut buf));
            let result = if mid_request {
                tokio::time::timeout_at(deadlines.request_deadline(), read)
                    .await
                    .ok()
            } else if shutdown.is_cancelled() {
                deadlines.drain(read).await
            } else {
                let idle_limit = async {
                    match self.limits.idle_timeout {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => deadlines.drain(&mut read).await,
                    r = &mut read => Some(r),
                    () = idle_limit => None,
                }
            };
            match result {
                Some(Ok(n)) if n > 0 => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "policy connection error");
                    return;
                }
                _ => return,
            }
        }
    }
}
