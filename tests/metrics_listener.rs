//! The metrics and health listener is a listener like the others: a connection
//! cap, a deadline for request headers that also ends idle connections, and
//! lookups unaffected by whatever happens on it.

mod common;

use std::time::{Duration, Instant};

use common::{Client, http_get, loopback_config, metric, start_demo_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use userli_postfix_adapter::config::Config;

const M: &str = "userli_postfix_adapter_";

/// Waits until the server closes `s`; how long that took, or `None` if it stayed
/// open for `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .ok()
        .map(|()| started.elapsed())
}

fn config(max: usize, io_timeout: Duration) -> Config {
    let mut config = loopback_config(Config::for_fixture(common::demo_fixture()));
    config.listeners.metrics_max_connections = max;
    config.listeners.io_timeout = io_timeout;
    config
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once_and_lookups_go_on() {
    let server = start_demo_with(config(4, Duration::from_secs(30))).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(server.http).await.unwrap();
        // Half a request: the connection is busy, not closed.
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.http).await.unwrap();
    let took = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the fifth connection was not closed");
    let text = server.metrics.render();
    assert_eq!(
        metric(&text, &format!("{M}metrics_connection_pool_full_total"), ""),
        1.0
    );
    assert_eq!(
        metric(&text, &format!("{M}metrics_active_connections"), ""),
        4.0
    );
    // Lookups do not care.
    let mut client = Client::tcp(server.tcp()).await;
    assert_eq!(client.ask("domain example.org").await, "OK 1");
    // A freed slot serves again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = http_get(server.http, "/health").await;
    assert_eq!(status, 200);
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed_at_the_header_deadline() {
    let deadline = Duration::from_millis(800);
    let server = start_demo_with(config(64, deadline)).await;
    let limit = Duration::from_secs(10);

    // Says nothing at all.
    let mut silent = TcpStream::connect(server.http).await.unwrap();
    let took = closed_within(&mut silent, limit)
        .await
        .expect("silent connection closed");
    assert!(
        took >= deadline / 2 && took < deadline * 4,
        "silent: {took:?}"
    );

    // Trickles its headers a byte every 100 ms: never finishes in time.
    let mut trickle = TcpStream::connect(server.http).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
    {
        if trickle.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut b = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut b)).await
        {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickled header was never cut off");
    assert!(took < deadline * 4, "trickle cut off after {took:?}");

    // Kept alive after one request, then idle.
    let mut idle = TcpStream::connect(server.http).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 15];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let took = closed_within(&mut idle, limit)
        .await
        .expect("idle keep-alive closed");
    assert!(took < deadline * 4, "idle: {took:?}");

    // Prompt requests are served as ever.
    let (status, body) = http_get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains(&format!("{M}metrics_active_connections")));
    server.shutdown().await;
}
