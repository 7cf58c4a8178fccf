//! Configuration: built-in defaults < TOML file < environment, layered with figment.
//!
//! Upstream's variable names, defaults and value syntax keep working. Every value is
//! validated before anything starts; an error names the setting, where the value
//! came from and what is wrong, in one line.

mod duration;
mod listen;
mod raw;
pub mod section;
pub mod settings;

pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use listen::{ListenAddr, ListenAddrError};
pub use section::{
    BackendSection, ListenerSection, LoggingSection, LookupSection, PolicySection, SaslSection,
};

use raw::Raw;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

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
    /// Any HTTP/JSON API, described in the configuration file's `[http]` table.
    Http,
    /// A SQL database (`SQL_URL`).
    Sql,
    /// A backend the embedder passes to [`crate::Server::bind`] itself
    /// ([`Config::embedded`]); not selectable by `LOOKUP_BACKEND`.
    Custom,
}

impl BackendKind {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Userli => "userli",
            Self::Fixture => "fixture",
            Self::Http => "http",
            Self::Sql => "sql",
            Self::Custom => "custom",
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

/// The validated configuration, in one section per component.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where answers come from.
    pub backend: BackendSection,
    /// Listeners and their limits.
    pub listeners: ListenerSection,
    /// Lookups: deadline, address extensions, cache and resilience.
    pub lookups: LookupSection,
    /// The policy (sending quota) server.
    pub policy: PolicySection,
    /// The SASL server.
    pub sasl: SaslSection,
    /// Log verbosity and format.
    pub logging: LoggingSection,
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

    let mut merged: BTreeMap<String, Value> = figment
        .extract()
        .map_err(|e| ConfigError(format!("configuration: {}", first_line(&e.to_string()))))?;
    // The generic HTTP backend's description is a table of its own, not a setting.
    let http_table = merged.remove("http");

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
    let mut config = validate(&Raw { values, given_as })?;
    #[cfg(feature = "backend-sql")]
    if config.backend.kind == BackendKind::Sql {
        config
            .backend
            .sql_config(config.lookups.timeout)
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
    }
    config.backend.http = section::http_description(
        config.backend.kind,
        http_table,
        file.as_deref(),
        &sources.env,
    )?;
    Ok(config)
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
    Ok(Config {
        backend: BackendSection::load(raw)?,
        listeners: ListenerSection::load(raw)?,
        logging: LoggingSection::load(raw)?,
        lookups: LookupSection::load(raw)?,
        policy: PolicySection::load(raw)?,
        sasl: SaslSection::load(raw)?,
        effective,
    })
}

impl Config {
    /// A configuration with all defaults, answering from the fixture file at `path`;
    /// convenient for tests and embedding. Unlike the binary's defaults, the policy
    /// server is off (set `listeners.policy` to enable it) and the lookup cache is
    /// not kept on disk (set `lookups.cache_persist`).
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
        config.listeners.policy = None;
        // Nothing is written to the state directory unless asked for.
        config.lookups.cache_persist = false;
        config
    }

    /// A configuration with all defaults for embedding the engine with a backend of
    /// your own (pass it to [`crate::Server::bind`]): no backend settings are
    /// needed, and the policy server is off (set `listeners.policy` to enable it).
    pub fn embedded() -> Self {
        // The built-in defaults, with the fixture backend's one requirement met and
        // then dropped: nothing is read.
        let mut config = Self::for_fixture("(embedded)");
        config.backend.kind = BackendKind::Custom;
        config.backend.fixture_path = None;
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
