//! The policy (sending quota) server.

use std::path::PathBuf;

use crate::config::raw::Raw;
use crate::config::{ConfigError, Secret};
use crate::policy::{CountMode, PolicySettings};

use super::LookupSection;

/// The policy settings (its listener is in the listener section).
#[derive(Debug, Clone)]
pub struct PolicySection {
    /// `RATE_LIMIT_MESSAGE`.
    pub rate_limit_message: String,
    /// `REDIS_URL`.
    pub redis_url: Option<Secret>,
    /// `REDIS_TLS_CA_FILE`: the CA that signed a `rediss://` server's certificate.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `REDIS_TIMEOUT`: the deadline of one store operation, connecting included.
    pub redis_timeout: std::time::Duration,
    /// `STATE_DIRECTORY`.
    pub state_directory: PathBuf,
    /// `POLICY_SENDER_FALLBACK`.
    pub sender_fallback: bool,
    /// `POLICY_COUNT` is `recipients`.
    pub count_recipients: bool,
    /// `POLICY_OVER_QUOTA_ACTION` is `defer`.
    pub defer_over_quota: bool,
    /// `POLICY_FAIL_MODE` is `closed`.
    pub fail_closed: bool,
}

impl PolicySection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let sender_fallback = raw.choice("POLICY_SENDER_FALLBACK", ["false", "true"])?;
        let count_recipients = raw.choice("POLICY_COUNT", ["messages", "recipients"])?;
        let defer_over_quota = raw.choice("POLICY_OVER_QUOTA_ACTION", ["reject", "defer"])?;
        let fail_closed = raw.choice("POLICY_FAIL_MODE", ["open", "closed"])?;
        let (rate_limit_message, _) = raw.required("RATE_LIMIT_MESSAGE");
        if rate_limit_message
            .chars()
            .any(|c| matches!(c, '\r' | '\n' | '\0'))
        {
            return Err(raw.error(
                "RATE_LIMIT_MESSAGE",
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
            return Err(raw.error(
                "REDIS_URL",
                "must start with redis://, rediss://, unix:// or redis+unix://",
            ));
        }
        let redis_tls_ca_file = raw
            .get("REDIS_TLS_CA_FILE")
            .map(|(v, _)| v.trim())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if redis_tls_ca_file.is_some()
            && !redis_url
                .as_ref()
                .is_some_and(|u| u.expose().starts_with("rediss://"))
        {
            return Err(raw.error(
                "REDIS_TLS_CA_FILE",
                "is only used with a rediss:// REDIS_URL (Redis over TLS)",
            ));
        }
        let redis_timeout = raw.positive_duration("REDIS_TIMEOUT")?;
        if redis_timeout > crate::config::MAX_LOOKUP_TIMEOUT {
            return Err(raw.error("REDIS_TIMEOUT", "must be at most 60s"));
        }
        Ok(Self {
            rate_limit_message: rate_limit_message.to_owned(),
            redis_url,
            redis_tls_ca_file,
            redis_timeout,
            state_directory: PathBuf::from(raw.required("STATE_DIRECTORY").0),
            sender_fallback,
            count_recipients,
            defer_over_quota,
            fail_closed,
        })
    }

    /// The policy service's settings; deadlines and the store's breaker follow
    /// the lookups' (both say how soon to stop waiting for something that keeps
    /// failing).
    pub(crate) fn settings(&self, lookups: &LookupSection) -> PolicySettings {
        PolicySettings {
            message: self.rate_limit_message.clone(),
            defer_over_quota: self.defer_over_quota,
            fail_closed: self.fail_closed,
            sender_fallback: self.sender_fallback,
            count: if self.count_recipients {
                CountMode::Recipients
            } else {
                CountMode::Messages
            },
            timeout: lookups.timeout,
            store_breaker_failures: lookups.breaker_failures,
            store_breaker_cooldown: lookups.breaker_cooldown,
        }
    }
}
