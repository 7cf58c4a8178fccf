//! The generic HTTP backend: compiled questions, and the rules that turn an HTTP
//! answer into a lookup answer or an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postfix_adapter_backend::{
    AUTH_FAILED, Address, AuthOutcome, BackendError, LookupBackend, MAX_PASSWORD_BYTES, SmtpQuota,
    async_trait,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::SpecError;
use crate::client::{
    LogLimiter, Metrics, Observation, UNAUTHORIZED_LOG_INTERVAL, build_client, contains_secret,
    error_message, json_type, one_short_line, read_capped, transport_error,
};
use crate::spec::{AuthQuestion, HttpSpec, Kind, Method, Question};
use crate::template::{BodyTemplate, Env, UrlTemplate, expand_env};

/// The largest found body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Other bodies are read only for a short message and to reuse the connection.
const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// How the client behaves, apart from the API's description.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Upper bound for one whole request, body included.
    pub timeout: Duration,
    /// Upper bound for establishing a connection.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            max_idle_per_host: 64,
        }
    }
}

/// One compiled request.
#[derive(Debug)]
struct Request {
    method: Method,
    url: UrlTemplate,
    headers: HeaderMap,
    body: Option<BodyTemplate>,
}

/// A compiled lookup question.
#[derive(Debug)]
struct Compiled {
    label: &'static str,
    request: Request,
    found: Vec<u16>,
    not_found: Vec<(u16, Option<Value>)>,
    unauthorized: Vec<u16>,
    pointer: String,
    kind: Kind,
    separator: Option<String>,
    per_hour: String,
    per_day: String,
    key_pattern: Option<regex::Regex>,
}

/// The compiled password check.
#[derive(Debug)]
struct CompiledAuth {
    request: Request,
    success: Vec<u16>,
    success_at: Option<(String, Value)>,
    refused: Vec<u16>,
    reason: Option<String>,
    unless: Option<String>,
    unauthorized: Vec<u16>,
    trusted_reasons: Vec<String>,
    key_pattern: Option<regex::Regex>,
}

/// A backend answering from any HTTP/JSON API described by an [`HttpSpec`].
#[derive(Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    metrics: Metrics,
    unauthorized_log: LogLimiter,
    domain: Option<Compiled>,
    mailbox: Option<Compiled>,
    alias: Option<Compiled>,
    senders: Option<Compiled>,
    quota: Option<Compiled>,
    auth: Option<CompiledAuth>,
    health_key: String,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers may hold credentials: not shown.
        f.debug_struct("HttpBackend").finish_non_exhaustive()
    }
}

fn headers(
    base: &std::collections::BTreeMap<String, String>,
    own: &std::collections::BTreeMap<String, String>,
    env: Env<'_>,
    field: &str,
) -> Result<HeaderMap, SpecError> {
    let mut map = HeaderMap::new();
    for (name, value) in base.iter().chain(own) {
        let field = format!("{field}.headers.{name}");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SpecError::new(&field, "not a valid header name"))?;
        let (value, from_env) = expand_env(value, env, &field)?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| SpecError::new(&field, "not a valid header value"))?;
        // A value taken from the environment is likely a credential.
        value.set_sensitive(from_env);
        map.insert(name, value);
    }
    Ok(map)
}

/// `pattern` compiled to match whole keys only.
fn key_pattern(pattern: Option<&String>, field: &str) -> Result<Option<regex::Regex>, SpecError> {
    pattern
        .map(|p| {
            let invalid =
                |e: regex::Error| SpecError::new(field, format!("not a regular expression: {e}"));
            // Alone first: `a)|(.*` would otherwise close the anchoring group and
            // match everything.
            regex::Regex::new(p).map_err(invalid)?;
            regex::Regex::new(&format!("^(?:{p})$")).map_err(invalid)
        })
        .transpose()
}

fn pointer(text: &str, field: &str) -> Result<String, SpecError> {
    if !(text.is_empty() || text.starts_with('/')) {
        return Err(SpecError::new(
            field,
            format!("{text:?} is no JSON pointer: empty (the whole body) or starting with `/`"),
        ));
    }
    Ok(text.to_owned())
}

