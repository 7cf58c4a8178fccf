//! Configuration: built-in defaults < TOML file < environment, layered with figment.
//!
//! Upstream's variable names, defaults and value syntax keep working. Every value is
//! validated before anything starts; an error names the setting, where the value
//! came from and what is wrong, in one line.

mod duration;
mod listen;
pub mod settings;

pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use listen::{ListenAddr, ListenAddrError};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use url::Url;

use crate::access::AllowedClients;

use settings::SETTINGS;

/// The longest lookup deadline we accept: Postfix gives up after 100 s, and a
/// deadline near that makes every smtpd process wait that long on a dead backend.
pub const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A configuration error; its `Display` is the one line printed before exiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn setting(name: &str, origin: &str, what: impl fmt::Display) -> Self {
        Self(format!("{name} ({origin}): {what}"))
    }
}

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent, never where it is logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which backend answers lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The userli HTTP API.
    Userli,
    /// A fixture file.
    Fixture,
}

impl BackendKind {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Userli => "userli",
            Self::Fixture => "fixture",
        }
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything, including per-request detail.
    Trace,
    /// Diagnostics, including addresses.
    Debug,
    /// Normal operation.
    Info,
    /// Problems that the adapter works around.
    Warn,
    /// Problems that need an operator.
    Error,
}

