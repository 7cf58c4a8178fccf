//! The SASL server over real sockets, in front of a fake userli (wiremock) and the
//! fixture backend: answers, and the connection drop that makes Postfix say 454.

mod common;

use std::time::{Duration, Instant};

use common::{Running, loopback_config, start_with_metrics};
use postfix_adapter_clients::request::auth_plain;
use postfix_adapter_clients::{Framing, Got};
use tokio::io::{AsyncRead, AsyncWrite};
use userli_postfix_adapter::config::{Config, ListenAddr};
use userli_postfix_adapter::metrics::Metrics;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A Dovecot auth client: the shared line client with explicit request ids.
struct Conn<S>(postfix_adapter_clients::Conn<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn open(stream: S) -> Self {
        let mut c = Self(postfix_adapter_clients::Conn::new(stream, Framing::Line));
        c.send("VERSION\t1\t0").await;
        c.send("CPID\t1234").await;
        while c.line().await.expect("handshake") != "DONE" {}
        c
    }
    async fn send(&mut self, line: &str) {
        self.0.send(format!("{line}\n").as_bytes()).await.unwrap();
    }
    /// The next line, or `None` when the server closed the connection or said
    /// nothing for 10 s.
    async fn line(&mut self) -> Option<String> {
        match self.0.next(Duration::from_secs(10)).await {
            Got::Reply(line) => Some(line.trim_end().to_owned()),
            Got::Closed { .. } | Got::Hung => None,
            Got::Malformed(why) => panic!("{why}"),
        }
    }
    async fn plain(&mut self, id: u32, login: &str, password: &str) -> Option<String> {
        self.plain_from(id, login, password, "192.0.2.9").await
    }
    /// `AUTH PLAIN` as Postfix relays it for an SMTP client at `rip`.
    async fn plain_from(
        &mut self,
        id: u32,
        login: &str,
        password: &str,
        rip: &str,
    ) -> Option<String> {
        let request = auth_plain(id.into(), login, password, rip);
        self.0.send(request.as_bytes()).await.unwrap();
        self.line().await
    }
}

fn sasl_addr(server: &Running) -> std::net::SocketAddr {
    server.sasl.expect("a TCP SASL listener")
}

async fn auth_mock(
    api: &MockServer,
    login: &str,
    password: &str,
    status: u16,
    body: serde_json::Value,
) {
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .and(body_json(
            serde_json::json!({"email": login, "password": password}),
        ))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(api)
        .await;
}

