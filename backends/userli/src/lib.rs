//! The userli backend: answers Postfix lookups from userli's `/api/postfix/*` API.
//!
//! Compared with the Go adapter it replaces, this client
//! - treats only HTTP 200 with a body of the expected JSON type as an answer; any
//!   other status, redirect or body is an error (Postfix gets `TEMP`), so a wrong
//!   token or a misrouted URL can never turn into "not found" and bounce mail;
//! - percent-encodes each key as a single path segment instead of formatting it
//!   into the URL, and answers keys userli can never hold locally (see `screen`);
//! - caps response bodies, follows no redirects and never logs the token.
//!
//! SASL passwords are checked with `POST /api/postfix/auth`
//! ([`LookupBackend::authenticate`]):
//!
//! | userli answers | result |
//! |---|---|
//! | 200 `{"message":"success"}` | `Ok(Success)` |
//! | 200 with any other body | `Err(InvalidResponse)`: a proxy's 200 must not accept every password |
//! | 401/403 `{"message":"…"}` (wrong password, unknown, deleted, spam, password change) | `Ok(Failure)` with userli's message as the reason |
//! | 401/403 `{"error":…}` or another body (token invalid, missing scope) | `Err(Unauthorized)`, logged like a token error on lookups, never "wrong password" |
//! | any other status (400/415/422, 404, 5xx, 3xx), timeout, transport error | `Err` |
//!
//! Logins userli cannot hold and passwords that are empty, over 4096 bytes or not
//! UTF-8 fail with `authentication failed` without a request: JSON cannot carry
//! arbitrary bytes, and replacing them (as upstream did) would send a different
//! password. The password is never logged and never part of an error message.
//!
//! Wire details are in `userli-api.md` §1–§2 and §8 of the project specification.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postfix_adapter_backend::{
    AUTH_FAILED, Address, AuthOutcome, BackendError, LookupBackend, MAX_PASSWORD_BYTES, SmtpQuota,
    async_trait,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use url::Url;

mod screen;

use postfix_adapter_backend_http::client::{
    LogLimiter, Metrics, Observation, UNAUTHORIZED_LOG_INTERVAL, build_client, contains_secret,
    error_message, json_type, one_short_line, read_capped, transport_error,
};

/// The largest response body accepted from userli.
///
/// Real answers are a few hundred bytes at most (a handful of alias destinations);
/// the cap only stops a broken or hostile endpoint from exhausting memory.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Error bodies are only read for their short message and so that the connection can
/// be reused; Symfony's are well under this.
const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// The key userli is asked for by [`UserliBackend::health`]: a reserved TLD
/// (RFC 2606), so it can never be a real domain, and the `domain` route is the
/// cheapest one (a single indexed lookup, cached by userli).
const HEALTH_CHECK_DOMAIN: &str = "health-check.invalid";

/// The reasons userli itself gives (`userli-api.md` §2.6). They are passed on
/// unchanged; any other text is checked for an echo of the password first.
const USERLI_AUTH_REASONS: &[&str] = &[
    AUTH_FAILED,
    "user disabled due to spam role",
    "user password change required",
];

/// How to reach the userli API.
#[derive(Clone)]
pub struct UserliConfig {
    /// Where userli is served, e.g. `https://userli.example.org/` or
    /// `https://example.org/userli/`; `api/postfix/...` is appended to its path.
    pub base_url: Url,
    /// An API token with the `postfix` scope, sent as `Authorization: Bearer …`.
    pub token: String,
    /// Upper bound for one whole request, body included.
    pub timeout: Duration,
    /// Upper bound for establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// The `User-Agent` header, so userli's access log can tell the adapter apart.
    pub user_agent: String,
    /// Idle keep-alive connections kept per host, so bursts of lookups do not pay
    /// for new connections.
    pub max_idle_per_host: usize,
}

impl UserliConfig {
    /// A configuration with the defaults: timeout 3 s (the engine's own deadline
    /// applies too), connect timeout 2 s, 64 idle connections per host and the
    /// user agent `userli-postfix-adapter`, exactly as the Go adapter sends it.
    pub fn new(base_url: Url, token: impl Into<String>) -> Self {
        Self {
            base_url,
            token: token.into(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            // As the Go adapter sends it: userli's access log and any filter on it
            // see the same client.
            user_agent: "userli-postfix-adapter".to_owned(),
            max_idle_per_host: 64,
        }
    }
}

impl fmt::Debug for UserliConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token grants read access to every address in userli; configurations
        // get logged at startup, the token must not be.
        f.debug_struct("UserliConfig")
            .field("base_url", &redacted_url(&self.base_url))
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user_agent", &self.user_agent)
            .field("max_idle_per_host", &self.max_idle_per_host)
            .finish()
    }
}

