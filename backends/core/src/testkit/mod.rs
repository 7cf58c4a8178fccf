//! Test support for backend authors and for the engine's own tests (feature
//! `testkit`).
//!
//! - [`StubBackend`]: a backend whose answers, errors, delays and hangs are set in
//!   code, recording every call; for testing what is built on top of a backend.
//! - [`conformance`]: checks any backend can run against its own data: found and
//!   not found, errors as errors, authentication and quota semantics.
//! - [`assert_basic_dataset`], [`assert_extension_rows`]: the answers of userli's
//!   `basic` fixture data set, which the fixture and the userli backends both serve.

pub mod conformance;
mod stub;
mod userli_data;

pub use stub::{Fault, StubBackend};
pub use userli_data::{assert_basic_dataset, assert_extension_rows};