#[tokio::test]
async fn userli_answers_become_ok_fail_or_a_dropped_connection() {
    let api = MockServer::start().await;
    auth_mock(
        &api,
        "user@example.org",
        "pa\"ss wörd",
        200,
        serde_json::json!({"message": "success"}),
    )
    .await;
    auth_mock(
        &api,
        "user@example.org",
        "wrong",
        401,
        serde_json::json!({"message": "authentication failed"}),
    )
    .await;
    auth_mock(
        &api,
        "spam@example.org",
        "pw",
        403,
        serde_json::json!({"message": "user disabled due to spam role"}),
    )
    .await;
    auth_mock(&api, "broken@example.org", "pw", 500, serde_json::json!({})).await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .and(body_json(
            serde_json::json!({"email": "slow@example.org", "password": "pw"}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"message": "success"}))
                .set_delay(Duration::from_secs(10)),
        )
        .mount(&api)
        .await;
    let server = common::start_userli(
        &api.uri(),
        &[
            ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
            ("SASL_FAILURE_DELAY", "0"),
            ("LOOKUP_TIMEOUT", "500ms"),
        ],
    )
    .await;
    let addr = sasl_addr(&server);
    let mut c = Conn::open(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(
        c.plain(1, "User@Example.org", "pa\"ss wörd").await.unwrap(),
        "OK\t1\tuser=user@example.org"
    );
    assert_eq!(
        c.plain(2, "user@example.org", "wrong").await.unwrap(),
        "FAIL\t2\tuser=user@example.org\treason=authentication failed"
    );
    assert_eq!(
        c.plain(3, "spam@example.org", "pw").await.unwrap(),
        "FAIL\t3\tuser=spam@example.org\treason=user disabled due to spam role"
    );
    assert_eq!(
        c.plain(4, "broken@example.org", "pw").await,
        None,
        "500: dropped, Postfix says 454"
    );

    let mut c = Conn::open(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    let started = Instant::now();
    assert_eq!(
        c.plain(1, "slow@example.org", "pw").await,
        None,
        "deadline: dropped"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn fixture_logins_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth");
    let mut config = loopback_config(Config::for_fixture(common::demo_fixture()));
    config.listeners.sasl = Some(ListenAddr::Unix(path.clone()));
    config.sasl.failure_delay = Duration::ZERO;
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = start_with_metrics(config, backend, metrics).await;
    let mut c = Conn::open(tokio::net::UnixStream::connect(&path).await.unwrap()).await;
    assert_eq!(
        c.plain(1, "user@example.org", "password").await.unwrap(),
        "OK\t1\tuser=user@example.org"
    );
    assert!(
        c.plain(2, "user@example.org", "nope")
            .await
            .unwrap()
            .starts_with("FAIL\t2\t")
    );
    assert!(
        c.plain(3, "spam@example.org", "password")
            .await
            .unwrap()
            .contains("spam")
    );
    assert!(
        c.plain(4, "deleted@example.org", "password")
            .await
            .unwrap()
            .starts_with("FAIL\t4\t")
    );
    let metrics = server.metrics.render();
    assert!(metrics.contains(
        "userli_postfix_adapter_sasl_auth_total{mechanism=\"PLAIN\",result=\"success\"} 1"
    ));
    drop(c);
    server.shutdown().await;
}

#[tokio::test]
async fn repeated_failures_are_slowed_down() {
    let mut config = loopback_config(Config::for_fixture(common::demo_fixture()));
    config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    config.sasl.failure_delay = Duration::from_millis(100);
    config.sasl.max_failure_delay = Duration::from_millis(400);
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = start_with_metrics(config, backend, metrics).await;
    let mut c = Conn::open(
        tokio::net::TcpStream::connect(sasl_addr(&server))
            .await
            .unwrap(),
    )
    .await;
    let mut waits = Vec::new();
    for id in 1..=4 {
        let started = Instant::now();
        c.plain(id, "user@example.org", "guess").await.unwrap();
        waits.push(started.elapsed());
    }
    assert!(waits[0] >= Duration::from_millis(100), "{waits:?}");
    assert!(waits[2] >= Duration::from_millis(400), "{waits:?}");
    let started = Instant::now();
    assert!(
        c.plain(9, "user@example.org", "password")
            .await
            .unwrap()
            .starts_with("OK")
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "success is never delayed"
    );
    drop(c);
    server.shutdown().await;
}

/// 400 clients guessing passwords at once (no valid credentials needed) against a
/// directory whose password checks are slow: lookups of never-seen keys keep
/// answering at once, `/ready` stays 200 and the lookup breaker stays closed. Login
/// checks have their own slots and breaker; beyond their caps they are refused at
/// once (dropped: Postfix says 454) instead of queueing in front of lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_never_starves_lookups() {
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"message": "authentication failed"}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex("^/api/postfix/mailbox/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(true)))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/domain/health-check.invalid"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(false)))
        .mount(&api)
        .await;
    let server = common::start_userli(
        &api.uri(),
        &[
            ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
            ("SASL_FAILURE_DELAY", "0"),
            ("LOOKUP_TIMEOUT", "1s"),
        ],
    )
    .await;
    let sasl = sasl_addr(&server);
    let flood_until = Instant::now() + Duration::from_secs(4);
    let mut flood = Vec::new();
    for i in 0..400u32 {
        let rip = format!("10.{}.{}.1", i / 200, i % 200);
        flood.push(tokio::spawn(async move {
            let mut attempts = 0u32;
            while Instant::now() < flood_until {
                let Ok(stream) = tokio::net::TcpStream::connect(sasl).await else {
                    continue;
                };
                let mut c = Conn::open(stream).await;
                let mut id = 1;
                while Instant::now() < flood_until {
                    attempts += 1;
                    if c.plain_from(id, "victim@example.org", "guess", &rip)
                        .await
                        .is_none()
                    {
                        break;
                    }
                    id += 1;
                }
            }
            attempts
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut c = common::Client::tcp(server.tcp()).await;
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        let answer = c.ask(&format!("mailbox fresh{i}@example.org")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer, "OK 1", "lookup {i} during the flood");
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest fresh lookup during the flood took {slowest:?}"
    );
    let (status, body) = common::http_get(server.http, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let attempts: u32 = futures_sum(flood).await;
    assert!(attempts >= 400, "the flood ran: {attempts} attempts");

    let text = server.metrics.render();
    let m = |name: &str, labels: &str| common::metric(&text, name, labels);
    assert_eq!(m("userli_postfix_adapter_circuit_breaker_state", ""), 0.0);
    assert!(
        m(
            "userli_postfix_adapter_sasl_checks_refused_total",
            "limit=\"total\""
        ) > 0.0,
        "the flood hit the cap on checks in flight"
    );
    assert_eq!(
        m("userli_postfix_adapter_sasl_circuit_breaker_state", ""),
        1.0,
        "timed-out checks opened the logins' own breaker"
    );
    server.shutdown().await;
}

async fn futures_sum(tasks: Vec<tokio::task::JoinHandle<u32>>) -> u32 {
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap();
    }
    sum
}

/// How long a failed login takes must not tell whether the login exists. With the
/// fixture backend an unknown user used to fail in a flat 251 ms and a known user
/// with a wrong password in 285–377 ms (the hash verification on top of the
/// delay). Now the delay counts from the start of the request (a hash cheaper than
/// the delay hides inside it) and unknown users verify a dummy hash of the data set
/// (a hash costlier than the delay costs them as much).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_timing_does_not_tell_which_users_exist() {
    for (hash, what) in [
        // argon2id, 64 MiB, 3 passes: about 100 ms, inside the 250 ms delay.
        (
            "$argon2id$v=19$m=65536,t=3,p=1$K4t0xgZAbDSAh/tmc3+RGg$8cMLyPCKi6V9YbjvhX4/Ccjyuw4Xf8wXelCSHP4mQUg",
            "cheaper than the delay",
        ),
        // 16 passes (about 450 ms): longer than the delay, so only the dummy hash evens it out.
        (
            "$argon2id$v=19$m=65536,t=16,p=1$oAGU6038w80G0PyeCOcW4A$12ZVLyBxHy/oyfiQsW7KaKrDLW18N7l1skN8PXdd/TM",
            "costlier than the delay",
        ),
    ] {
        failures_take_as_long_for_unknown_users(hash, what).await;
    }
}

async fn failures_take_as_long_for_unknown_users(hash: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("costly.toml");
    let mut text = String::from("domains = [\"example.org\"]\n");
    for user in ["user", "user2", "admin", "totp", "first-last"] {
        text.push_str(&format!(
            "[[users]]\nemail = \"{user}@example.org\"\npassword_hash = \"{hash}\"\n"
        ));
    }
    text.push_str("[[users]]\nemail = \"deleted@example.org\"\ndeleted = true\n");
    std::fs::write(&fixture, text).unwrap();
    let mut config = loopback_config(Config::for_fixture(&fixture));
    config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    config.sasl.failure_delay = Duration::from_millis(250);
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = start_with_metrics(config, backend, metrics).await;
    let mut c = Conn::open(
        tokio::net::TcpStream::connect(sasl_addr(&server))
            .await
            .unwrap(),
    )
    .await;
    // Each login's first failure from a fresh client address: the base delay only.
    // Known and unknown logins take turns, so a busy machine slows both alike.
    let pairs = [
        ("user@example.org", "nobody@example.org"),
        ("user2@example.org", "ghost@example.org"),
        ("admin@example.org", "deleted@example.org"),
        ("totp@example.org", "x@example.org"),
        ("first-last@example.org", "no-one@example.org"),
    ];
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for (i, (k, u)) in pairs.into_iter().enumerate() {
        known.push(failure_time(&mut c, 2 * i as u32 + 1, k, &format!("198.51.1.{i}")).await);
        unknown.push(failure_time(&mut c, 2 * i as u32 + 2, u, &format!("198.51.2.{i}")).await);
    }
    known.sort();
    unknown.sort();
    let median = |t: &[Duration]| t[t.len() / 2];
    println!(
        "hostile: failed logins, hash {what}: known users {known:?}, unknown users {unknown:?}"
    );
    for t in known.iter().chain(&unknown) {
        assert!(
            *t >= Duration::from_millis(245),
            "{t:?}: the delay was cut short"
        );
    }
    let (k, u) = (median(&known), median(&unknown));
    // Without the padding or the dummy hash, unknown users failed in a flat 251 ms
    // against 340 ms (cheap hash) or 500 ms (costly hash) for known ones. A hash
    // inside the delay disappears in it; a costlier one is paid by both.
    let alike = if k.max(u) < Duration::from_millis(300) {
        k.abs_diff(u) < Duration::from_millis(30)
    } else {
        u * 4 >= k * 3 && k * 4 >= u * 3
    };
    assert!(
        alike,
        "hash {what}: known users fail in {k:?}, unknown ones in {u:?}"
    );
    drop(c);
    server.shutdown().await;
}

/// How long a wrong password for `login` takes to fail, from client address `rip`.
async fn failure_time<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    id: u32,
    login: &str,
    rip: &str,
) -> Duration {
    let started = Instant::now();
    let reply = c.plain_from(id, login, "wrong", rip).await.unwrap();
    let took = started.elapsed();
    assert!(reply.starts_with("FAIL\t"), "{login}: {reply}");
    took
}

