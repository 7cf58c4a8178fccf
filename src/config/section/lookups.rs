//! Lookups: their deadline, address extensions, the answer cache and the
//! protection around the backend.

use std::time::Duration;

use crate::cache::CacheSettings;
use crate::config::raw::Raw;
use crate::config::{ConfigError, MAX_LOOKUP_TIMEOUT};

/// The lookup, cache and resilience settings.
#[derive(Debug, Clone)]
pub struct LookupSection {
    /// `LOOKUP_TIMEOUT`.
    pub timeout: Duration,
    /// `POSTFIX_RECIPIENT_DELIMITER`.
    pub recipient_delimiter: String,
    /// `LOOKUP_CACHE_TTL`; zero disables the cache.
    pub cache_ttl: Duration,
    /// `LOOKUP_NEGATIVE_CACHE_TTL`.
    pub negative_cache_ttl: Duration,
    /// `LOOKUP_CACHE_STALE_TTL`: found answers.
    pub cache_stale_ttl: Duration,
    /// `LOOKUP_NEGATIVE_CACHE_STALE_TTL`: not-found answers.
    pub negative_cache_stale_ttl: Duration,
    /// `LOOKUP_CACHE_SIZE`.
    pub cache_size: u64,
    /// `LOOKUP_CACHE_MAX_BYTES`.
    pub cache_max_bytes: u64,
    /// `LOOKUP_CACHE_PERSIST`.
    pub cache_persist: bool,
    /// `BACKEND_MAX_CONCURRENT_REQUESTS`.
    pub backend_max_concurrency: usize,
    /// `CIRCUIT_BREAKER_FAILURES`; zero disables the breaker.
    pub breaker_failures: u32,
    /// `CIRCUIT_BREAKER_COOLDOWN`.
    pub breaker_cooldown: Duration,
}

impl LookupSection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let timeout = raw.duration("LOOKUP_TIMEOUT")?;
        if timeout.is_zero() || timeout > MAX_LOOKUP_TIMEOUT {
            return Err(raw.error(
                "LOOKUP_TIMEOUT",
                "must be more than 0 and at most 60s (Postfix gives up after 100s)",
            ));
        }
        let (recipient_delimiter, _) = raw.required("POSTFIX_RECIPIENT_DELIMITER");
        if recipient_delimiter.contains('@') {
            return Err(ConfigError(
                "POSTFIX_RECIPIENT_DELIMITER: must not contain @".into(),
            ));
        }
        Ok(Self {
            timeout,
            recipient_delimiter: recipient_delimiter.to_owned(),
            cache_ttl: raw.duration("LOOKUP_CACHE_TTL")?,
            negative_cache_ttl: raw.duration("LOOKUP_NEGATIVE_CACHE_TTL")?,
            cache_stale_ttl: raw.duration("LOOKUP_CACHE_STALE_TTL")?,
            negative_cache_stale_ttl: raw.duration("LOOKUP_NEGATIVE_CACHE_STALE_TTL")?,
            cache_size: raw.number("LOOKUP_CACHE_SIZE", 0, 100_000_000)? as u64,
            cache_max_bytes: raw.byte_size("LOOKUP_CACHE_MAX_BYTES", 0, 64 << 30)?,
            cache_persist: raw.choice("LOOKUP_CACHE_PERSIST", ["false", "true"])?,
            backend_max_concurrency: raw.number("BACKEND_MAX_CONCURRENT_REQUESTS", 1, 100_000)?,
            breaker_failures: raw.number("CIRCUIT_BREAKER_FAILURES", 0, 1_000_000)? as u32,
            breaker_cooldown: raw.positive_duration("CIRCUIT_BREAKER_COOLDOWN")?,
        })
    }

    /// How long a backend call may run in the background after callers gave up
    /// (`LOOKUP_TIMEOUT` passed), so a slow but alive backend still fills the cache
    /// for the next lookup.
    pub fn backend_call_timeout(&self) -> Duration {
        self.timeout * 2
    }

    /// The answer cache's settings.
    pub(crate) fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            positive_ttl: self.cache_ttl,
            negative_ttl: self.negative_cache_ttl,
            stale_ttl: self.cache_stale_ttl,
            negative_stale_ttl: self.negative_cache_stale_ttl,
            max_entries: self.cache_size,
            max_bytes: self.cache_max_bytes,
            deadline: self.timeout,
            call_timeout: self.backend_call_timeout(),
        }
    }
}
