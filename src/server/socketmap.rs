//! One socketmap connection: read netstrings, answer each, write one frame per reply.
//!
//! Postfix keeps connections open and sends one request at a time, but we also
//! accept pipelined requests and requests split across reads. Memory per connection
//! is bounded by the decoder's maximum frame length plus one read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::lookup::LookupService;
use crate::protocol::netstring::{self, NetstringDecoder, NetstringError};

use super::{ConnectionHandler, ReadDeadlines};

/// Limits of one socketmap connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
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
pub struct SocketmapHandler {
    service: Arc<LookupService>,
    decoder: NetstringDecoder,
    limits: ConnectionLimits,
}

impl SocketmapHandler {
    /// A handler answering from `service` within `limits`.
    pub fn new(service: Arc<LookupService>, limits: ConnectionLimits) -> Self {
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

/// Why a connection ended early; only for the debug log.
#[derive(Debug)]
enum Closed {
    Framing(NetstringError),
    Io(std::io::Error),
    ReadTimeout,
    WriteTimeout,
}

impl ConnectionHandler for SocketmapHandler {
    async fn serve<S>(self: Arc<Self>, mut stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.run(&mut stream, &shutdown).await {
            Ok(()) => {}
            Err(Closed::Framing(e)) => {
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
        let _ = stream.shutdown().await;
    }
}

impl SocketmapHandler {
    async fn run<S>(&self, stream: &mut S, shutdown: &CancellationToken) -> Result<(), Closed>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = BytesMut::with_capacity(1024);
        let mut out = Vec::with_capacity(256);
        // One idle timer per connection, pushed forward lazily when it fires: arming
        // a fresh timer for every request costs more than the request itself.
        let mut idle_timer = self
            .limits
            .idle_timeout
            .map(|d| Box::pin(tokio::time::sleep(d)));
        let mut last_activity = tokio::time::Instant::now();
        let mut deadlines = ReadDeadlines::new(self.limits.io_timeout);
        loop {
            // Answer every complete request already received, even during shutdown:
            // Postfix has sent it and is waiting.
            while let Some(frame) = self.decoder.decode(&mut buf).map_err(Closed::Framing)? {
                deadlines.request_complete();
                let started = Instant::now();
                let answer = self.service.answer(&frame).await;
                out.clear();
                netstring::encode_into(&answer.reply.render(), &mut out);
                write_with_timeout(stream, &out, self.limits.io_timeout).await?;
                self.service.record(&answer, started);
            }

            let idle = buf.is_empty();
            if idle && shutdown.is_cancelled() && deadlines.drained() {
                return Ok(());
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(1024);
            }
            let n = if idle && shutdown.is_cancelled() {
                match deadlines.drain(stream.read_buf(&mut buf)).await {
                    Some(r) => r.map_err(Closed::Io)?,
                    None => return Ok(()),
                }
            } else if idle {
                let mut read = std::pin::pin!(stream.read_buf(&mut buf));
                loop {
                    let timer = async {
                        match idle_timer.as_mut() {
                            Some(t) => t.as_mut().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            match deadlines.drain(&mut read).await {
                                Some(r) => break r.map_err(Closed::Io)?,
                                None => return Ok(()),
                            }
                        }
                        r = &mut read => break r.map_err(Closed::Io)?,
                        () = timer => {
                            let (Some(t), Some(limit)) = (idle_timer.as_mut(), self.limits.idle_timeout) else {
                                continue;
                            };
                            let deadline = last_activity + limit;
                            if tokio::time::Instant::now() >= deadline {
                                // An idle close is normal: Postfix reconnects on the next lookup.
                                return Ok(());
                            }
                            t.as_mut().reset(deadline);
                        }
                    }
                }
            } else {
                tokio::time::timeout_at(deadlines.request_deadline(), stream.read_buf(&mut buf))
                    .await
                    .map_err(|_| Closed::ReadTimeout)?
                    .map_err(Closed::Io)?
            };
            last_activity = tokio::time::Instant::now();
            if n == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(Closed::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

/// Writes `bytes`, arming the timeout only when the socket cannot take them at once
/// (the usual case is an immediate write of a few bytes).
async fn write_with_timeout<S>(stream: &mut S, bytes: &[u8], limit: Duration) -> Result<(), Closed>
where
    S: AsyncWrite + Unpin,
{
    let mut write = std::pin::pin!(stream.write_all(bytes));
    // The context is not `Send`; keep it out of the state held across the await.
    let first = {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        write.as_mut().poll(&mut cx)
    };
    if let std::task::Poll::Ready(result) = first {
        return result.map_err(Closed::Io);
    }
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| Closed::WriteTimeout)?
        .map_err(Closed::Io)
}

#[cfg(test)]
mod tests;