fn request(
    spec: &HttpSpec,
    method: Method,
    url: &str,
    own_headers: &std::collections::BTreeMap<String, String>,
    body: Option<&String>,
    env: Env<'_>,
    field: &str,
) -> Result<Request, SpecError> {
    let url_field = format!("{field}.url");
    let url = UrlTemplate::parse(&expand_env(url, env, &url_field)?.0, &url_field)?;
    let body_field = format!("{field}.body");
    let body = body
        .map(|b| {
            let (text, _) = expand_env(b, env, &body_field)?;
            BodyTemplate::parse(&text, &body_field)
        })
        .transpose()?;
    Ok(Request {
        method,
        url,
        headers: headers(&spec.headers, own_headers, env, field)?,
        body,
    })
}

fn compile(
    spec: &HttpSpec,
    question: Option<&Question>,
    name: &str,
    label: &'static str,
    default_kind: Kind,
    env: Env<'_>,
) -> Result<Option<Compiled>, SpecError> {
    let Some(q) = question else {
        return Ok(None);
    };
    let field = format!("http.{name}");
    let kind = q.answer.kind.unwrap_or(default_kind);
    let allowed: &[Kind] = match default_kind {
        Kind::Bool => &[Kind::Bool, Kind::Found],
        Kind::List => &[Kind::List],
        Kind::Quota | Kind::Found => &[Kind::Quota],
    };
    if !allowed.contains(&kind) {
        return Err(SpecError::new(
            &format!("{field}.answer.kind"),
            format!("{kind:?} does not answer this question").to_lowercase(),
        ));
    }
    if q.answer.separator.as_deref() == Some("") {
        return Err(SpecError::new(
            &format!("{field}.answer.separator"),
            "is empty: it would split an answer into single characters",
        ));
    }
    let not_found = q
        .not_found
        .iter()
        .enumerate()
        .map(|(i, nf)| {
            let body = nf
                .body
                .as_deref()
                .map(|b| {
                    serde_json::from_str::<Value>(b).map_err(|e| {
                        SpecError::new(
                            &format!("{field}.not_found[{i}].body"),
                            format!("not JSON: {e}"),
                        )
                    })
                })
                .transpose()?;
            Ok((nf.status, body))
        })
        .collect::<Result<Vec<_>, SpecError>>()?;
    let quota_pointer = |p: &Option<String>, which: &str| -> Result<String, SpecError> {
        pointer(
            p.as_deref().unwrap_or(&format!("/{which}")),
            &format!("{field}.answer.{which}"),
        )
    };
    Ok(Some(Compiled {
        label,
        request: request(
            spec,
            q.method,
            &q.url,
            &q.headers,
            q.body.as_ref(),
            env,
            &field,
        )?,
        found: q.found.clone(),
        not_found,
        unauthorized: q.unauthorized.clone(),
        pointer: pointer(&q.answer.pointer, &format!("{field}.answer.pointer"))?,
        kind,
        separator: q.answer.separator.clone(),
        per_hour: quota_pointer(&q.answer.per_hour, "per_hour")?,
        per_day: quota_pointer(&q.answer.per_day, "per_day")?,
        key_pattern: key_pattern(q.key_pattern.as_ref(), &format!("{field}.key_pattern"))?,
    }))
}

fn compile_auth(
    spec: &HttpSpec,
    q: Option<&AuthQuestion>,
    env: Env<'_>,
) -> Result<Option<CompiledAuth>, SpecError> {
    let Some(q) = q else {
        return Ok(None);
    };
    let field = "http.auth";
    // A success needs a body that says so: a bare 200 (a maintenance page, a
    // single-page app's fallback, a wrong URL) must never accept every password.
    let success_at = match (&q.success.pointer, &q.success.equals) {
        (Some(p), Some(v)) => Some((pointer(p, "http.auth.success.pointer")?, v.clone())),
        (None, None) => {
            return Err(SpecError::new(
                "http.auth.success",
                "needs pointer and equals (where the body says the password is right): \
                 a bare success status would let any 200 page accept every password",
            ));
        }
        _ => {
            return Err(SpecError::new(
                "http.auth.success",
                "pointer and equals go together",
            ));
        }
    };
    // A status that may mean either "wrong password" or "the adapter's token was
    // refused" needs the body to tell them apart, or an expired token would fail
    // every login with 535 (and lock users out) instead of 454.
    if q.refused.reason.is_none()
        && q.refused.unless.is_none()
        && q.refused.status.iter().any(|s| q.unauthorized.contains(s))
    {
        return Err(SpecError::new(
            "http.auth.refused",
            "shares statuses with unauthorized: set reason (where a refused login's message \
             is) or unless (what marks the adapter's credentials refused), or separate the statuses",
        ));
    }
    let optional_pointer = |p: &Option<String>, name: &str| {
        p.as_deref()
            .map(|p| pointer(p, &format!("http.auth.refused.{name}")))
            .transpose()
    };
    Ok(Some(CompiledAuth {
        request: request(
            spec,
            q.method,
            &q.url,
            &q.headers,
            q.body.as_ref(),
            env,
            field,
        )?,
        success: q.success.status.clone(),
        success_at,
        refused: q.refused.status.clone(),
        reason: optional_pointer(&q.refused.reason, "reason")?,
        unless: optional_pointer(&q.refused.unless, "unless")?,
        unauthorized: q.unauthorized.clone(),
        trusted_reasons: q.trusted_reasons.clone(),
        key_pattern: key_pattern(q.key_pattern.as_ref(), "http.auth.key_pattern")?,
    }))
}