/// Opens a raw TCP auth connection and reads the handshake up to `DONE`.
async fn raw_handshake(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"VERSION\t1\t0\nCPID\t1\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"DONE\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "handshake cut short");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// How the server ended the connection, read from the client side.
async fn end_of(stream: &mut tokio::net::TcpStream) -> std::io::ErrorKind {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server ends the connection")
    {
        Ok(0) => std::io::ErrorKind::UnexpectedEof,
        Ok(n) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(e) => e.kind(),
    }
}

/// Postfix's Dovecot client writes a request before it reads: on a connection
/// the server ended in order, its next AUTH is written without error and fails
/// on reading (one more 454, maybe another user's once the backend is back). A
/// reset makes that write fail, and Postfix reconnects at once. So the server
/// resets when it drops a connection for an outage, and when it closes a quiet
/// one at shutdown; one that has just answered is closed in order, so that the
/// answer is read.
#[tokio::test]
async fn dropped_and_quiet_auth_connections_are_reset() {
    use tokio::io::AsyncWriteExt;
    let api = MockServer::start().await;
    auth_mock(&api, "broken@example.org", "pw", 500, serde_json::json!({})).await;
    auth_mock(
        &api,
        "user@example.org",
        "pw",
        200,
        serde_json::json!({"message": "success"}),
    )
    .await;
    let server = common::start_userli(
        &api.uri(),
        &[
            ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
            ("SASL_FAILURE_DELAY", "0"),
        ],
    )
    .await;
    let addr = sasl_addr(&server);

    let mut dropped = raw_handshake(addr).await;
    dropped
        .write_all(auth_plain(1, "broken@example.org", "pw", "192.0.2.9").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        end_of(&mut dropped).await,
        std::io::ErrorKind::ConnectionReset,
        "an outage drop is a reset"
    );

    let mut quiet = raw_handshake(addr).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut answered = raw_handshake(addr).await;
    answered
        .write_all(auth_plain(1, "user@example.org", "pw", "192.0.2.9").as_bytes())
        .await
        .unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut answered, &mut reply)
        .await
        .unwrap();
    assert!(reply[..n].starts_with(b"OK\t1\t"), "{:?}", &reply[..n]);
    server.shutdown().await;
    assert_eq!(
        end_of(&mut quiet).await,
        std::io::ErrorKind::ConnectionReset,
        "quiet for a second: reset at shutdown"
    );
    assert_eq!(
        end_of(&mut answered).await,
        std::io::ErrorKind::UnexpectedEof,
        "just answered: an orderly end"
    );
}

