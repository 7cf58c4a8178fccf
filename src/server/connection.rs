//! One framed connection, the same for every protocol: the buffer, the deadlines,
//! the idle timer, the shutdown drain and the write path, generic over the stream
//! and the protocol's [`Decoder`].
//!
//! - A started frame must be complete within the I/O timeout of its first byte
//!   ([`ReadDeadlines`]): a client trickling one byte at a time cannot hold it.
//! - Between frames a connection may idle for the protocol's limit (or forever);
//!   the timer is armed once and pushed forward lazily when it fires, because
//!   arming a fresh timer per request costs more than a cached answer.
//! - After shutdown starts, frames already received are still answered, and an
//!   idle connection gets one short drain read for a request already on its way.
//! - A reply is written at once when the socket takes it (the usual case); only
//!   when it does not is a write deadline armed.

use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::protocol::framing::Decoder;

use super::ReadDeadlines;

/// Why a connection ended early.
#[derive(Debug)]
pub(crate) enum Closed<E> {
    /// The bytes are not a frame of the protocol (or exceed its limits).
    Decode(E),
    /// A started frame did not complete by its deadline.
    ReadTimeout,
    /// A reply could not be written in time (the peer does not read).
    WriteTimeout,
    /// The socket failed, or the peer closed it in the middle of a frame.
    Io(std::io::Error),
}

/// How long to wait for the next frame to start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait<'a> {
    /// How long the connection may stay idle (`None`: forever).
    pub(crate) idle: Option<Duration>,
    /// When given, shutdown ends the wait (after one drain read).
    pub(crate) shutdown: Option<&'a CancellationToken>,
}

/// A stream read as frames of one protocol.
pub(crate) struct Connection<S, D> {
    stream: S,
    buf: BytesMut,
    decoder: D,
    io_timeout: Duration,
    deadlines: ReadDeadlines,
    idle_timer: Option<Pin<Box<Sleep>>>,
    last_activity: Instant,
}

