use super::*;
use crate::metrics::Metrics;
use crate::protocol::dovecot::MAX_LINE;
use crate::sasl::{SaslMetrics, SaslSettings, ThrottleSettings};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use postfix_adapter_backend::testkit::{Fault, StubBackend};
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};

/// `user@example.org` logs in with `s3cret\0x`; `spam@` is refused with userli's
/// reason; `down@` cannot be checked; `slow@` never answers.
fn users() -> StubBackend {
    StubBackend::new()
        .login("user@example.org", b"s3cret\0x")
        .refused("spam@example.org", "user disabled due to spam role")
        .fault("down@example.org", Fault::Unavailable)
        .fault("slow@example.org", Fault::Hang)
}

struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    metrics: SaslMetrics,
}

impl Client {
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => Some(line.trim_end_matches('\n').to_owned()),
            _ => None,
        }
    }
    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
}

fn settings(timeout: Duration) -> SaslSettings {
    SaslSettings {
        timeout,
        throttle: ThrottleSettings {
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            lockout_failures: 0,
            window: Duration::from_secs(60),
        },
        max_checks: 32,
        max_checks_per_client: 4,
        breaker_failures: 5,
        breaker_cooldown: Duration::from_secs(5),
        cache: crate::sasl::LoginCacheSettings::OFF,
    }
}

async fn connect() -> Client {
    connect_with(Duration::from_secs(5)).await
}

async fn connect_with(io_timeout: Duration) -> Client {
    let metrics = Metrics::new().unwrap();
    let sasl_metrics = SaslMetrics::register(&metrics).unwrap();
    let service = Arc::new(SaslService::new(
        Arc::new(users()),
        settings(Duration::from_millis(300)),
        sasl_metrics.clone(),
    ));
    let handler = Arc::new(SaslHandler::new(service, io_timeout));
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(handler.serve(server, CancellationToken::new()));
    let (r, w) = tokio::io::split(client);
    let mut c = Client {
        reader: BufReader::new(r),
        writer: w,
        metrics: sasl_metrics,
    };
    let mut handshake = Vec::new();
    loop {
        let l = c.line().await.expect("handshake");
        let done = l == "DONE";
        handshake.push(l);
        if done {
            break;
        }
    }
    assert_eq!(handshake[0], "VERSION\t1\t2");
    assert!(handshake[1].starts_with("MECH\tPLAIN"));
    assert!(handshake[3].starts_with("SPID\t"));
    c.send("VERSION\t1\t0").await;
    c.send("CPID\t4242").await;
    c
}

fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

#[tokio::test]
async fn plain_with_initial_response() {
    let mut c = connect().await;
    let resp = b64(b"\0 User@Example.org\0s3cret\0x");
    c.send(&format!(
        "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.1\tresp={resp}"
    ))
    .await;
    assert_eq!(
        c.line().await.unwrap(),
        "OK\t1\tuser=user@example.org",
        "canonical login"
    );
    c.send(&format!(
        "AUTH\t2\tPLAIN\tservice=smtp\tresp={}",
        b64(b"\0user@example.org\0wrong")
    ))
    .await;
    assert_eq!(
        c.line().await.unwrap(),
        "FAIL\t2\tuser=user@example.org\treason=authentication failed"
    );
    assert_eq!(
        c.metrics
            .auth
            .with_label_values(&["PLAIN", "success"])
            .get(),
        1
    );
    assert_eq!(
        c.metrics
            .auth
            .with_label_values(&["PLAIN", "invalid_credentials"])
            .get(),
        1
    );
}

#[tokio::test]
async fn plain_without_initial_response_gets_an_empty_challenge() {
    let mut c = connect().await;
    c.send("AUTH\t1\tPLAIN\tservice=smtp").await;
    assert_eq!(c.line().await.unwrap(), "CONT\t1\t");
    c.send(&format!(
        "CONT\t1\t{}",
        b64(b"\0user@example.org\0s3cret\0x")
    ))
    .await;
    assert_eq!(c.line().await.unwrap(), "OK\t1\tuser=user@example.org");
}

#[tokio::test]
async fn login_with_and_without_initial_response() {
    let mut c = connect().await;
    c.send("AUTH\t1\tLOGIN\tservice=smtp").await;
    assert_eq!(c.line().await.unwrap(), "CONT\t1\tVXNlcm5hbWU6");
    c.send(&format!("CONT\t1\t{}", b64(b"user@example.org")))
        .await;
    assert_eq!(c.line().await.unwrap(), "CONT\t1\tUGFzc3dvcmQ6");
    c.send(&format!("CONT\t1\t{}", b64(b"s3cret\0x"))).await;
    assert_eq!(c.line().await.unwrap(), "OK\t1\tuser=user@example.org");

    c.send(&format!(
        "AUTH\t2\tLOGIN\tservice=smtp\tresp={}",
        b64(b"user@example.org")
    ))
    .await;
    assert_eq!(
        c.line().await.unwrap(),
        "CONT\t2\tUGFzc3dvcmQ6",
        "username taken from resp="
    );
    c.send(&format!("CONT\t2\t{}", b64(b"s3cret\0x"))).await;
    assert_eq!(c.line().await.unwrap(), "OK\t2\tuser=user@example.org");
}

