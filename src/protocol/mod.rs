//! Pure protocol codecs: bytes in, typed values out, no I/O.
//!
//! Keeping them free of sockets means they can be unit-tested, property-tested
//! and fuzzed in isolation; the servers in [`crate::server`] own the buffers and
//! the deadlines.

pub mod dovecot;
pub mod framing;
pub mod netstring;
pub mod policy;
pub mod socketmap;
