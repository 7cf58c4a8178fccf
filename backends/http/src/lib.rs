//! A generic HTTP/JSON backend (`LOOKUP_BACKEND=http`): any directory with an HTTP
//! API, described in the configuration file per question (URL template, method,
//! headers, body, which statuses mean found, not found or refused, and where the
//! answer is in the JSON; see [`spec`]), with the failure rules of the userli
//! backend: anything unexpected — another status, a body of the wrong shape, a
//! redirect, a timeout — is an error (Postfix: `TEMP`), never "not found".
//!
//! Also home of [`client`], the HTTP plumbing the userli backend shares.

mod backend;
pub mod client;
pub mod spec;
mod template;

pub use backend::{ClientSettings, HttpBackend, MAX_BODY_BYTES};
pub use spec::HttpSpec;
pub use template::Env;

/// A configuration the backend cannot use, naming the setting (`http.alias.url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The setting, as a path in the configuration file.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}