#[tokio::test]
async fn disabled_users_get_the_backends_reason() {
    let mut c = connect().await;
    c.send(&format!(
        "AUTH\t1\tPLAIN\tresp={}",
        b64(b"\0spam@example.org\0pw")
    ))
    .await;
    assert_eq!(
        c.line().await.unwrap(),
        "FAIL\t1\tuser=spam@example.org\treason=user disabled due to spam role"
    );
}

#[tokio::test]
async fn malformed_requests_fail_and_the_connection_stays_usable() {
    let mut c = connect().await;
    c.send("AUTH\t1\tPLAIN\tresp=!!!").await;
    assert!(
        c.line()
            .await
            .unwrap()
            .starts_with("FAIL\t1\treason=invalid base64")
    );
    c.send(&format!(
        "AUTH\t2\tPLAIN\tresp={}",
        b64(b"\0user@example.org")
    ))
    .await;
    assert_eq!(
        c.line().await.unwrap(),
        "FAIL\t2\treason=invalid PLAIN payload format"
    );
    c.send(&format!(
        "AUTH\t3\tPLAIN\tresp={}",
        b64(b"admin\0user@example.org\0s3cret\0x")
    ))
    .await;
    assert!(c.line().await.unwrap().contains("authorization identity"));
    c.send("AUTH\t4\tCRAM-MD5\tservice=smtp").await;
    assert_eq!(
        c.line().await.unwrap(),
        "FAIL\t4\treason=Unsupported mechanism"
    );
    c.send("AUTH\t5").await;
    assert_eq!(
        c.line().await.unwrap(),
        "FAIL\t0\treason=Invalid AUTH request"
    );
    c.send("CONT\t9\tZm9v").await; // stray: ignored
    c.send(&format!(
        "AUTH\t6\tPLAIN\tresp={}",
        b64(b"\0user@example.org\0s3cret\0x")
    ))
    .await;
    assert_eq!(c.line().await.unwrap(), "OK\t6\tuser=user@example.org");
    assert_eq!(
        c.metrics
            .auth
            .with_label_values(&["unsupported", "error"])
            .get(),
        1
    );
}

#[tokio::test]
async fn an_abandoned_exchange_does_not_leak_into_the_next() {
    let mut c = connect().await;
    c.send("AUTH\t1\tLOGIN\tservice=smtp").await;
    assert_eq!(c.line().await.unwrap(), "CONT\t1\tVXNlcm5hbWU6");
    // The SMTP client sent `*`; Postfix tells us nothing and starts a new AUTH.
    c.send(&format!(
        "AUTH\t2\tPLAIN\tresp={}",
        b64(b"\0user@example.org\0s3cret\0x")
    ))
    .await;
    assert_eq!(c.line().await.unwrap(), "OK\t2\tuser=user@example.org");
}

#[tokio::test]
async fn backend_trouble_drops_the_connection_instead_of_failing() {
    for login in ["down@example.org", "slow@example.org"] {
        let mut c = connect().await;
        c.send(&format!(
            "AUTH\t1\tPLAIN\tresp={}",
            b64(format!("\0{login}\0pw").as_bytes())
        ))
        .await;
        assert_eq!(
            c.line().await,
            None,
            "{login}: closed without FAIL, so Postfix answers 454"
        );
        assert_eq!(c.metrics.unavailable.get(), 1);
    }
}

#[tokio::test]
async fn wrong_client_version_closes() {
    let metrics = Metrics::new().unwrap();
    let service = Arc::new(SaslService::new(
        Arc::new(users()),
        settings(Duration::from_secs(1)),
        SaslMetrics::register(&metrics).unwrap(),
    ));
    let handler = Arc::new(SaslHandler::new(service, Duration::from_secs(5)));
    let (mut client, server) = tokio::io::duplex(4096);
    tokio::spawn(handler.serve(server, CancellationToken::new()));
    client.write_all(b"VERSION\t2\t0\nCPID\t1\n").await.unwrap();
    let mut all = String::new();
    client.read_to_string(&mut all).await.unwrap();
    assert!(all.ends_with("DONE\n"), "handshake then close: {all:?}");
}

#[tokio::test]
async fn overlong_lines_close_the_connection() {
    let mut c = connect().await;
    c.send(&"A".repeat(MAX_LINE + 10)).await;
    assert_eq!(c.line().await, None);
}

#[tokio::test]
async fn a_line_trickled_byte_by_byte_is_cut_off_at_its_deadline() {
    let mut c = connect_with(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let line = format!(
        "AUTH\t1\tPLAIN\tservice=smtp\tresp={}\n",
        b64(b"\0user@example.org\0secret")
    );
    for byte in line.as_bytes() {
        // Each byte comes well within the timeout; the line as a whole does not.
        if c.writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert_eq!(c.line().await, None, "closed without a reply");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut off at the deadline"
    );
}

#[test]
fn cookies_are_32_hex_characters_and_differ() {
    let (a, b) = (cookie(1), cookie(1));
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b, "same connection id, still different cookies");
    assert_ne!(cookie(2), cookie(3));
}
