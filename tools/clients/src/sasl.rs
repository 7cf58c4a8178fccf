//! A Dovecot auth client as Postfix's smtpd is one: the handshake, then `AUTH`
//! requests one at a time on the same connection.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::conn::{Conn, Framing, ReadError};
use crate::request::auth_plain;

/// The longest handshake accepted, in lines (Dovecot sends about ten).
const MAX_HANDSHAKE_LINES: usize = 64;

/// An authenticated-to-be connection after the handshake.
#[derive(Debug)]
pub struct SaslClient<S> {
    conn: Conn<S>,
    next_id: u64,
    plain_offered: bool,
}

/// Why the handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// Reading or writing failed, or the server closed the connection.
    Read(ReadError),
    /// The server sent 64 lines without `DONE` (Dovecot sends about ten).
    NoDone,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "handshake: {e}"),
            Self::NoDone => f.write_str("handshake: no DONE line"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl SaslClient<TcpStream> {
    /// Connects over TCP and does the handshake.
    ///
    /// # Errors
    /// The connect error or a [`HandshakeError`].
    pub async fn tcp(addr: SocketAddr) -> Result<Self, HandshakeError> {
        let conn = Conn::tcp(addr, Framing::Line)
            .await
            .map_err(|e| HandshakeError::Read(ReadError::Io(e)))?;
        Self::handshake(conn).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SaslClient<S> {
    /// Sends `VERSION` and `CPID` and reads the server's handshake up to `DONE`,
    /// noting whether PLAIN is offered.
    ///
    /// # Errors
    /// A [`HandshakeError`].
    pub async fn handshake(mut conn: Conn<S>) -> Result<Self, HandshakeError> {
        let hello = format!("VERSION\t1\t0\nCPID\t{}\n", std::process::id());
        conn.send(hello.as_bytes())
            .await
            .map_err(|e| HandshakeError::Read(ReadError::Io(e)))?;
        let mut plain_offered = false;
        for _ in 0..MAX_HANDSHAKE_LINES {
            let line = conn.read_frame().await.map_err(HandshakeError::Read)?;
            if line.starts_with(b"MECH\tPLAIN") {
                plain_offered = true;
            }
            if &line[..] == b"DONE\n" {
                return Ok(Self {
                    conn,
                    next_id: 1,
                    plain_offered,
                });
            }
        }
        Err(HandshakeError::NoDone)
    }

    /// Whether the server offered mechanism PLAIN.
    pub fn plain_offered(&self) -> bool {
        self.plain_offered
    }

    /// `AUTH PLAIN` for `login` from the SMTP client `rip`: the reply line
    /// without its newline.
    ///
    /// # Errors
    /// A [`ReadError`]; a login the server refuses by closing is
    /// [`ReadError::Closed`].
    pub async fn auth_plain(
        &mut self,
        login: &str,
        password: &str,
        rip: &str,
    ) -> Result<String, ReadError> {
        let request = auth_plain(self.next_id, login, password, rip);
        self.next_id += 1;
        let line = self.conn.exchange(request.as_bytes()).await?;
        Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
    }

    /// The connection, to send `AUTH` lines of one's own.
    pub fn into_conn(self) -> Conn<S> {
        self.conn
    }

    /// The connection underneath, e.g. to send raw lines.
    pub fn conn_mut(&mut self) -> &mut Conn<S> {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[tokio::test]
    async fn handshake_then_auth_as_smtpd_does() {
        let (client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut server = BufReader::new(server);
            server
                .get_mut()
                .write_all(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nDONE\n")
                .await
                .unwrap();
            let mut lines = Vec::new();
            for _ in 0..3 {
                let mut line = String::new();
                server.read_line(&mut line).await.unwrap();
                lines.push(line);
            }
            server
                .get_mut()
                .write_all(b"FAIL\t1\tuser=x\n")
                .await
                .unwrap();
            lines
        });
        let mut sasl = SaslClient::handshake(Conn::new(client, Framing::Line))
            .await
            .unwrap();
        assert!(sasl.plain_offered());
        assert_eq!(
            sasl.auth_plain("x", "y", "192.0.2.1").await.unwrap(),
            "FAIL\t1\tuser=x"
        );
        let lines = server.await.unwrap();
        assert!(lines[0].starts_with("VERSION\t1\t0\n"));
        assert!(lines[1].starts_with("CPID\t"));
        assert!(lines[2].starts_with("AUTH\t1\tPLAIN\t"));
    }
}