/// An HTTP exchange's outcome, before the question's rules.
struct Exchange {
    status: u16,
    body: Option<Value>,
}

impl HttpBackend {
    /// Compiles `spec`, resolving `${NAME}` through `env`; `registry` receives the
    /// HTTP client metrics when given.
    ///
    /// # Errors
    /// A [`SpecError`] naming the broken setting (`http.alias.url`, ...).
    pub fn new(
        spec: &HttpSpec,
        env: Env<'_>,
        settings: &ClientSettings,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Self, SpecError> {
        let question =
            |q: Option<&Question>, name, label, kind| compile(spec, q, name, label, kind, env);
        let domain = question(spec.domain.as_ref(), "domain", "domain", Kind::Bool)?;
        let mailbox = question(spec.mailbox.as_ref(), "mailbox", "mailbox", Kind::Bool)?;
        let alias = question(spec.alias.as_ref(), "alias", "alias", Kind::List)?;
        let senders = question(spec.senders.as_ref(), "senders", "senders", Kind::List)?;
        let quota = question(spec.quota.as_ref(), "quota", "smtp_quota", Kind::Quota)?;
        let auth = compile_auth(spec, spec.auth.as_ref(), env)?;
        if [&domain, &mailbox, &alias, &senders, &quota]
            .iter()
            .all(|q| q.is_none())
            && auth.is_none()
        {
            return Err(SpecError::new("http", "describes no question"));
        }
        let client = build_client(
            HeaderMap::new(),
            &spec.user_agent,
            settings.timeout,
            settings.connect_timeout,
            settings.max_idle_per_host,
        )
        .map_err(|e| SpecError::new("http", format!("cannot build the HTTP client: {e}")))?;
        let metrics = Metrics::new(registry)
            .map_err(|e| SpecError::new("http", format!("cannot register the metrics: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                metrics,
                unauthorized_log: LogLimiter::new(UNAUTHORIZED_LOG_INTERVAL),
                domain,
                mailbox,
                alias,
                senders,
                quota,
                auth,
                health_key: spec.health_key.clone(),
            }),
        })
    }

