//! Listen addresses in upstream's syntax (`:10001`, `host:port`, `[::1]:port`, UNIX
//! socket paths) and in a few clearer forms (`unix:relative/path`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:port`: every interface, IPv6 and IPv4.
    AnyHost(u16),
    /// A literal IP address and port.
    Socket(SocketAddr),
    /// A host name and port, resolved at bind time; every resolved address is bound.
    Host(String, u16),
    /// A UNIX stream socket.
    Unix(PathBuf),
    /// `systemd:NAME`: the sockets systemd passed with `FileDescriptorName=NAME`
    /// (socket activation); nothing is bound.
    Systemd(String),
}

/// Why a listen address is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    /// Empty value.
    #[error("empty address")]
    Empty,
    /// No `:port` part.
    #[error("{0:?} has no port (use host:port, :port or a UNIX socket path)")]
    MissingPort(String),
    /// The port is not a number in 0..=65535.
    #[error("invalid port in {0:?}")]
    InvalidPort(String),
    /// Malformed host part.
    #[error("invalid host in {0:?}")]
    InvalidHost(String),
    /// `systemd:` without a usable name.
    #[error("{0:?}: expected systemd:NAME, NAME being the socket unit's FileDescriptorName")]
    InvalidSystemdName(String),
}

impl ListenAddr {
    /// Parses an address.
    ///
    /// A value is a UNIX socket path when it starts with `unix:`, contains a `/`, or
    /// ends with `.sock` (upstream took only absolute paths and `.sock`, and treated a
    /// relative path such as `private/auth` as TCP). `systemd:NAME` takes the sockets
    /// systemd passed under that name.
    ///
    /// # Errors
    /// [`ListenAddrError`] naming what is wrong.
    pub fn parse(value: &str) -> Result<Self, ListenAddrError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ListenAddrError::Empty);
        }
        if let Some(name) = value.strip_prefix("systemd:") {
            // systemd allows up to 255 printable characters except ':'.
            if name.is_empty()
                || name.len() > 255
                || name.contains(':')
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ListenAddrError::InvalidSystemdName(value.to_owned()));
            }
            return Ok(Self::Systemd(name.to_owned()));
        }
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenAddrError::Empty);
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if value.contains('/') || value.ends_with(".sock") {
            return Ok(Self::Unix(PathBuf::from(value)));
        }
        let colon = value
            .rfind(':')
            .ok_or_else(|| ListenAddrError::MissingPort(value.to_owned()))?;
        let (host, port) = (&value[..colon], &value[colon + 1..]);
        let port: u16 = port
            .parse()
            .map_err(|_| ListenAddrError::InvalidPort(value.to_owned()))?;
        if host.is_empty() {
            return Ok(Self::AnyHost(port));
        }
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(Self::Socket(addr));
        }
        if host.starts_with('[') || host.contains(':') || host.chars().any(char::is_whitespace) {
            return Err(ListenAddrError::InvalidHost(value.to_owned()));
        }
        Ok(Self::Host(host.to_owned(), port))
    }

    /// Whether this is a UNIX socket path.
    pub fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(_))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyHost(port) => write!(f, ":{port}"),
            Self::Socket(addr) => write!(f, "{addr}"),
            Self::Host(host, port) => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_socket_names() {
        assert_eq!(
            ListenAddr::parse("systemd:socketmap"),
            Ok(ListenAddr::Systemd("socketmap".into()))
        );
        assert_eq!(
            ListenAddr::parse("systemd:socketmap").unwrap().to_string(),
            "systemd:socketmap"
        );
        for bad in ["systemd:", "systemd:a:b", "systemd:a b"] {
            assert!(
                matches!(
                    ListenAddr::parse(bad),
                    Err(ListenAddrError::InvalidSystemdName(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(ListenAddr::parse(":10001"), Ok(ListenAddr::AnyHost(10001)));
        assert_eq!(
            ListenAddr::parse("127.0.0.1:10001"),
            Ok(ListenAddr::Socket("127.0.0.1:10001".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:0"),
            Ok(ListenAddr::Socket("[::1]:0".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("localhost:25"),
            Ok(ListenAddr::Host("localhost".into(), 25))
        );
        assert_eq!(
            ListenAddr::parse("/run/adapter/socketmap"),
            Ok(ListenAddr::Unix("/run/adapter/socketmap".into()))
        );
        assert_eq!(
            ListenAddr::parse("adapter.sock"),
            Ok(ListenAddr::Unix("adapter.sock".into()))
        );
    }

    #[test]
    fn relative_paths_are_unix_sockets() {
        assert_eq!(
            ListenAddr::parse("private/auth"),
            Ok(ListenAddr::Unix("private/auth".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:socketmap"),
            Ok(ListenAddr::Unix("socketmap".into()))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(ListenAddr::parse(""), Err(ListenAddrError::Empty));
        assert!(matches!(
            ListenAddr::parse("localhost"),
            Err(ListenAddrError::MissingPort(_))
        ));
        assert!(matches!(
            ListenAddr::parse(":99999"),
            Err(ListenAddrError::InvalidPort(_))
        ));
        assert!(matches!(
            ListenAddr::parse(":http"),
            Err(ListenAddrError::InvalidPort(_))
        ));
        assert!(matches!(
            ListenAddr::parse("[::1:80"),
            Err(ListenAddrError::InvalidHost(_))
        ));
        assert!(matches!(
            ListenAddr::parse("unix:"),
            Err(ListenAddrError::Empty)
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            ":10001",
            "127.0.0.1:1",
            "[::1]:2",
            "localhost:3",
            "/run/a.sock",
        ] {
            assert_eq!(ListenAddr::parse(s).unwrap().to_string(), s);
        }
    }
}
