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
}

impl BackendSection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let (v, o) = raw.required("LOOKUP_BACKEND");
        let kind = match v.to_ascii_lowercase().as_str() {
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
