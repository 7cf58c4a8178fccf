//! `smtp_quota` against a fake userli API: the answer shapes and, above all, which
//! 404 means "no such user" (no limit) and which means trouble.

use postfix_adapter_backend::{Address, BackendError, LookupBackend, SmtpQuota};
use postfix_adapter_backend_userli::{UserliBackend, UserliConfig};
use serde_json::json;
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn backend(server: &MockServer) -> UserliBackend {
    UserliBackend::new(
        UserliConfig::new(Url::parse(&server.uri()).unwrap(), "tok"),
        None,
    )
    .unwrap()
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

async fn json_answer(
    status: u16,
    body: serde_json::Value,
) -> Result<Option<SmtpQuota>, BackendError> {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/smtp_quota/user@example.org"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    backend(&server).smtp_quota(&addr("user@example.org")).await
}

#[tokio::test]
async fn limits_are_read() {
    assert_eq!(
        json_answer(200, json!({"per_hour": 10, "per_day": 100}))
            .await
            .unwrap(),
        Some(SmtpQuota {
            per_hour: 10,
            per_day: 100
        })
    );
    assert_eq!(
        json_answer(200, json!({"per_hour": 0, "per_day": 0}))
            .await
            .unwrap(),
        Some(SmtpQuota::default())
    );
}

#[tokio::test]
async fn only_userlis_user_not_found_means_no_limit() {
    assert_eq!(
        json_answer(404, json!({"error": "User not found"}))
            .await
            .unwrap(),
        None
    );
    // A 404 from a wrong base URL or a missing route is trouble, not "unlimited".
    let route_missing = json!({"error": {"message": "No route found", "code": 0}});
    assert!(json_answer(404, route_missing).await.is_err());
    let empty = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&empty)
        .await;
    assert!(
        backend(&empty)
            .smtp_quota(&addr("user@example.org"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn errors_are_errors() {
    assert!(matches!(
        json_answer(401, json!({"error": "Invalid API token"})).await,
        Err(BackendError::Unauthorized(_))
    ));
    assert!(
        json_answer(500, json!({"per_hour": 0, "per_day": 0}))
            .await
            .is_err()
    );
    assert!(
        json_answer(200, json!({"per_hour": "ten", "per_day": 1}))
            .await
            .is_err()
    );
    assert!(json_answer(200, json!({"per_hour": 1})).await.is_err());
    assert!(json_answer(200, json!([1, 2])).await.is_err());
}
