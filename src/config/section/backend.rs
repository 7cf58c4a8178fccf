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
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let (v, o) = raw.required("LOOKUP_BACKEND");
        let kind = match v.to_ascii_lowercase().as_str() {
            "userli" => BackendKind::Userli,
            "fixture" => BackendKind::Fixture,
            "http" => BackendKind::Http,
            _ => {
                return Err(ConfigError::setting(
                    "LOOKUP_BACKEND",
                    o,
                    format!("unknown backend {v:?} (use userli, fixture or http)"),
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
        })
    }
}

/// `USERLI_TOKEN`, or the content of `USERLI_TOKEN_FILE` (not both).
fn token(raw: &Raw) -> Result<Option<Secret>, ConfigError> {
    let token = match (raw.get("USERLI_TOKEN"), raw.get("USERLI_TOKEN_FILE")) {
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
    if let Some(token) = &token
        && token.expose().chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ConfigError(
            "USERLI_TOKEN: contains white space or control characters (a stray newline?)".into(),
        ));
    }
    Ok(token)
}
