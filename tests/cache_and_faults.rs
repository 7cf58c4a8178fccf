//! The cache, coalescing, stale answers and the circuit breaker, end to end
//! through the socketmap server in front of a fake userli (wiremock) whose faults
//! we inject.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Running, http_get};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn start_userli(base_url: &str, extra: &[(&str, &str)]) -> Running {
    let mut env = vec![("LOOKUP_TIMEOUT", "300ms")];
    env.extend_from_slice(extra);
    common::start_userli(base_url, &env).await
}

fn ok_json(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn cache_count(server: &Running, handler: &str, result: &str) -> u64 {
    gauge(
        server,
        "userli_postfix_adapter_lookup_cache_total",
        &format!("handler=\"{handler}\",result=\"{result}\""),
    ) as u64
}

/// The value of one metric series, as `/metrics` shows it.
fn gauge(server: &Running, name: &str, labels: &str) -> f64 {
    common::metric(&server.metrics.render(), name, labels)
}

#[tokio::test]
async fn repeated_lookups_are_answered_from_the_cache() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/mailbox/user@example.org"))
        .respond_with(ok_json(serde_json::json!(true)))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/mailbox/nobody@example.org"))
        .respond_with(ok_json(serde_json::json!(false)))
        .expect(1)
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &[]).await;
    let mut c = Client::tcp(server.tcp()).await;
    for _ in 0..5 {
        assert_eq!(c.ask("mailbox user@example.org").await, "OK 1");
        assert_eq!(c.ask("mailbox Nobody@example.org").await, "NOTFOUND");
    }
    assert_eq!(cache_count(&server, "mailbox", "hit"), 4);
    assert_eq!(cache_count(&server, "mailbox", "negative_hit"), 4);
    server.shutdown().await;
    api.verify().await;
}

#[tokio::test]
async fn concurrent_lookups_of_one_cold_key_make_one_request() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/alias/list@example.org"))
        .respond_with(
            ok_json(serde_json::json!(["a@example.org", "b@example.org"]))
                .set_delay(Duration::from_millis(100)),
        )
        .expect(1)
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = server.tcp();
        tasks.push(tokio::spawn(async move {
            Client::tcp(addr).await.ask("alias list@example.org").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "OK a@example.org,b@example.org");
    }
    server.shutdown().await;
    api.verify().await;
}

#[tokio::test]
async fn answers_expire_after_their_ttls() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/domain/example.org"))
        .respond_with(ok_json(serde_json::json!(true)))
        .expect(2)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/domain/example.net"))
        .respond_with(ok_json(serde_json::json!(false)))
        .expect(2)
        .mount(&api)
        .await;
    let server = start_userli(
        &api.uri(),
        &[
            ("LOOKUP_CACHE_TTL", "400ms"),
            ("LOOKUP_NEGATIVE_CACHE_TTL", "200ms"),
        ],
    )
    .await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(c.ask("domain example.org").await, "OK 1");
    assert_eq!(c.ask("domain example.net").await, "NOTFOUND");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.ask("domain example.org").await, "OK 1", "still fresh");
    assert_eq!(
        c.ask("domain example.net").await,
        "NOTFOUND",
        "negative expired: refetched"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.ask("domain example.org").await,
        "OK 1",
        "positive expired: refetched"
    );
    server.shutdown().await;
    api.verify().await;
}

#[tokio::test]
async fn zero_ttl_disables_the_cache() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/domain/example.org"))
        .respond_with(ok_json(serde_json::json!(true)))
        .expect(3)
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &[("LOOKUP_CACHE_TTL", "0")]).await;
    let mut c = Client::tcp(server.tcp()).await;
    for _ in 0..3 {
        assert_eq!(c.ask("domain example.org").await, "OK 1");
    }
    server.shutdown().await;
    api.verify().await;
}

