//! The whole server over real sockets, answering from the demo fixture.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, http_get, loopback_config, start, start_demo};
use postfix_adapter_backend::testkit::{Fault, StubBackend};
use userli_postfix_adapter::config::{Config, ListenAddr};

/// userli's basic data set through the wire, as Postfix would ask.
const BASIC: &[(&str, &str)] = &[
    ("domain example.org", "OK 1"),
    ("domain example.com", "OK 1"),
    ("domain example.net", "NOTFOUND"),
    ("mailbox user@example.org", "OK 1"),
    ("mailbox User@Example.ORG", "OK 1"),
    ("mailbox deleted@example.org", "NOTFOUND"),
    ("mailbox alias@example.org", "NOTFOUND"),
    ("alias alias@example.org", "OK user2@example.org"),
    ("alias user@example.org", "NOTFOUND"),
    ("alias example.org", "NOTFOUND"),
    ("senders user@example.org", "OK user@example.org"),
    ("senders alias@example.org", "OK user2@example.org"),
    ("senders nobody@example.org", "NOTFOUND"),
    ("unknownmap somekey", "PERM Unknown map name"),
    ("invalidrequest", "PERM Invalid request format"),
];

#[tokio::test]
async fn answers_the_basic_data_set_over_tcp() {
    let server = start_demo().await;
    let mut client = Client::tcp(server.tcp()).await;
    for (request, want) in BASIC {
        assert_eq!(client.ask(request).await, *want, "{request}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn answers_over_a_unix_socket_with_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socketmap.sock");
    let mut config = loopback_config(Config::for_fixture(common::demo_fixture()));
    config.listeners.socketmap = ListenAddr::Unix(path.clone());
    config.listeners.unix_socket_mode = 0o640;
    let metrics = userli_postfix_adapter::metrics::Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = start(config, backend).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let mut client = Client::unix(&path).await;
    for (request, want) in BASIC {
        assert_eq!(client.ask(request).await, *want, "{request}");
    }
    drop(client);
    server.shutdown().await;
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[tokio::test]
async fn many_sequential_requests_on_one_connection_and_many_connections() {
    let server = start_demo().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Client::tcp(server.tcp()).await);
    }
    for round in 0..50 {
        for c in &mut clients {
            let (req, want) = BASIC[round % BASIC.len()];
            assert_eq!(c.ask(req).await, want);
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_framing_error_closes_only_that_connection() {
    let server = start_demo().await;
    let mut good = Client::tcp(server.tcp()).await;
    let mut bad = Client::tcp(server.tcp()).await;
    bad.send_raw(b"007:domain,").await;
    assert!(
        bad.until_closed().await.is_empty(),
        "no reply to a bad frame"
    );
    let mut huge = Client::tcp(server.tcp()).await;
    huge.send_raw(b"999999999:").await;
    assert!(huge.until_closed().await.is_empty());
    assert_eq!(good.ask("domain example.org").await, "OK 1");
    server.shutdown().await;
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let server = start_demo().await;
    let mut client = Client::tcp(server.tcp()).await;
    client.ask("domain example.org").await;
    assert_eq!(
        http_get(server.http, "/health").await,
        (200, "{\"status\":\"ok\"}\n".into())
    );
    assert_eq!(
        http_get(server.http, "/ready").await,
        (200, "{\"status\":\"ready\"}\n".into())
    );
    let (status, body) = http_get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "userli_postfix_adapter_requests_total{handler=\"domain\",status=\"success\"} 1",
        "userli_postfix_adapter_active_connections 1",
        "userli_postfix_adapter_connection_pool_usage 1",
        "userli_postfix_adapter_build_info{backend=\"fixture\"",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    server.shutdown().await;
}

/// A backend whose `slow@` alias lookups take a while, to test draining.
fn slow_backend() -> StubBackend {
    StubBackend::new()
        .domain("example.org")
        .alias("slow@example.org", &["late@example.org"])
        .fault("slow@example.org", Fault::Delay(Duration::from_millis(500)))
}

#[tokio::test]
async fn shutdown_answers_in_flight_requests_and_closes_idle_connections() {
    let server = start(
        loopback_config(Config::embedded()),
        Arc::new(slow_backend()),
    )
    .await;
    let mut busy = Client::tcp(server.tcp()).await;
    let mut idle = Client::tcp(server.tcp()).await;
    assert_eq!(idle.ask("domain example.org").await, "OK 1");
    busy.send_raw(&userli_postfix_adapter::protocol::netstring::encode(
        b"alias slow@example.org",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let http = server.http;
    let addr = server.tcp();
    server.stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = http_get(http, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );

    assert_eq!(busy.reply().await.as_deref(), Some("OK late@example.org"));
    assert!(idle.until_closed().await.is_empty());
    // Every connection is done, so the server returns at once instead of waiting
    // out the grace period (10 s).
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(9), server.task)
        .await
        .expect("drained without waiting for the grace period")
        .unwrap();
    println!("drained in {:?}", started.elapsed());
}

#[tokio::test]
async fn connection_limit_closes_extra_connections_and_counts_them() {
    let mut config = loopback_config(Config::for_fixture(common::demo_fixture()));
    config.listeners.max_connections = 2;
    let metrics = userli_postfix_adapter::metrics::Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = start(config, backend).await;
    let mut a = Client::tcp(server.tcp()).await;
    let mut b = Client::tcp(server.tcp()).await;
    assert_eq!(a.ask("domain example.org").await, "OK 1");
    assert_eq!(b.ask("domain example.org").await, "OK 1");
    let mut c = Client::tcp(server.tcp()).await;
    assert!(
        c.until_closed().await.is_empty(),
        "third connection refused"
    );
    assert!(
        server
            .metrics
            .render()
            .contains("userli_postfix_adapter_connection_pool_full_total 1")
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = Client::tcp(server.tcp()).await;
    assert_eq!(d.ask("domain example.org").await, "OK 1", "slot released");
    server.shutdown().await;
}
