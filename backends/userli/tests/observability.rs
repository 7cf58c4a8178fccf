//! Metrics and logs of the userli backend.

use std::io::Write;
use std::sync::{Arc, Mutex};

use postfix_adapter_backend::{Address, BackendError, LookupBackend};
use postfix_adapter_backend_userli::{UserliBackend, UserliConfig};
use prometheus::Registry;
use prometheus::proto::MetricFamily;
use serde_json::json;
use url::Url;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "e38a0bc6b5de5b7c6137eb9d383d1977";
const COUNTER: &str = "userli_postfix_adapter_http_client_requests_total";
const HISTOGRAM: &str = "userli_postfix_adapter_http_client_duration_seconds";

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn backend(base: &str, registry: &Registry) -> UserliBackend {
    UserliBackend::new(
        UserliConfig::new(Url::parse(base).unwrap(), TOKEN),
        Some(registry),
    )
    .unwrap()
}

/// `(endpoint, status_code) -> value` of the counter, and the histogram's sample
/// counts; the series every endpoint starts with at 0 are left out.
fn series(families: &[MetricFamily], name: &str) -> Vec<(String, String, u64)> {
    let mut out = all_series(families, name);
    out.retain(|(_, _, n)| *n > 0);
    out
}

/// Every series of `name`, zeros included.
fn all_series(families: &[MetricFamily], name: &str) -> Vec<(String, String, u64)> {
    let family = families
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let mut out: Vec<_> = family
        .get_metric()
        .iter()
        .map(|m| {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
                    .unwrap()
            };
            assert_eq!(m.get_label().len(), 2, "exactly endpoint and status_code");
            let value = if name == COUNTER {
                m.get_counter().get_value() as u64
            } else {
                m.get_histogram().get_sample_count()
            };
            (label("endpoint"), label("status_code"), value)
        })
        .collect();
    out.sort();
    out
}

fn s(e: &str, c: &str, n: u64) -> (String, String, u64) {
    (e.to_owned(), c.to_owned(), n)
}

#[tokio::test]
async fn requests_are_counted_by_endpoint_and_status() {
    let server = MockServer::start().await;
    let ok = |p: &str, body| {
        Mock::given(path(format!("/api/postfix/{p}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
    };
    ok("alias/alias@example.org", json!(["user2@example.org"]))
        .mount(&server)
        .await;
    ok("senders/user@example.org", json!(["user@example.org"]))
        .mount(&server)
        .await;
    ok("mailbox/user@example.org", json!(true))
        .mount(&server)
        .await;
    ok("domain/health-check.invalid", json!(false))
        .mount(&server)
        .await;
    Mock::given(path("/api/postfix/domain/example.org"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"message": "db", "code": 0}})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/api/postfix/mailbox/x@example.org"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid API token"})),
        )
        .mount(&server)
        .await;

    let registry = Registry::new();
    let b = backend(&server.uri(), &registry);
    b.aliases(&addr("alias@example.org")).await.unwrap();
    b.aliases(&addr("alias@example.org")).await.unwrap();
    b.senders(&addr("user@example.org")).await.unwrap();
    b.mailbox_exists(&addr("user@example.org")).await.unwrap();
    b.health().await.unwrap();
    b.domain_exists("example.org").await.unwrap_err();
    b.mailbox_exists(&addr("x@example.org")).await.unwrap_err();
    // Screened keys make no request and so no sample.
    b.aliases(&addr("us/er@example.org")).await.unwrap();
    b.domain_exists("a..b").await.unwrap();

    let families = registry.gather();
    let want = vec![
        s("alias", "200", 2),
        s("domain", "500", 1),
        s("health", "200", 1),
        s("mailbox", "200", 1),
        s("mailbox", "401", 1),
        s("senders", "200", 1),
    ];
    assert_eq!(series(&families, COUNTER), want);
    assert_eq!(series(&families, HISTOGRAM), want);

    let histogram = families.iter().find(|f| f.name() == HISTOGRAM).unwrap();
    let buckets = histogram.get_metric()[0].get_histogram().get_bucket();
    assert_eq!(buckets.first().unwrap().upper_bound(), 0.001);
    assert!(buckets.last().unwrap().upper_bound() >= 30.0);
}

/// Dashboards show 0, not "No data", before the first call.
#[test]
fn every_endpoint_has_a_series_at_zero_from_the_start() {
    let registry = Registry::new();
    let _b = backend("http://127.0.0.1:9/", &registry);
    for name in [COUNTER, HISTOGRAM] {
        let got = all_series(&registry.gather(), name);
        let want: Vec<_> = [
            "alias",
            "auth",
            "domain",
            "health",
            "mailbox",
            "senders",
            "smtp_quota",
        ]
        .into_iter()
        .map(|e| s(e, "200", 0))
        .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test]
async fn transport_failures_are_labelled_error() {
    let port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let registry = Registry::new();
    let b = backend(&format!("http://127.0.0.1:{port}/"), &registry);
    assert!(matches!(
        b.aliases(&addr("a@example.org")).await,
        Err(BackendError::Unavailable(_))
    ));
    assert!(b.health().await.is_err());
    let families = registry.gather();
    assert_eq!(
        series(&families, COUNTER),
        vec![s("alias", "error", 1), s("health", "error", 1)]
    );
}

#[tokio::test]
async fn a_call_cancelled_by_the_engine_is_still_recorded() {
    let server = MockServer::start().await;
    Mock::given(path("/api/postfix/domain/example.org"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!(true))
                .set_delay(std::time::Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let registry = Registry::new();
    let b = backend(&server.uri(), &registry);
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        b.domain_exists("example.org"),
    )
    .await;
    assert!(r.is_err(), "the engine's deadline fired");
    assert_eq!(
        series(&registry.gather(), COUNTER),
        vec![s("domain", "error", 1)]
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

#[tokio::test]
async fn a_rejected_token_is_logged_once_and_never_the_token() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid API token"})),
        )
        .expect(5)
        .mount(&server)
        .await;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let registry = Registry::new();
    let b = backend(&server.uri(), &registry);
    for i in 0..5 {
        let r = b.mailbox_exists(&addr(&format!("u{i}@example.org"))).await;
        assert!(matches!(r, Err(BackendError::Unauthorized(_))), "{r:?}");
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<_> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(
        errors[0].contains("rejected the API token") && errors[0].contains("Invalid API token"),
        "{logs}"
    );
    // Addresses appear only at debug level; the token never.
    assert!(!logs.contains(TOKEN), "{logs}");
    let above_debug: Vec<_> = logs
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .collect();
    assert!(!above_debug.is_empty(), "the error was logged: {logs}");
    for line in above_debug {
        assert!(
            !line.contains("@example.org"),
            "an address above debug: {line}"
        );
    }
}
