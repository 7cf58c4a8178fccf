//! Shared helpers for the integration tests: start the whole server on port 0,
//! talk socketmap to it over real sockets.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postfix_adapter_clients::request::netstring;
use postfix_adapter_clients::{Conn, Framing, Got};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use userli_postfix_adapter::config::{Config, ListenAddr};
use userli_postfix_adapter::metrics::Metrics;
use userli_postfix_adapter::server::LocalAddr;
use userli_postfix_adapter::{LookupBackend, Server};

/// The bundled demo fixture.
pub fn demo_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fixtures/demo.toml")
}

/// A configuration on loopback port 0 for both listeners.
pub fn loopback_config(mut config: Config) -> Config {
    config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0").unwrap();
    config.listeners.metrics = ListenAddr::parse("127.0.0.1:0").unwrap();
    // The default policy port would collide between tests running in parallel.
    if config.listeners.policy == Some(ListenAddr::AnyHost(10003)) {
        config.listeners.policy = None;
    }
    config
}

/// A running server.
pub struct Running {
    pub socketmap: LocalAddr,
    pub http: SocketAddr,
    /// The policy listener, when it is TCP.
    pub policy: Option<SocketAddr>,
    /// The SASL listener, when it is TCP.
    pub sasl: Option<SocketAddr>,
    pub metrics: Metrics,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn tcp(&self) -> SocketAddr {
        match &self.socketmap {
            LocalAddr::Tcp(a) => *a,
            LocalAddr::Unix(p) => panic!("not TCP: {}", p.display()),
        }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// Binds and runs `config` with `backend`.
pub async fn start(config: Config, backend: Arc<dyn LookupBackend>) -> Running {
    start_with_metrics(config, backend, Metrics::new().unwrap()).await
}

/// Binds and runs `config` with `backend`, on metrics the backend registered on.
pub async fn start_with_metrics(
    config: Config,
    backend: Arc<dyn LookupBackend>,
    metrics: Metrics,
) -> Running {
    let server = Server::bind(config, backend, metrics.clone())
        .await
        .unwrap();
    let socketmap = server.socketmap_addrs()[0].clone();
    let policy = server.policy_addrs().into_iter().find_map(|a| match a {
        LocalAddr::Tcp(a) => Some(a),
        LocalAddr::Unix(_) => None,
    });
    let LocalAddr::Tcp(http) = server.http_addrs()[0].clone() else {
        panic!("metrics listener is TCP in tests")
    };
    let sasl = server.sasl_addrs().into_iter().find_map(|a| match a {
        LocalAddr::Tcp(a) => Some(a),
        LocalAddr::Unix(_) => None,
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    Running {
        socketmap,
        http,
        policy,
        sasl,
        metrics,
        stop,
        task,
    }
}

/// Starts the server with the userli backend at `base_url` (token `test-token`),
/// configured from `env` on top of that, as the binary would be.
pub async fn start_userli(base_url: &str, env: &[(&str, &str)]) -> Running {
    let mut vars: std::collections::HashMap<String, String> = [
        ("USERLI_TOKEN", "test-token"),
        ("USERLI_BASE_URL", base_url),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.entry("LOOKUP_TIMEOUT".into())
        .or_insert_with(|| "500ms".into());
    // No snapshot in the machine's state directory unless a test asks for one.
    vars.entry("LOOKUP_CACHE_PERSIST".into())
        .or_insert_with(|| "false".into());
    let sources = userli_postfix_adapter::config::Sources {
        file: None,
        env: vars,
    };
    let config = loopback_config(userli_postfix_adapter::config::load(&sources).unwrap());
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    start_with_metrics(config, backend, metrics).await
}

/// Starts the server on the demo fixture.
pub async fn start_demo() -> Running {
    start_demo_with(loopback_config(Config::for_fixture(demo_fixture()))).await
}

/// Starts the server with `config`, whose backend is the demo fixture.
pub async fn start_demo_with(config: Config) -> Running {
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    start_with_metrics(config, backend, metrics).await
}

/// A socketmap client connection: the shared client, panicking where a test
/// should fail.
pub struct Client<S>(Conn<S>);

impl Client<tokio::net::TcpStream> {
    pub async fn tcp(addr: SocketAddr) -> Self {
        Self::new(tokio::net::TcpStream::connect(addr).await.unwrap())
    }
}

impl Client<tokio::net::UnixStream> {
    pub async fn unix(path: &Path) -> Self {
        Self::new(tokio::net::UnixStream::connect(path).await.unwrap())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Self(Conn::new(stream, Framing::Netstring).with_max_reply(200_000))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.0.send(bytes).await.unwrap();
    }

    /// The next reply, or `None` when the server closed the connection; panics
    /// on a malformed reply, and after [`READ_LIMIT`] so a regression fails
    /// instead of hanging the suite.
    pub async fn reply(&mut self) -> Option<String> {
        match self.0.next(READ_LIMIT).await {
            Got::Reply(reply) => Some(reply),
            Got::Closed { .. } => None,
            Got::Hung => panic!("no reply or close within the read limit"),
            Got::Malformed(why) => panic!("{why}"),
        }
    }

    pub async fn ask(&mut self, request: &str) -> String {
        self.send_raw(&netstring(request.as_bytes())).await;
        self.reply().await.expect("a reply")
    }

    /// Waits until the server closes the connection; returns what it sent first.
    /// Panics after [`READ_LIMIT`].
    pub async fn until_closed(&mut self) -> Vec<u8> {
        self.0
            .until_closed(READ_LIMIT)
            .await
            .expect("the server did not close the connection")
    }
}

/// The longest a test waits for a reply or a close before it fails.
pub const READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A loopback address nothing listens on right now: bound to port 0 and released.
pub fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

impl Adapter {
    /// The adapter's `/metrics` text.
    pub async fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics.parse().unwrap(), "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

#[allow(unused_imports)]
pub use postfix_adapter_clients::http::metric;

/// GET on the metrics listener: (status, body); panics when there is no HTTP
/// answer within [`READ_LIMIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = postfix_adapter_clients::http::get(addr, path, READ_LIMIT).await;
    assert_ne!(status, 0, "no HTTP answer from {addr} for {path}");
    (status, body)
}

/// The adapter binary running as a child process, logging JSON to stdout.
pub struct Adapter {
    pub child: std::process::Child,
    pub socketmap: String,
    pub metrics: String,
    /// The policy listener, when it was up before the other two (log order).
    pub policy: Option<String>,
    /// The SASL listener, when `SASL_LISTEN_ADDR` was given.
    pub sasl: Option<String>,
    pub lines: std::sync::mpsc::Receiver<String>,
    /// The log lines read while waiting for the listeners.
    pub startup: Vec<serde_json::Value>,
    /// The default state directory, removed with the adapter.
    _state: tempfile::TempDir,
}

impl Adapter {
    /// Starts the binary with `env` (on top of a clean environment) and waits until
    /// the socketmap and metrics listeners are up, and the SASL listener too when
    /// `env` sets `SASL_LISTEN_ADDR`.
    pub fn spawn(env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(&[], env)
    }

    /// [`Self::spawn`], with the binary run through `wrapper` (a command and its
    /// arguments, e.g. `setpriv` dropping to another user); empty: directly.
    pub fn spawn_wrapped(wrapper: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let state = tempfile::Builder::new()
            .prefix("upa-test-")
            .tempdir()
            .expect("a state directory");
        let binary = env!("CARGO_BIN_EXE_userli-postfix-adapter");
        let mut cmd = match wrapper.split_first() {
            None => std::process::Command::new(binary),
            Some((program, args)) => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
        };
        cmd.env_clear()
            .env("SOCKETMAP_LISTEN_ADDR", "127.0.0.1:0")
            .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
            .env("POLICY_LISTEN_ADDR", "127.0.0.1:0")
            .env("STATE_DIRECTORY", state.path())
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("adapter binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let want_sasl = env
            .iter()
            .any(|(k, v)| *k == "SASL_LISTEN_ADDR" && !v.trim().is_empty());
        let (mut socketmap, mut metrics, mut policy, mut sasl) = (None, None, None, None);
        let mut startup = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while socketmap.is_none() || metrics.is_none() || (want_sasl && sasl.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("adapter reports its listeners");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            let addr = v["addr"].as_str().map(str::to_owned);
            match v["msg"].as_str() {
                Some("policy server listening") => policy = addr,
                Some("socketmap server listening") => socketmap = addr,
                Some("metrics server listening") => metrics = addr,
                Some("SASL server listening") => sasl = addr,
                _ => {}
            }
            startup.push(v);
        }
        Self {
            child,
            socketmap: socketmap.unwrap(),
            metrics: metrics.unwrap(),
            policy,
            sasl,
            lines,
            startup,
            _state: state,
        }
    }

    /// The first start-up log line whose message contains `text`.
    pub fn startup_log(&self, text: &str) -> Option<&serde_json::Value> {
        self.startup
            .iter()
            .find(|v| v["msg"].as_str().is_some_and(|m| m.contains(text)))
    }

    /// The binary on the demo fixture with every listener on loopback: delimiter
    /// `+`, SASL without failure delay, plus `extra` (later entries win).
    pub fn spawn_demo(extra: &[(&str, &str)]) -> Self {
        let fixture = demo_fixture();
        let mut env = vec![
            ("LOOKUP_BACKEND", "fixture"),
            (
                "FIXTURE_PATH",
                fixture.to_str().expect("UTF-8 fixture path"),
            ),
            ("POSTFIX_RECIPIENT_DELIMITER", "+"),
            ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
            ("SASL_FAILURE_DELAY", "0"),
        ];
        env.extend_from_slice(extra);
        let adapter = Self::spawn(&env);
        assert!(adapter.sasl.is_some(), "the adapter's SASL listener is up");
        adapter
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a log line whose message contains `text`.
    pub fn wait_for_log(&self, text: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line containing {text:?}"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["msg"].as_str().is_some_and(|m| m.contains(text)) {
                return v;
            }
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "adapter did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
