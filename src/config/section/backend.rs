//! Where answers come from: `LOOKUP_BACKEND` and what each backend needs.

use std::path::PathBuf;

use url::Url;

use crate::config::raw::Raw;
use crate::config::{BackendKind, ConfigError, Secret};

/// The backend settings.
#[derive(Debug, Clone)]
pub struct BackendSection {
    /// `LOOKUP_BACKEND`.
    pub kind: BackendKind,
    /// `USERLI_BASE_URL`.
    pub userli_base_url: Url,
    /// `USERLI_TOKEN` or the content of `USERLI_TOKEN_FILE`.
    pub userli_token: Option<Secret>,
    /// `FIXTURE_PATH`.
    pub fixture_path: Option<PathBuf>,
    /// The `[http]` table of the configuration file, checked, for
    /// `LOOKUP_BACKEND=http`.
    pub http: Option<HttpDescription>,
    /// `SQL_URL` or the content of `SQL_URL_FILE`.
    pub sql_url: Option<Secret>,
    /// `SQL_PRESET`: `postfixadmin` or none.
    pub sql_preset_postfixadmin: bool,
    /// `SQL_QUERY_DOMAIN`, `_MAILBOX`, `_ALIAS`, `_SENDERS`, `_AUTH`, `_QUOTA`.
    pub sql_queries: [Option<String>; 6],
    /// `SQL_MAX_CONNECTIONS`.
    pub sql_max_connections: u32,
}

/// The generic HTTP backend's description and the environment its `${NAME}`
/// references are resolved in.
#[derive(Clone)]
pub struct HttpDescription {
    /// The `[http]` table.
    #[cfg(feature = "backend-http")]
    pub spec: postfix_adapter_backend_http::HttpSpec,
    /// The environment at start (it holds secrets: never shown).
    pub env: std::sync::Arc<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for HttpDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDescription").finish_non_exhaustive()
    }
}

impl HttpDescription {
    /// Looks a variable up in the environment at start.
    pub fn var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// Reads and checks the `[http]` table when `kind` is [`BackendKind::Http`]: a
/// broken URL template, pointer or variable is named now (`check-config`), not at
/// the first lookup.
pub(crate) fn http_description(
    kind: BackendKind,
    table: Option<figment::value::Value>,
    file: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
) -> Result<Option<HttpDescription>, ConfigError> {
    let where_ = || file.map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    if kind != BackendKind::Http {
        if table.is_some() {
            return Err(ConfigError(format!(
                "{}: [http] describes the http backend, but LOOKUP_BACKEND is {}",
                where_(),
                kind.as_str()
            )));
        }
        return Ok(None);
    }
    let Some(table) = table else {
        return Err(ConfigError(
            "LOOKUP_BACKEND=http needs an [http] table in the config file (CONFIG_FILE); see examples/http-backend/userli.toml"
                .to_owned(),
        ));
    };
    #[cfg(feature = "backend-http")]
    {
        let spec: postfix_adapter_backend_http::HttpSpec = table.deserialize().map_err(|e| {
            ConfigError(format!(
                "{}: [http]: {}",
                where_(),
                e.to_string().lines().next().unwrap_or("")
            ))
        })?;
        let description = HttpDescription {
            spec,
            env: std::sync::Arc::new(env.clone()),
        };
        let lookup = |name: &str| description.var(name);
        postfix_adapter_backend_http::HttpBackend::new(
            &description.spec,
            &lookup,
            &postfix_adapter_backend_http::ClientSettings::default(),
            None,
        )
        .map_err(|e| ConfigError(format!("{}: {e}", where_())))?;
        Ok(Some(description))
    }
    #[cfg(not(feature = "backend-http"))]
    {
        let _ = (table, env);
        Err(ConfigError(
            "LOOKUP_BACKEND=http is not compiled into this binary".into(),
        ))
    }
}

impl BackendSection {
    /// The SQL backend's configuration (`SQL_*`), with `timeout` as the statement
    /// deadline.
    #[cfg(feature = "backend-sql")]
    pub fn sql_config(
        &self,
        timeout: std::time::Duration,
    ) -> postfix_adapter_backend_sql::SqlConfig {
        use postfix_adapter_backend_sql::{Preset, Queries, SqlConfig};
        let [domain, mailbox, alias, senders, auth, quota] = self.sql_queries.clone();
        SqlConfig {
            url: self
                .sql_url
                .as_ref()
                .map(|u| u.expose().to_owned())
                .unwrap_or_default(),
            preset: if self.sql_preset_postfixadmin {
                Preset::PostfixAdmin
            } else {
                Preset::None
            },
            queries: Queries {
                domain,
                mailbox,
                alias,
                senders,
                auth,
                quota,
            },
            max_connections: self.sql_max_connections,
            timeout,
        }
    }

    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let (v, o) = raw.required("LOOKUP_BACKEND");
        let kind = match v.to_ascii_lowercase().as_str() {
            "userli" => BackendKind::Userli,
            "fixture" => BackendKind::Fixture,
            "http" => BackendKind::Http,
            "sql" => BackendKind::Sql,
            _ => {
                return Err(ConfigError::setting(
                    "LOOKUP_BACKEND",
                    o,
                    format!("unknown backend {v:?} (use userli, fixture, http or sql)"),
                ));
            }
        };

