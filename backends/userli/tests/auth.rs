//! SASL authentication against a fake userli `POST /api/postfix/auth` (wiremock).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use postfix_adapter_backend::{Address, AuthOutcome, BackendError, LookupBackend};
use postfix_adapter_backend_userli::{UserliBackend, UserliConfig};
use prometheus::Registry;
use serde_json::{Value, json};
use url::Url;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "e38a0bc6b5de5b7c6137eb9d383d1977";
const AUTH_PATH: &str = "/api/postfix/auth";
/// Quotes, backslashes, a tab, non-ASCII letters and an emoji: all must arrive as is.
const TRICKY: &str = "Pa\"5\\5\tw\u{f6}rd-\u{1f511}-SECRET-\u{2028}";

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn backend_at(base: &str, timeout: Duration, registry: Option<&Registry>) -> UserliBackend {
    captured_logs();
    let mut config = UserliConfig::new(Url::parse(base).unwrap(), TOKEN);
    config.timeout = timeout;
    UserliBackend::new(config, registry).unwrap()
}

fn backend_with(
    server: &MockServer,
    timeout: Duration,
    registry: Option<&Registry>,
) -> UserliBackend {
    backend_at(&server.uri(), timeout, registry)
}

fn backend(server: &MockServer) -> UserliBackend {
    backend_with(server, Duration::from_secs(3), None)
}

fn failure(reason: &str) -> AuthOutcome {
    AuthOutcome::Failure {
        reason: reason.to_owned(),
    }
}

/// Answers every auth request with `status` and the raw `body`.
async fn answer(server: &MockServer, status: u16, body: &str) {
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .respond_with(
            ResponseTemplate::new(status)
                .set_body_raw(body.as_bytes().to_vec(), "application/json"),
        )
        .mount(server)
        .await;
}

async fn auth(
    b: &UserliBackend,
    login: &str,
    password: &[u8],
) -> Result<AuthOutcome, BackendError> {
    b.authenticate(&addr(login), password).await
}

/// An error must never repeat the password, in `Display` or in `Debug`.
fn assert_secret_free(err: &BackendError, password: &str) {
    let shown = format!("{err} | {err:?}");
    assert!(!shown.contains(password), "{shown}");
    assert!(!shown.contains("SECRET"), "{shown}");
}

#[tokio::test]
async fn request_is_a_json_post_with_the_usual_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .and(body_json(
            json!({"email": "user@example.org", "password": "password"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "success"})))
        .expect(1)
        .mount(&server)
        .await;
    let b = backend(&server);
    assert_eq!(
        auth(&b, "user@example.org", b"password").await.unwrap(),
        AuthOutcome::Success
    );

    let requests = server.received_requests().await.unwrap();
    let ua = requests[0]
        .headers
        .get("user-agent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(ua, "userli-postfix-adapter", "the Go adapter's User-Agent");
    // Exactly the two fields userli's DTO knows.
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(sent.as_object().unwrap().len(), 2, "{sent}");
}

#[tokio::test]
async fn the_base_path_is_kept() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/userli/api/postfix/auth"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "success"})))
        .expect(1)
        .mount(&server)
        .await;
    let b = backend_at(
        &format!("{}/userli/", server.uri()),
        Duration::from_secs(3),
        None,
    );
    assert_eq!(
        auth(&b, "user@example.org", b"password").await.unwrap(),
        AuthOutcome::Success
    );
}

#[tokio::test]
async fn the_password_arrives_byte_exact() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .and(body_json(
            json!({"email": "user@example.org", "password": TRICKY}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "success"})))
        .expect(1)
        .mount(&server)
        .await;
    // White space is a password like any other (userli answers 401 if it is wrong).
    let spaced = format!(" {TRICKY} ");
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .and(body_json(
            json!({"email": "user@example.org", "password": spaced}),
        ))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "authentication failed"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let b = backend(&server);
    assert_eq!(
        auth(&b, "user@example.org", TRICKY.as_bytes())
            .await
            .unwrap(),
        AuthOutcome::Success
    );
    assert_eq!(
        auth(&b, "user@example.org", spaced.as_bytes())
            .await
            .unwrap(),
        failure("authentication failed")
    );

    let requests = server.received_requests().await.unwrap();
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        sent["password"].as_str().unwrap().as_bytes(),
        TRICKY.as_bytes()
    );
    assert_eq!(sent["email"], "user@example.org");
}