    /// Sends `request` for `key` (and `password`, for the auth body).
    async fn exchange(
        &self,
        request: &Request,
        label: &'static str,
        key: &str,
        password: Option<&str>,
        found: &[u16],
    ) -> Result<Exchange, BackendError> {
        let url = request.url.render(key).map_err(BackendError::Other)?;
        tracing::debug!(endpoint = label, key, "querying the directory");
        let mut builder = match request.method {
            Method::Get => self.inner.client.get(url),
            Method::Post => self.inner.client.post(url),
        }
        .headers(request.headers.clone());
        if let Some(body) = &request.body {
            if !request.headers.contains_key(reqwest::header::CONTENT_TYPE) {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            builder = builder.body(body.render(key, password.unwrap_or_default()));
        }
        let mut observation = Observation::start(&self.inner.metrics, label);
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        observation.set_status(status);
        let limit = if found.contains(&status) {
            MAX_BODY_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        let body = read_capped(response, limit).await;
        observation.finish();
        let body = match body {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes).ok(),
            // A found answer must be read whole; any other is only looked at.
            Err(e) if found.contains(&status) => return Err(e),
            Err(_) => None,
        };
        Ok(Exchange { status, body })
    }

    /// The error for the adapter's credentials refused, logged at most once a minute.
    fn unauthorized(
        &self,
        status: u16,
        body: Option<&Value>,
        password: Option<&str>,
    ) -> BackendError {
        let detail = body
            .and_then(error_message)
            .filter(|d| password.is_none_or(|p| !contains_secret(d, p)))
            .and_then(one_short_line);
        let message = match &detail {
            Some(detail) => format!("HTTP {status}: {detail}"),
            None => format!("HTTP {status}"),
        };
        if let Some(suppressed) = self.inner.unauthorized_log.check(Instant::now()) {
            tracing::error!(
                status,
                detail = detail.as_deref().unwrap_or(""),
                suppressed,
                "the directory refused the adapter's credentials: check the headers of the http backend \
                 (repeats are logged at most once a minute)"
            );
        }
        BackendError::Unauthorized(message)
    }

    /// Asks `question` for `key`: the answer's value, or `None` for not found.
    async fn ask(&self, question: &Compiled, key: &str) -> Result<Option<Value>, BackendError> {
        if question
            .key_pattern
            .as_ref()
            .is_some_and(|p| !p.is_match(key))
        {
            tracing::debug!(
                endpoint = question.label,
                key,
                "key the directory cannot hold, not asked"
            );
            return Ok(None);
        }
        self.ask_unscreened(question, key).await
    }

    /// [`Self::ask`] without the key pattern (the health check must reach the API).
    async fn ask_unscreened(
        &self,
        question: &Compiled,
        key: &str,
    ) -> Result<Option<Value>, BackendError> {
        let exchange = self
            .exchange(
                &question.request,
                question.label,
                key,
                None,
                &question.found,
            )
            .await?;
        let status = exchange.status;
        if question.found.contains(&status) {
            let Some(body) = exchange.body else {
                if question.kind == Kind::Found {
                    return Ok(Some(Value::Bool(true)));
                }
                return Err(BackendError::InvalidResponse(format!(
                    "HTTP {status} without a JSON body"
                )));
            };
            if question.kind == Kind::Found {
                return Ok(Some(Value::Bool(true)));
            }
            return Ok(Some(body));
        }
        if question.not_found.iter().any(|(s, want)| {
            *s == status
                && want
                    .as_ref()
                    .is_none_or(|w| exchange.body.as_ref() == Some(w))
        }) {
            return Ok(None);
        }
        if question.unauthorized.contains(&status) {
            return Err(self.unauthorized(status, exchange.body.as_ref(), None));
        }
        // The body is not quoted: it may echo the URL, i.e. the address.
        Err(BackendError::InvalidResponse(format!("HTTP {status}")))
    }

    fn at<'v>(body: &'v Value, pointer: &str) -> Result<&'v Value, BackendError> {
        body.pointer(pointer).ok_or_else(|| {
            BackendError::InvalidResponse(format!("no value at the JSON pointer {pointer:?}"))
        })
    }

    async fn flag(&self, question: Option<&Compiled>, key: &str) -> Result<bool, BackendError> {
        let question = configured(question)?;
        let Some(body) = self.ask(question, key).await? else {
            return Ok(false);
        };
        if question.kind == Kind::Found {
            return Ok(true);
        }
        match Self::at(&body, &question.pointer)? {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            other => Err(BackendError::InvalidResponse(format!(
                "expected a boolean, found {}",
                json_type(other)
            ))),
        }
    }

    async fn list(
        &self,
        question: Option<&Compiled>,
        key: &str,
    ) -> Result<Vec<String>, BackendError> {
        let question = configured(question)?;
        let Some(body) = self.ask(question, key).await? else {
            return Ok(Vec::new());
        };
        let split = |s: &str| -> Vec<String> {
            match &question.separator {
                Some(sep) => s
                    .split(sep.as_str())
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                None if s.is_empty() => Vec::new(),
                None => vec![s.to_owned()],
            }
        };
        match Self::at(&body, &question.pointer)? {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => Ok(split(s)),
            // Empty strings are dropped: an empty socketmap value reads as "not
            // found" to older Postfix versions.
            Value::Array(items) => items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => Some(Ok(s.clone())),
                    other => Some(Err(BackendError::InvalidResponse(format!(
                        "expected a list of strings, found a list element of type {}",
                        json_type(other)
                    )))),
                })
                .collect(),
            other => Err(BackendError::InvalidResponse(format!(
                "expected a list of strings, found {}",
                json_type(other)
            ))),
        }
    }

    async fn post_auth(
        &self,
        auth: &CompiledAuth,
        login: &str,
        password: &str,
    ) -> Result<AuthOutcome, BackendError> {
        let exchange = self
            .exchange(&auth.request, "auth", login, Some(password), &auth.success)
            .await?;
        let status = exchange.status;
        let body = exchange.body.as_ref();
        if auth.success.contains(&status) {
            return match &auth.success_at {
                None => Ok(AuthOutcome::Success),
                Some((p, want)) if body.and_then(|b| b.pointer(p)) == Some(want) => {
                    Ok(AuthOutcome::Success)
                }
                // Not quoted: whatever answered might echo the request.
                Some((p, _)) => Err(BackendError::InvalidResponse(format!(
                    "HTTP {status} without the success value at {p:?}"
                ))),
            };
        }
        if auth.refused.contains(&status) {
            let credentials = auth
                .unless
                .as_deref()
                .is_some_and(|p| body.and_then(|b| b.pointer(p)).is_some());
            let reason = match &auth.reason {
                None => Some(AUTH_FAILED.to_owned()),
                Some(p) => body
                    .and_then(|b| b.pointer(p))
                    .and_then(Value::as_str)
                    .map(|message| reason_for(message, password, &auth.trusted_reasons)),
            };
            if let (false, Some(reason)) = (credentials, reason) {
                tracing::debug!(
                    endpoint = "auth",
                    key = login,
                    status,
                    reason = reason.as_str(),
                    "the directory refused the login"
                );
                return Ok(AuthOutcome::Failure { reason });
            }
        }
        if auth.unauthorized.contains(&status) {
            return Err(self.unauthorized(status, body, Some(password)));
        }
        Err(BackendError::InvalidResponse(format!("HTTP {status}")))
    }
}

