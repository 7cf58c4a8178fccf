use super::*;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use bytes::BytesMut;
use postfix_adapter_backend::testkit::{Fault, StubBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A tiny backend: `user@example.org` exists, `alias@example.org` goes to two
/// addresses, `example.org` is a domain; `fail@...` and `failing.org` error;
/// `slow@...` never answers.
fn table_backend() -> StubBackend {
    StubBackend::new()
        .domain("example.org")
        .mailbox("user@example.org")
        .alias("alias@example.org", &["a@example.org", "b@example.org"])
        .alias("empty@example.org", &[""])
        .fault("fail@example.org", Fault::Other("boom".into()))
        .fault("slow@example.org", Fault::Hang)
        .fault("failing.org", Fault::Timeout)
}

struct Harness {
    client: DuplexStream,
    backend: Arc<StubBackend>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

fn harness(limits: ConnectionLimits) -> Harness {
    let backend = Arc::new(table_backend());
    let metrics = Metrics::new().unwrap();
    let service = Arc::new(LookupService::new(
        backend.clone(),
        Normalizer::new("+"),
        Duration::from_millis(200),
        metrics.clone(),
    ));
    let handler = Arc::new(SocketmapHandler::new(service, limits));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(handler.serve(server, shutdown.clone()));
    Harness {
        client,
        backend,
        shutdown,
        task,
        metrics,
    }
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_request_size: 1024,
        idle_timeout: None,
        io_timeout: Duration::from_secs(5),
    }
}

fn frame(payload: &str) -> Vec<u8> {
    netstring::encode(payload.as_bytes())
}

async fn read_reply(client: &mut DuplexStream) -> String {
    // Byte by byte, so a second reply already sent stays in the stream.
    let decoder = NetstringDecoder::new(200_000);
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = decoder.decode(&mut buf).unwrap() {
            return String::from_utf8(f.to_vec()).unwrap();
        }
        let mut byte = [0u8; 1];
        let n = client.read(&mut byte).await.unwrap();
        assert!(n > 0, "connection closed before a reply");
        buf.extend_from_slice(&byte);
    }
}

async fn ask(h: &mut Harness, payload: &str) -> String {
    h.client.write_all(&frame(payload)).await.unwrap();
    read_reply(&mut h.client).await
}

#[tokio::test]
async fn answers_every_map_with_upstream_strings() {
    let mut h = harness(limits());
    let cases = [
        ("alias alias@example.org", "OK a@example.org,b@example.org"),
        (
            "alias Alias+Tag@Example.ORG",
            "OK a@example.org,b@example.org",
        ),
        ("alias nobody@example.org", "NOTFOUND"),
        ("alias empty@example.org", "NOTFOUND"),
        ("domain example.org", "OK 1"),
        ("domain Example.ORG", "OK 1"),
        ("domain example.net", "NOTFOUND"),
        ("mailbox user@example.org", "OK 1"),
        ("mailbox other@example.org", "NOTFOUND"),
        ("senders user@example.org", "OK user@example.org"),
        ("senders nobody@example.org", "NOTFOUND"),
        ("alias fail@example.org", "TEMP Error fetching aliases"),
        ("domain failing.org", "TEMP Error fetching domain"),
        ("unknownmap somekey", "PERM Unknown map name"),
        ("invalidrequest", "PERM Invalid request format"),
        ("", "PERM Invalid request format"),
    ];
    for (request, want) in cases {
        assert_eq!(ask(&mut h, request).await, want, "{request}");
    }
}

#[tokio::test]
async fn keys_that_cannot_be_addresses_never_reach_the_backend() {
    let mut h = harness(limits());
    for request in [
        "alias example.org",
        "alias user",
        "mailbox @example.org",
        // An invisible character inside: no address (a look-alike of user@).
        "senders user@exa\u{ad}mple.org",
        "alias ",
        "senders ",
        "alias *",
        "domain  ",
    ] {
        assert_eq!(ask(&mut h, request).await, "NOTFOUND", "{request}");
    }
    assert_eq!(h.backend.call_count(), 0);
}

