//! The one shape every protocol's framing has: take a complete frame off the front
//! of a buffer, or say that more bytes are needed, within the protocol's limits.
//!
//! The server's [`Connection`](crate::server) owns the buffer, the deadlines and the
//! socket; a decoder only looks at bytes. Each protocol enforces its byte and frame
//! limits in its decoder and nowhere else, so a connection's buffer never holds
//! more than one maximal frame plus one read.

use bytes::BytesMut;

use super::dovecot::{LineDecoder, LineTooLong};
use super::netstring::{NetstringDecoder, NetstringError};
use super::policy::{PolicyDecoder, PolicyError, PolicyRequest};

/// A protocol's framing: bytes in, frames out, bounded.
pub trait Decoder {
    /// One complete frame (a socketmap request, a policy request, a Dovecot line).
    type Frame;
    /// Why the bytes cannot be a frame; the connection is then closed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Takes one complete frame off the front of `buf`; `Ok(None)` while more bytes
    /// are needed.
    ///
    /// # Errors
    /// As soon as the bytes seen so far cannot start a frame within the limits.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Frame>, Self::Error>;

    /// Whether a frame has been started (bytes in `buf`, or state kept by the
    /// decoder): its remainder must then arrive within the request deadline.
    fn in_frame(&self, buf: &BytesMut) -> bool {
        !buf.is_empty()
    }
}

impl Decoder for NetstringDecoder {
    type Frame = bytes::Bytes;
    type Error = NetstringError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Frame>, Self::Error> {
        NetstringDecoder::decode(self, buf)
    }
}

impl Decoder for PolicyDecoder {
    type Frame = PolicyRequest;
    type Error = PolicyError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Frame>, Self::Error> {
        PolicyDecoder::decode(self, buf)
    }

    fn in_frame(&self, buf: &BytesMut) -> bool {
        self.in_request(buf)
    }
}

impl Decoder for LineDecoder {
    type Frame = String;
    type Error = LineTooLong;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Frame>, Self::Error> {
        LineDecoder::decode(self, buf)
    }
}