impl<S, D> Connection<S, D>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Decoder,
{
    /// A connection on `stream` framed by `decoder`; `io_timeout` bounds a started
    /// frame and each write. `capacity` is the buffer's initial size.
    pub(crate) fn new(stream: S, decoder: D, io_timeout: Duration, capacity: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(capacity),
            decoder,
            io_timeout,
            deadlines: ReadDeadlines::new(io_timeout),
            idle_timer: None,
            last_activity: Instant::now(),
        }
    }

    /// The next frame. `Ok(None)` when the connection ends cleanly between frames:
    /// the peer closed it, it idled past `wait.idle`, or shutdown came and nothing
    /// more arrived.
    ///
    /// # Errors
    /// [`Closed`] when the connection must end early.
    pub(crate) async fn next(
        &mut self,
        wait: Wait<'_>,
    ) -> Result<Option<D::Frame>, Closed<D::Error>> {
        loop {
            // Every complete frame already received is handed out, even during
            // shutdown: the peer has sent it and is waiting for the answer.
            if let Some(frame) = self.decoder.decode(&mut self.buf).map_err(Closed::Decode)? {
                self.deadlines.request_complete();
                return Ok(Some(frame));
            }
            let in_frame = self.decoder.in_frame(&self.buf);
            if !in_frame {
                self.deadlines.request_complete();
                if self.deadlines.drained() && wait.shutdown.is_some_and(|t| t.is_cancelled()) {
                    return Ok(None);
                }
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(1024);
            }
            let n = if in_frame {
                tokio::time::timeout_at(
                    self.deadlines.request_deadline(),
                    self.stream.read_buf(&mut self.buf),
                )
                .await
                .map_err(|_| Closed::ReadTimeout)?
                .map_err(Closed::Io)?
            } else {
                match self.read_idle(wait).await? {
                    Some(n) => n,
                    None => return Ok(None),
                }
            };
            self.last_activity = Instant::now();
            if n == 0 {
                return if self.decoder.in_frame(&self.buf) {
                    Err(Closed::Io(std::io::ErrorKind::UnexpectedEof.into()))
                } else {
                    Ok(None)
                };
            }
        }
    }

    /// One read between frames; `None` when the connection should end instead.
    async fn read_idle(&mut self, wait: Wait<'_>) -> Result<Option<usize>, Closed<D::Error>> {
        let Self {
            stream,
            buf,
            deadlines,
            idle_timer,
            last_activity,
            ..
        } = self;
        let read = stream.read_buf(buf);
        if wait.shutdown.is_some_and(CancellationToken::is_cancelled) {
            return deadlines.drain(read).await.transpose().map_err(Closed::Io);
        }
        if let Some(limit) = wait.idle {
            let due = *last_activity + limit;
            match idle_timer {
                // Only a shorter limit than the one armed needs a reset now.
                Some(t) if t.deadline() > due => t.as_mut().reset(due),
                Some(_) => {}
                None => *idle_timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        let mut read = std::pin::pin!(read);
        loop {
            let timer = async {
                match (wait.idle, idle_timer.as_mut()) {
                    (Some(_), Some(t)) => t.as_mut().await,
                    _ => std::future::pending().await,
                }
            };
            let shutdown = async {
                match wait.shutdown {
                    Some(t) => t.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => {
                    return deadlines.drain(&mut read).await.transpose().map_err(Closed::Io);
                }
                r = &mut read => return r.map(Some).map_err(Closed::Io),
                () = timer => {
                    let (Some(limit), Some(t)) = (wait.idle, idle_timer.as_mut()) else {
                        continue;
                    };
                    let due = *last_activity + limit;
                    if Instant::now() >= due {
                        // An idle close is normal: Postfix reconnects when it needs to.
                        return Ok(None);
                    }
                    t.as_mut().reset(due);
                }
            }
        }
    }

    /// Writes `bytes` (one reply, in one write), arming the write deadline only
    /// when the socket cannot take them at once.
    ///
    /// # Errors
    /// [`Closed::WriteTimeout`] or [`Closed::Io`].
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Closed<D::Error>> {
        let limit = self.io_timeout;
        let mut write = std::pin::pin!(self.stream.write_all(bytes));
        // The context is not `Send`; keep it out of the state held across the await.
        let first = {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            write.as_mut().poll(&mut cx)
        };
        let result = match first {
            std::task::Poll::Ready(result) => result.map_err(Closed::Io),
            std::task::Poll::Pending => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| Closed::WriteTimeout)?
                .map_err(Closed::Io),
        };
        self.last_activity = Instant::now();
        result
    }

    /// How long nothing was read or written.
    pub(crate) fn idle_for(&self) -> Duration {
        self.last_activity.elapsed()
    }

    /// Closes the write side (best effort).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Closes the connection with a reset instead of an orderly end, where the
    /// stream is TCP (a UNIX socket has no such thing and needs none: a write to
    /// one whose peer is gone fails at once). For a peer that keeps the connection
    /// and writes before it reads, as Postfix's Dovecot client does: after an
    /// orderly end its next request would still be written without error and
    /// then fail on reading, costing one more request; after a reset the write
    /// fails, and the peer reconnects at once.
    pub(crate) fn reset(self)
    where
        S: 'static,
    {
        if let Some(tcp) =
            (&self.stream as &dyn std::any::Any).downcast_ref::<tokio::net::TcpStream>()
        {
            let _ = tcp.set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::dovecot::LineDecoder;
    use tokio::io::AsyncWriteExt;

    fn wait(idle: Option<Duration>) -> Wait<'static> {
        Wait {
            idle,
            shutdown: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_idle_limit_after_a_longer_one_still_holds() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(server, LineDecoder, Duration::from_secs(10), 64);
        client.write_all(b"one\n").await.unwrap();
        assert_eq!(
            conn.next(wait(Some(Duration::from_secs(300))))
                .await
                .unwrap()
                .as_deref(),
            Some("one")
        );
        // The timer was armed for 300 s by a (hypothetical) earlier wait; a 5 s wait
        // must still end after 5 s.
        let started = Instant::now();
        assert!(
            conn.next(wait(Some(Duration::from_secs(5))))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_activity() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(server, LineDecoder, Duration::from_secs(10), 64);
        let limit = Some(Duration::from_secs(60));
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                client.write_all(b"ping\n").await.unwrap();
            }
            client
        });
        let started = Instant::now();
        for _ in 0..3 {
            assert!(
                conn.next(wait(limit)).await.unwrap().is_some(),
                "40 s < 60 s"
            );
        }
        let _client = writer.await.unwrap();
        assert!(conn.next(wait(limit)).await.unwrap().is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(180));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(server, LineDecoder, Duration::from_secs(10), 64);
        client.write_all(b"whole\npart").await.unwrap();
        drop(client);
        assert_eq!(
            conn.next(wait(None)).await.unwrap().as_deref(),
            Some("whole")
        );
        assert!(matches!(
            conn.next(wait(None)).await,
            Err(Closed::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ));
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(server, LineDecoder, Duration::from_secs(10), 64);
        drop(client);
        assert!(conn.next(wait(None)).await.unwrap().is_none());
    }
}