/// Why a [`UserliBackend`] could not be built; all of them are configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserliError {
    /// The base URL cannot serve as the root of the API paths.
    #[error("invalid userli base URL {url}: {reason}")]
    InvalidBaseUrl {
        /// The URL, with any password removed.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token is empty or cannot be sent in an HTTP header.
    #[error("invalid userli API token: {0}")]
    InvalidToken(&'static str),
    /// The HTTP client could not be built (e.g. TLS setup or an invalid user agent).
    #[error("cannot build the HTTP client for userli: {0}")]
    Client(#[source] reqwest::Error),
    /// The metrics could not be registered (e.g. registered twice on one registry).
    #[error("cannot register the userli HTTP client metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

/// A [`LookupBackend`] that asks a userli instance over HTTP(S).
///
/// Cloning is cheap and shares the connection pool, metrics and log limiter.
#[derive(Clone)]
pub struct UserliBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base_url: Url,
    metrics: Metrics,
    unauthorized_log: LogLimiter,
}

impl fmt::Debug for UserliBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserliBackend")
            .field("base_url", &redacted_url(&self.inner.base_url))
            .finish_non_exhaustive()
    }
}

/// The API routes, with their path segment and metric label.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Alias,
    Domain,
    Mailbox,
    Senders,
    SmtpQuota,
    /// `POST /api/postfix/auth` (SASL); the only route without a key segment.
    Auth,
    /// The readiness probe; it calls the `domain` route but gets its own label so
    /// probes do not distort the lookup metrics (`upstream-behaviour.md` §14.32).
    Health,
}

impl Endpoint {
    fn segment(self) -> &'static str {
        match self {
            Self::Alias => "alias",
            Self::Domain | Self::Health => "domain",
            Self::Mailbox => "mailbox",
            Self::Senders => "senders",
            Self::SmtpQuota => "smtp_quota",
            Self::Auth => "auth",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Health => "health",
            other => other.segment(),
        }
    }
}

