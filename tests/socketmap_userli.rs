//! The whole server in front of a fake userli API (wiremock): answers and,
//! above all, failure semantics. Backend trouble must be `TEMP`, never
//! `NOTFOUND` or `PERM`.

mod common;

use std::time::{Duration, Instant};

use common::{Client, free_loopback_addr, http_get};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::start_userli;

async fn mock_json(server: &MockServer, p: &str, body: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(p))
        .and(header("authorization", "Bearer test-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

#[tokio::test]
async fn answers_like_upstream() {
    let api = MockServer::start().await;
    mock_json(
        &api,
        "/api/postfix/alias/alias@example.org",
        serde_json::json!(["user1@example.com", "user2@example.com"]),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/alias/empty@example.org",
        serde_json::json!([]),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/alias/null@example.org",
        serde_json::Value::Null,
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/domain/example.org",
        serde_json::json!(true),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/domain/example.net",
        serde_json::json!(false),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/mailbox/user@example.org",
        serde_json::json!(true),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/senders/user@example.org",
        serde_json::json!(["user@example.org"]),
    )
    .await;
    // userli answers every key: the address with its extension is no alias and no
    // mailbox, so the adapter goes on to the address without it.
    mock_json(
        &api,
        "/api/postfix/alias/alias+ext@example.org",
        serde_json::json!([]),
    )
    .await;
    mock_json(
        &api,
        "/api/postfix/mailbox/alias+ext@example.org",
        serde_json::json!(false),
    )
    .await;
    let server = start_userli(&api.uri(), &[("POSTFIX_RECIPIENT_DELIMITER", "+")]).await;
    let mut c = Client::tcp(server.tcp()).await;
    for (request, want) in [
        (
            "alias alias@example.org",
            "OK user1@example.com,user2@example.com",
        ),
        (
            "alias Alias+Ext@EXAMPLE.org",
            "OK user1@example.com,user2@example.com",
        ),
        ("alias empty@example.org", "NOTFOUND"),
        ("alias null@example.org", "NOTFOUND"),
        ("domain example.org", "OK 1"),
        ("domain example.net", "NOTFOUND"),
        ("mailbox user@example.org", "OK 1"),
        ("senders user@example.org", "OK user@example.org"),
    ] {
        assert_eq!(c.ask(request).await, want, "{request}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn api_errors_answer_temp_never_notfound() {
    let api = MockServer::start().await;
    for (p, resp) in [
        (
            "/api/postfix/alias/e500@example.org",
            ResponseTemplate::new(500).set_body_json(serde_json::json!([])),
        ),
        (
            "/api/postfix/alias/e404@example.org",
            ResponseTemplate::new(404).set_body_json(serde_json::json!([])),
        ),
        (
            "/api/postfix/mailbox/e401@example.org",
            ResponseTemplate::new(401).set_body_json(serde_json::json!(false)),
        ),
        (
            "/api/postfix/mailbox/type@example.org",
            ResponseTemplate::new(200).set_body_json(serde_json::json!("yes")),
        ),
        (
            "/api/postfix/senders/garbage@example.org",
            ResponseTemplate::new(200).set_body_string("<html>"),
        ),
        (
            "/api/postfix/domain/redirect.org",
            ResponseTemplate::new(302).insert_header("location", "/elsewhere"),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(resp)
            .mount(&api)
            .await;
    }
    let server = start_userli(&api.uri(), &[]).await;
    let mut c = Client::tcp(server.tcp()).await;
    for (request, want) in [
        ("alias e500@example.org", "TEMP Error fetching aliases"),
        ("alias e404@example.org", "TEMP Error fetching aliases"),
        ("mailbox e401@example.org", "TEMP Error fetching mailbox"),
        ("mailbox type@example.org", "TEMP Error fetching mailbox"),
        ("senders garbage@example.org", "TEMP Error fetching senders"),
        ("domain redirect.org", "TEMP Error fetching domain"),
    ] {
        assert_eq!(c.ask(request).await, want, "{request}");
    }
    let metrics = server.metrics.render();
    assert!(metrics.contains("userli_postfix_adapter_http_client_requests_total{endpoint=\"alias\",status_code=\"500\"} 1"), "{metrics}");
    assert!(
        metrics.contains(
            "userli_postfix_adapter_requests_total{handler=\"alias\",status=\"error\"} 2"
        )
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_api_answers_temp_at_the_deadline() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!(true))
                .set_delay(Duration::from_secs(10)),
        )
        .mount(&api)
        .await;
    let server = start_userli(&api.uri(), &[]).await;
    let mut c = Client::tcp(server.tcp()).await;
    let started = Instant::now();
    assert_eq!(
        c.ask("domain example.org").await,
        "TEMP Error fetching domain"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        server
            .metrics
            .render()
            .contains("backend_errors_total{handler=\"domain\",kind=\"timeout\"} 1")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_api_answers_temp_and_ready_turns_503() {
    // A port that was just free: nothing listens there.
    let dead = free_loopback_addr();
    let server = start_userli(&format!("http://{dead}"), &[]).await;
    let mut c = Client::tcp(server.tcp()).await;
    for (request, want) in [
        ("alias a@example.org", "TEMP Error fetching aliases"),
        ("domain example.org", "TEMP Error fetching domain"),
        ("mailbox a@example.org", "TEMP Error fetching mailbox"),
        ("senders a@example.org", "TEMP Error fetching senders"),
    ] {
        assert_eq!(c.ask(request).await, want);
    }
    let (status, body) = http_get(server.http, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.ends_with("\"status\":\"unavailable\"}\n"), "{body}");
    assert!(
        server
            .metrics
            .render()
            .contains("userli_postfix_adapter_health_check_status 0")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn hostile_keys_stay_one_path_segment_or_never_leave() {
    let api = MockServer::start().await;
    mock_json(
        &api,
        "/api/postfix/mailbox/a%20b@ex%C3%A4mple.org",
        serde_json::json!(true),
    )
    .await;
    let server = start_userli(&api.uri(), &[]).await;
    let mut c = Client::tcp(server.tcp()).await;
    // Screened by the userli backend: no request may leave for these.
    for key in [
        "x@../../admin",
        "x@a/b",
        "x@a?b",
        "x@a#b",
        "x@a%2fb",
        "../x@example.org",
    ] {
        assert_eq!(c.ask(&format!("mailbox {key}")).await, "NOTFOUND", "{key}");
    }
    let leaked: Vec<_> = api
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.url.path().to_owned())
        // The background health check asks its own fixed key.
        .filter(|p| p != "/api/postfix/domain/health-check.invalid")
        .filter(|p| !p.starts_with("/api/postfix/mailbox/") || p.matches('/').count() != 4)
        .collect();
    assert!(
        leaked.is_empty(),
        "requests escaped their segment: {leaked:?}"
    );
    server.shutdown().await;
}