#[tokio::test]
async fn slow_backend_answers_temp_within_the_deadline() {
    let mut h = harness(limits());
    let started = Instant::now();
    assert_eq!(
        ask(&mut h, "alias slow@example.org").await,
        "TEMP Error fetching aliases"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The connection stays usable.
    assert_eq!(ask(&mut h, "domain example.org").await, "OK 1");
    let text = h.metrics.render();
    assert!(
        text.contains("backend_errors_total{handler=\"alias\",kind=\"timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_all_answered_in_order() {
    let mut h = harness(limits());
    let mut bytes = frame("domain example.org");
    bytes.extend(frame("domain example.net"));
    bytes.extend(frame("mailbox user@example.org"));
    h.client.write_all(&bytes).await.unwrap();
    assert_eq!(read_reply(&mut h.client).await, "OK 1");
    assert_eq!(read_reply(&mut h.client).await, "NOTFOUND");
    assert_eq!(read_reply(&mut h.client).await, "OK 1");
}

#[tokio::test]
async fn a_request_split_byte_by_byte_is_answered() {
    let mut h = harness(limits());
    for b in frame("domain example.org") {
        h.client.write_all(&[b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(read_reply(&mut h.client).await, "OK 1");
}

#[tokio::test]
async fn framing_error_closes_only_that_connection_without_reply() {
    let mut h = harness(limits());
    h.client.write_all(b"5:alias!").await.unwrap();
    let mut rest = Vec::new();
    h.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "no reply to a bad frame: {rest:?}");
    h.task.await.unwrap();
    assert!(
        h.metrics
            .render()
            .contains("socketmap_framing_errors_total{reason=\"framing\"} 1")
    );
}

#[tokio::test]
async fn oversized_declared_length_is_refused_before_buffering() {
    let mut h = harness(limits());
    h.client.write_all(b"999999:").await.unwrap();
    let mut rest = Vec::new();
    h.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn idle_timeout_closes_quietly() {
    let mut h = harness(ConnectionLimits {
        idle_timeout: Some(Duration::from_millis(50)),
        ..limits()
    });
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), h.client.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn stalled_partial_request_hits_the_io_timeout() {
    let mut h = harness(ConnectionLimits {
        io_timeout: Duration::from_millis(50),
        ..limits()
    });
    h.client.write_all(b"18:domain exa").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), h.client.read_to_end(&mut rest))
        .await
        .expect("closed by the io timeout")
        .unwrap();
    assert!(h.metrics.render().contains("reason=\"read_timeout\"} 1"));
}

#[tokio::test]
async fn a_request_trickled_byte_by_byte_is_cut_off_at_its_deadline() {
    let mut h = harness(ConnectionLimits {
        io_timeout: Duration::from_millis(300),
        ..limits()
    });
    let started = std::time::Instant::now();
    let request = frame("domain example.org");
    let mut sent = 0;
    for byte in &request {
        // Each byte comes well within the timeout; the request as a whole does not.
        if h.client.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert!(
        sent < request.len(),
        "cut off before the request was complete"
    );
    let mut rest = Vec::new();
    h.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "no reply to an incomplete request");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(h.metrics.render().contains("reason=\"read_timeout\"} 1"));
}

#[tokio::test]
async fn a_client_that_never_reads_its_replies_is_closed_at_the_write_deadline() {
    let metrics = Metrics::new().unwrap();
    let service = Arc::new(LookupService::new(
        Arc::new(table_backend()),
        Normalizer::new("+"),
        Duration::from_millis(200),
        metrics.clone(),
    ));
    let handler = Arc::new(SocketmapHandler::new(
        service,
        ConnectionLimits {
            io_timeout: Duration::from_millis(300),
            ..limits()
        },
    ));
    // A 256-byte pipe: the replies back up after a few requests.
    let (mut client, server) = tokio::io::duplex(256);
    let task = tokio::spawn(handler.serve(server, CancellationToken::new()));
    let started = std::time::Instant::now();
    let request = frame("domain example.org");
    let mut written = 0;
    // The adapter stops reading while its reply waits, so our writes block too.
    while tokio::time::timeout(Duration::from_millis(100), client.write_all(&request))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        written += 1;
        assert!(written < 1000, "the adapter kept reading without replying");
    }
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("closed at the write deadline")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(metrics.render().contains("reason=\"write_timeout\"} 1"));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_started_requests() {
    let mut h = harness(limits());
    assert_eq!(ask(&mut h, "domain example.org").await, "OK 1");
    // Half a request, then shutdown: the rest arrives and is still answered.
    h.client.write_all(b"18:domain ").await.unwrap();
    tokio::task::yield_now().await;
    h.shutdown.cancel();
    h.client.write_all(b"example.org,").await.unwrap();
    assert_eq!(read_reply(&mut h.client).await, "OK 1");
    tokio::time::timeout(Duration::from_secs(2), h.task)
        .await
        .expect("idle connection closed after shutdown")
        .unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_bounded_labels() {
    let mut h = harness(limits());
    ask(&mut h, "domain example.org").await;
    ask(&mut h, "alias nobody@example.org").await;
    ask(&mut h, "whatever-user-controlled key").await;
    ask(&mut h, "bad").await;
    let text = h.metrics.render();
    for want in [
        "requests_total{handler=\"domain\",status=\"success\"} 1",
        "requests_total{handler=\"alias\",status=\"notfound\"} 1",
        "requests_total{handler=\"unknown\",status=\"error\"} 1",
        "requests_total{handler=\"invalid\",status=\"error\"} 1",
    ] {
        assert!(text.contains(want), "missing {want}");
    }
    assert!(!text.contains("whatever"));
    assert!(!text.contains("nobody@"));
}
