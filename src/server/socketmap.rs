//! One socketmap connection: read netstrings, answer each, write one frame per reply.
//!
//! Postfix keeps connections open and sends one request at a time, but we also
//! accept pipelined requests and requests split across reads. Memory per connection
//! is bounded by the decoder's maximum frame length plus one read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::lookup::LookupService;
use crate::protocol::netstring::{self, NetstringDecoder, NetstringError};

use super::ConnectionHandler;
use super::connection::{Closed, Connection, Wait};

/// Limits of one socketmap connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Largest request payload.
    pub max_request_size: usize,
    /// Close a connection idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Deadline for a started request to be complete (counted from its first byte)
    /// and for each reply write.
    pub io_timeout: Duration,
}

/// The socketmap protocol handler, shared by all connections.
#[derive(Debug)]
pub(crate) struct SocketmapHandler {
    service: Arc<LookupService>,
    decoder: NetstringDecoder,
    limits: ConnectionLimits,
}

impl SocketmapHandler {
    /// A handler answering from `service` within `limits`.
    pub(crate) fn new(service: Arc<LookupService>, limits: ConnectionLimits) -> Self {
        Self {
            service,
            decoder: NetstringDecoder::new(limits.max_request_size),
            limits,
        }
    }

    fn framing_error(&self, reason: &'static str) {
        self.service
            .metrics()
            .framing_errors
            .with_label_values(&[reason])
            .inc();
    }
}

impl ConnectionHandler for SocketmapHandler {
    async fn serve<S>(self: Arc<Self>, stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = Connection::new(stream, self.decoder, self.limits.io_timeout, 1024);
        match self.run(&mut conn, &shutdown).await {
            Ok(()) => {}
            Err(Closed::Decode(e)) => {
                self.framing_error("framing");
                tracing::debug!(error = %e, "Failed to decode request, closing connection");
            }
            Err(Closed::ReadTimeout) => {
                self.framing_error("read_timeout");
                tracing::debug!("request not completed in time, closing connection");
            }
            Err(Closed::WriteTimeout) => {
                self.framing_error("write_timeout");
                tracing::debug!("reply not written in time, closing connection");
            }
            Err(Closed::Io(e)) => tracing::debug!(error = %e, "connection error"),
        }
        conn.shutdown().await;
    }
}

impl SocketmapHandler {
    async fn run<S>(
        &self,
        conn: &mut Connection<S, NetstringDecoder>,
        shutdown: &CancellationToken,
    ) -> Result<(), Closed<NetstringError>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let wait = Wait {
            idle: self.limits.idle_timeout,
            shutdown: Some(shutdown),
        };
        let mut out = Vec::with_capacity(256);
        while let Some(frame) = conn.next(wait).await? {
            let started = Instant::now();
            let answer = self.service.answer(&frame).await;
            out.clear();
            netstring::encode_into(&answer.reply.render(), &mut out);
            conn.write(&out).await?;
            self.service.record(&answer, started);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