#[tokio::test]
async fn only_the_success_message_is_a_success() {
    for body in [
        r#"{"message":"authentication failed"}"#,
        r#"{"message":"Success"}"#,
        r#"{"message":true}"#,
        r#"{"error":"Invalid API token"}"#,
        r#"{}"#,
        r#""success""#,
        "true",
        "null",
        "",
        "<html>Welcome to nginx!</html>",
        r#"{"message":"success""#,
    ] {
        let server = MockServer::start().await;
        answer(&server, 200, body).await;
        let r = auth(&backend(&server), "user@example.org", TRICKY.as_bytes()).await;
        match r {
            Err(ref err @ BackendError::InvalidResponse(_)) => assert_secret_free(err, TRICKY),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_200_echoing_the_request_does_not_leak_the_password() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .respond_with(|req: &wiremock::Request| {
            ResponseTemplate::new(200).set_body_raw(req.body.clone(), "application/json")
        })
        .mount(&server)
        .await;
    let err = auth(&backend(&server), "user@example.org", TRICKY.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::InvalidResponse(_)), "{err:?}");
    assert_secret_free(&err, TRICKY);
}

#[tokio::test]
async fn userli_messages_become_the_failure_reason() {
    for (status, body, want) in [
        (
            401,
            json!({"message": "authentication failed"}),
            "authentication failed",
        ),
        (
            403,
            json!({"message": "user disabled due to spam role"}),
            "user disabled due to spam role",
        ),
        (
            403,
            json!({"message": "user password change required"}),
            "user password change required",
        ),
        (401, json!({"message": ""}), "authentication failed"),
        // Line breaks and tabs become spaces, one each, as upstream makes them.
        (
            401,
            json!({"message": "some\r\nnew reason"}),
            "some  new reason",
        ),
        (
            401,
            json!({"message": "bad\tcreds\nfor user"}),
            "bad creds for user",
        ),
    ] {
        let server = MockServer::start().await;
        answer(&server, status, &body.to_string()).await;
        let r = auth(&backend(&server), "user@example.org", b"password").await;
        assert_eq!(r.unwrap(), failure(want), "{status} {body}");
    }
}

#[tokio::test]
async fn a_reason_echoing_the_password_is_replaced() {
    let server = MockServer::start().await;
    answer(
        &server,
        401,
        &json!({"message": format!("wrong password {TRICKY}")}).to_string(),
    )
    .await;
    let r = auth(&backend(&server), "user@example.org", TRICKY.as_bytes()).await;
    assert_eq!(r.unwrap(), failure("authentication failed"));
}

#[tokio::test]
async fn token_errors_are_errors_not_bad_credentials() {
    for (status, body) in [
        (401, json!({"error": "Invalid API token"})),
        (401, json!({"error": "No API token provided"})),
        (
            403,
            json!({"error": {"message": "Token does not have required scope: postfix", "code": 403}}),
        ),
        // Both keys: the token problem wins.
        (
            401,
            json!({"error": "Invalid API token", "message": "authentication failed"}),
        ),
        // Not userli's shape at all, e.g. a proxy's own 401: not the user's fault either.
        (401, json!("unauthorized")),
    ] {
        let server = MockServer::start().await;
        answer(&server, status, &body.to_string()).await;
        let r = auth(&backend(&server), "user@example.org", TRICKY.as_bytes()).await;
        match r {
            Err(ref err @ BackendError::Unauthorized(ref msg)) => {
                assert!(msg.starts_with(&format!("HTTP {status}")), "{msg}");
                assert_secret_free(err, TRICKY);
            }
            other => panic!("{status} {body}: {other:?}"),
        }
    }
    // A proxy's HTML 403.
    let server = MockServer::start().await;
    answer(&server, 403, "<html>Forbidden</html>").await;
    assert!(matches!(
        auth(&backend(&server), "user@example.org", b"password").await,
        Err(BackendError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn other_statuses_are_errors() {
    for (status, body) in [
        (500, r#"{"error":{"message":"db","code":0}}"#),
        (502, "bad gateway"),
        (
            400,
            r#"{"error":{"message":"Request payload contains invalid \"json\" data.","code":0}}"#,
        ),
        (
            415,
            r#"{"error":{"message":"Unsupported format.","code":0}}"#,
        ),
        (
            422,
            r#"{"error":{"message":"This value should not be blank.","code":0}}"#,
        ),
        (404, r#"{"message":"authentication failed"}"#),
        (302, ""),
        (204, ""),
    ] {
        let server = MockServer::start().await;
        answer(&server, status, body).await;
        let r = auth(&backend(&server), "user@example.org", TRICKY.as_bytes()).await;
        match r {
            Err(ref err @ BackendError::InvalidResponse(ref msg)) => {
                assert_eq!(msg, &format!("HTTP {status}"));
                assert_secret_free(err, TRICKY);
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_userli_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "success"}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let b = backend_with(&server, Duration::from_millis(200), None);
    assert!(matches!(
        auth(&b, "user@example.org", b"password").await,
        Err(BackendError::Timeout)
    ));
}

#[tokio::test]
async fn an_unreachable_userli_is_unavailable() {
    let port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let b = backend_at(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(3),
        None,
    );
    let err = auth(&b, "user@example.org", TRICKY.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert_secret_free(&err, TRICKY);
}

#[tokio::test]
async fn unsendable_passwords_and_logins_fail_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "success"})))
        .expect(0)
        .mount(&server)
        .await;
    let b = backend(&server);
    let long = vec![b'a'; 4097];
    let cases: &[(&str, &[u8])] = &[
        // Not UTF-8: JSON cannot carry it unaltered, and userli cannot hold it.
        ("user@example.org", b"p\xffssword"),
        ("user@example.org", b"\xc3"),
        ("user@example.org", &[0x80; 16]),
        // userli never verifies these.
        ("user@example.org", b""),
        ("user@example.org", &long),
        // Logins userli cannot hold (the lookups' screening).
        ("us/er@example.org", b"password"),
        ("srs0=h=t=d=u@example.org", b"password"),
        ("user@example..org", b"password"),
    ];
    for (login, password) in cases {
        assert_eq!(
            auth(&b, login, password).await.unwrap(),
            failure("authentication failed"),
            "{login} {password:?}"
        );
    }
}

#[tokio::test]
async fn requests_are_counted_under_the_auth_label() {
    let server = MockServer::start().await;
    answer(&server, 401, r#"{"message":"authentication failed"}"#).await;
    let registry = Registry::new();
    let b = backend_with(&server, Duration::from_secs(3), Some(&registry));
    auth(&b, "user@example.org", b"password").await.unwrap();
    auth(&b, "user@example.org", b"password").await.unwrap();
    // Refused without a request: no sample.
    auth(&b, "user@example.org", b"\xff").await.unwrap();
    let families = registry.gather();
    let counter = families
        .iter()
        .find(|f| f.name() == "userli_postfix_adapter_http_client_requests_total")
        .unwrap();
    let samples: Vec<_> = counter
        .get_metric()
        .iter()
        .map(|m| {
            let labels: Vec<_> = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            (labels.join(","), m.get_counter().get_value() as u64)
        })
        // Every endpoint's "200" series starts at 0; only counted calls matter.
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        samples,
        vec![("endpoint=auth,status_code=401".to_owned(), 2)]
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything every test in this binary logs, at every level and from every crate.
///
/// One global subscriber, installed before the first backend is built: thread-local
/// subscribers (`set_default`) race with tests running in parallel over tracing's
/// per-callsite interest cache and can lose events.
fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("only subscriber");
        captured
    })
}

fn logs() -> String {
    String::from_utf8_lossy(&captured_logs().0.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn the_password_is_never_logged() {
    let mut errors = Vec::new();
    for (status, body) in [
        (200, r#"{"message":"success"}"#.to_owned()),
        (200, format!(r#"{{"echo":{}}}"#, json!(TRICKY))),
        (401, r#"{"message":"authentication failed"}"#.to_owned()),
        (
            403,
            r#"{"message":"user disabled due to spam role"}"#.to_owned(),
        ),
        (401, format!(r#"{{"message":{}}}"#, json!(TRICKY))),
        (
            401,
            r#"{"error":"Invalid API token (never-logged test)"}"#.to_owned(),
        ),
        (
            403,
            format!(r#"{{"error":{{"message":{}}}}}"#, json!(TRICKY)),
        ),
        (500, format!(r#"{{"error":{}}}"#, json!(TRICKY))),
    ] {
        let server = MockServer::start().await;
        answer(&server, status, &body).await;
        let b = backend(&server);
        if let Err(err) = auth(&b, "user@example.org", TRICKY.as_bytes()).await {
            errors.push(err);
        }
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let b = backend_with(&server, Duration::from_millis(100), None);
    errors.push(
        auth(&b, "user@example.org", TRICKY.as_bytes())
            .await
            .unwrap_err(),
    );
    // Refused locally: not logged either.
    let mut not_utf8 = TRICKY.as_bytes().to_vec();
    not_utf8.push(0xff);
    auth(&b, "user@example.org", &not_utf8).await.unwrap();

    assert_eq!(errors.len(), 5, "{errors:?}");
    for err in &errors {
        assert_secret_free(err, TRICKY);
    }
    let logs = logs();
    assert!(
        logs.contains("querying userli"),
        "debug lines were captured: {logs}"
    );
    assert!(!logs.contains("SECRET"), "{logs}");
    assert!(!logs.contains(TOKEN), "{logs}");
    // The token error is logged at error level (each backend has its own limiter).
    assert!(
        logs.lines()
            .any(|l| l.contains("ERROR") && l.contains("(never-logged test)")),
        "{logs}"
    );
}

#[tokio::test]
async fn token_errors_on_auth_are_logged_at_most_once_a_minute() {
    const MARKER: &str = "Invalid API token (rate-limit test)";
    let server = MockServer::start().await;
    answer(&server, 401, &json!({"error": MARKER}).to_string()).await;
    let b = backend(&server);
    for _ in 0..5 {
        assert!(matches!(
            auth(&b, "user@example.org", b"password").await,
            Err(BackendError::Unauthorized(_))
        ));
    }
    // The lookups share the limiter.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": MARKER})))
        .mount(&server)
        .await;
    assert!(b.mailbox_exists(&addr("user@example.org")).await.is_err());
    let logs = logs();
    let errors: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(MARKER))
        .collect();
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(errors[0].contains("rejected the API token"), "{logs}");
}