impl UserliBackend {
    /// Builds the client; `registry` receives the HTTP client metrics when given.
    ///
    /// # Errors
    /// [`UserliError`] when the base URL is not an `http`/`https` URL usable as a
    /// base (or carries credentials, a query or a fragment), the token is empty or
    /// not a valid header value, the HTTP client cannot be built, or the metrics
    /// cannot be registered.
    pub fn new(
        config: UserliConfig,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Self, UserliError> {
        check_base_url(&config.base_url)?;

        if config.token.is_empty() {
            return Err(UserliError::InvalidToken("empty"));
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", config.token)).map_err(|_| {
                UserliError::InvalidToken("contains characters not allowed in an HTTP header")
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        // Sent on GETs too, as upstream does; userli ignores it there.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

        let client = build_client(
            headers,
            &config.user_agent,
            config.timeout,
            config.connect_timeout,
            config.max_idle_per_host,
        )
        .map_err(UserliError::Client)?;

        let metrics = Metrics::new(registry).map_err(UserliError::Metrics)?;

        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base_url: config.base_url,
                metrics,
                unauthorized_log: LogLimiter::new(UNAUTHORIZED_LOG_INTERVAL),
            }),
        })
    }

    /// `{base}/api/postfix/{route}/{key}`, with `key` as one percent-encoded segment.
    fn url_for(&self, endpoint: Endpoint, key: &str) -> Result<Url, BackendError> {
        // The URL library silently drops `.` and `..` segments, and an empty one hits
        // no route; screening already refuses these, this keeps a later change from
        // ever sending such a request.
        if matches!(key, "" | "." | "..") {
            return Err(BackendError::Other(
                "key cannot be sent as a path segment".to_owned(),
            ));
        }
        let mut url = self.inner.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| BackendError::Other("userli base URL cannot be a base".to_owned()))?
            .pop_if_empty()
            .extend(["api", "postfix", endpoint.segment(), key]);
        Ok(url)
    }

    /// `{base}/api/postfix/{route}`, for the routes that take a request body.
    fn route_url(&self, endpoint: Endpoint) -> Result<Url, BackendError> {
        let mut url = self.inner.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| BackendError::Other("userli base URL cannot be a base".to_owned()))?
            .pop_if_empty()
            .extend(["api", "postfix", endpoint.segment()]);
        Ok(url)
    }

    /// One `POST /api/postfix/auth` (`userli-api.md` §2.6).
    ///
    /// Only `200 {"message":"success"}` is a success, so a proxy or a misrouted
    /// base URL answering 200 cannot accept every password (upstream accepted any
    /// 200). A 401/403 with userli's `{"message":…}` is a refused login; with
    /// `{"error":…}` (or anything else) it is the adapter's token that was
    /// refused, which is an error and never "wrong password". Every other status is
    /// an error too.
    ///
    /// No error or log line produced here contains the request body (the password).
    async fn post_auth(&self, login: &str, password: &str) -> Result<AuthOutcome, BackendError> {
        let url = self.route_url(Endpoint::Auth)?;
        // serde_json escapes quotes, backslashes and control characters; the
        // password goes into the JSON unchanged otherwise.
        let body = serde_json::to_vec(&serde_json::json!({
            "email": login,
            "password": password,
        }))
        .map_err(|_| BackendError::Other("cannot encode the auth request".to_owned()))?;
        tracing::debug!(
            endpoint = Endpoint::Auth.label(),
            key = login,
            "querying userli"
        );

        let mut observation = Observation::start(&self.inner.metrics, Endpoint::Auth.label());
        let response = self
            .inner
            .client
            .post(url)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        observation.set_status(status);

        if !matches!(status, 200 | 401 | 403) {
            // 400/415/422 (a body userli did not accept), 404, 5xx, redirects: the
            // body is drained for connection reuse and never quoted.
            let _ = read_capped(response, MAX_ERROR_BODY_BYTES).await;
            observation.finish();
            return Err(BackendError::InvalidResponse(format!("HTTP {status}")));
        }
        let body = read_capped(response, MAX_ERROR_BODY_BYTES).await;
        observation.finish();
        let value = body
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());

        if status == 200 {
            return match value.as_ref().and_then(|v| v.get("message")) {
                Some(Value::String(m)) if m == "success" => Ok(AuthOutcome::Success),
                // The body is not quoted: whatever answered might echo the request.
                _ => Err(BackendError::InvalidResponse(
                    "HTTP 200 without the body {\"message\":\"success\"}".to_owned(),
                )),
            };
        }

        // A token problem (`{"error":…}`) wins over anything else in the body.
        let user_message = match &value {
            Some(v) if v.get("error").is_none() => match v.get("message") {
                Some(Value::String(m)) => Some(m.as_str()),
                _ => None,
            },
            _ => None,
        };
        match user_message {
            Some(message) => {
                let reason = auth_reason(message, password);
                tracing::debug!(
                    endpoint = Endpoint::Auth.label(),
                    key = login,
                    status,
                    reason = reason.as_str(),
                    "userli refused the login"
                );
                Ok(AuthOutcome::Failure { reason })
            }
            None => {
                let detail = value
                    .as_ref()
                    .and_then(error_message)
                    .filter(|d| !contains_secret(d, password))
                    .and_then(one_short_line);
                Err(self.unauthorized(status, detail))
            }
        }
    }

    /// One GET, returning the JSON body of a 200 answer.
    async fn get(&self, endpoint: Endpoint, key: &str) -> Result<Value, BackendError> {
        self.get_or_not_found(endpoint, key)
            .await?
            .ok_or_else(|| BackendError::InvalidResponse("HTTP 404".into()))
    }

    /// One GET: the JSON body of a 200 answer, or `None` for userli's own 404
    /// `{"error":"User not found"}` of the quota route. Any other 404 (a wrong base
    /// URL, a missing route) is an error, never "no such user".
    async fn get_or_not_found(
        &self,
        endpoint: Endpoint,
        key: &str,
    ) -> Result<Option<Value>, BackendError> {
        let url = self.url_for(endpoint, key)?;
        tracing::debug!(endpoint = endpoint.label(), key, "querying userli");

        let mut observation = Observation::start(&self.inner.metrics, endpoint.label());
        let response = self
            .inner
            .client
            .get(url)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        observation.set_status(status);

        match status {
            200 => {}
            404 if matches!(endpoint, Endpoint::SmtpQuota) => {
                let body = read_capped(response, MAX_ERROR_BODY_BYTES).await;
                observation.finish();
                let user_not_found = body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    == Some(serde_json::json!({"error": "User not found"}));
                return if user_not_found {
                    Ok(None)
                } else {
                    Err(BackendError::InvalidResponse("HTTP 404".into()))
                };
            }
            401 | 403 => {
                let detail = error_detail(response).await;
                observation.finish();
                return Err(self.unauthorized(status, detail));
            }
            _ => {
                // Drained (bounded) so the connection can be reused. The body is not
                // put into the error: userli's 404 body echoes the URL, i.e. the address.
                let _ = read_capped(response, MAX_ERROR_BODY_BYTES).await;
                observation.finish();
                return Err(BackendError::InvalidResponse(format!("HTTP {status}")));
            }
        }

        let body = read_capped(response, MAX_BODY_BYTES).await;
        observation.finish();
        let body = body?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|err| BackendError::InvalidResponse(format!("malformed JSON body: {err}")))
    }

    /// The error for a 401/403, logged at most once per interval: a rejected token
    /// fails every lookup, and the operator has to act on it.
    fn unauthorized(&self, status: u16, detail: Option<String>) -> BackendError {
        let message = match &detail {
            Some(detail) => format!("HTTP {status}: {detail}"),
            None => format!("HTTP {status}"),
        };
        if let Some(suppressed) = self.inner.unauthorized_log.check(Instant::now()) {
            tracing::error!(
                status,
                detail = detail.as_deref().unwrap_or(""),
                suppressed,
                "userli rejected the API token: check that it is valid and has the postfix scope \
                 (repeats are logged at most once a minute)"
            );
        }
        BackendError::Unauthorized(message)
    }

    async fn list(
        &self,
        endpoint: Endpoint,
        address: &Address,
    ) -> Result<Vec<String>, BackendError> {
        if !screen::address_ok(address) {
            tracing::debug!(
                endpoint = endpoint.label(),
                key = address.as_str(),
                "key userli cannot hold, not asked"
            );
            return Ok(Vec::new());
        }
        string_list(self.get(endpoint, address.as_str()).await?)
    }

    async fn flag(
        &self,
        endpoint: Endpoint,
        key: &str,
        plausible: bool,
    ) -> Result<bool, BackendError> {
        if !plausible {
            tracing::debug!(
                endpoint = endpoint.label(),
                key,
                "key userli cannot hold, not asked"
            );
            return Ok(false);
        }
        boolean(self.get(endpoint, key).await?)
    }
}

