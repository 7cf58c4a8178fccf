//! The merged raw values of every setting, and the parsers the sections share.
//! Every error names the setting as the operator wrote it (an earlier name
//! included), where the value came from, and what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigError, ListenAddr, parse_go_duration};

/// Merged values: file key → (value, origin), and the earlier name a setting was
/// given under, if any.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) values: BTreeMap<String, (String, String)>,
    /// The name a setting was given under, where that was an earlier name (an
    /// alias): errors name what the operator wrote.
    pub(crate) given_as: BTreeMap<String, String>,
}

impl Raw {
    /// The value of `env` and its origin, if set (or defaulted).
    pub(crate) fn get(&self, env: &str) -> Option<(&str, &str)> {
        self.values
            .get(&env.to_ascii_lowercase())
            .map(|(v, o)| (v.as_str(), o.as_str()))
    }

    /// The value of a setting with a default, and its origin.
    pub(crate) fn required(&self, env: &str) -> (&str, &str) {
        // Settings with defaults are always present; the table guarantees it.
        self.get(env).unwrap_or(("", "default"))
    }

    /// The name to use for `env` in messages: the alias it was set under, if any.
    pub(crate) fn name<'a>(&'a self, env: &'a str) -> &'a str {
        self.given_as
            .get(&env.to_ascii_lowercase())
            .map_or(env, String::as_str)
    }

    /// An error about `env`'s value.
    pub(crate) fn error(&self, env: &str, what: impl std::fmt::Display) -> ConfigError {
        ConfigError::setting(self.name(env), self.required(env).1, what)
    }

    /// A Go-syntax duration.
    pub(crate) fn duration(&self, env: &str) -> Result<Duration, ConfigError> {
        parse_go_duration(self.required(env).0).map_err(|e| self.error(env, e))
    }

    /// A duration that must be more than zero.
    pub(crate) fn positive_duration(&self, env: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(env)?;
        if d.is_zero() {
            return Err(self.error(env, "must be more than 0"));
        }
        Ok(d)
    }

    /// A duration where `0` means "never".
    pub(crate) fn optional_duration(&self, env: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(Some(self.duration(env)?).filter(|d| !d.is_zero()))
    }

    /// A whole number in `min..=max`.
    pub(crate) fn number(&self, env: &str, min: usize, max: usize) -> Result<usize, ConfigError> {
        let v = self.required(env).0;
        let n: usize = v
            .trim()
            .parse()
            .map_err(|_| self.error(env, format!("{v:?} is not a whole number")))?;
        if n < min || n > max {
            return Err(self.error(env, format!("{n} is out of range ({min}..={max})")));
        }
        Ok(n)
    }

    /// One of two words: `false` for the first, `true` for the second.
    pub(crate) fn choice(&self, env: &str, options: [&str; 2]) -> Result<bool, ConfigError> {
        let v = self.required(env).0;
        match v.trim().to_ascii_lowercase() {
            x if x == options[0] => Ok(false),
            x if x == options[1] => Ok(true),
            _ => Err(self.error(
                env,
                format!("{v:?} is neither {} nor {}", options[0], options[1]),
            )),
        }
    }

    /// A listen address.
    pub(crate) fn listen(&self, env: &str) -> Result<ListenAddr, ConfigError> {
        ListenAddr::parse(self.required(env).0).map_err(|e| self.error(env, e))
    }
}
