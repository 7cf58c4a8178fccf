//! When a connection's reads must end, the same for every protocol.
//!
//! A started request (a netstring, a policy request, a SASL line) must arrive in
//! full within the I/O timeout counted from its first byte: a per-read timeout would
//! let a client trickling one byte at a time hold the connection forever. After
//! shutdown starts, an idle connection gets one last short read, so a request
//! already on its way is answered rather than met with a closed connection.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// After shutdown starts, how long an idle connection is still read from, once: a
/// request already on its way when the signal came (in the socket buffer, or not yet
/// reported by the reactor) is answered instead of met with a closed connection.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_millis(100);

/// One connection's read deadlines.
#[derive(Debug)]
pub(crate) struct ReadDeadlines {
    io_timeout: Duration,
    request: Option<Instant>,
    drained: bool,
}

impl ReadDeadlines {
    /// Requests must be complete within `io_timeout` of their first byte.
    pub(crate) fn new(io_timeout: Duration) -> Self {
        Self {
            io_timeout,
            request: None,
            drained: false,
        }
    }

    /// A request was completed (or nothing is pending): the next one gets a fresh
    /// deadline from its own first byte.
    pub(crate) fn request_complete(&mut self) {
        self.request = None;
    }

    /// When the request being received must be complete.
    pub(crate) fn request_deadline(&mut self) -> Instant {
        let io_timeout = self.io_timeout;
        *self
            .request
            .get_or_insert_with(|| Instant::now() + io_timeout)
    }

    /// Whether the one read after shutdown has been made: an idle connection closes.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// The one read after shutdown, bounded by [`SHUTDOWN_DRAIN`]; `None` when
    /// nothing came.
    pub(crate) async fn drain<F: Future>(&mut self, read: F) -> Option<F::Output> {
        self.drained = true;
        tokio::time::timeout(SHUTDOWN_DRAIN, read).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_first_byte_until_the_request_completes() {
        let mut d = ReadDeadlines::new(Duration::from_secs(10));
        let first = d.request_deadline();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(d.request_deadline(), first, "more bytes do not extend it");
        d.request_complete();
        assert_eq!(d.request_deadline(), first + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn one_short_read_after_shutdown() {
        let mut d = ReadDeadlines::new(Duration::from_secs(10));
        assert!(!d.drained());
        assert_eq!(d.drain(std::future::pending::<()>()).await, None);
        assert!(d.drained());
        assert_eq!(d.drain(async { 7 }).await, Some(7));
    }
}
