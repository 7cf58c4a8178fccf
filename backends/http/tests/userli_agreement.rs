//! The generic HTTP backend configured with `examples/http-backend/userli.toml`
//! against the same fake userli API as the userli backend: both pass the backend
//! contract and the `basic` data set, and agree on every answer and every
//! failure (the error kind), case by case.

use std::time::Duration;

use postfix_adapter_backend::testkit::conformance::{Facts, check, check_unavailable};
use postfix_adapter_backend::{Address, AuthOutcome, BackendError, LookupBackend, SmtpQuota};
use postfix_adapter_backend_http::{ClientSettings, HttpBackend, HttpSpec};
use postfix_adapter_backend_userli::{UserliBackend, UserliConfig};
use serde_json::json;
use wiremock::matchers::{any, body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "e38a0bc6b5de5b7c6137eb9d383d1977";

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn example_spec() -> HttpSpec {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/http-backend/userli.toml"
    ))
    .unwrap();
    let mut file: toml::Table = toml::from_str(&text).unwrap();
    file.remove("http").unwrap().try_into().unwrap()
}

fn timeouts() -> ClientSettings {
    ClientSettings {
        timeout: Duration::from_secs(1),
        ..ClientSettings::default()
    }
}

fn generic(base: &str) -> HttpBackend {
    let base = base.to_owned();
    let env = move |name: &str| match name {
        "USERLI_BASE_URL" => Some(base.clone()),
        "USERLI_TOKEN" => Some(TOKEN.to_owned()),
        _ => None,
    };
    HttpBackend::new(&example_spec(), &env, &timeouts(), None).unwrap()
}

fn userli(base: &str) -> UserliBackend {
    let mut config = UserliConfig::new(url::Url::parse(base).unwrap(), TOKEN);
    config.timeout = timeouts().timeout;
    UserliBackend::new(config, None).unwrap()
}

async fn mount(server: &MockServer, p: &str, status: u16, body: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(format!("/api/postfix/{p}")))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(server)
        .await;
}

