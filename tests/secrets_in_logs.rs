//! Secrets never reach the output: the adapter runs at debug level, in both log
//! formats, through start-up, Redis failures, userli failures and SASL logins, with
//! a sentinel in the userli token, the Redis password (in each URL form the redis
//! client accepts) and a user's password; no sentinel may appear anywhere it
//! writes, nor in `check-config`.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::free_loopback_addr;
use postfix_adapter_clients::request::{netstring, policy_end_of_message};
use postfix_adapter_clients::sasl::SaslClient;
use postfix_adapter_clients::{Conn, Framing};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "tok-SENTINEL-a1";
const REDIS_PASSWORD: &str = "redis-SENTINEL-b2";
const USER_PASSWORD: &str = "pw-SENTINEL-c3";

/// Every form a secret could take in the output: as written, percent-encoded,
/// and (for the user's password) inside the base64 `AUTH` response.
fn forbidden() -> Vec<String> {
    let mut out = vec!["SENTINEL".to_owned()];
    for login in ["user@example.org", "nobody@example.org"] {
        out.push(STANDARD.encode(format!("\0{login}\0{USER_PASSWORD}")));
    }
    out
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the adapter with `redis_url` and `format`, drives every service into
/// failure, stops it; returns everything it wrote (stdout and stderr).
async fn run(userli: &str, redis_url: &str, format: &str) -> String {
    let (map, policy, sasl, metrics) = (
        free_loopback_addr(),
        free_loopback_addr(),
        free_loopback_addr(),
        free_loopback_addr(),
    );
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_userli-postfix-adapter"))
        .env_clear()
        .env("USERLI_TOKEN", TOKEN)
        .env("USERLI_BASE_URL", userli)
        .env("REDIS_URL", redis_url)
        .env("SOCKETMAP_LISTEN_ADDR", map.to_string())
        .env("POLICY_LISTEN_ADDR", policy.to_string())
        .env("SASL_LISTEN_ADDR", sasl.to_string())
        .env("METRICS_LISTEN_ADDR", metrics.to_string())
        .env("STATE_DIRECTORY", state.path())
        .env("LOG_LEVEL", "debug")
        .env("LOG_FORMAT", format)
        .env("LOOKUP_TIMEOUT", "500ms")
        .env("SASL_FAILURE_DELAY", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    for addr in [map, policy, sasl, metrics] {
        wait_listening(addr);
    }

    // Lookups: userli fails, so every answer is TEMP (and logged at debug).
    let mut conn = Conn::tcp(map, Framing::Netstring).await.unwrap();
    for request in [
        "mailbox user@example.org",
        "alias user@example.org",
        "senders user@example.org",
        "domain example.org",
    ] {
        let reply = conn.exchange(&netstring(request.as_bytes())).await.unwrap();
        assert!(reply.starts_with(b"TEMP"), "{request}: {reply:?}");
    }
    // Policy: the quota lookup and Redis both fail; fail open.
    let mut conn = Conn::tcp(policy, Framing::Block).await.unwrap();
    for _ in 0..3 {
        let reply = conn
            .exchange(&policy_end_of_message("user@example.org"))
            .await
            .unwrap();
        assert!(reply.starts_with(b"action=DUNNO"), "{reply:?}");
    }
    // SASL: userli fails, so the connection is dropped (Postfix says 454).
    for login in ["user@example.org", "nobody@example.org"] {
        let mut client = SaslClient::tcp(sasl).await.unwrap();
        let answer = client.auth_plain(login, USER_PASSWORD, "192.0.2.9").await;
        assert!(answer.is_err(), "{login}: {answer:?}");
    }
    let _ = postfix_adapter_clients::http::get(metrics, "/ready", Duration::from_secs(10)).await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the adapter did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut all = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    all.push_str(&String::from_utf8_lossy(&err.join().unwrap()));
    all
}

fn check_config(userli: &str, redis_url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_userli-postfix-adapter"))
        .arg("check-config")
        .env_clear()
        .env("USERLI_TOKEN", TOKEN)
        .env("USERLI_BASE_URL", userli)
        .env("REDIS_URL", redis_url)
        // check-config only validates it; nothing is written.
        .env("STATE_DIRECTORY", std::env::temp_dir())
        .output()
        .unwrap();
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_at_debug_level() {
    let userli = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500).set_body_string("internal error"))
        .mount(&userli)
        .await;
    // Nothing listens on either Redis: every check fails, and the errors name
    // the URL.
    let closed = free_loopback_addr();
    let redis_urls = [
        format!("redis+unix:///nonexistent/redis.sock?db=0&pass={REDIS_PASSWORD}"),
        format!("unix:///nonexistent/redis.sock?user=alice-SENTINEL&pass={REDIS_PASSWORD}"),
        format!("redis://:{REDIS_PASSWORD}@{closed}/0"),
        format!("redis://alice-SENTINEL:{REDIS_PASSWORD}@{closed}/0"),
    ];
    let mut lines = 0;
    for (i, url) in redis_urls.iter().enumerate() {
        let format = if i % 2 == 0 { "json" } else { "text" };
        let output = run(&userli.uri(), url, format).await;
        lines += output.lines().count();
        assert!(
            output.contains("debug") || output.contains("DEBUG"),
            "ran at debug level: {output}"
        );
        assert!(
            output.contains("redis"),
            "Redis failures were logged: {output}"
        );
        for secret in forbidden() {
            assert!(
                !output.contains(&secret),
                "{url} ({format}): {secret:?} in the output:\n{output}"
            );
        }
        let shown = check_config(&userli.uri(), url);
        assert!(shown.contains("REDIS_URL"), "{shown}");
        assert!(!shown.contains("SENTINEL"), "{url}: check-config:\n{shown}");
    }
    assert!(lines > 40, "the runs logged {lines} lines");
    // The token reached userli: it was used, just never printed.
    let requests = userli.received_requests().await.unwrap();
    assert!(requests.iter().any(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap_or("").contains(TOKEN))
    }));
}
