//! The policy (sending quota) server over real sockets: fixture and fake-userli
//! quotas, the embedded store across a restart, protocol limits.

mod common;

use std::path::Path;

use common::{Running, loopback_config, start_with_metrics};
use postfix_adapter_clients::{Conn, Framing, Got};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use userli_postfix_adapter::config::{Config, ListenAddr};
use userli_postfix_adapter::metrics::Metrics;

const FIXTURE: &str = r#"
domains = ["example.org"]
[[users]]
email = "limited@example.org"
smtp_quota = { per_hour = 2, per_day = 10 }
[[users]]
email = "free@example.org"
"#;

const EOM: &str = "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\nclient_address=192.0.2.1\nsender=limited@example.org\nrecipient_count=1\nqueue_id=ABC123\nsasl_method=plain\nsasl_username=LOGIN\nsize=100\n\n";

fn eom(login: &str) -> String {
    EOM.replace("LOGIN", login)
}

async fn start_policy(fixture: &Path, state: &Path, policy: &str) -> Running {
    let mut config = loopback_config(Config::for_fixture(fixture));
    config.listeners.policy = Some(ListenAddr::parse(policy).unwrap());
    config.policy.state_directory = state.to_owned();
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    start_with_metrics(config, backend, metrics).await
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
    // One reply per request: a client per call loses no bytes.
    let mut conn = Conn::new(stream, Framing::Block);
    conn.send(request.as_bytes()).await.unwrap();
    match conn.next(common::READ_LIMIT).await {
        Got::Reply(reply) => reply,
        other => panic!("a whole reply within the read limit, got {other:?}"),
    }
}

fn policy_tcp(server: &Running) -> std::net::SocketAddr {
    server.policy.expect("a TCP policy listener")
}

#[tokio::test]
async fn third_message_in_an_hour_is_rejected_with_upstreams_text() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(&fixture, FIXTURE).unwrap();
    let server = start_policy(&fixture, dir.path(), "127.0.0.1:0").await;
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    assert_eq!(
        ask(&mut conn, &eom("limited@example.org")).await,
        "action=DUNNO\n\n"
    );
    assert_eq!(
        ask(&mut conn, &eom("Limited@Example.org")).await,
        "action=DUNNO\n\n"
    );
    assert_eq!(
        ask(&mut conn, &eom("limited@example.org")).await,
        "action=REJECT Rate limit exceeded, please try again later\n\n"
    );
    for _ in 0..5 {
        assert_eq!(
            ask(&mut conn, &eom("free@example.org")).await,
            "action=DUNNO\n\n"
        );
    }
    let rcpt = eom("limited@example.org").replace("END-OF-MESSAGE", "RCPT");
    assert_eq!(
        ask(&mut conn, &rcpt).await,
        "action=DUNNO\n\n",
        "only END-OF-MESSAGE counts"
    );
    let text = server.metrics.render();
    for want in [
        "userli_postfix_adapter_policy_requests_total{action=\"reject\",stage=\"check\"} 1",
        "userli_postfix_adapter_policy_requests_total{action=\"dunno\",stage=\"skip\"} 1",
        "userli_postfix_adapter_quota_exceeded_total 1",
        "userli_postfix_adapter_quota_checks_total{result=\"checked\"} 3",
        "userli_postfix_adapter_policy_active_connections 1",
    ] {
        assert!(text.contains(want), "missing {want}");
    }
    drop(conn);
    server.shutdown().await;
}

#[tokio::test]
async fn quotas_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(&fixture, FIXTURE).unwrap();
    let server = start_policy(&fixture, dir.path(), "127.0.0.1:0").await;
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            ask(&mut conn, &eom("limited@example.org")).await,
            "action=DUNNO\n\n"
        );
    }
    drop(conn);
    server.shutdown().await;

    let server = start_policy(&fixture, dir.path(), "127.0.0.1:0").await;
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    assert!(
        ask(&mut conn, &eom("limited@example.org"))
            .await
            .starts_with("action=REJECT")
    );
    drop(conn);
    server.shutdown().await;
}

#[tokio::test]
async fn works_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(&fixture, FIXTURE).unwrap();
    let path = dir.path().join("policy.sock");
    let server = start_policy(&fixture, dir.path(), path.to_str().unwrap()).await;
    let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert_eq!(
        ask(&mut conn, &eom("limited@example.org")).await,
        "action=DUNNO\n\n"
    );
    drop(conn);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_input_closes_without_a_reply() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(&fixture, FIXTURE).unwrap();
    let server = start_policy(&fixture, dir.path(), "127.0.0.1:0").await;
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    let _ = conn.write_all(&vec![b'x'; 40_000]).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(common::READ_LIMIT, conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    assert!(rest.is_empty(), "no reply");

    // Lines and attribute count within their limits, 255 x 1 KiB in all: over
    // the 64 KiB a request may have. Closed before the request ends.
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    let value = "v".repeat(1024);
    for n in 0..255 {
        if conn
            .write_all(format!("a{n}={value}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"\n").await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(common::READ_LIMIT, conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a 255 KiB request was not refused");
    assert!(rest.is_empty(), "no reply to a 255 KiB request");
    server.shutdown().await;
}

#[tokio::test]
async fn userli_quota_answers_and_failures() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/smtp_quota/limited@example.org"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"per_hour": 1, "per_day": 0})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/smtp_quota/ghost@example.org"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(serde_json::json!({"error": "User not found"})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/smtp_quota/broken@example.org"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&api)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_userli(
        &api.uri(),
        &[
            ("POLICY_LISTEN_ADDR", "127.0.0.1:0"),
            ("STATE_DIRECTORY", dir.path().to_str().unwrap()),
        ],
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(policy_tcp(&server))
        .await
        .unwrap();
    assert_eq!(
        ask(&mut conn, &eom("limited@example.org")).await,
        "action=DUNNO\n\n"
    );
    assert!(
        ask(&mut conn, &eom("limited@example.org"))
            .await
            .starts_with("action=REJECT")
    );
    for _ in 0..3 {
        assert_eq!(
            ask(&mut conn, &eom("ghost@example.org")).await,
            "action=DUNNO\n\n"
        );
    }
    assert_eq!(
        ask(&mut conn, &eom("broken@example.org")).await,
        "action=DUNNO\n\n",
        "fail open"
    );
    assert!(server.metrics.render().contains(
        "userli_postfix_adapter_policy_requests_total{action=\"error\",stage=\"check\"} 1"
    ));
    drop(conn);
    server.shutdown().await;
}
