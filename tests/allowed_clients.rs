//! `ALLOWED_CLIENTS`: every TCP listener closes connections from outside the
//! allowed networks at once, before they cost a slot or reach a protocol.
//!
//! Linux routes all of 127.0.0.0/8 to loopback, so a client socket bound to
//! 127.0.0.2 is a second, distinguishable client on the same machine.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, demo_fixture, loopback_config, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use userli_postfix_adapter::access::AllowedClients;
use userli_postfix_adapter::config::{Config, ListenAddr};
use userli_postfix_adapter::metrics::Metrics;

/// A connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source address");
    socket.connect(addr).await.expect("the kernel accepts")
}

/// Whether the server closes `stream` without a byte (after `hello`, if any).
async fn closed_at_once(mut stream: TcpStream, hello: &[u8]) -> bool {
    let _ = stream.write_all(hello).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn scrape_from(source: &str, addr: SocketAddr) -> String {
    let mut s = connect_from(source, addr).await;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test]
async fn only_allowed_networks_get_in_on_every_listener() {
    let mut config = loopback_config(Config::for_fixture(demo_fixture()));
    config.listeners.policy = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    let state = tempfile::tempdir().unwrap();
    config.policy.state_directory = state.path().to_owned();
    config.listeners.allowed_clients = AllowedClients::parse("127.0.0.2/32").unwrap();
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = common::start_with_metrics(config, backend, metrics).await;
    let (policy, sasl) = (server.policy.unwrap(), server.sasl.unwrap());

    // From 127.0.0.1: closed without an answer, on every listener.
    for (name, addr, hello) in [
        (
            "socketmap",
            server.tcp(),
            &b"20:mailbox user@example.org,"[..],
        ),
        ("policy", policy, &b"protocol_state=RCPT\n\n"[..]),
        // The SASL server speaks first: a denied client never sees the handshake.
        ("sasl", sasl, &b""[..]),
        (
            "metrics",
            server.http,
            &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
    ] {
        let stream = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_at_once(stream, hello).await,
            "{name} let 127.0.0.1 in"
        );
    }

    // From 127.0.0.2: served as usual.
    let mut c = Client::new(connect_from("127.0.0.2", server.tcp()).await);
    assert_eq!(c.ask("mailbox user@example.org").await, "OK 1");
    let text = scrape_from("127.0.0.2", server.http).await;
    for listener in ["socketmap", "policy", "sasl", "metrics"] {
        assert_eq!(
            metric(
                &text,
                "userli_postfix_adapter_connections_denied_total",
                &format!("listener=\"{listener}\"")
            ),
            1.0,
            "{listener}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_default_admits_loopback() {
    let server = common::start_demo().await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(c.ask("domain example.org").await, "OK 1");
    let mut c = Client::new(connect_from("127.0.0.2", server.tcp()).await);
    assert_eq!(c.ask("domain example.org").await, "OK 1");
    server.shutdown().await;
}

/// A dual-stack listener (`:port`, upstream's default form) reports IPv4 clients as
/// `::ffff:a.b.c.d`: they count as their IPv4 address, and IPv6 clients are judged
/// as IPv6.
#[tokio::test]
async fn ipv4_mapped_peers_of_a_dual_stack_listener_count_as_ipv4() {
    let mut config = loopback_config(Config::for_fixture(demo_fixture()));
    config.listeners.socketmap = ListenAddr::parse(":0").unwrap();
    config.listeners.allowed_clients = AllowedClients::parse("127.0.0.0/8").unwrap();
    let metrics = Metrics::new().unwrap();
    let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
    let server = common::start_with_metrics(config, backend, metrics.clone()).await;
    let port = server.tcp().port();
    let v4 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut c = Client::new(v4);
    assert_eq!(c.ask("mailbox user@example.org").await, "OK 1");
    let v6 = TcpStream::connect(("::1", port))
        .await
        .expect("IPv6 loopback (the listener is dual-stack)");
    assert!(closed_at_once(v6, b"20:mailbox user@example.org,").await);
    assert_eq!(
        metric(
            &metrics.render(),
            "userli_postfix_adapter_connections_denied_total",
            "listener=\"socketmap\""
        ),
        1.0
    );
    server.shutdown().await;
}
