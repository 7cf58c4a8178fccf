//! The Dovecot-protocol SASL server.

use std::time::Duration;

use crate::config::ConfigError;
use crate::config::raw::Raw;
use crate::sasl::{LoginCacheSettings, SaslSettings, ThrottleSettings};

use super::LookupSection;

/// The SASL settings (its listener is in the listener section).
#[derive(Debug, Clone)]
pub struct SaslSection {
    /// `SASL_FAILURE_DELAY`.
    pub failure_delay: Duration,
    /// `SASL_MAX_FAILURE_DELAY`.
    pub max_failure_delay: Duration,
    /// `SASL_LOCKOUT_FAILURES`; 0 = off.
    pub lockout_failures: u32,
    /// `SASL_FAILURE_WINDOW`.
    pub failure_window: Duration,
    /// `SASL_MAX_CONCURRENT_CHECKS`.
    pub max_checks: usize,
    /// `SASL_MAX_CHECKS_PER_CLIENT`.
    pub max_checks_per_client: usize,
    /// `SASL_CACHE_TTL`: a login with the password userli last passed succeeds
    /// this long without asking userli (0: always ask).
    pub cache_ttl: Duration,
    /// `SASL_CACHE_STALE_TTL`: and this long beyond, only while userli fails.
    pub cache_stale_ttl: Duration,
    /// `SASL_CACHE_MAX_BYTES`.
    pub cache_max_bytes: u64,
    /// `SASL_CACHE_PERSIST`: the verifiers (argon2id) kept in the state directory.
    pub cache_persist: bool,
}

/// A login cache duration: a verified password kept longer than a month is no
/// longer a cache but a second password database.
fn at_most_30_days(raw: &Raw, env: &str) -> Result<Duration, ConfigError> {
    let value = raw.duration(env)?;
    if value > Duration::from_secs(30 * 24 * 3600) {
        return Err(raw.error(env, "must be at most 720h (30 days)"));
    }
    Ok(value)
}

impl SaslSection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let failure_delay = raw.duration("SASL_FAILURE_DELAY")?;
        let max_failure_delay = raw.duration("SASL_MAX_FAILURE_DELAY")?;
        if max_failure_delay > Duration::from_secs(8) {
            return Err(raw.error(
                "SASL_MAX_FAILURE_DELAY",
                "must be at most 8s (Postfix gives up on the auth server after 10s)",
            ));
        }
        Ok(Self {
            failure_delay,
            max_failure_delay,
            lockout_failures: raw.number("SASL_LOCKOUT_FAILURES", 0, 1_000_000)? as u32,
            failure_window: raw.positive_duration("SASL_FAILURE_WINDOW")?,
            max_checks: raw.number("SASL_MAX_CONCURRENT_CHECKS", 1, 100_000)?,
            max_checks_per_client: raw.number("SASL_MAX_CHECKS_PER_CLIENT", 1, 100_000)?,
            cache_ttl: at_most_30_days(raw, "SASL_CACHE_TTL")?,
            cache_stale_ttl: at_most_30_days(raw, "SASL_CACHE_STALE_TTL")?,
            cache_max_bytes: raw.byte_size("SASL_CACHE_MAX_BYTES", 0, 4 << 30)?,
            cache_persist: raw.choice("SASL_CACHE_PERSIST", ["false", "true"])?,
        })
    }

    /// The SASL service's settings; its deadline and its own breaker's settings
    /// follow the lookups'.
    pub(crate) fn settings(&self, lookups: &LookupSection) -> SaslSettings {
        SaslSettings {
            timeout: lookups.timeout,
            throttle: ThrottleSettings {
                base_delay: self.failure_delay,
                max_delay: self.max_failure_delay,
                lockout_failures: self.lockout_failures,
                window: self.failure_window,
            },
            max_checks: self.max_checks,
            max_checks_per_client: self.max_checks_per_client,
            breaker_failures: lookups.breaker_failures,
            breaker_cooldown: lookups.breaker_cooldown,
            cache: LoginCacheSettings {
                ttl: self.cache_ttl,
                stale_ttl: self.cache_stale_ttl,
                max_bytes: self.cache_max_bytes,
                persist: self.cache_persist,
            },
        }
    }
}
