//! What the configuration file says about the directory's API: the `[http]`
//! table, one sub-table per question.
//!
//! ```toml
//! [http]
//! headers = { Authorization = "Bearer ${USERLI_TOKEN}" }
//!
//! [http.mailbox]
//! url = "${USERLI_BASE_URL}/api/postfix/mailbox/{key}"
//! answer = { kind = "bool" }
//! ```
//!
//! `${NAME}` is the environment variable `NAME`, or the contents of the file the
//! variable `NAME_FILE` names (for secrets); it is resolved once, at start. `{key}`
//! is the looked-up key (or the login), percent-encoded in URLs and a JSON string
//! in bodies, where `{password}` is the password as a JSON string.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `[http]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Headers sent with every request (each question may add its own).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The `User-Agent` header.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// `domain`: is this domain hosted (`virtual_mailbox_domains`)?
    pub domain: Option<Question>,
    /// `mailbox`: is this a mailbox (`virtual_mailbox_maps`)?
    pub mailbox: Option<Question>,
    /// `alias`: where does this address forward to (`virtual_alias_maps`)?
    pub alias: Option<Question>,
    /// `senders`: which logins may send as this address (`smtpd_sender_login_maps`)?
    pub senders: Option<Question>,
    /// `quota`: the sending limits of a login (policy server).
    pub quota: Option<Question>,
    /// `auth`: is this the login's password (SASL server)?
    pub auth: Option<AuthQuestion>,
    /// The key the health check asks the `domain` question for: any answer, found
    /// or not, is healthy.
    #[serde(default = "default_health_key")]
    pub health_key: String,
}

fn default_user_agent() -> String {
    "userli-postfix-adapter".to_owned()
}

fn default_health_key() -> String {
    "health-check.invalid".to_owned()
}

/// The HTTP method of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
}

/// One lookup question.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// `GET` (the default) or `POST`.
    #[serde(default = "get")]
    pub method: Method,
    /// The URL, with `{key}` where the percent-encoded key goes.
    pub url: String,
    /// Headers of this question, on top of the table's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A request body (JSON, with `{key}` as a JSON string), for `POST`.
    pub body: Option<String>,
    /// Statuses whose body holds the answer (default `[200]`).
    #[serde(default = "ok_statuses")]
    pub found: Vec<u16>,
    /// Answers meaning "not found": a status, and optionally the exact JSON body
    /// it must come with (so that a misrouted URL's 404 is an error, not a miss).
    #[serde(default)]
    pub not_found: Vec<NotFound>,
    /// Statuses meaning the adapter's own credentials were refused (default
    /// `[401, 403]`): an error, logged for the operator at most once a minute.
    #[serde(default = "credential_statuses")]
    pub unauthorized: Vec<u16>,
    /// Where the answer is in a found body, and what shape it has.
    #[serde(default)]
    pub answer: Answer,
    /// A regular expression the whole key must match to be asked at all; any
    /// other key is "not found" without a request (keys the directory can never
    /// hold, e.g. with characters its API cannot route).
    pub key_pattern: Option<String>,
}

/// A "not found" answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotFound {
    /// The status.
    pub status: u16,
    /// The exact JSON body (as JSON text), if it matters.
    pub body: Option<String>,
}

/// Where the answer is, and its shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// A JSON pointer (RFC 6901) into the body; empty: the whole body.
    #[serde(default)]
    pub pointer: String,
    /// The shape; each question has its natural default.
    pub kind: Option<Kind>,
    /// For `list`: a string answer is split at this separator (e.g. `","`);
    /// without one, a string answer is a single element.
    pub separator: Option<String>,
    /// For `quota`: the pointer to the messages allowed per hour.
    pub per_hour: Option<String>,
    /// For `quota`: the pointer to the messages allowed per day.
    pub per_day: Option<String>,
}

/// The shape of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A JSON boolean (`null` is `false`): `domain`, `mailbox`.
    Bool,
    /// The status alone: a found status is `true`, a not-found answer `false`.
    Found,
    /// A list of strings, or one string (split at `separator`); `null` is empty:
    /// `alias`, `senders`.
    List,
    /// An object with `per_hour` and `per_day` numbers: `quota`.
    Quota,
}

/// The password check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthQuestion {
    /// `POST` (the default) or `GET`.
    #[serde(default = "post")]
    pub method: Method,
    /// The URL; `{key}` is the login, percent-encoded.
    pub url: String,
    /// Headers of this question, on top of the table's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, JSON with `{key}` (the login) and `{password}` as JSON
    /// strings.
    pub body: Option<String>,
    /// What a success looks like.
    #[serde(default)]
    pub success: Success,
    /// What a refused login looks like.
    #[serde(default)]
    pub refused: Refused,
    /// Statuses meaning the adapter's own credentials were refused, when the body
    /// is not a refused login (default `[401, 403]`).
    #[serde(default = "credential_statuses")]
    pub unauthorized: Vec<u16>,
    /// Refusal reasons the directory is trusted to give: passed on unchanged
    /// (others are checked for an echo of the password first).
    #[serde(default)]
    pub trusted_reasons: Vec<String>,
    /// As for lookups: a login that does not match fails without a request.
    pub key_pattern: Option<String>,
}

/// A successful password check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Success {
    /// Statuses of a success (default `[200]`).
    #[serde(default = "ok_statuses")]
    pub status: Vec<u16>,
    /// Where the body must hold [`Self::equals`]; none: the status alone. A success
    /// status without it is an error, so that a proxy's 200 cannot accept every
    /// password.
    pub pointer: Option<String>,
    /// The value required at [`Self::pointer`].
    pub equals: Option<serde_json::Value>,
}

impl Default for Success {
    fn default() -> Self {
        Self {
            status: ok_statuses(),
            pointer: None,
            equals: None,
        }
    }
}

/// A refused login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    /// Statuses of a refusal (default `[401, 403]`).
    #[serde(default = "credential_statuses")]
    pub status: Vec<u16>,
    /// Where the refusal's reason is; when given, a refusal status whose body has
    /// no string there is not a refused login but the adapter's credentials
    /// refused (if the status is in `unauthorized`) or an error. Statuses shared
    /// with `unauthorized` need this or [`Self::unless`].
    pub reason: Option<String>,
    /// A pointer whose presence means the adapter's own credentials were refused
    /// (e.g. `/error`), whatever else the body says.
    pub unless: Option<String>,
}

impl Default for Refused {
    fn default() -> Self {
        Self {
            status: credential_statuses(),
            reason: None,
            unless: None,
        }
    }
}

fn get() -> Method {
    Method::Get
}

fn post() -> Method {
    Method::Post
}

fn ok_statuses() -> Vec<u16> {
    vec![200]
}

fn credential_statuses() -> Vec<u16> {
    vec![401, 403]
}
