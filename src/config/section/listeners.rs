//! Listeners and their limits: where each service listens, who may connect, and
//! how long and how much a connection may take.

use std::time::Duration;

use crate::access::AllowedClients;
use crate::config::raw::Raw;
use crate::config::{ConfigError, ListenAddr};
use crate::server::policy::PolicyLimits;
use crate::server::socketmap::ConnectionLimits;

/// The listener settings.
#[derive(Debug, Clone)]
pub struct ListenerSection {
    /// `SOCKETMAP_LISTEN_ADDR`.
    pub socketmap: ListenAddr,
    /// `METRICS_LISTEN_ADDR`.
    pub metrics: ListenAddr,
    /// `POLICY_LISTEN_ADDR`; `None` when `off`.
    pub policy: Option<ListenAddr>,
    /// `SASL_LISTEN_ADDR`; `None` when empty.
    pub sasl: Option<ListenAddr>,
    /// `UNIX_SOCKET_MODE`.
    pub unix_socket_mode: u32,
    /// `ALLOWED_CLIENTS`.
    pub allowed_clients: AllowedClients,
    /// `MAX_CONNECTIONS` (earlier `SOCKETMAP_MAX_CONNECTIONS`): per service.
    pub max_connections: usize,
    /// `METRICS_MAX_CONNECTIONS`.
    pub metrics_max_connections: usize,
    /// `IO_TIMEOUT` (earlier `SOCKETMAP_IO_TIMEOUT`): every listener.
    pub io_timeout: Duration,
    /// `SOCKETMAP_IDLE_TIMEOUT`; `None` = never.
    pub socketmap_idle_timeout: Option<Duration>,
    /// `POLICY_IDLE_TIMEOUT`; `None` = never.
    pub policy_idle_timeout: Option<Duration>,
    /// `SOCKETMAP_MAX_REQUEST_SIZE`.
    pub max_request_size: usize,
    /// `SHUTDOWN_GRACE_PERIOD`.
    pub shutdown_grace: Duration,
}

impl ListenerSection {
    pub(crate) fn load(raw: &Raw) -> Result<Self, ConfigError> {
        let socketmap = raw.listen("SOCKETMAP_LISTEN_ADDR")?;
        let policy = match raw.required("POLICY_LISTEN_ADDR").0.trim() {
            "off" | "none" => None,
            _ => Some(raw.listen("POLICY_LISTEN_ADDR")?),
        };
        let metrics = raw.listen("METRICS_LISTEN_ADDR")?;
        let ephemeral = matches!(&socketmap, ListenAddr::AnyHost(0) | ListenAddr::Host(_, 0))
            || matches!(&socketmap, ListenAddr::Socket(a) if a.port() == 0);
        if socketmap == metrics && !ephemeral {
            return Err(ConfigError(format!(
                "SOCKETMAP_LISTEN_ADDR and METRICS_LISTEN_ADDR are both {socketmap}"
            )));
        }
        let sasl = match raw.get("SASL_LISTEN_ADDR") {
            Some((v, _)) if !v.trim().is_empty() => Some(raw.listen("SASL_LISTEN_ADDR")?),
            _ => None,
        };

        let (v, _) = raw.required("UNIX_SOCKET_MODE");
        let unix_socket_mode = u32::from_str_radix(v.trim().trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                raw.error(
                    "UNIX_SOCKET_MODE",
                    format!("{v:?} is not an octal file mode such as 0660"),
                )
            })?;
        let allowed_clients = AllowedClients::parse(raw.required("ALLOWED_CLIENTS").0)
            .map_err(|e| raw.error("ALLOWED_CLIENTS", e))?;

        Ok(Self {
            socketmap,
            metrics,
            policy,
            sasl,
            unix_socket_mode,
            allowed_clients,
            max_connections: raw.number("MAX_CONNECTIONS", 1, 1_000_000)?,
            metrics_max_connections: raw.number("METRICS_MAX_CONNECTIONS", 1, 100_000)?,
            io_timeout: raw.positive_duration("IO_TIMEOUT")?,
            socketmap_idle_timeout: raw.optional_duration("SOCKETMAP_IDLE_TIMEOUT")?,
            policy_idle_timeout: raw.optional_duration("POLICY_IDLE_TIMEOUT")?,
            max_request_size: raw.number("SOCKETMAP_MAX_REQUEST_SIZE", 64, 1 << 20)?,
            shutdown_grace: raw.duration("SHUTDOWN_GRACE_PERIOD")?,
        })
    }

    /// The limits of a socketmap connection.
    pub(crate) fn socketmap_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_request_size: self.max_request_size,
            idle_timeout: self.socketmap_idle_timeout,
            io_timeout: self.io_timeout,
        }
    }

    /// The limits of a policy connection.
    pub(crate) fn policy_limits(&self) -> PolicyLimits {
        PolicyLimits {
            idle_timeout: self.policy_idle_timeout,
            io_timeout: self.io_timeout,
        }
    }
}
