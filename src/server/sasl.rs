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

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::protocol::dovecot::{
    self, AuthRequest, ClientLine, HandshakeLine, LineDecoder, LineTooLong, Mechanism,
};
use crate::sasl::{AuthResult, SaslService};

use super::ConnectionHandler;
use super::connection::{Closed, Connection, Wait};

/// How long Postfix may take to relay the SMTP client's next `CONT` answer
/// (`smtpd_timeout`, 300 s, plus a margin).
pub(crate) const CONT_TIMEOUT: Duration = Duration::from_secs(310);

/// Per-process connection counter for `CUID`.
static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// The SASL protocol handler.
#[derive(Debug)]
pub(crate) struct SaslHandler {
    service: Arc<SaslService>,
    io_timeout: Duration,
}

impl SaslHandler {
    /// A handler checking logins with `service`; `io_timeout` bounds each write,
    /// each handshake line and the time from a line's first byte to its end.
    pub(crate) fn new(service: Arc<SaslService>, io_timeout: Duration) -> Self {
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
}

impl From<Closed<LineTooLong>> for End {
    fn from(closed: Closed<LineTooLong>) -> Self {
        match closed {
            Closed::Decode(e) => Self::Violation(e.to_string()),
            Closed::ReadTimeout | Closed::WriteTimeout | Closed::Io(_) => Self::Closed,
        }
    }
}

/// The next line, or [`End::Closed`] when the connection ended instead.
async fn next_line<S>(conn: &mut Lines<S>, wait: Wait<'_>) -> Result<String, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.next(wait).await?.ok_or(End::Closed)
}

type Lines<S> = Connection<S, LineDecoder>;

/// How long a connection must have been quiet to be closed with a reset: long
/// enough for the peer to have read everything written to it.
const QUIET_BEFORE_RESET: Duration = Duration::from_secs(1);

impl ConnectionHandler for SaslHandler {
    async fn serve<S>(self: Arc<Self>, stream: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = Connection::new(stream, LineDecoder, self.io_timeout, 1024);
        match self.run(&mut conn, &shutdown).await {
            End::Violation(why) => {
                tracing::warn!(error = why, "SASL protocol error, closing connection")
            }
            End::Unavailable => {
                tracing::debug!("auth connection dropped: backend unavailable");
                // Postfix answers 454 either way; reset, so its next AUTH (maybe
                // another user's, once the backend is back) reconnects instead of
                // failing on the dead connection too.
                conn.reset();
                return;
            }
            End::Closed => {
                // Idle (shutdown, idle timeout): a reset loses nothing the peer has
                // not long read, and spares Postfix a 454 at its next AUTH (the
                // first after an adapter restart would otherwise find the old
                // connection dead only after writing to it).
                if conn.idle_for() >= QUIET_BEFORE_RESET {
                    conn.reset();
                    return;
                }
            }
        }
        conn.shutdown().await;
    }
}

impl SaslHandler {
    async fn run<S>(&self, conn: &mut Lines<S>, shutdown: &CancellationToken) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let connection = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let handshake =
            dovecot::server_handshake(std::process::id(), connection, &cookie(connection));
        if let Err(closed) = conn.write(handshake.as_bytes()).await {
            return closed.into();
        }
        let handshake_wait = Wait {
            idle: Some(self.io_timeout),
            shutdown: None,
        };
        let (mut version, mut cpid) = (false, false);
        while !(version && cpid) {
            let line = match next_line(conn, handshake_wait).await {
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

        // No idle timeout: an smtpd process keeps its auth connection for life.
        let request_wait = Wait {
            idle: None,
            shutdown: Some(shutdown),
        };
        let mut pending: Option<String> = None;
        loop {
            let line = match pending.take() {
                Some(l) => l,
                None => match conn.next(request_wait).await {
                    Ok(Some(l)) => l,
                    Ok(None) => return End::Closed,
                    Err(closed) => return closed.into(),
                },
            };
            let request = match dovecot::parse_client_line(&line) {
                ClientLine::Auth(r) => r,
                ClientLine::InvalidAuth => {
                    let reply = dovecot::fail_line("0", None, "Invalid AUTH request");
                    if let Err(closed) = conn.write(reply.as_bytes()).await {
                        return closed.into();
                    }
                    continue;
                }
                // Stray CONT lines (an abandoned exchange) and unknown commands.
                ClientLine::Cont { .. } | ClientLine::Other => continue,
            };
            match self.auth(conn, &request).await {
                Ok(Step::Reply(reply)) => {
                    if let Err(closed) = conn.write(reply.as_bytes()).await {
                        return closed.into();
                    }
                }
                // The client gave up (Postfix sends nothing for `*`) and started anew.
                Ok(Step::Abandoned(next)) => pending = Some(next),
                Err(end) => return end,
            }
        }
    }

    async fn auth<S>(&self, conn: &mut Lines<S>, request: &AuthRequest) -> Result<Step, End>
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
                    _ => match self.challenge(conn, id, b"").await? {
                        Ok(r) => r,
                        Err(next) => return Ok(Step::Abandoned(next)),
                    },
                };
                dovecot::decode_base64(&response, "resp=").and_then(|p| dovecot::parse_plain(&p))
            }
            Mechanism::Login => {
                let user = match request.initial_response.as_deref() {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => match self.challenge(conn, id, b"Username:").await? {
                        Ok(r) => r,
                        Err(next) => return Ok(Step::Abandoned(next)),
                    },
                };
                let password = match self.challenge(conn, id, b"Password:").await? {
                    Ok(r) => r,
                    Err(next) => return Ok(Step::Abandoned(next)),
                };
                dovecot::login_credentials(&user, &password)
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
        conn: &mut Lines<S>,
        id: &str,
        challenge: &[u8],
    ) -> Result<Result<String, String>, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        conn.write(dovecot::cont_line(id, challenge).as_bytes())
            .await?;
        let wait = Wait {
            idle: Some(CONT_TIMEOUT),
            shutdown: None,
        };
        loop {
            let line = next_line(conn, wait).await?;
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
