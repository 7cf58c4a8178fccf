//! Binding listeners: TCP (dual-stack for `:port`) and UNIX sockets, failing loudly;
//! or taking those systemd passed (socket activation).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::{Mutex, OnceLock};

use listenfd::ListenFd;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

/// A listener that cannot be set up; fatal at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The OS refused to bind or listen.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The configured address.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A host name resolved to nothing.
    #[error("cannot listen on {0}: the host name resolves to no address")]
    NoAddress(String),
    /// Something other than a stale socket is in the way of a UNIX socket.
    #[error("cannot listen on {path}: {why}")]
    PathInUse {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        why: &'static str,
    },
    /// `systemd:NAME`, but systemd passed no listening socket of that name.
    #[error(
        "systemd:{name}: no listening socket named {name:?} was passed (LISTEN_FDNAMES: \
         {passed:?}); set FileDescriptorName={name} in the .socket unit and Sockets= in the service"
    )]
    NotPassed {
        /// The name asked for.
        name: String,
        /// The names systemd passed.
        passed: String,
    },
}

/// The file of a UNIX socket we created: removed when this guard is dropped, that
/// is when its listener is (at shutdown, or when a later listener fails to bind).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::debug!(path = %self.0.display(), error = %e, "could not remove socket file");
        }
    }
}

/// One bound listening socket.
#[derive(Debug)]
pub enum BoundListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UNIX stream listener and its socket file (removed with it).
    Unix(UnixListener, SocketFile),
    /// A UNIX stream listener systemd passed (socket activation): systemd owns the
    /// socket file, which therefore stays at shutdown.
    InheritedUnix(UnixListener),
}

/// The address a listener is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// A TCP address (with the real port when 0 was configured).
    Tcp(SocketAddr),
    /// A UNIX socket path.
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl BoundListener {
    /// Where this listener is bound.
    pub fn local_addr(&self) -> LocalAddr {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| LocalAddr::Unix(PathBuf::new()), LocalAddr::Tcp),
            Self::Unix(_, file) => LocalAddr::Unix(file.path().to_owned()),
            Self::InheritedUnix(l) => LocalAddr::Unix(
                l.local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_owned))
                    .unwrap_or_default(),
            ),
        }
    }
}

/// Binds every socket `addr` stands for; UNIX sockets get `mode`.
///
/// # Errors
/// [`BindError`] if any socket cannot be bound: a half-bound service is worse than
/// one that does not start (upstream kept running without its socketmap listener).
pub async fn bind(addr: &ListenAddr, mode: u32) -> Result<Vec<BoundListener>, BindError> {
    let io_err = |source| BindError::Io {
        addr: addr.to_string(),
        source,
    };
    match addr {
        ListenAddr::AnyHost(port) => {
            let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, *port).into();
            match bind_tcp(v6, true) {
                Ok(l) => Ok(vec![BoundListener::Tcp(l)]),
                // No IPv6 on this host: all IPv4 interfaces is what `:port` means then.
                Err(e) if is_no_ipv6(&e) => {
                    let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, *port).into();
                    Ok(vec![BoundListener::Tcp(
                        bind_tcp(v4, false).map_err(io_err)?,
                    )])
                }
                Err(e) => Err(io_err(e)),
            }
        }
        ListenAddr::Socket(sa) => Ok(vec![BoundListener::Tcp(
            bind_tcp(*sa, false).map_err(io_err)?,
        )]),
        ListenAddr::Host(host, port) => {
            let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(io_err)?
                .collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(BindError::NoAddress(addr.to_string()));
            }
            addrs
                .into_iter()
                .map(|a| bind_tcp(a, false).map(BoundListener::Tcp).map_err(io_err))
                .collect()
        }
        ListenAddr::Unix(path) => {
            let listener = bind_unix(path, mode).await?;
            Ok(vec![BoundListener::Unix(
                listener,
                SocketFile(path.clone()),
            )])
        }
        ListenAddr::Systemd(name) => take_inherited(name),
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`), read
/// once; each is taken by the first listener that names it.
fn inherited() -> &'static Mutex<(ListenFd, Vec<String>)> {
    static INHERITED: OnceLock<Mutex<(ListenFd, Vec<String>)>> = OnceLock::new();
    INHERITED.get_or_init(|| {
        let names = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .map(str::to_owned)
            .collect();
        Mutex::new((ListenFd::from_env(), names))
    })
}

/// Every passed socket named `name`, TCP or UNIX.
fn take_inherited(name: &str) -> Result<Vec<BoundListener>, BindError> {
    let io_err = |source| BindError::Io {
        addr: format!("systemd:{name}"),
        source,
    };
    let mut guard = inherited().lock().unwrap_or_else(|p| p.into_inner());
    let (fds, names) = &mut *guard;
    let mut taken = Vec::new();
    for index in 0..fds.len() {
        if names.get(index).map(String::as_str) != Some(name) {
            continue;
        }
        // An error means "not a TCP listener" and leaves the descriptor in place.
        if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
            listener.set_nonblocking(true).map_err(io_err)?;
            taken.push(BoundListener::Tcp(
                TcpListener::from_std(listener).map_err(io_err)?,
            ));
        } else if let Some(listener) = fds.take_unix_listener(index).map_err(io_err)? {
            listener.set_nonblocking(true).map_err(io_err)?;
            taken.push(BoundListener::InheritedUnix(
                UnixListener::from_std(listener).map_err(io_err)?,
            ));
        }
    }
    if taken.is_empty() {
        return Err(BindError::NotPassed {
            name: name.to_owned(),
            passed: names.join(":"),
        });
    }
    Ok(taken)
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(97 /* EAFNOSUPPORT */) | Some(99 /* EADDRNOTAVAIL */)
    )
}

fn bind_tcp(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Restarting must not wait for TIME_WAIT connections of the previous process.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::PathInUse {
                path: path.to_owned(),
                why: "a file that is not a socket is in the way",
            });
        }
        // A socket someone still accepts on belongs to a running process; deleting it
        // would silently steal its clients.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(BindError::PathInUse {
                path: path.to_owned(),
                why: "another process is listening on this socket",
            });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_port_zero_and_reports_the_real_port() {
        let ls = bind(&ListenAddr::parse("127.0.0.1:0").unwrap(), 0o660)
            .await
            .unwrap();
        match ls[0].local_addr() {
            LocalAddr::Tcp(a) => assert_ne!(a.port(), 0),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let ls = bind(&ListenAddr::parse("127.0.0.1:0").unwrap(), 0o660)
            .await
            .unwrap();
        let LocalAddr::Tcp(taken) = ls[0].local_addr() else {
            unreachable!()
        };
        let err = bind(&ListenAddr::Socket(taken), 0o660).await.unwrap_err();
        assert!(err.to_string().contains("cannot listen on"), "{err}");
    }

    #[tokio::test]
    async fn unix_socket_mode_and_stale_socket_handling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = ListenAddr::Unix(path.clone());
        let first = bind(&addr, 0o600).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Live socket: refused.
        let err = bind(&addr, 0o600).await.unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");

        // Dropping our listener removes its file.
        drop(first);
        assert!(!path.exists(), "the socket file goes with its listener");

        // Stale socket (a listener gone without removing its file): replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = bind(&addr, 0o660).await.unwrap();
        assert!(path.exists());
        drop(second);

        // A regular file: never deleted.
        let file = dir.path().join("data.sock");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&ListenAddr::Unix(file.clone()), 0o660)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
