//! One Dovecot-protocol auth connection from a Postfix smtpd process.
//!
//! The server handshake goes out at once and never waits for the backend (a failed
//! handshake makes smtpd exit with "no SASL authentication mechanisms"). The
//! connection lives as long as the smtpd process: there is no idle timeout, only
//! TCP keep-alive and the connection limit. Between `CONT` steps we wait as long as
//! Postfix waits for a human's client (300 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::protocol::dovecot::{
    self, AuthRequest, ClientLine, HandshakeLine, MAX_LINE, Mechanism, SaslError,
};
use crate::sasl::{AuthResult, SaslService};

use super::{ConnectionHandler, ReadDeadlines};

/// How long Postfix may take to relay the SMTP client's next `CONT` answer
/// (`smtpd_timeout`, 300 s, plus a margin).
pub const CONT_TIMEOUT: Duration = Duration::from_secs(310);

/// Per-process connection counter for `CUID`.
static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// The SASL protocol handler.
#[derive(Debug)]
pub struct SaslHandler {
    service: Arc<SaslService>,
    io_timeout: Duration,
}

impl SaslHandler {
    /// A handler checking logins with `service`; `io_timeout` bounds each write,
    /// each handshake line and the time from a line's first byte to its end.
    pub fn new(service: Arc<SaslService>, io_timeout: Duration) -> Self {
        Self {
            service,
            io_timeout,
        }
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed, or an I/O error or timeout.
    Closed,
    /// A protocol violation (logged).
    Violation(String),
    /// The backend could not check a password: drop so Postfix answers 454.
    Unavailable,
    /// Shutdown while idle.
    Shutdown,
}

/// Reads bounded lines.
struct Lines<'a, S> {
    stream: &'a mut S,
    buf: BytesMut,
    /// Each line must be complete within the I/O timeout of its first byte.
    deadlines: ReadDeadlines,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<'_, S> {
    /// The next line, waiting at most `limit` (`None`: forever) or until shutdown
    /// when `shutdown` is given and nothing is buffered.
    async fn next(
        &mut self,
        limit: Option<Duration>,
        shutdown: Option<&CancellationToken>,
    ) -> Result<String, End> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                if end > MAX_LINE {
                    return Err(End::Violation("line too long".into()));
                }
                let line = self.buf.split_to(end);
                self.buf.advance(1);
                self.deadlines.request_complete();
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                return Ok(String::from_utf8_lossy(line).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(End::Violation("line too long".into()));
            }
            self.buf.reserve(1024);
            let idle = self.buf.is_empty();
            if idle {
                self.deadlines.request_complete();
                if self.deadlines.drained() && shutdown.is_some_and(CancellationToken::is_cancelled)
                {
                    return Err(End::Shutdown);
                }
            }
            let mut read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
            let n = match (limit, shutdown) {
                _ if !idle => tokio::time::timeout_at(self.deadlines.request_deadline(), read)
                    .await
                    .map_err(|_| End::Closed)?,
                (_, Some(token)) => tokio::select! {
                    () = token.cancelled() => match self.deadlines.drain(&mut read).await {
                        Some(r) => r,
                        None => return Err(End::Shutdown),
                    },
                    r = &mut read => r,
                },
                (Some(d), _) => tokio::time::timeout(d, read)
                    .await
                    .map_err(|_| End::Closed)?,
                (None, _) => read.await,
            }
            .map_err(|_| End::Closed)?;
            if n == 0 {
                return Err(End::Closed);
            }
        }
    }
}

impl ConnectionHandler for SaslHandler {
    async fn serve<S>(self: Arc<Self>, mut stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.run(&mut stream, &shutdown).await {
            End::Violation(why) => {
                tracing::warn!(error = why, "SASL protocol error, closing connection")
            }
            End::Unavailable => tracing::debug!("auth connection dropped: backend unavailable"),
            End::Closed | End::Shutdown => {}
        }
        let _ = stream.shutdown().await;
    }
}