        let (v, o) = raw.required("USERLI_BASE_URL");
        let userli_base_url = Url::parse(v.trim()).map_err(|e| {
            ConfigError::setting("USERLI_BASE_URL", o, format!("invalid URL {v:?}: {e}"))
        })?;
        if !matches!(userli_base_url.scheme(), "http" | "https")
            || userli_base_url.cannot_be_a_base()
        {
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

        let userli_token = token(raw)?;
        let sql_url = secret_or_file(raw, "SQL_URL", "SQL_URL_FILE")?;
        if kind == BackendKind::Sql && sql_url.is_none() {
            return Err(ConfigError(
                "SQL_URL is required (or SQL_URL_FILE) when LOOKUP_BACKEND is sql".into(),
            ));
        }
        let sql_preset_postfixadmin = raw.choice("SQL_PRESET", ["none", "postfixadmin"])?;
        let query = |env: &str| {
            raw.get(env)
                .map(|(v, _)| v.to_owned())
                .filter(|v| !v.trim().is_empty())
        };
        let sql_queries = [
            query("SQL_QUERY_DOMAIN"),
            query("SQL_QUERY_MAILBOX"),
            query("SQL_QUERY_ALIAS"),
            query("SQL_QUERY_SENDERS"),
            query("SQL_QUERY_AUTH"),
            query("SQL_QUERY_QUOTA"),
        ];
        let sql_max_connections = raw.number("SQL_MAX_CONNECTIONS", 1, 10_000)? as u32;
        if kind == BackendKind::Userli && userli_token.is_none() {
            return Err(ConfigError(
                "USERLI_TOKEN is required (or USERLI_TOKEN_FILE) when LOOKUP_BACKEND is userli"
                    .into(),
            ));
        }

        let fixture_path = raw.get("FIXTURE_PATH").map(|(v, _)| PathBuf::from(v));
        if kind == BackendKind::Fixture && fixture_path.is_none() {
            return Err(ConfigError(
                "FIXTURE_PATH is required when LOOKUP_BACKEND is fixture".into(),
            ));
        }
        Ok(Self {
            kind,
            userli_base_url,
            userli_token,
            fixture_path,
            http: None,
            sql_url,
            sql_preset_postfixadmin,
            sql_queries,
            sql_max_connections,
        })
    }
}

/// `USERLI_TOKEN`, or the content of `USERLI_TOKEN_FILE` (not both).
/// A secret given as `env` or read from the file `file_env` names (trailing line
/// break removed); both set is an error, as is an empty file.
fn secret_or_file(raw: &Raw, env: &str, file_env: &str) -> Result<Option<Secret>, ConfigError> {
    Ok(match (raw.get(env), raw.get(file_env)) {
        (Some(_), Some((_, o))) => {
            return Err(ConfigError::setting(
                file_env,
                o,
                format!("{env} is set too; set only one of them"),
            ));
        }
        (Some((value, _)), None) => Some(Secret::new(value)),
        (None, Some((path, o))) => {
            let content = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::setting(file_env, o, format!("cannot read {path:?}: {e}"))
            })?;
            let value = content.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(ConfigError::setting(
                    file_env,
                    o,
                    format!("{path:?} is empty"),
                ));
            }
            Some(Secret::new(value))
        }
        (None, None) => None,
    })
}

fn token(raw: &Raw) -> Result<Option<Secret>, ConfigError> {
    let token = secret_or_file(raw, "USERLI_TOKEN", "USERLI_TOKEN_FILE")?;
    if let Some(token) = &token
        && token.expose().chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ConfigError(
            "USERLI_TOKEN: contains white space or control characters (a stray newline?)".into(),
        ));
    }
    Ok(token)
}