#[async_trait]
impl LookupBackend for UserliBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(Endpoint::Alias, address).await
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.flag(Endpoint::Domain, domain, screen::domain_ok(domain))
            .await
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.flag(
            Endpoint::Mailbox,
            address.as_str(),
            screen::address_ok(address),
        )
        .await
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(Endpoint::Senders, address).await
    }

    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        if !screen::address_ok(login) {
            return Ok(None);
        }
        match self
            .get_or_not_found(Endpoint::SmtpQuota, login.as_str())
            .await?
        {
            None => Ok(None),
            Some(value) => quota(value).map(Some),
        }
    }

    /// Asks userli's `POST /api/postfix/auth`; see the crate docs for the mapping.
    ///
    /// Answered without a request, as `authentication failed`: a login userli
    /// cannot hold (the same screening as the lookups), a password that is not
    /// UTF-8 (it cannot be sent in JSON without altering it, and userli cannot hold
    /// it either; upstream replaced the bytes with U+FFFD, weak point 12), and an
    /// empty or over-long password, which userli never verifies.
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        let refuse = |why: &'static str| {
            tracing::debug!(
                endpoint = Endpoint::Auth.label(),
                key = login.as_str(),
                why,
                "login refused without asking userli"
            );
            Ok(AuthOutcome::Failure {
                reason: AUTH_FAILED.to_owned(),
            })
        };
        if !screen::address_ok(login) {
            return refuse("login userli cannot hold");
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return refuse("empty or over-long password");
        }
        let Ok(password) = std::str::from_utf8(password) else {
            return refuse("password is not UTF-8");
        };
        self.post_auth(login.as_str(), password).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        boolean(self.get(Endpoint::Health, HEALTH_CHECK_DOMAIN).await?).map(|_| ())
    }

    fn name(&self) -> &str {
        "userli"
    }
}