impl SaslHandler {
    async fn write<S: AsyncWrite + Unpin>(&self, stream: &mut S, text: &str) -> Result<(), End> {
        match tokio::time::timeout(self.io_timeout, stream.write_all(text.as_bytes())).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Closed),
        }
    }

    async fn run<S>(&self, stream: &mut S, shutdown: &CancellationToken) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let connection = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let handshake =
            dovecot::server_handshake(std::process::id(), connection, &cookie(connection));
        if let Err(end) = self.write(stream, &handshake).await {
            return end;
        }
        let mut lines = Lines {
            stream,
            buf: BytesMut::with_capacity(1024),
            deadlines: ReadDeadlines::new(self.io_timeout),
        };
        let (mut version, mut cpid) = (false, false);
        while !(version && cpid) {
            let line = match lines.next(Some(self.io_timeout), None).await {
                Ok(l) => l,
                Err(end) => return end,
            };
            match dovecot::parse_handshake(&line) {
                Ok(HandshakeLine::Version(_)) => version = true,
                Ok(HandshakeLine::Cpid) => cpid = true,
                Ok(HandshakeLine::Other) => {}
                Err(e) => return End::Violation(e.to_string()),
            }
        }

        let mut pending: Option<String> = None;
        loop {
            let line = match pending.take() {
                Some(l) => l,
                None => match lines.next(None, Some(shutdown)).await {
                    Ok(l) => l,
                    Err(end) => return end,
                },
            };
            let request = match dovecot::parse_client_line(&line) {
                ClientLine::Auth(r) => r,
                ClientLine::InvalidAuth => {
                    let reply = dovecot::fail_line("0", None, "Invalid AUTH request");
                    if let Err(end) = self.write(lines.stream, &reply).await {
                        return end;
                    }
                    continue;
                }
                // Stray CONT lines (an abandoned exchange) and unknown commands.
                ClientLine::Cont { .. } | ClientLine::Other => continue,
            };
            match self.auth(&mut lines, &request).await {
                Ok(Step::Reply(reply)) => {
                    if let Err(end) = self.write(lines.stream, &reply).await {
                        return end;
                    }
                }
                // The client gave up (Postfix sends nothing for `*`) and started anew.
                Ok(Step::Abandoned(next)) => pending = Some(next),
                Err(end) => return end,
            }
        }
    }

    async fn auth<S>(&self, lines: &mut Lines<'_, S>, request: &AuthRequest) -> Result<Step, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let id = request.id.as_str();
        let Some(mechanism) = request.mechanism else {
            self.service.count_protocol_error(None);
            return Ok(Step::Reply(dovecot::fail_line(
                id,
                None,
                "Unsupported mechanism",
            )));
        };
        let credentials = match mechanism {
            Mechanism::Plain => {
                let response = match request.initial_response.as_deref() {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => match self.challenge(lines, id, b"").await? {
                        Ok(r) => r,
                        Err(next) => return Ok(Step::Abandoned(next)),
                    },
                };
                dovecot::decode_base64(&response).and_then(|p| dovecot::parse_plain(&p))
            }
            Mechanism::Login => {
                let user = match request.initial_response.as_deref() {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => match self.challenge(lines, id, b"Username:").await? {
                        Ok(r) => r,
                        Err(next) => return Ok(Step::Abandoned(next)),
                    },
                };
                let password = match self.challenge(lines, id, b"Password:").await? {
                    Ok(r) => r,
                    Err(next) => return Ok(Step::Abandoned(next)),
                };
                login_credentials(&user, &password)
            }
        };
        let (login, password) = match credentials {
            Ok(c) => c,
            Err(e) => {
                self.service.count_protocol_error(Some(mechanism));
                return Ok(Step::Reply(dovecot::fail_line(id, None, &e.to_string())));
            }
        };
        match self
            .service
            .authenticate(mechanism, &login, &password, request.remote_ip.as_deref())
            .await
        {
            AuthResult::Success(user) => Ok(Step::Reply(dovecot::ok_line(id, &user))),
            AuthResult::Failure { reason, delay } => {
                tokio::time::sleep(delay).await;
                Ok(Step::Reply(dovecot::fail_line(id, Some(&login), &reason)))
            }
            AuthResult::Unavailable => Err(End::Unavailable),
        }
    }

    /// Sends a challenge and waits for the `CONT` answer; `Ok(Err(line))` when the
    /// client abandoned the exchange and sent a new `AUTH` instead.
    async fn challenge<S>(
        &self,
        lines: &mut Lines<'_, S>,
        id: &str,
        challenge: &[u8],
    ) -> Result<Result<String, String>, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.write(lines.stream, &dovecot::cont_line(id, challenge))
            .await?;
        loop {
            let line = lines.next(Some(CONT_TIMEOUT), None).await?;
            match dovecot::parse_client_line(&line) {
                ClientLine::Cont { id: got, data } if got == id => return Ok(Ok(data)),
                ClientLine::Auth(_) | ClientLine::InvalidAuth => return Ok(Err(line)),
                _ => continue,
            }
        }
    }
}

/// What to do after an `AUTH` exchange.
enum Step {
    /// Send this line.
    Reply(String),
    /// The client started a new request with this line.
    Abandoned(String),
}

fn login_credentials(user: &str, password: &str) -> Result<(String, Vec<u8>), SaslError> {
    let user = dovecot::decode_base64(user)?;
    let password = dovecot::decode_base64(password)?;
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Empty);
    }
    let user = String::from_utf8(user).map_err(|_| SaslError::LoginNotUtf8)?;
    Ok((user, password))
}

/// 32 hex characters, different for every connection and unpredictable: two
/// SipHash values under keys the standard library draws from the OS's random source
/// once per thread. Postfix only echoes the cookie (it authenticates Dovecot master
/// requests, which we do not serve), so this is ample, and a connection flood no
/// longer costs a file open and read of `/dev/urandom` per connection on a runtime
/// worker.
fn cookie(connection: u64) -> String {
    use std::hash::BuildHasher;
    let keys = std::collections::hash_map::RandomState::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let a = keys.hash_one((connection, nanos, 0u8));
    let b = keys.hash_one((connection, nanos, 1u8));
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests;
