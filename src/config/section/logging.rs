//! Log verbosity and format.

use crate::config::raw::Raw;
use crate::config::{ConfigError, LogFormat, LogLevel};

/// The logging settings.
#[derive(Debug, Clone, Copy)]
pub struct LoggingSection {
    /// `LOG_LEVEL`.
    pub level: LogLevel,
    /// `LOG_FORMAT`.
    pub format: LogFormat,
}

impl LoggingSection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let (v, o) = raw.required("LOG_LEVEL");
        let level = LogLevel::parse(v).ok_or_else(|| {
            ConfigError::setting(
                "LOG_LEVEL",
                o,
                format!("unknown level {v:?} (use trace, debug, info, warn or error)"),
            )
        })?;
        let (v, o) = raw.required("LOG_FORMAT");
        let format = match v.to_ascii_lowercase().as_str() {
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
        Ok(Self { level, format })
    }
}