#[tokio::test]
async fn both_backends_pass_the_contract_against_the_same_fake_userli() {
    let server = MockServer::start().await;
    mount(&server, "domain/example.org", 200, json!(true)).await;
    mount(&server, "domain/example.net", 200, json!(false)).await;
    mount(&server, "domain/health-check.invalid", 200, json!(false)).await;
    mount(&server, "mailbox/user@example.org", 200, json!(true)).await;
    mount(&server, "mailbox/nobody@example.org", 200, json!(false)).await;
    for key in ["nobody@example.org", "user@example.org"] {
        mount(&server, &format!("alias/{key}"), 200, json!([])).await;
    }
    mount(
        &server,
        "alias/alias@example.org",
        200,
        json!(["user2@example.org", "user@example.org"]),
    )
    .await;
    mount(&server, "senders/nobody@example.org", 200, json!([])).await;
    mount(
        &server,
        "senders/user@example.org",
        200,
        json!(["user@example.org"]),
    )
    .await;
    mount(
        &server,
        "smtp_quota/user@example.org",
        200,
        json!({"per_hour": 100, "per_day": 1000}),
    )
    .await;
    mount(
        &server,
        "smtp_quota/nobody@example.org",
        404,
        json!({"error": "User not found"}),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .and(body_json(
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
    let uri = server.uri();
    check(&userli(&uri), &facts).await;
    check(&generic(&uri), &facts).await;
    // With and without the trailing slash, as USERLI_BASE_URL may be given.
    check(&generic(&format!("{uri}/")), &facts).await;
    assert!(generic(&uri).health().await.is_ok());

    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    check_unavailable(&userli(&dead_url), &facts).await;
    check_unavailable(&generic(&dead_url), &facts).await;
}

/// What a backend answered, comparable across backends: the value, or the
/// error's kind.
fn outcome<T: std::fmt::Debug>(result: Result<T, BackendError>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(e) => format!("error {}", e.kind()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Ask {
    Domain,
    Mailbox,
    Alias,
    Senders,
    Quota,
    Auth,
}

async fn ask(backend: &dyn LookupBackend, question: Ask) -> String {
    let key = addr("user@example.org");
    match question {
        Ask::Domain => outcome(backend.domain_exists("example.org").await),
        Ask::Mailbox => outcome(backend.mailbox_exists(&key).await),
        Ask::Alias => outcome(backend.aliases(&key).await),
        Ask::Senders => outcome(backend.senders(&key).await),
        Ask::Quota => outcome(backend.smtp_quota(&key).await),
        Ask::Auth => outcome(
            backend
                .authenticate(&key, b"password")
                .await
                .map(|o| match o {
                    AuthOutcome::Success => "success".to_owned(),
                    AuthOutcome::Failure { reason } => format!("failure: {reason}"),
                }),
        ),
    }
}

#[tokio::test]
async fn both_backends_agree_on_every_answer_and_failure() {
    let server = MockServer::start().await;
    let (u, g) = (userli(&server.uri()), generic(&server.uri()));
    let r = |status: u16| ResponseTemplate::new(status);
    let cases: Vec<(Ask, ResponseTemplate, &str)> = vec![
        (Ask::Domain, r(200).set_body_json(json!(true)), "ok true"),
        (Ask::Domain, r(200).set_body_json(json!(null)), "ok false"),
        (
            Ask::Domain,
            r(200).set_body_json(json!("yes")),
            "error invalid_response",
        ),
        (
            Ask::Domain,
            r(200).set_body_string("not json"),
            "error invalid_response",
        ),
        (Ask::Domain, r(503), "error invalid_response"),
        (
            Ask::Domain,
            r(404).set_body_json(json!({"error": "User not found"})),
            "error invalid_response",
        ),
        (
            Ask::Domain,
            r(302).insert_header("location", "http://elsewhere.invalid/"),
            "error invalid_response",
        ),
        (
            Ask::Domain,
            r(401).set_body_json(json!({"error": "Invalid API token"})),
            "error unauthorized",
        ),
        (
            Ask::Domain,
            r(200)
                .set_body_json(json!(true))
                .set_delay(Duration::from_secs(2)),
            "error timeout",
        ),
        (Ask::Mailbox, r(200).set_body_json(json!(false)), "ok false"),
        (
            Ask::Mailbox,
            r(403).set_body_json(
                json!({"error": {"message": "Token does not have required scope: postfix"}}),
            ),
            "error unauthorized",
        ),
        (
            Ask::Mailbox,
            r(200).set_body_json(json!(1)),
            "error invalid_response",
        ),
        (
            Ask::Alias,
            r(200).set_body_json(json!(["a@example.org", "", "b@example.org"])),
            "ok [\"a@example.org\", \"b@example.org\"]",
        ),
        (Ask::Alias, r(200).set_body_json(json!(null)), "ok []"),
        (
            Ask::Alias,
            r(200).set_body_json(json!([1])),
            "error invalid_response",
        ),
        (
            Ask::Alias,
            r(200).set_body_json(json!({"to": []})),
            "error invalid_response",
        ),
        (
            Ask::Alias,
            r(500).set_body_json(json!({"error": "boom"})),
            "error invalid_response",
        ),
        (
            Ask::Alias,
            r(200).set_body_string("x".repeat(5 * 1024 * 1024)),
            "error invalid_response",
        ),
        (
            Ask::Senders,
            r(200).set_body_json(json!(["user@example.org"])),
            "ok [\"user@example.org\"]",
        ),
        (Ask::Senders, r(403), "error unauthorized"),
        (
            Ask::Quota,
            r(200).set_body_json(json!({"per_hour": 5, "per_day": 0})),
            "ok Some(SmtpQuota { per_hour: 5, per_day: 0 })",
        ),
        (
            Ask::Quota,
            r(404).set_body_json(json!({"error": "User not found"})),
            "ok None",
        ),
        (
            Ask::Quota,
            r(404).set_body_json(json!({"error": "No route found"})),
            "error invalid_response",
        ),
        (
            Ask::Quota,
            r(200).set_body_json(json!({"per_hour": "5", "per_day": 1})),
            "error invalid_response",
        ),
        (
            Ask::Auth,
            r(200).set_body_json(json!({"message": "success"})),
            "ok \"success\"",
        ),
        (
            Ask::Auth,
            r(200).set_body_json(json!({"message": "welcome"})),
            "error invalid_response",
        ),
        (
            Ask::Auth,
            r(200).set_body_string("<html>login</html>"),
            "error invalid_response",
        ),
        (
            Ask::Auth,
            r(401).set_body_json(json!({"message": "authentication failed"})),
            "ok \"failure: authentication failed\"",
        ),
        (
            Ask::Auth,
            r(403).set_body_json(json!({"message": "user disabled due to spam role"})),
            "ok \"failure: user disabled due to spam role\"",
        ),
        (
            Ask::Auth,
            r(401).set_body_json(json!({"message": "nope for\tyou\npassword"})),
            "ok \"failure: authentication failed\"",
        ),
        (
            Ask::Auth,
            r(401).set_body_json(json!({"message": "nope\tfor\nyou"})),
            "ok \"failure: nope for you\"",
        ),
        (
            Ask::Auth,
            r(401).set_body_json(json!({"error": "Invalid API token"})),
            "error unauthorized",
        ),
        (
            Ask::Auth,
            r(401).set_body_json(json!({"error": "x", "message": "authentication failed"})),
            "error unauthorized",
        ),
        (
            Ask::Auth,
            r(401).set_body_string("Unauthorized"),
            "error unauthorized",
        ),
        (
            Ask::Auth,
            r(422).set_body_json(json!({"message": "bad"})),
            "error invalid_response",
        ),
        (Ask::Auth, r(500), "error invalid_response"),
    ];
    for (question, response, expected) in cases {
        server.reset().await;
        Mock::given(any())
            .respond_with(response)
            .mount(&server)
            .await;
        let (from_userli, from_generic) = (ask(&u, question).await, ask(&g, question).await);
        assert_eq!(from_userli, expected, "userli backend, {question:?}");
        assert_eq!(
            from_generic, from_userli,
            "generic backend disagrees on {question:?} (userli: {from_userli})"
        );
    }
    // Keys userli can never hold: neither backend asks (the API would answer
    // `true` to anything here), both say "not found".
    server.reset().await;
    Mock::given(any())
        .respond_with(r(200).set_body_json(json!(true)))
        .mount(&server)
        .await;
    let mut exotic = 0;
    for key in [
        "fo/o@example.org",
        "a=b@example.org",
        "user@exa%mple.org",
        "us er@example.org",
        "user@example..org",
        "ü@example.org",
    ] {
        let Ok(address) = Address::parse(key) else {
            continue;
        };
        exotic += 1;
        for backend in [&u as &dyn LookupBackend, &g] {
            assert!(!backend.mailbox_exists(&address).await.unwrap(), "{key}");
            assert!(backend.aliases(&address).await.unwrap().is_empty(), "{key}");
            assert!(backend.senders(&address).await.unwrap().is_empty(), "{key}");
            assert_eq!(backend.smtp_quota(&address).await.unwrap(), None, "{key}");
            assert!(
                matches!(
                    backend.authenticate(&address, b"password").await.unwrap(),
                    AuthOutcome::Failure { .. }
                ),
                "{key}"
            );
        }
    }
    assert!(exotic >= 3, "{exotic} exotic keys parsed");
    for domain in [
        "exa/mple.org",
        "example..org",
        "ex%61mple.org",
        "a@b.org",
        "exa mple.org",
    ] {
        assert!(!u.domain_exists(domain).await.unwrap(), "{domain}");
        assert!(!g.domain_exists(domain).await.unwrap(), "{domain}");
    }
    assert!(
        g.domain_exists("example.org").await.unwrap(),
        "an ordinary key is asked"
    );

    // Passwords neither sends: refused without a request.
    server.reset().await;
    Mock::given(any())
        .respond_with(r(500))
        .expect(0)
        .mount(&server)
        .await;
    for password in [&b""[..], &[0xff, 0xfe][..], &vec![b'a'; 4097][..]] {
        let key = addr("user@example.org");
        let (a, b) = (
            u.authenticate(&key, password).await.unwrap(),
            g.authenticate(&key, password).await.unwrap(),
        );
        assert_eq!(a, b);
        assert!(matches!(a, AuthOutcome::Failure { .. }));
    }
}