/// Rejects base URLs that would make the API paths ambiguous or leak credentials.
fn check_base_url(url: &Url) -> Result<(), UserliError> {
    let invalid = |reason| UserliError::InvalidBaseUrl {
        url: redacted_url(url),
        reason,
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("it cannot be a base for the API paths"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // reqwest would turn them into Basic auth, replacing the Bearer token.
        return Err(invalid(
            "it must not contain credentials; the token is sent as a Bearer header",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    Ok(())
}

/// The URL without its password, fit for logs and error messages.
fn redacted_url(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("<redacted>"));
    }
    url.to_string()
}

/// userli's short reason for a 401/403 (`{"error":"Invalid API token"}` or
/// `{"error":{"message":"Token does not have required scope: postfix",…}}`), so the
/// log tells a wrong token from a missing scope.
async fn error_detail(response: reqwest::Response) -> Option<String> {
    let body = read_capped(response, MAX_ERROR_BODY_BYTES).await.ok()?;
    let value: Value = serde_json::from_slice(&body).ok()?;
    error_text(&value)
}

/// The text of an `{"error":"…"}` or `{"error":{"message":"…"}}` body, short.
fn error_text(value: &Value) -> Option<String> {
    one_short_line(error_message(value)?)
}

/// The SMTP-client-facing reason for a refused login: userli's message, on one short
/// line; `authentication failed` when it is empty or would repeat the password
/// (the reason ends up in Postfix's log). userli's own messages pass unchanged.
fn auth_reason(message: &str, password: &str) -> String {
    if USERLI_AUTH_REASONS.contains(&message) {
        return message.to_owned();
    }
    if contains_secret(message, password) {
        return AUTH_FAILED.to_owned();
    }
    one_short_line(message).unwrap_or_else(|| AUTH_FAILED.to_owned())
}

/// An `alias`/`senders` answer: a list of strings. `null` counts as empty, as the
/// upstream client decoded it; empty strings are dropped because they would become an
/// empty socketmap value, which older Postfix versions read as "not found".
fn string_list(value: Value) -> Result<Vec<String>, BackendError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(s) if s.is_empty() => None,
                Value::String(s) => Some(Ok(s)),
                other => Some(Err(BackendError::InvalidResponse(format!(
                    "expected a list of strings, found a list element of type {}",
                    json_type(&other)
                )))),
            })
            .collect(),
        other => Err(BackendError::InvalidResponse(format!(
            "expected a list of strings, found {}",
            json_type(&other)
        ))),
    }
}

/// A `domain`/`mailbox` answer: a boolean; `null` counts as `false`, as upstream
/// decoded it.
/// `{"per_hour":N,"per_day":N}`, both non-negative integers (userli always sends both).
fn quota(value: Value) -> Result<SmtpQuota, BackendError> {
    let field = |name: &str| -> Result<u32, BackendError> {
        value
            .get(name)
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .ok_or_else(|| {
                BackendError::InvalidResponse(format!("smtp_quota answer without a numeric {name}"))
            })
    };
    Ok(SmtpQuota {
        per_hour: field("per_hour")?,
        per_day: field("per_day")?,
    })
}

