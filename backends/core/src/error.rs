/// A boxed error, the `source` of [`BackendError::Unavailable`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A backend could not give a trustworthy answer.
///
/// Every variant is *temporary* from Postfix's point of view: the engine answers
/// `TEMP` (socketmap), so mail is deferred and retried, never bounced. The variants
/// exist for logs and metrics, so an operator can tell a dead API from a wrong token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached (connection refused, reset, DNS, I/O).
    #[error("backend unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    Timeout,
    /// The backend answered, but with a status or body that is not a valid answer.
    #[error("unexpected backend response: {0}")]
    InvalidResponse(String),
    /// The backend refused the adapter's own credentials (token, scope): an operator
    /// has to fix the configuration.
    #[error("backend rejected the adapter's credentials: {0}")]
    Unauthorized(String),
    /// Anything else, described in words.
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// A short, fixed label for metrics and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Unauthorized(_) => "unauthorized",
            Self::Other(_) => "other",
        }
    }

    /// Wraps any error as [`BackendError::Unavailable`].
    pub fn unavailable(err: impl Into<BoxError>) -> Self {
        Self::Unavailable(err.into())
    }
}
