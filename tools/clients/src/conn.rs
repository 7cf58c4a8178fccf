//! One client connection for socketmap, policy and SASL: a stream, a read buffer
//! and the protocol's reply framing.
//!
//! Postfix sends one request at a time and waits for its reply; so does this
//! client. Reads are bounded ([`Conn::max_reply`]) and tell a close apart from a
//! hang and from a truncated reply, which is what fault and load tests look for.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest reply read by default: Postfix's socketmap reply limit (100,000
/// bytes) plus the netstring framing. Policy and SASL replies are a line or two.
pub const MAX_REPLY: usize = 100_016;

/// How the replies of a protocol are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Socketmap: `<length>:<payload>,`; a frame is the payload.
    Netstring,
    /// Policy: `name=value` lines up to an empty line; a frame includes the `\n\n`.
    Block,
    /// Dovecot auth: one line; a frame includes its `\n`.
    Line,
}

/// Why no reply frame could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the connection; `partial` bytes of an incomplete reply
    /// were left over (a truncated reply when not 0).
    Closed {
        /// Bytes of a reply that never completed.
        partial: usize,
    },
    /// The reply is not well formed for the protocol (a bad netstring).
    Malformed(String),
    /// The reply grew past [`Conn::max_reply`] bytes without completing.
    TooLong,
    /// Reading or writing failed (a reset counts as a close for most callers).
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed { partial: 0 } => f.write_str("closed by the server"),
            Self::Closed { partial } => {
                write!(f, "closed by the server after {partial} bytes of a reply")
            }
            Self::Malformed(why) => write!(f, "malformed reply: {why}"),
            Self::TooLong => f.write_str("reply longer than the limit"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What waiting for a reply brought, for tests that tell the outcomes apart.
#[derive(Debug)]
pub enum Got {
    /// One complete reply (lossy UTF-8).
    Reply(String),
    /// The server closed the connection (or reset it); `partial` bytes of an
    /// incomplete reply were left over.
    Closed {
        /// Bytes of a reply that never completed.
        partial: usize,
    },
    /// Nothing within the time limit.
    Hung,
    /// A reply that is not well formed, or too long.
    Malformed(String),
}

/// One connection to an adapter listener.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    buf: BytesMut,
    framing: Framing,
    max_reply: usize,
}

