//! The HTTP client plumbing both HTTP backends share (userli's and the generic
//! one): the metrics under upstream's names, the rate-limited token-error log,
//! transport errors in the backend's vocabulary, capped bodies, and the text
//! hygiene for anything a server says that may end up in a log or an SMTP reply.

mod limiter;
mod metrics;

pub use limiter::{LogLimiter, UNAUTHORIZED_LOG_INTERVAL};
pub use metrics::{ENDPOINT_LABELS, Metrics, Observation, STATUS_ERROR};

use postfix_adapter_backend::BackendError;
use serde_json::Value;

/// Builds the client every HTTP backend uses: rustls with ring, `default_headers`,
/// the timeouts, keep-alive sized for `max_idle_per_host`, no redirects (a
/// redirect means a misrouted URL; following it could hand credentials to another
/// host and take a login page's 200 for an answer), no referer, and no proxy from
/// the environment (the directory is normally next door, and an inherited
/// `HTTP_PROXY` would silently reroute, and see, every lookup).
///
/// # Errors
/// When the client cannot be built.
pub fn build_client(
    default_headers: reqwest::header::HeaderMap,
    user_agent: &str,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
    max_idle_per_host: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a bundled crypto provider (aws-lc-rs would need a C
    // toolchain); ring is installed process-wide unless another one already is, in
    // which case that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .user_agent(user_agent)
        .default_headers(default_headers)
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(std::time::Duration::from_secs(30))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .no_proxy()
        .build()
}

/// Connections idle longer than this are closed by the adapter itself, because
/// common reverse proxies (nginx: 75 s) close them soon after, and reusing a
/// connection the server is closing fails the request.
pub const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(50);

/// Maps a reqwest error to the backend's vocabulary: where it went (scheme, host
/// and port only: the path holds the looked-up address, and these errors end up
/// in logs at error level; the token is a header, never in the URL) and the whole
/// cause chain, each cause once (`connection refused`, a DNS failure, a TLS
/// error, ...), so the operator sees what failed.
pub fn transport_error(err: reqwest::Error) -> BackendError {
    if err.is_timeout() {
        return BackendError::Timeout;
    }
    let origin = err
        .url()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null");
    let err = err.without_url();
    let mut text = err.to_string();
    if let Some(origin) = origin {
        text.push_str(" to ");
        text.push_str(&origin);
    }
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    BackendError::Unavailable(text.into())
}

/// Reads the body, refusing more than `limit` bytes.
///
/// # Errors
/// A too large body, or the transport failing while reading.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BackendError> {
    let too_large =
        || BackendError::InvalidResponse(format!("response body larger than {limit} bytes"));
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whatever answered may not be the directory it claims; keep a message short and on one line:
/// tabs, line breaks and other control characters become spaces, as upstream
/// makes them (`bad\tcreds\nfor user` → `bad creds for user`).
pub fn one_short_line(text: &str) -> Option<String> {
    let text: String = spaced(text).chars().take(200).collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `text` with every control character replaced by a space.
pub fn spaced(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Whether `text` repeats the password (a misbehaving endpoint echoing the
/// request), as sent, with its control characters dropped, or with them made
/// spaces as [`one_short_line`] does.
/// Checked before shortening, so a cut-off echo is caught too.
pub fn contains_secret(text: &str, password: &str) -> bool {
    if password.is_empty() {
        return false;
    }
    let printable = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let password_printable = printable(password);
    let password_spaced = spaced(password);
    text.contains(password)
        || (!password_printable.is_empty() && printable(text).contains(&password_printable))
        || spaced(text).contains(password_spaced.trim())
}

/// The JSON type of `value`, for error messages (never the value: it may hold an address).
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The text of an `{"error":"…"}` or `{"error":{"message":"…"}}` body, as sent.
pub fn error_message(value: &Value) -> Option<&str> {
    match value.get("error")? {
        Value::String(s) => Some(s.as_str()),
        other => other.get("message")?.as_str(),
    }
}
