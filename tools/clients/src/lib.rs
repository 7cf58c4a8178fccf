//! Clients for the adapter's three protocols, as Postfix speaks them, and the
//! measurements the load tools take of a running adapter.
//!
//! Used by the load and soak tools (`tools/`) and by the integration tests, so a
//! fix to how a reply is read is made once. The netstring reader here is written
//! independently of the engine's codec on purpose: a client built from the
//! server's own decoder would share its bugs.
//!
//! | Module | What it holds |
//! |---|---|
//! | [`conn`] | one connection type for all three protocols: framing, bounded reads, "closed" vs "hung" |
//! | [`request`] | request builders: socketmap netstrings, policy blocks, SASL `AUTH PLAIN` lines |
//! | [`sasl`] | the Dovecot handshake and an authenticating client |
//! | [`http`] | a bounded `GET` and reading Prometheus text |
//! | [`process`] | `/proc` sampling: resident memory, threads, descriptors, the open-files limit |
//! | [`idle`] | many held connections: opening them, asking them again, noticing closes |

pub mod conn;
pub mod http;
pub mod idle;
pub mod process;
pub mod request;
pub mod sasl;

pub use conn::{Conn, Framing, Got, ReadError};
