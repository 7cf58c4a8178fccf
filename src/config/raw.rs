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

    /// A size in bytes in `min..=max`: a whole number, optionally with a binary
    /// unit (`KiB`, `MiB`, `GiB`; `K`, `M`, `G` mean the same).
    pub(crate) fn byte_size(&self, env: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.required(env).0;
        let n = parse_byte_size(v).ok_or_else(|| {
            self.error(
                env,
                format!("{v:?} is not a size (a whole number of bytes, or with KiB, MiB, GiB)"),
            )
        })?;
        if n < min || n > max {
            return Err(self.error(env, format!("{n} bytes is out of range ({min}..={max})")));
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

/// `123`, `64KiB`, `48 MiB`, `1G` → bytes; `None` for anything else or an overflow.
pub(crate) fn parse_byte_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!(parse_byte_size("0"), Some(0));
        assert_eq!(parse_byte_size("1234"), Some(1234));
        assert_eq!(parse_byte_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size(" 48 MiB "), Some(48 << 20));
        assert_eq!(parse_byte_size("2G"), Some(2 << 30));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "10 MB",
            "1 TiB",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_byte_size(bad), None, "{bad:?}");
        }
    }
}