impl Conn<TcpStream> {
    /// Connects over TCP with Nagle off (requests are small and one at a time).
    ///
    /// # Errors
    /// The connect error.
    pub async fn tcp(addr: std::net::SocketAddr, framing: Framing) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::new(stream, framing))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection over `stream` whose replies are framed by `framing`.
    pub fn new(stream: S, framing: Framing) -> Self {
        Self {
            stream,
            // Grown on the first read: thousands of idle connections stay cheap.
            buf: BytesMut::new(),
            framing,
            max_reply: MAX_REPLY,
        }
    }

    /// Sets the largest reply accepted (default [`MAX_REPLY`]).
    #[must_use]
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }

    /// The largest reply accepted.
    pub fn max_reply(&self) -> usize {
        self.max_reply
    }

    /// The stream, e.g. to look at it without reading.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream, e.g. to write raw bytes or to shut it down.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops what is buffered (after a reconnect, or to resynchronise).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The stream and whatever was buffered.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.stream, self.buf)
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    /// The write error.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `request` and reads its reply.
    ///
    /// # Errors
    /// A [`ReadError`]; a failed write is [`ReadError::Io`].
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Bytes, ReadError> {
        self.send(request).await.map_err(ReadError::Io)?;
        self.read_frame().await
    }

    /// Reads the next reply frame (for netstrings, the payload).
    ///
    /// # Errors
    /// A [`ReadError`].
    pub async fn read_frame(&mut self) -> Result<Bytes, ReadError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 256 {
                // Replies are small; a long one doubles the buffer as it comes.
                self.buf.reserve(self.buf.len().max(1024));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(ReadError::Closed {
                        partial: self.buf.len(),
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// The next reply within `limit`, with every outcome told apart; a reset
    /// counts as a close.
    pub async fn next(&mut self, limit: Duration) -> Got {
        match tokio::time::timeout(limit, self.read_frame()).await {
            Err(_) => Got::Hung,
            Ok(Ok(frame)) => Got::Reply(String::from_utf8_lossy(&frame).into_owned()),
            Ok(Err(ReadError::Closed { partial })) => Got::Closed { partial },
            Ok(Err(ReadError::Io(_))) => Got::Closed {
                partial: self.buf.len(),
            },
            Ok(Err(e @ (ReadError::Malformed(_) | ReadError::TooLong))) => {
                Got::Malformed(e.to_string())
            }
        }
    }

    /// Reads until the server closes the connection, at most `limit` long; the
    /// bytes it sent first (buffered ones included), or `None` if it stayed open.
    pub async fn until_closed(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let mut rest = self.buf.split().to_vec();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    // Bounded: a server that streams forever is not "closed".
                    Ok(n) if rest.len() + n > self.max_reply => return false,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(limit, read).await.unwrap_or(false);
        closed.then_some(rest)
    }

    /// A complete frame from the buffer, if one is there.
    ///
    /// # Errors
    /// [`ReadError::Malformed`] or [`ReadError::TooLong`].
    pub fn take_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        let frame = match self.framing {
            Framing::Netstring => take_netstring(&mut self.buf, self.max_reply)?,
            Framing::Block => take_through(&mut self.buf, b"\n\n"),
            Framing::Line => take_through(&mut self.buf, b"\n"),
        };
        if frame.is_none() && self.buf.len() > self.max_reply {
            return Err(ReadError::TooLong);
        }
        Ok(frame)
    }
}

/// The bytes up to and including the first `end`, if it is there.
fn take_through(buf: &mut BytesMut, end: &[u8]) -> Option<Bytes> {
    let at = buf.windows(end.len()).position(|w| w == end)?;
    Some(buf.split_to(at + end.len()).freeze())
}

/// The payload of a complete netstring at the start of `buf`, if it is there.
fn take_netstring(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ReadError> {
    let Some(colon) = buf.iter().position(|&b| b == b':') else {
        if let Some(bad) = buf.iter().find(|b| !b.is_ascii_digit()) {
            return Err(ReadError::Malformed(format!(
                "byte {bad:#04x} in a netstring length"
            )));
        }
        if buf.len() > 10 {
            return Err(ReadError::TooLong);
        }
        return Ok(None);
    };
    let digits = &buf[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReadError::Malformed(format!(
            "netstring length {:?}",
            String::from_utf8_lossy(digits)
        )));
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .filter(|&len| len <= max)
        .ok_or(ReadError::TooLong)?;
    let end = colon + 1 + len;
    if buf.len() <= end {
        return Ok(None);
    }
    if buf[end] != b',' {
        return Err(ReadError::Malformed(format!(
            "netstring ends in {:#04x}, not ','",
            buf[end]
        )));
    }
    buf.advance(colon + 1);
    let payload = buf.split_to(len).freeze();
    buf.advance(1);
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn netstrings(buf: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut buf = BytesMut::from(buf);
        let mut out = Vec::new();
        while let Some(p) = take_netstring(&mut buf, MAX_REPLY).map_err(|e| e.to_string())? {
            out.push(p.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn netstrings_are_read_whole_and_in_order() {
        assert_eq!(
            netstrings(b"4:OK 1,8:NOTFOUND,0:,").unwrap(),
            [&b"OK 1"[..], b"NOTFOUND", b""]
        );
        assert_eq!(netstrings(b"4:OK 1").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(netstrings(b"12").unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn malformed_and_oversized_netstrings_are_errors() {
        assert!(netstrings(b"4:OK 1;").unwrap_err().contains("not ','"));
        assert!(netstrings(b":x,").unwrap_err().contains("length"));
        assert!(netstrings(b"x1:a,").unwrap_err().contains("length"));
        assert!(
            netstrings(b"999999999:")
                .unwrap_err()
                .contains("longer than")
        );
        assert!(
            netstrings(b"99999999999")
                .unwrap_err()
                .contains("longer than")
        );
    }

    #[tokio::test]
    async fn blocks_and_lines_are_split_where_the_protocols_end_them() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut policy = Conn::new(client, Framing::Block);
        server
            .write_all(b"action=DUNNO\n\naction=REJECT x\n\nOK\t1\n")
            .await
            .unwrap();
        assert_eq!(&policy.read_frame().await.unwrap()[..], b"action=DUNNO\n\n");
        assert_eq!(
            &policy.read_frame().await.unwrap()[..],
            b"action=REJECT x\n\n"
        );
        let (stream, rest) = policy.into_parts();
        let mut sasl = Conn::new(stream, Framing::Line);
        sasl.buf = rest;
        assert_eq!(&sasl.read_frame().await.unwrap()[..], b"OK\t1\n");
    }

    #[tokio::test]
    async fn a_close_a_truncated_reply_and_a_hang_are_told_apart() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(client, Framing::Netstring);
        assert!(matches!(
            conn.next(Duration::from_millis(20)).await,
            Got::Hung
        ));
        server.write_all(b"8:NOTF").await.unwrap();
        drop(server);
        assert!(matches!(
            conn.next(Duration::from_secs(5)).await,
            Got::Closed { partial: 6 }
        ));
    }

    #[tokio::test]
    async fn a_reply_past_the_limit_is_an_error_not_a_growing_buffer() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(client, Framing::Line).with_max_reply(100);
        server.write_all(&[b'a'; 1000]).await.unwrap();
        assert!(matches!(conn.read_frame().await, Err(ReadError::TooLong)));
    }

    #[tokio::test]
    async fn until_closed_tells_a_close_from_an_open_or_endless_stream() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(client, Framing::Netstring).with_max_reply(100);
        server.write_all(b"4:OK 1,").await.unwrap();
        assert_eq!(conn.until_closed(Duration::from_millis(20)).await, None);
        server.write_all(&[b'x'; 200]).await.unwrap();
        assert_eq!(conn.until_closed(Duration::from_secs(5)).await, None);

        let (client, mut server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(client, Framing::Netstring);
        server.write_all(b"2:OK,").await.unwrap();
        drop(server);
        assert_eq!(
            conn.until_closed(Duration::from_secs(5)).await.as_deref(),
            Some(&b"2:OK,"[..])
        );
    }

    proptest! {
        /// However the bytes are split into reads, the same frames come out.
        #[test]
        fn frames_do_not_depend_on_how_the_bytes_arrive(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            cuts in proptest::collection::vec(1usize..17, 1..40),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                crate::request::netstring_into(p, &mut wire);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= wire.len() {
                    break;
                }
                let next = (at + cut).min(wire.len());
                buf.extend_from_slice(&wire[at..next]);
                at = next;
                while let Some(p) = take_netstring(&mut buf, MAX_REPLY).unwrap() {
                    got.push(p.to_vec());
                }
            }
            prop_assert_eq!(got, payloads);
        }
    }
}