/// The question, or the error for one the configuration does not describe: a
/// lookup nobody can answer is `TEMP`, never "not found".
fn configured(question: Option<&Compiled>) -> Result<&Compiled, BackendError> {
    question.ok_or_else(|| {
        BackendError::Other(
            "this question is not described in the http backend's configuration".into(),
        )
    })
}

/// The SMTP-client-facing reason for a refused login: the directory's message on
/// one short line, or `authentication failed` when it is empty or would repeat
/// the password (the reason ends up in Postfix's log). Trusted reasons pass
/// unchanged.
fn reason_for(message: &str, password: &str, trusted: &[String]) -> String {
    if trusted.iter().any(|t| t == message) {
        return message.to_owned();
    }
    if contains_secret(message, password) {
        return AUTH_FAILED.to_owned();
    }
    one_short_line(message).unwrap_or_else(|| AUTH_FAILED.to_owned())
}

#[async_trait]
impl LookupBackend for HttpBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(self.inner.alias.as_ref(), address.as_str()).await
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.flag(self.inner.domain.as_ref(), domain).await
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.flag(self.inner.mailbox.as_ref(), address.as_str())
            .await
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(self.inner.senders.as_ref(), address.as_str())
            .await
    }

    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        // No quota question: no limits, as backends without quotas answer.
        let Some(question) = self.inner.quota.as_ref() else {
            return Ok(None);
        };
        let Some(body) = self.ask(question, login.as_str()).await? else {
            return Ok(None);
        };
        let field = |p: &str| -> Result<u32, BackendError> {
            Self::at(&body, p)?
                .as_u64()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .ok_or_else(|| {
                    BackendError::InvalidResponse(format!("quota answer without a number at {p:?}"))
                })
        };
        Ok(Some(SmtpQuota {
            per_hour: field(&question.per_hour)?,
            per_day: field(&question.per_day)?,
        }))
    }

    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        let Some(auth) = self.inner.auth.as_ref() else {
            return Err(BackendError::Other(
                "password checks are not described in the http backend's configuration".into(),
            ));
        };
        // JSON cannot carry arbitrary bytes, and a directory never verifies an empty
        // or absurdly long password: refused without a request, as every backend does.
        let refuse = || {
            Ok(AuthOutcome::Failure {
                reason: AUTH_FAILED.to_owned(),
            })
        };
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return refuse();
        }
        let Ok(password) = std::str::from_utf8(password) else {
            return refuse();
        };
        if auth
            .key_pattern
            .as_ref()
            .is_some_and(|p| !p.is_match(login.as_str()))
        {
            return refuse();
        }
        self.post_auth(auth, login.as_str(), password).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        match self.inner.domain.as_ref() {
            Some(domain) => self
                .ask_unscreened(domain, &self.inner.health_key)
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    fn name(&self) -> &str {
        "http"
    }
}