fn boolean(value: Value) -> Result<bool, BackendError> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(b),
        other => Err(BackendError::InvalidResponse(format!(
            "expected a boolean, found {}",
            json_type(&other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(base: &str) -> UserliBackend {
        UserliBackend::new(UserliConfig::new(Url::parse(base).unwrap(), "t"), None).unwrap()
    }

    #[test]
    fn lists() {
        assert_eq!(string_list(json!(null)).unwrap(), Vec::<String>::new());
        assert_eq!(
            string_list(json!(["a@x", "", "b@y"])).unwrap(),
            vec!["a@x", "b@y"]
        );
        assert!(matches!(
            string_list(json!({})),
            Err(BackendError::InvalidResponse(_))
        ));
        assert!(matches!(
            string_list(json!("a@x")),
            Err(BackendError::InvalidResponse(_))
        ));
        assert!(matches!(
            string_list(json!(["a@x", 1])),
            Err(BackendError::InvalidResponse(_))
        ));
        assert!(matches!(
            string_list(json!([null])),
            Err(BackendError::InvalidResponse(_))
        ));
    }

    #[test]
    fn booleans() {
        assert!(boolean(json!(true)).unwrap());
        assert!(!boolean(json!(false)).unwrap());
        assert!(!boolean(json!(null)).unwrap());
        for bad in [json!(1), json!("true"), json!([]), json!({})] {
            assert!(matches!(
                boolean(bad),
                Err(BackendError::InvalidResponse(_))
            ));
        }
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_one_segment() {
        for (base, want) in [
            ("http://h", "http://h/api/postfix/alias/a@x"),
            ("http://h/", "http://h/api/postfix/alias/a@x"),
            ("http://h/userli", "http://h/userli/api/postfix/alias/a@x"),
            ("http://h/userli/", "http://h/userli/api/postfix/alias/a@x"),
        ] {
            assert_eq!(
                backend(base)
                    .url_for(Endpoint::Alias, "a@x")
                    .unwrap()
                    .as_str(),
                want
            );
        }
        let b = backend("https://h/p/");
        assert_eq!(
            b.url_for(Endpoint::Domain, "a/b?c#d%e f\\g")
                .unwrap()
                .as_str(),
            "https://h/p/api/postfix/domain/a%2Fb%3Fc%23d%25e%20f%5Cg"
        );
        assert_eq!(
            b.url_for(Endpoint::Mailbox, "user+x@bücher.example")
                .unwrap()
                .as_str(),
            "https://h/p/api/postfix/mailbox/user+x@b%C3%BCcher.example"
        );
        assert_eq!(
            b.url_for(Endpoint::Health, HEALTH_CHECK_DOMAIN)
                .unwrap()
                .as_str(),
            "https://h/p/api/postfix/domain/health-check.invalid"
        );
        for key in ["", ".", ".."] {
            assert!(b.url_for(Endpoint::Domain, key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn base_url_checks() {
        for bad in [
            "mailto:a@b",
            "data:text/plain,x",
            "ftp://h/",
            "http://u:p@h/",
            "http://h/?q=1",
            "http://h/#f",
        ] {
            let err = UserliBackend::new(UserliConfig::new(Url::parse(bad).unwrap(), "t"), None)
                .unwrap_err();
            assert!(
                matches!(err, UserliError::InvalidBaseUrl { .. }),
                "{bad}: {err}"
            );
            assert!(!err.to_string().contains(":p@"), "password leaked: {err}");
        }
    }

    #[test]
    fn every_endpoint_label_is_initialised() {
        for endpoint in [
            Endpoint::Alias,
            Endpoint::Domain,
            Endpoint::Mailbox,
            Endpoint::Senders,
            Endpoint::SmtpQuota,
            Endpoint::Auth,
            Endpoint::Health,
        ] {
            assert!(
                postfix_adapter_backend_http::client::ENDPOINT_LABELS.contains(&endpoint.label()),
                "{}",
                endpoint.label()
            );
        }
    }

    #[test]
    fn auth_reasons() {
        for known in USERLI_AUTH_REASONS {
            // Passed unchanged even when the password happens to be a word of it.
            assert_eq!(auth_reason(known, "password"), *known);
        }
        assert_eq!(auth_reason("", "pw"), AUTH_FAILED);
        assert_eq!(auth_reason("\r\n\t", "pw"), AUTH_FAILED);
        assert_eq!(auth_reason("account\r\nlocked", "pw"), "account  locked");
        assert_eq!(
            auth_reason("bad\tcreds\nfor user", "pw"),
            "bad creds for user"
        );
        assert_eq!(auth_reason("bad s3cret!", "s3cret!"), AUTH_FAILED);
        assert_eq!(auth_reason("bad s3\tcret!", "s3\tcret!"), AUTH_FAILED);
        assert_eq!(auth_reason("bad s3cret!", "s3\ncret!"), AUTH_FAILED);
        let long = format!("{}{}", "x".repeat(190), "s3cret-password");
        assert_eq!(auth_reason(&long, "s3cret-password"), AUTH_FAILED);
        assert_eq!(auth_reason(&"x".repeat(500), "pw").len(), 200);
    }

    #[test]
    fn the_auth_url_has_no_key_segment() {
        for (base, want) in [
            ("http://h", "http://h/api/postfix/auth"),
            ("http://h/userli/", "http://h/userli/api/postfix/auth"),
        ] {
            assert_eq!(
                backend(base).route_url(Endpoint::Auth).unwrap().as_str(),
                want
            );
        }
    }

    #[test]
    fn token_checks() {
        let url = Url::parse("http://h/").unwrap();
        for bad in ["", "a\nb", "a\rb"] {
            let err = UserliBackend::new(UserliConfig::new(url.clone(), bad), None).unwrap_err();
            assert!(matches!(err, UserliError::InvalidToken(_)), "{bad:?}");
        }
    }
}