impl LogLevel {
    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "trace" => Some(Self::Trace),
            "debug" => Some(Self::Debug),
            "info" => Some(Self::Info),
            "warn" | "warning" => Some(Self::Warn),
            "error" | "dpanic" | "panic" | "fatal" => Some(Self::Error),
            _ => None,
        }
    }

    /// The `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            Self::Trace => tracing::Level::TRACE,
            Self::Debug => tracing::Level::DEBUG,
            Self::Info => tracing::Level::INFO,
            Self::Warn => tracing::Level::WARN,
            Self::Error => tracing::Level::ERROR,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LOOKUP_BACKEND`.
    pub backend: BackendKind,
    /// `USERLI_BASE_URL`.
    pub userli_base_url: Url,
    /// `USERLI_TOKEN` or the content of `USERLI_TOKEN_FILE`.
    pub userli_token: Option<Secret>,
    /// `FIXTURE_PATH`.
    pub fixture_path: Option<PathBuf>,
    /// `SOCKETMAP_LISTEN_ADDR`.
    pub socketmap_listen: ListenAddr,
    /// `METRICS_LISTEN_ADDR`.
    pub metrics_listen: ListenAddr,
    /// `POSTFIX_RECIPIENT_DELIMITER`.
    pub recipient_delimiter: String,
    /// `LOG_LEVEL`.
    pub log_level: LogLevel,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `LOOKUP_TIMEOUT`.
    pub lookup_timeout: Duration,
    /// `SOCKETMAP_MAX_REQUEST_SIZE`.
    pub max_request_size: usize,
    /// `MAX_CONNECTIONS` (earlier `SOCKETMAP_MAX_CONNECTIONS`): per service.
    pub max_connections: usize,
    /// `SOCKETMAP_IDLE_TIMEOUT`; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `IO_TIMEOUT` (earlier `SOCKETMAP_IO_TIMEOUT`): every listener.
    pub io_timeout: Duration,
    /// `UNIX_SOCKET_MODE`.
    pub unix_socket_mode: u32,
    /// `SHUTDOWN_GRACE_PERIOD`.
    pub shutdown_grace: Duration,
    /// `LOOKUP_CACHE_TTL`; zero disables the cache.
    pub cache_ttl: Duration,
    /// `LOOKUP_NEGATIVE_CACHE_TTL`.
    pub negative_cache_ttl: Duration,
    /// `LOOKUP_CACHE_STALE_TTL`.
    pub cache_stale_ttl: Duration,
    /// `LOOKUP_CACHE_SIZE`.
    pub cache_size: u64,
    /// `BACKEND_MAX_CONCURRENT_REQUESTS`.
    pub backend_max_concurrency: usize,
    /// `CIRCUIT_BREAKER_FAILURES`; zero disables the breaker.
    pub breaker_failures: u32,
    /// `CIRCUIT_BREAKER_COOLDOWN`.
    pub breaker_cooldown: Duration,
    /// `POLICY_LISTEN_ADDR`; `None` when `off`.
    pub policy_listen: Option<ListenAddr>,
    /// `RATE_LIMIT_MESSAGE`.
    pub rate_limit_message: String,
    /// `REDIS_URL`.
    pub redis_url: Option<Secret>,
    /// `STATE_DIRECTORY`.
    pub state_directory: PathBuf,
    /// `POLICY_SENDER_FALLBACK`.
    pub policy_sender_fallback: bool,
    /// `POLICY_COUNT` is `recipients`.
    pub policy_count_recipients: bool,
    /// `POLICY_OVER_QUOTA_ACTION` is `defer`.
    pub policy_defer_over_quota: bool,
    /// `POLICY_FAIL_MODE` is `closed`.
    pub policy_fail_closed: bool,
    /// `POLICY_IDLE_TIMEOUT`; `None` = never.
    pub policy_idle_timeout: Option<Duration>,
    /// `SASL_LISTEN_ADDR`; `None` when empty.
    pub sasl_listen: Option<ListenAddr>,
    /// `SASL_FAILURE_DELAY`.
    pub sasl_failure_delay: Duration,
    /// `SASL_MAX_FAILURE_DELAY`.
    pub sasl_max_failure_delay: Duration,
    /// `SASL_LOCKOUT_FAILURES`; 0 = off.
    pub sasl_lockout_failures: u32,
    /// `SASL_FAILURE_WINDOW`.
    pub sasl_failure_window: Duration,
    /// `SASL_MAX_CONCURRENT_CHECKS`.
    pub sasl_max_checks: usize,
    /// `SASL_MAX_CHECKS_PER_CLIENT`.
    pub sasl_max_checks_per_client: usize,
    /// `ALLOWED_CLIENTS`.
    pub allowed_clients: AllowedClients,
    /// The effective value and origin of every setting, secrets redacted, for
    /// `check-config`.
    pub effective: Vec<(&'static str, String, String)>,
}

/// Where configuration comes from; tests pass their own environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file (`--config`); `CONFIG_FILE` in `env` is used when this is `None`.
    pub file: Option<PathBuf>,
    /// Environment variables.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The process environment and an optional `--config` path.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
        }
    }
}

/// Provides the known variables of an environment as raw strings.
///
/// figment's own `Env` provider would parse `USERLI_TOKEN=12345` as a number; tokens
/// and delimiters must stay exactly as written, so every value stays a string.
struct EnvProvider {
    vars: BTreeMap<String, String>,
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .vars
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), Value::from(v.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// A merged value and the name of the layer it came from.
struct Raw {
    values: BTreeMap<String, (String, String)>,
    /// The name a setting was given under, where that was an earlier name (an
    /// alias): errors name what the operator wrote.
    given_as: BTreeMap<String, String>,
}

impl Raw {
    fn get(&self, env: &str) -> Option<(&str, &str)> {
        self.values
            .get(&env.to_ascii_lowercase())
            .map(|(v, o)| (v.as_str(), o.as_str()))
    }

    /// The name to use for `env` in messages: the alias it was set under, if any.
    fn name<'a>(&'a self, env: &'a str) -> &'a str {
        self.given_as
            .get(&env.to_ascii_lowercase())
            .map_or(env, String::as_str)
    }

    fn required(&self, env: &str) -> (&str, &str) {
        // Settings with defaults are always present; the table guarantees it.
        self.get(env).unwrap_or(("", "default"))
    }
}

/// Loads and validates the configuration.
///
/// # Errors
/// [`ConfigError`] with one line naming the setting and the problem.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let defaults: BTreeMap<String, String> = SETTINGS
        .iter()
        .filter_map(|s| s.default.map(|d| (s.file_key(), d.to_owned())))
        .collect();
    let mut figment = Figment::new().merge(Serialized::defaults(defaults));

    let file = sources.file.clone().or_else(|| {
        sources
            .env
            .get("CONFIG_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = &file {
        std::fs::metadata(path).map_err(|e| {
            ConfigError(format!(
                "config file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }

    // Upstream treats an empty variable like an unset one; so do we. A renamed
    // setting is taken under its earlier names too, but only one name at a time.
    let mut env_vars = BTreeMap::new();
    let mut given_as = BTreeMap::new();
    for s in SETTINGS.iter().filter(|s| s.env != "CONFIG_FILE") {
        let set: Vec<(&str, &String)> = std::iter::once(s.env)
            .chain(s.aliases.iter().copied())
            .filter_map(|name| {
                sources
                    .env
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
            .collect();
        if let [(first, _), (second, _), ..] = set.as_slice() {
            return Err(ConfigError(format!(
                "{first} and {second} are the same setting (environment); set only one"
            )));
        }
        if let Some((name, value)) = set.first() {
            env_vars.insert(s.env.to_owned(), (*value).clone());
            if *name != s.env {
                given_as.insert(s.file_key(), (*name).to_owned());
            }
        }
    }
    figment = figment.merge(EnvProvider { vars: env_vars });

    let merged: BTreeMap<String, Value> = figment
        .extract()
        .map_err(|e| ConfigError(format!("configuration: {}", first_line(&e.to_string()))))?;

    let mut values: BTreeMap<String, (String, String)> = BTreeMap::new();
    // Earlier names used in the file: applied below, once the canonical keys are in.
    let mut file_aliases = Vec::new();
    for (key, value) in merged {
        let setting = settings::find(&key.to_ascii_uppercase())
            .filter(|s| s.env != "CONFIG_FILE")
            .ok_or_else(|| {
                ConfigError(format!(
                    "config file {}: unknown key {key:?}",
                    file.as_deref()
                        .map_or("?".into(), |p| p.display().to_string())
                ))
            })?;
        let origin = figment
            .find_metadata(&key)
            .map_or_else(|| "default".to_owned(), |m| origin_name(m, file.as_deref()));
        let text = scalar(&value).ok_or_else(|| {
            ConfigError::setting(
                setting.env,
                &origin,
                "must be a single value, not a table or list",
            )
        })?;
        if key == setting.file_key() {
            values.insert(key, (text, origin));
        } else {
            file_aliases.push((setting, key, text, origin));
        }
    }
    for (setting, alias, text, origin) in file_aliases {
        let canonical = setting.file_key();
        match values.get(&canonical).map(|(_, o)| o.as_str()) {
            // The environment wins over the file, whatever name either used.
            Some("environment") => {}
            Some("default") | None => {
                given_as.insert(canonical.clone(), alias.to_ascii_uppercase());
                values.insert(canonical, (text, origin));
            }
            Some(_) => {
                return Err(ConfigError(format!(
                    "config file {origin}: {alias:?} and {canonical:?} are the same setting; set only one"
                )));
            }
        }
    }
    validate(&Raw { values, given_as })
}

fn origin_name(meta: &Metadata, file: Option<&Path>) -> String {
    match meta.name.as_ref() {
        "environment" => "environment".into(),
        n if n.contains("TOML") => {
            file.map_or_else(|| "config file".into(), |p| p.display().to_string())
        }
        _ => "default".into(),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, n) => Some(match *n {
            figment::value::Num::U8(v) => v.to_string(),
            figment::value::Num::U16(v) => v.to_string(),
            figment::value::Num::U32(v) => v.to_string(),
            figment::value::Num::U64(v) => v.to_string(),
            figment::value::Num::U128(v) => v.to_string(),
            figment::value::Num::USize(v) => v.to_string(),
            figment::value::Num::I8(v) => v.to_string(),
            figment::value::Num::I16(v) => v.to_string(),
            figment::value::Num::I32(v) => v.to_string(),
            figment::value::Num::I64(v) => v.to_string(),
            figment::value::Num::I128(v) => v.to_string(),
            figment::value::Num::ISize(v) => v.to_string(),
            figment::value::Num::F32(v) => v.to_string(),
            figment::value::Num::F64(v) => v.to_string(),
        }),
        Value::Empty(_, _) | Value::Dict(_, _) | Value::Array(_, _) => None,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn validate(raw: &Raw) -> Result<Config, ConfigError> {
    let mut effective = Vec::new();
    for setting in SETTINGS {
        if let Some((value, origin)) = raw.get(setting.env) {
            let shown = if setting.secret {
                "<redacted>".to_owned()
            } else {
                value.to_owned()
            };
            let origin = match raw.given_as.get(&setting.file_key()) {
                Some(name) => format!("{origin} (as {name})"),
                None => origin.to_owned(),
            };
            effective.push((setting.env, shown, origin));
        }
    }

    let (v, o) = raw.required("LOOKUP_BACKEND");
    let backend = match v.to_ascii_lowercase().as_str() {
        "userli" => BackendKind::Userli,
        "fixture" => BackendKind::Fixture,
        _ => {
            return Err(ConfigError::setting(
                "LOOKUP_BACKEND",
                o,
                format!("unknown backend {v:?} (use userli or fixture)"),
            ));
        }
    };

    let (v, o) = raw.required("USERLI_BASE_URL");
    let userli_base_url = Url::parse(v.trim()).map_err(|e| {
        ConfigError::setting("USERLI_BASE_URL", o, format!("invalid URL {v:?}: {e}"))
    })?;
    if !matches!(userli_base_url.scheme(), "http" | "https") || userli_base_url.cannot_be_a_base() {
        return Err(ConfigError::setting(
            "USERLI_BASE_URL",
            o,
            format!("{v:?} is not an http:// or https:// URL"),
        ));
    }
    if userli_base_url.query().is_some() || userli_base_url.fragment().is_some() {
        return Err(ConfigError::setting(
            "USERLI_BASE_URL",
            o,
            "must not carry a query or fragment",
        ));
    }

    let userli_token = match (raw.get("USERLI_TOKEN"), raw.get("USERLI_TOKEN_FILE")) {
        (Some(_), Some((_, o))) => {
            return Err(ConfigError::setting(
                "USERLI_TOKEN_FILE",
                o,
                "USERLI_TOKEN is set too; set only one of them",
            ));
        }
        (Some((token, _)), None) => Some(Secret::new(token)),
        (None, Some((path, o))) => {
            let content = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::setting("USERLI_TOKEN_FILE", o, format!("cannot read {path:?}: {e}"))
            })?;
            let token = content.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                return Err(ConfigError::setting(
                    "USERLI_TOKEN_FILE",
                    o,
                    format!("{path:?} is empty"),
                ));
            }
            Some(Secret::new(token))
        }
        (None, None) => None,
    };
    if let Some(token) = &userli_token
        && token.expose().chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ConfigError(
            "USERLI_TOKEN: contains white space or control characters (a stray newline?)".into(),
        ));
    }
    if backend == BackendKind::Userli && userli_token.is_none() {
        return Err(ConfigError(
            "USERLI_TOKEN is required (or USERLI_TOKEN_FILE) when LOOKUP_BACKEND is userli".into(),
        ));
    }

    let fixture_path = raw.get("FIXTURE_PATH").map(|(v, _)| PathBuf::from(v));
    if backend == BackendKind::Fixture && fixture_path.is_none() {
        return Err(ConfigError(
            "FIXTURE_PATH is required when LOOKUP_BACKEND is fixture".into(),
        ));
    }

    let listen = |env: &str| -> Result<ListenAddr, ConfigError> {
        let (v, o) = raw.required(env);
        ListenAddr::parse(v).map_err(|e| ConfigError::setting(env, o, e))
    };
    let socketmap_listen = listen("SOCKETMAP_LISTEN_ADDR")?;
    let policy_listen = match raw.required("POLICY_LISTEN_ADDR").0.trim() {
        "off" | "none" => None,
        _ => Some(listen("POLICY_LISTEN_ADDR")?),
    };
    let metrics_listen = listen("METRICS_LISTEN_ADDR")?;
    let ephemeral = matches!(
        &socketmap_listen,
        ListenAddr::AnyHost(0) | ListenAddr::Host(_, 0)
    ) || matches!(&socketmap_listen, ListenAddr::Socket(a) if a.port() == 0);
    if socketmap_listen == metrics_listen && !ephemeral {
        return Err(ConfigError(format!(
            "SOCKETMAP_LISTEN_ADDR and METRICS_LISTEN_ADDR are both {socketmap_listen}"
        )));
    }

    let (v, o) = raw.required("LOG_LEVEL");
    let log_level = LogLevel::parse(v).ok_or_else(|| {
        ConfigError::setting(
            "LOG_LEVEL",
            o,
            format!("unknown level {v:?} (use debug, info, warn or error)"),
        )
    })?;
    let (v, o) = raw.required("LOG_FORMAT");
    let log_format = match v.to_ascii_lowercase().as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        _ => {
            return Err(ConfigError::setting(
                "LOG_FORMAT",
                o,
                format!("unknown format {v:?} (use json or text)"),
            ));
        }
    };

    let duration = |env: &str| -> Result<Duration, ConfigError> {
        let (v, o) = raw.required(env);
        parse_go_duration(v).map_err(|e| ConfigError::setting(raw.name(env), o, e))
    };
    let lookup_timeout = duration("LOOKUP_TIMEOUT")?;
    if lookup_timeout.is_zero() || lookup_timeout > MAX_LOOKUP_TIMEOUT {
        return Err(ConfigError::setting(
            "LOOKUP_TIMEOUT",
            raw.required("LOOKUP_TIMEOUT").1,
            "must be more than 0 and at most 60s (Postfix gives up after 100s)",
        ));
    }
    let idle_timeout = Some(duration("SOCKETMAP_IDLE_TIMEOUT")?).filter(|d| !d.is_zero());
    let io_timeout = duration("IO_TIMEOUT")?;
    if io_timeout.is_zero() {
        return Err(ConfigError::setting(
            raw.name("IO_TIMEOUT"),
            raw.required("IO_TIMEOUT").1,
            "must be more than 0",
        ));
    }
    let shutdown_grace = duration("SHUTDOWN_GRACE_PERIOD")?;

    let number = |env: &str, min: usize, max: usize| -> Result<usize, ConfigError> {
        let (v, o) = raw.required(env);
        let n: usize = v.trim().parse().map_err(|_| {
            ConfigError::setting(raw.name(env), o, format!("{v:?} is not a whole number"))
        })?;
        if n < min || n > max {
            return Err(ConfigError::setting(
                raw.name(env),
                o,
                format!("{n} is out of range ({min}..={max})"),
            ));
        }
        Ok(n)
    };
    let max_request_size = number("SOCKETMAP_MAX_REQUEST_SIZE", 64, 1 << 20)?;
    let cache_ttl = duration("LOOKUP_CACHE_TTL")?;
    let negative_cache_ttl = duration("LOOKUP_NEGATIVE_CACHE_TTL")?;
    let cache_stale_ttl = duration("LOOKUP_CACHE_STALE_TTL")?;
    let cache_size = number("LOOKUP_CACHE_SIZE", 0, 100_000_000)? as u64;
    let backend_max_concurrency = number("BACKEND_MAX_CONCURRENT_REQUESTS", 1, 100_000)?;
    let breaker_failures = number("CIRCUIT_BREAKER_FAILURES", 0, 1_000_000)? as u32;
    let breaker_cooldown = duration("CIRCUIT_BREAKER_COOLDOWN")?;
    if breaker_cooldown.is_zero() {
        return Err(ConfigError::setting(
            "CIRCUIT_BREAKER_COOLDOWN",
            raw.required("CIRCUIT_BREAKER_COOLDOWN").1,
            "must be more than 0",
        ));
    }
    let max_connections = number("MAX_CONNECTIONS", 1, 1_000_000)?;

    let (v, o) = raw.required("UNIX_SOCKET_MODE");
    let unix_socket_mode = u32::from_str_radix(v.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            ConfigError::setting(
                "UNIX_SOCKET_MODE",
                o,
                format!("{v:?} is not an octal file mode such as 0660"),
            )
        })?;

    let choice = |env: &str, options: [&str; 2]| -> Result<bool, ConfigError> {
        let (v, o) = raw.required(env);
        match v.trim().to_ascii_lowercase() {
            x if x == options[0] => Ok(false),
            x if x == options[1] => Ok(true),
            _ => Err(ConfigError::setting(
                env,
                o,
                format!("{v:?} is neither {} nor {}", options[0], options[1]),
            )),
        }
    };
    let policy_sender_fallback = choice("POLICY_SENDER_FALLBACK", ["false", "true"])?;
    let policy_count_recipients = choice("POLICY_COUNT", ["messages", "recipients"])?;
    let policy_defer_over_quota = choice("POLICY_OVER_QUOTA_ACTION", ["reject", "defer"])?;
    let policy_fail_closed = choice("POLICY_FAIL_MODE", ["open", "closed"])?;
    let policy_idle_timeout = Some(duration("POLICY_IDLE_TIMEOUT")?).filter(|d| !d.is_zero());
    let (rate_limit_message, o) = raw.required("RATE_LIMIT_MESSAGE");
    if rate_limit_message
        .chars()
        .any(|c| matches!(c, '\r' | '\n' | '\0'))
    {
        return Err(ConfigError::setting(
            "RATE_LIMIT_MESSAGE",
            o,
            "must be one line (a line break would end Postfix's policy reply)",
        ));
    }
    let redis_url = raw.get("REDIS_URL").map(|(v, _)| Secret::new(v.trim()));
    if let Some(url) = &redis_url
        && !(url.expose().starts_with("redis://")
            || url.expose().starts_with("rediss://")
            || url.expose().starts_with("unix://")
            || url.expose().starts_with("redis+unix://"))
    {
        return Err(ConfigError::setting(
            "REDIS_URL",
            raw.required("REDIS_URL").1,
            "must start with redis://, rediss://, unix:// or redis+unix://",
        ));
    }
    let state_directory = PathBuf::from(raw.required("STATE_DIRECTORY").0);
    let sasl_listen = match raw.get("SASL_LISTEN_ADDR") {
        Some((v, _)) if !v.trim().is_empty() => Some(listen("SASL_LISTEN_ADDR")?),
        _ => None,
    };
    let sasl_failure_delay = duration("SASL_FAILURE_DELAY")?;
    let sasl_max_failure_delay = duration("SASL_MAX_FAILURE_DELAY")?;
    if sasl_max_failure_delay > Duration::from_secs(8) {
        return Err(ConfigError::setting(
            "SASL_MAX_FAILURE_DELAY",
            raw.required("SASL_MAX_FAILURE_DELAY").1,
            "must be at most 8s (Postfix gives up on the auth server after 10s)",
        ));
    }
    let sasl_lockout_failures = number("SASL_LOCKOUT_FAILURES", 0, 1_000_000)? as u32;
    let sasl_failure_window = duration("SASL_FAILURE_WINDOW")?;
    if sasl_failure_window.is_zero() {
        return Err(ConfigError::setting(
            "SASL_FAILURE_WINDOW",
            raw.required("SASL_FAILURE_WINDOW").1,
            "must be more than 0",
        ));
    }

    let sasl_max_checks = number("SASL_MAX_CONCURRENT_CHECKS", 1, 100_000)?;
    let sasl_max_checks_per_client = number("SASL_MAX_CHECKS_PER_CLIENT", 1, 100_000)?;

    let (v, o) = raw.required("ALLOWED_CLIENTS");
    let allowed_clients =
        AllowedClients::parse(v).map_err(|e| ConfigError::setting("ALLOWED_CLIENTS", o, e))?;

    let (recipient_delimiter, _) = raw.required("POSTFIX_RECIPIENT_DELIMITER");
    if recipient_delimiter.contains('@') {
        return Err(ConfigError(
            "POSTFIX_RECIPIENT_DELIMITER: must not contain @".into(),
        ));
    }

    Ok(Config {
        backend,
        userli_base_url,
        userli_token,
        fixture_path,
        socketmap_listen,
        metrics_listen,
        recipient_delimiter: recipient_delimiter.to_owned(),
        log_level,
        log_format,
        lookup_timeout,
        max_request_size,
        max_connections,
        idle_timeout,
        io_timeout,
        unix_socket_mode,
        shutdown_grace,
        cache_ttl,
        negative_cache_ttl,
        cache_stale_ttl,
        cache_size,
        backend_max_concurrency,
        breaker_failures,
        breaker_cooldown,
        policy_listen,
        rate_limit_message: rate_limit_message.to_owned(),
        redis_url,
        state_directory,
        policy_sender_fallback,
        policy_count_recipients,
        policy_defer_over_quota,
        policy_fail_closed,
        policy_idle_timeout,
        sasl_listen,
        sasl_failure_delay,
        sasl_max_failure_delay,
        sasl_lockout_failures,
        sasl_failure_window,
        sasl_max_checks,
        sasl_max_checks_per_client,
        allowed_clients,
        effective,
    })
}

impl Config {
    /// How long a backend call may run in the background after callers gave up
    /// (`LOOKUP_TIMEOUT` passed), so a slow but alive backend still fills the cache
    /// for the next lookup.
    pub fn backend_call_timeout(&self) -> Duration {
        self.lookup_timeout * 2
    }

    /// A configuration with all defaults, answering from the fixture file at `path`;
    /// convenient for tests and embedding. Unlike the binary's defaults, the policy
    /// server is off (set `policy_listen` to enable it).
    pub fn for_fixture(path: impl Into<PathBuf>) -> Self {
        let sources = Sources {
            file: None,
            env: HashMap::from([
                ("LOOKUP_BACKEND".to_owned(), "fixture".to_owned()),
                ("FIXTURE_PATH".to_owned(), path.into().display().to_string()),
            ]),
        };
        let mut config =
            load(&sources).unwrap_or_else(|e| unreachable!("built-in defaults are valid: {e}"));
        config.policy_listen = None;
        config
    }

    /// Renders the effective configuration, one `NAME=value  # origin` per line.
    pub fn render_effective(&self) -> String {
        let mut out = String::new();
        for (name, value, origin) in &self.effective {
            out.push_str(&format!("{name}={value}  # {origin}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests;
