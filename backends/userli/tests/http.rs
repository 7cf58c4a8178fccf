//! The userli backend against a fake userli API (wiremock) and raw TCP servers.

use std::time::Duration;

use postfix_adapter_backend::{Address, BackendError, LookupBackend};
use postfix_adapter_backend_userli::{MAX_BODY_BYTES, UserliBackend, UserliConfig, UserliError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "e38a0bc6b5de5b7c6137eb9d383d1977";

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn config(base: &str) -> UserliConfig {
    UserliConfig::new(Url::parse(base).unwrap(), TOKEN)
}

fn backend_at(base: &str) -> UserliBackend {
    UserliBackend::new(config(base), None).unwrap()
}

fn backend(server: &MockServer) -> UserliBackend {
    backend_at(&server.uri())
}

async fn mount(server: &MockServer, p: &str, status: u16, body: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(server)
        .await;
}

/// Any request at all fails the test when the server is dropped.
async fn forbid_all_requests(server: &MockServer) {
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(server)
        .await;
}

#[tokio::test]
async fn basic_dataset_conformance() {
    let server = MockServer::start().await;
    let t = |s: &str| format!("/api/postfix/{s}");
    for d in ["example.org", "example.com"] {
        mount(&server, &t(&format!("domain/{d}")), 200, json!(true)).await;
    }
    mount(&server, &t("domain/example.net"), 200, json!(false)).await;
    for m in ["user", "user2", "spam", "admin", "mailcrypt"] {
        mount(
            &server,
            &t(&format!("mailbox/{m}@example.org")),
            200,
            json!(true),
        )
        .await;
    }
    mount(&server, &t("mailbox/domain@example.com"), 200, json!(true)).await;
    for m in ["deleted", "alias", "nobody"] {
        mount(
            &server,
            &t(&format!("mailbox/{m}@example.org")),
            200,
            json!(false),
        )
        .await;
    }
    for a in ["alias", "alias2"] {
        mount(
            &server,
            &t(&format!("alias/{a}@example.org")),
            200,
            json!(["user2@example.org"]),
        )
        .await;
    }
    for a in [
        "user@example.org",
        "postmaster@example.org",
        "postmaster@unmanaged.org",
    ] {
        mount(&server, &t(&format!("alias/{a}")), 200, json!([])).await;
    }
    mount(
        &server,
        &t("senders/user@example.org"),
        200,
        json!(["user@example.org"]),
    )
    .await;
    for s in ["user2", "alias"] {
        mount(
            &server,
            &t(&format!("senders/{s}@example.org")),
            200,
            json!(["user2@example.org"]),
        )
        .await;
    }
    for s in ["deleted", "nobody"] {
        mount(
            &server,
            &t(&format!("senders/{s}@example.org")),
            200,
            json!([]),
        )
        .await;
    }

    let b = backend(&server);
    assert_eq!(b.name(), "userli");
    postfix_adapter_backend::testkit::assert_basic_dataset(&b).await;
}

/// The demo data's address-extension rows, as userli answers them: every key
/// literally, no stripping on the server.
#[tokio::test]
async fn extension_rows_conformance() {
    let server = MockServer::start().await;
    let t = |s: &str| format!("/api/postfix/{s}");
    mount(
        &server,
        &t("mailbox/first-last@example.org"),
        200,
        json!(true),
    )
    .await;
    mount(&server, &t("mailbox/first@example.org"), 200, json!(false)).await;
    mount(
        &server,
        &t("mailbox/first-tag@example.org"),
        200,
        json!(false),
    )
    .await;
    mount(
        &server,
        &t("alias/first@example.org"),
        200,
        json!(["user2@example.org"]),
    )
    .await;
    mount(&server, &t("alias/first-last@example.org"), 200, json!([])).await;
    mount(
        &server,
        &t("senders/first-last@example.org"),
        200,
        json!(["first-last@example.org"]),
    )
    .await;
    postfix_adapter_backend::testkit::assert_extension_rows(&backend(&server)).await;
}

#[tokio::test]
async fn sends_token_accept_content_type_and_user_agent() {
    let server = MockServer::start().await;
    // Exactly the Go adapter's.
    let ua = "userli-postfix-adapter";
    for (endpoint, body) in [
        ("alias", json!(["user2@example.org"])),
        ("mailbox", json!(true)),
        ("senders", json!(["user2@example.org"])),
    ] {
        Mock::given(method("GET"))
            .and(path(format!("/api/postfix/{endpoint}/alias@example.org")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("accept", "application/json"))
            .and(header("content-type", "application/json"))
            .and(header("user-agent", ua))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
    }
    for domain in ["example.org", "health-check.invalid"] {
        Mock::given(method("GET"))
            .and(path(format!("/api/postfix/domain/{domain}")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("accept", "application/json"))
            .and(header("user-agent", ua))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!(domain == "example.org")))
            .expect(1)
            .mount(&server)
            .await;
    }

    let b = backend(&server);
    let a = addr("alias@example.org");
    assert_eq!(b.aliases(&a).await.unwrap(), vec!["user2@example.org"]);
    assert!(b.mailbox_exists(&a).await.unwrap());
    assert_eq!(b.senders(&a).await.unwrap(), vec!["user2@example.org"]);
    assert!(b.domain_exists("example.org").await.unwrap());
    // The probe answers `false` for the reserved domain; any boolean means "up".
    b.health().await.unwrap();
}

#[tokio::test]
async fn custom_user_agent_is_sent() {
    let server = MockServer::start().await;
    Mock::given(path("/api/postfix/domain/example.org"))
        .and(header("user-agent", "custom/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.user_agent = "custom/1".to_owned();
    let b = UserliBackend::new(cfg, None).unwrap();
    assert!(b.domain_exists("example.org").await.unwrap());
}

#[tokio::test]
async fn base_url_with_and_without_slash_and_prefix() {
    let server = MockServer::start().await;
    Mock::given(path("/api/postfix/domain/example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(path("/userli/api/postfix/domain/example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
        .expect(2)
        .mount(&server)
        .await;
    let uri = server.uri();
    for base in [
        uri.clone(),
        format!("{uri}/"),
        format!("{uri}/userli"),
        format!("{uri}/userli/"),
    ] {
        assert!(
            backend_at(&base)
                .domain_exists("example.org")
                .await
                .unwrap(),
            "{base}"
        );
    }
}

#[tokio::test]
async fn allowed_odd_keys_are_one_encoded_segment() {
    let server = MockServer::start().await;
    for p in [
        "/api/postfix/domain/b%C3%BCcher.example",
        "/api/postfix/domain/*",
        "/api/postfix/mailbox/user+tag@example.org",
        "/api/postfix/mailbox/user@b%C3%BCcher.example",
        "/api/postfix/mailbox/First.Last@Example.ORG",
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
            .expect(1)
            .mount(&server)
            .await;
    }
    let b = backend(&server);
    assert!(b.domain_exists("bücher.example").await.unwrap());
    assert!(b.domain_exists("*").await.unwrap());
    assert!(
        b.mailbox_exists(&addr("user+tag@example.org"))
            .await
            .unwrap()
    );
    assert!(
        b.mailbox_exists(&addr("user@bücher.example"))
            .await
            .unwrap()
    );
    assert!(
        b.mailbox_exists(&addr("First.Last@Example.ORG"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn hostile_keys_make_no_request() {
    let server = MockServer::start().await;
    forbid_all_requests(&server).await;
    let b = backend(&server);

    for domain in [
        "",
        ".",
        "..",
        "a..b",
        ".example.org",
        "example.org.",
        "exa/mple.org",
        "../../admin",
        "exa\\mple.org",
        "example.org?x=1",
        "example.org#x",
        "example%2Forg",
        "a b",
        "a\tb",
        "a\u{0}b",
        "user@example.org",
    ] {
        assert!(!b.domain_exists(domain).await.unwrap(), "{domain:?}");
    }
    for address in [
        "us/er@example.org",
        "user?x@example.org",
        "user#x@example.org",
        "user%40x@example.org",
        "..@..",
        "user@..",
        "user@example..org",
        "user@exa/mple.org",
        "user@example.org?x",
        "üser@example.org",
        "\"a@b\"@example.org",
        "srs0=hash=tt=example.com=user@forwarder.example",
    ] {
        let a = addr(address);
        assert!(b.aliases(&a).await.unwrap().is_empty(), "{address}");
        assert!(!b.mailbox_exists(&a).await.unwrap(), "{address}");
        assert!(b.senders(&a).await.unwrap().is_empty(), "{address}");
    }
}

fn invalid<T>(r: Result<T, BackendError>) -> bool {
    matches!(r, Err(BackendError::InvalidResponse(_)))
}

#[tokio::test]
async fn json_shapes() {
    let server = MockServer::start().await;
    let raw = |p: &str, body: &str| {
        Mock::given(path(format!("/api/postfix/{p}"))).respond_with(
            ResponseTemplate::new(200).set_body_raw(body.to_owned(), "application/json"),
        )
    };
    raw("alias/null@x.org", "null").mount(&server).await;
    raw("alias/empty@x.org", "[]").mount(&server).await;
    // Symfony's escaping, several destinations in storage order, an empty entry dropped.
    raw(
        "alias/many@x.org",
        r#"["a\u0040x.org","",  "b@y.org" ,"c\/d@z.org"]"#,
    )
    .mount(&server)
    .await;
    raw("alias/object@x.org", r#"{"error":"nope"}"#)
        .mount(&server)
        .await;
    raw("alias/string@x.org", r#""a@x.org""#)
        .mount(&server)
        .await;
    raw("alias/numbers@x.org", "[1,2]").mount(&server).await;
    raw("alias/broken@x.org", r#"["a@x.org""#)
        .mount(&server)
        .await;
    raw("alias/html@x.org", "<html>login</html>")
        .mount(&server)
        .await;
    raw("alias/blank@x.org", "").mount(&server).await;
    raw("alias/trailing@x.org", "[] []").mount(&server).await;
    raw("senders/null@x.org", "null").mount(&server).await;
    raw("senders/many@x.org", r#"["many@x.org","owner@x.org"]"#)
        .mount(&server)
        .await;
    raw("senders/object@x.org", "{}").mount(&server).await;
    raw("domain/true.org", "true").mount(&server).await;
    raw("domain/false.org", "false").mount(&server).await;
    raw("domain/null.org", "null").mount(&server).await;
    raw("domain/one.org", "1").mount(&server).await;
    raw("domain/string.org", r#""true""#).mount(&server).await;
    raw("domain/list.org", "[true]").mount(&server).await;
    raw("mailbox/true@x.org", " true\n").mount(&server).await;
    raw("mailbox/null@x.org", "null").mount(&server).await;
    raw("mailbox/object@x.org", r#"{"ok":true}"#)
        .mount(&server)
        .await;
    raw("mailbox/broken@x.org", "tru").mount(&server).await;

    let b = backend(&server);

    assert!(b.aliases(&addr("null@x.org")).await.unwrap().is_empty());
    assert!(b.aliases(&addr("empty@x.org")).await.unwrap().is_empty());
    assert_eq!(
        b.aliases(&addr("many@x.org")).await.unwrap(),
        vec!["a@x.org", "b@y.org", "c/d@z.org"]
    );
    for bad in [
        "object", "string", "numbers", "broken", "html", "blank", "trailing",
    ] {
        assert!(
            invalid(b.aliases(&addr(&format!("{bad}@x.org"))).await),
            "{bad}"
        );
    }
    assert!(b.senders(&addr("null@x.org")).await.unwrap().is_empty());
    assert_eq!(
        b.senders(&addr("many@x.org")).await.unwrap(),
        vec!["many@x.org", "owner@x.org"]
    );
    assert!(invalid(b.senders(&addr("object@x.org")).await));

    assert!(b.domain_exists("true.org").await.unwrap());
    assert!(!b.domain_exists("false.org").await.unwrap());
    assert!(!b.domain_exists("null.org").await.unwrap());
    for bad in ["one.org", "string.org", "list.org"] {
        assert!(invalid(b.domain_exists(bad).await), "{bad}");
    }
    assert!(b.mailbox_exists(&addr("true@x.org")).await.unwrap());
    assert!(!b.mailbox_exists(&addr("null@x.org")).await.unwrap());
    assert!(invalid(b.mailbox_exists(&addr("object@x.org")).await));
    assert!(invalid(b.mailbox_exists(&addr("broken@x.org")).await));
}

#[tokio::test]
async fn non_200_statuses_are_errors() {
    let server = MockServer::start().await;
    mount(
        &server,
        "/api/postfix/alias/a401@x.org",
        401,
        json!({"error": "Invalid API token"}),
    )
    .await;
    mount(
        &server,
        "/api/postfix/alias/a403@x.org",
        403,
        json!({"error": {"message": "Token does not have required scope: postfix", "code": 0}}),
    )
    .await;
    // Bodies that would decode as answers must still not be taken for one.
    mount(&server, "/api/postfix/alias/a404@x.org", 404, json!([])).await;
    mount(&server, "/api/postfix/alias/a500@x.org", 500, json!([])).await;
    mount(&server, "/api/postfix/domain/d500.org", 500, json!(false)).await;
    mount(
        &server,
        "/api/postfix/mailbox/m503@x.org",
        503,
        json!(false),
    )
    .await;
    mount(&server, "/api/postfix/alias/a204@x.org", 204, json!(null)).await;
    Mock::given(path("/api/postfix/senders/s302@x.org"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/login"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(path("/api/postfix/domain/health-check.invalid"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "No API token provided"})),
        )
        .mount(&server)
        .await;

    let b = backend(&server);
    match b.aliases(&addr("a401@x.org")).await {
        Err(BackendError::Unauthorized(m)) => {
            assert!(m.contains("401") && m.contains("Invalid API token"), "{m}");
            assert!(!m.contains(TOKEN));
        }
        other => panic!("401: {other:?}"),
    }
    match b.aliases(&addr("a403@x.org")).await {
        Err(BackendError::Unauthorized(m)) => {
            assert!(m.contains("403") && m.contains("scope"), "{m}")
        }
        other => panic!("403: {other:?}"),
    }
    assert!(matches!(
        b.health().await,
        Err(BackendError::Unauthorized(_))
    ));
    for (result, code) in [
        (b.aliases(&addr("a404@x.org")).await.map(|_| ()), "404"),
        (b.aliases(&addr("a500@x.org")).await.map(|_| ()), "500"),
        (b.domain_exists("d500.org").await.map(|_| ()), "500"),
        (
            b.mailbox_exists(&addr("m503@x.org")).await.map(|_| ()),
            "503",
        ),
        (b.aliases(&addr("a204@x.org")).await.map(|_| ()), "204"),
        (b.senders(&addr("s302@x.org")).await.map(|_| ()), "302"),
    ] {
        match result {
            Err(BackendError::InvalidResponse(m)) => assert_eq!(m, format!("HTTP {code}")),
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let server = MockServer::start().await;
    let mut big = Vec::with_capacity(MAX_BODY_BYTES + 16);
    big.push(b'[');
    while big.len() < MAX_BODY_BYTES {
        big.extend_from_slice(br#""aaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org","#);
    }
    big.extend_from_slice(br#""x@example.org"]"#);
    Mock::given(path("/api/postfix/alias/big@example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(big, "application/json"))
        .mount(&server)
        .await;
    let b = backend(&server);
    match b.aliases(&addr("big@example.org")).await {
        Err(BackendError::InvalidResponse(m)) => assert!(m.contains("larger"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Serves one canned HTTP/1.1 response per connection; returns the base URL.
async fn raw_server(response: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/")
}

#[tokio::test]
async fn oversized_chunked_body_is_refused() {
    // No Content-Length: the cap must hold while streaming.
    let mut response =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..5 {
        response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        response.extend_from_slice(&chunk);
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"2\r\n[]\r\n0\r\n\r\n");
    let b = backend_at(&raw_server(response).await);
    match b.aliases(&addr("big@example.org")).await {
        Err(BackendError::InvalidResponse(m)) => assert!(m.contains("larger"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn small_chunked_body_is_read() {
    let response =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[\"a@x\r\n4\r\n.org\r\n2\r\n\"]\r\n0\r\n\r\n"
            .to_vec();
    let b = backend_at(&raw_server(response).await);
    assert_eq!(
        b.aliases(&addr("a@example.org")).await.unwrap(),
        vec!["a@x.org"]
    );
}

#[tokio::test]
async fn slow_response_times_out() {
    let server = MockServer::start().await;
    Mock::given(path("/api/postfix/domain/example.org"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!(true))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.timeout = Duration::from_millis(200);
    let b = UserliBackend::new(cfg, None).unwrap();
    let start = std::time::Instant::now();
    assert!(matches!(
        b.domain_exists("example.org").await,
        Err(BackendError::Timeout)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn connection_refused_is_unavailable_without_the_address() {
    let port = free_port().await;
    let b = backend_at(&format!("http://127.0.0.1:{port}/"));
    match b.mailbox_exists(&addr("secret-user@example.org")).await {
        Err(err @ BackendError::Unavailable(_)) => {
            let text = format!("{err} {err:?}");
            assert!(!text.contains("secret-user"), "address leaked: {text}");
            // Where it went and why, each cause once: not just "error sending request".
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("error sending request to http://127.0.0.1:{port}")),
                "{shown}"
            );
            assert!(shown.contains("Connection refused"), "{shown}");
            assert_eq!(shown.matches("Connection refused").count(), 1, "{shown}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.health().await,
        Err(BackendError::Unavailable(_))
    ));
}

#[tokio::test]
async fn https_uses_rustls_and_fails_cleanly_against_plain_http() {
    // The client is built with the ring provider; a TLS handshake against a plain
    // HTTP server must be an ordinary "unavailable", not a panic.
    let server = MockServer::start().await;
    forbid_all_requests(&server).await;
    let port = server.address().port();
    let b = backend_at(&format!("https://127.0.0.1:{port}/"));
    match b.domain_exists("example.org").await {
        Err(err @ BackendError::Unavailable(_)) => {
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("to https://127.0.0.1:{port}: ")),
                "the URL and a cause after it: {shown}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_defaults_and_redacted_debug() {
    let cfg = config("https://userli.example.org/");
    assert_eq!(cfg.timeout, Duration::from_secs(3));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
    assert_eq!(cfg.max_idle_per_host, 64);
    assert_eq!(cfg.user_agent, "userli-postfix-adapter");
    let dbg = format!("{cfg:?}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    assert!(!dbg.contains(TOKEN), "{dbg}");
    let b = UserliBackend::new(cfg, None).unwrap();
    assert!(!format!("{b:?}").contains(TOKEN));
}

#[test]
fn invalid_base_url_is_a_construction_error() {
    let err = UserliBackend::new(
        UserliConfig::new(Url::parse("mailto:a@b").unwrap(), TOKEN),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, UserliError::InvalidBaseUrl { .. }), "{err}");
}

#[test]
fn metrics_cannot_be_registered_twice() {
    let registry = prometheus::Registry::new();
    UserliBackend::new(config("http://h/"), Some(&registry)).unwrap();
    let err = UserliBackend::new(config("http://h/"), Some(&registry)).unwrap_err();
    assert!(matches!(err, UserliError::Metrics(_)), "{err}");
}

/// The backend contract, against a fake userli holding the facts; and with userli
/// unreachable, every question is an error.
#[tokio::test]
async fn conforms_to_the_backend_contract() {
    use postfix_adapter_backend::SmtpQuota;
    use postfix_adapter_backend::testkit::conformance::{Facts, check, check_unavailable};
    let server = MockServer::start().await;
    let t = |s: &str| format!("/api/postfix/{s}");
    mount(&server, &t("domain/example.org"), 200, json!(true)).await;
    mount(&server, &t("domain/example.net"), 200, json!(false)).await;
    mount(&server, &t("mailbox/user@example.org"), 200, json!(true)).await;
    mount(&server, &t("mailbox/nobody@example.org"), 200, json!(false)).await;
    for key in ["nobody@example.org", "user@example.org"] {
        mount(&server, &t(&format!("alias/{key}")), 200, json!([])).await;
    }
    mount(
        &server,
        &t("alias/alias@example.org"),
        200,
        json!(["user2@example.org", "user@example.org"]),
    )
    .await;
    mount(&server, &t("senders/nobody@example.org"), 200, json!([])).await;
    mount(
        &server,
        &t("senders/user@example.org"),
        200,
        json!(["user@example.org"]),
    )
    .await;
    mount(
        &server,
        &t("smtp_quota/user@example.org"),
        200,
        json!({"per_hour": 100, "per_day": 1000}),
    )
    .await;
    mount(
        &server,
        &t("smtp_quota/nobody@example.org"),
        404,
        json!({"error": "User not found"}),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .and(wiremock::matchers::body_json(
            json!({"email": "user@example.org", "password": "password"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "success"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "authentication failed"})),
        )
        .mount(&server)
        .await;
    let facts = Facts {
        domain: Some("example.org"),
        foreign_domain: Some("example.net"),
        mailbox: Some("user@example.org"),
        unknown_address: Some("nobody@example.org"),
        alias: Some((
            "alias@example.org",
            &["user2@example.org", "user@example.org"],
        )),
        senders: Some(("user@example.org", &["user@example.org"])),
        login: Some(("user@example.org", b"password")),
        quota: Some((
            "user@example.org",
            SmtpQuota {
                per_hour: 100,
                per_day: 1000,
            },
        )),
    };
    check(&backend(&server), &facts).await;

    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    check_unavailable(&backend_at(&dead_url), &facts).await;
}