/// Warm the cache, let the entries expire, break the API in each way: known keys
/// keep resolving from stale entries, unseen keys get `TEMP` within the deadline.
#[tokio::test]
async fn stale_answers_while_the_api_fails_in_any_way() {
    let faults: Vec<(&str, ResponseTemplate)> = vec![
        ("500", ResponseTemplate::new(500)),
        (
            "malformed",
            ResponseTemplate::new(200).set_body_string("{not json"),
        ),
        (
            "wrong type",
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"a": 1})),
        ),
        (
            "slow",
            ok_json(serde_json::json!(false)).set_delay(Duration::from_secs(5)),
        ),
    ];
    for (name, fault) in faults {
        let api = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/postfix/mailbox/user@example.org"))
            .respond_with(ok_json(serde_json::json!(true)))
            .mount(&api)
            .await;
        let server = start_userli(
            &api.uri(),
            &[
                ("LOOKUP_CACHE_TTL", "100ms"),
                ("CIRCUIT_BREAKER_FAILURES", "0"),
            ],
        )
        .await;
        let mut c = Client::tcp(server.tcp()).await;
        assert_eq!(c.ask("mailbox user@example.org").await, "OK 1");
        tokio::time::sleep(Duration::from_millis(150)).await;

        api.reset().await;
        Mock::given(method("GET"))
            .respond_with(fault)
            .mount(&api)
            .await;
        let started = Instant::now();
        assert_eq!(
            c.ask("mailbox user@example.org").await,
            "OK 1",
            "{name}: stale answer"
        );
        assert_eq!(
            c.ask("mailbox new@example.org").await,
            "TEMP Error fetching mailbox",
            "{name}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{name}: deadlines kept"
        );
        assert_eq!(cache_count(&server, "mailbox", "stale"), 1, "{name}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_dead_api_keeps_known_keys_resolving() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/alias/alias@example.org"))
        .respond_with(ok_json(serde_json::json!(["user2@example.org"])))
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &[("LOOKUP_CACHE_TTL", "50ms")]).await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(
        c.ask("alias alias@example.org").await,
        "OK user2@example.org"
    );
    drop(api); // connection refused from now on
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(
            c.ask("alias alias@example.org").await,
            "OK user2@example.org"
        );
        assert_eq!(
            c.ask("alias unseen@example.org").await,
            "TEMP Error fetching aliases"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_breaker_opens_answers_at_once_and_closes_after_a_good_probe() {
    let api = MockServer::start().await;
    // The background health check runs from start; it is not a lookup and does
    // not count against the breaker.
    Mock::given(path("/api/postfix/domain/health-check.invalid"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&api)
        .await;
    let server = start_userli(
        &api.uri(),
        &[
            ("CIRCUIT_BREAKER_FAILURES", "3"),
            ("CIRCUIT_BREAKER_COOLDOWN", "500ms"),
        ],
    )
    .await;
    let mut c = Client::tcp(server.tcp()).await;
    for i in 0..3 {
        assert_eq!(
            c.ask(&format!("domain d{i}.org")).await,
            "TEMP Error fetching domain"
        );
    }
    assert_eq!(
        gauge(&server, "userli_postfix_adapter_circuit_breaker_state", "") as i64,
        1,
        "open"
    );
    let (status, body) = http_get(server.http, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("circuit breaker open"), "{body}");

    // Open: no request reaches the API, answers are immediate.
    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(
            c.ask(&format!("domain open{i}.org")).await,
            "TEMP Error fetching domain"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    api.verify().await;

    // After the cool-down one probe goes through; the API is healthy again.
    api.reset().await;
    Mock::given(method("GET"))
        .respond_with(ok_json(serde_json::json!(true)))
        .mount(&api)
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.ask("domain back.org").await, "OK 1");
    assert_eq!(
        gauge(&server, "userli_postfix_adapter_circuit_breaker_state", "") as i64,
        0,
        "closed"
    );
    assert_eq!(c.ask("domain again.org").await, "OK 1");
    server.shutdown().await;
}

#[tokio::test]
async fn backend_concurrency_is_limited() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ok_json(serde_json::json!(true)).set_delay(Duration::from_millis(100)))
        .mount(&api)
        .await;
    let server = start_userli(
        &api.uri(),
        &[
            ("BACKEND_MAX_CONCURRENT_REQUESTS", "2"),
            ("LOOKUP_TIMEOUT", "2s"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let addr = server.tcp();
        tasks.push(tokio::spawn(async move {
            Client::tcp(addr)
                .await
                .ask(&format!("domain d{i}.org"))
                .await
        }));
    }
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(gauge(&server, "userli_postfix_adapter_backend_in_flight", "") as i64);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "OK 1");
    }
    assert!(peak <= 2, "peak in flight {peak}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "6 calls, 2 at a time, 100 ms each"
    );
    server.shutdown().await;
}

/// The cache survives a restart during an outage: answers learnt before are
/// served (stale) by the restarted adapter while userli is down, an unseen key
/// gets TEMP, and once userli answers again its fresh answers win. The snapshot
/// is private (0600).
#[tokio::test]
async fn cached_answers_survive_a_restart_during_an_outage() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let persist = [
        ("LOOKUP_CACHE_PERSIST", "true"),
        ("STATE_DIRECTORY", state_dir.as_str()),
    ];
    let api = MockServer::start().await;
    Mock::given(path("/api/postfix/mailbox/user@example.org"))
        .respond_with(ok_json(serde_json::json!(true)))
        .mount(&api)
        .await;
    Mock::given(path("/api/postfix/alias/alias@example.org"))
        .respond_with(ok_json(serde_json::json!(["user@example.org"])))
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &persist).await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(c.ask("mailbox user@example.org").await, "OK 1");
    assert_eq!(
        c.ask("alias alias@example.org").await,
        "OK user@example.org"
    );
    server.shutdown().await;
    let snapshot = state.path().join("lookup-cache.json");
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "it holds addresses");

    // Restarted while userli is down.
    let dead = common::free_loopback_addr();
    let server = start_userli(&format!("http://{dead}"), &persist).await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(
        c.ask("mailbox user@example.org").await,
        "OK 1",
        "stale, not TEMP"
    );
    assert_eq!(
        c.ask("alias alias@example.org").await,
        "OK user@example.org"
    );
    assert_eq!(
        c.ask("mailbox unseen@example.org").await,
        "TEMP Error fetching mailbox",
        "nothing is invented"
    );
    server.shutdown().await;

    // userli back, and the mailbox is gone: the fresh answer wins at once.
    api.reset().await;
    Mock::given(method("GET"))
        .respond_with(ok_json(serde_json::json!(false)))
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &persist).await;
    let mut c = Client::tcp(server.tcp()).await;
    assert_eq!(c.ask("mailbox user@example.org").await, "NOTFOUND");
    server.shutdown().await;
}