/// The verified logins kept on disk (`SASL_CACHE_PERSIST=true`), by the binary:
/// written at shutdown, loaded at start, emptied by SIGHUP (in memory and on
/// disk), and removed when the setting is turned off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_logins_are_saved_loaded_dropped_by_sighup_and_removed_when_off() {
    use common::Adapter;
    use postfix_adapter_clients::sasl::SaslClient;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("sasl-login-cache.json");
    let dir = state.path().to_str().unwrap();
    let spawn = |persist: &str| {
        tokio::task::block_in_place(|| {
            Adapter::spawn_demo(&[("SASL_CACHE_PERSIST", persist), ("STATE_DIRECTORY", dir)])
        })
    };
    let entries = || -> usize {
        let text = std::fs::read_to_string(&file).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["entries"].as_array().unwrap().len()
    };

    let adapter = spawn("true");
    let addr = adapter.sasl.as_ref().unwrap().parse().unwrap();
    let mut sasl = SaslClient::tcp(addr).await.unwrap();
    let reply = sasl
        .auth_plain("user@example.org", "password", "192.0.2.1")
        .await
        .unwrap();
    assert!(reply.starts_with("OK\t"), "{reply}");
    drop(sasl);
    assert!(tokio::task::block_in_place(|| adapter.terminate()).success());
    assert_eq!(entries(), 1, "saved at shutdown");

    let adapter = spawn("true");
    let loaded = adapter
        .startup_log("login cache loaded")
        .expect("the file is loaded at start");
    assert_eq!(loaded["loaded"], 1);
    adapter.signal("HUP");
    tokio::task::block_in_place(|| adapter.wait_for_log("login cache dropped"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while entries() != 0 {
        assert!(Instant::now() < deadline, "SIGHUP empties the file too");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tokio::task::block_in_place(|| adapter.terminate()).success());
    assert_eq!(entries(), 0);

    let adapter = spawn("false");
    assert!(!file.exists(), "turned off: no password hashes left behind");
    drop(adapter);
}
