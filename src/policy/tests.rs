use super::*;
use crate::protocol::policy::PolicyDecoder;
use bytes::BytesMut;
use postfix_adapter_backend::{Address, BackendError, SmtpQuota, async_trait};
use store::EmbeddedStore;

/// `limited@x` may send 2 per hour; `free@x` has no limit; `broken@x` errors.
struct Quotas;

#[async_trait]
impl LookupBackend for Quotas {
    async fn aliases(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        Ok(vec![])
    }
    async fn domain_exists(&self, _: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn mailbox_exists(&self, _: &Address) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn senders(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        Ok(vec![])
    }
    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        match login.as_str() {
            "limited@x.org" => Ok(Some(SmtpQuota {
                per_hour: 2,
                per_day: 0,
            })),
            "free@x.org" => Ok(Some(SmtpQuota::default())),
            "broken@x.org" => Err(BackendError::Timeout),
            _ => Ok(None),
        }
    }
}

fn settings() -> PolicySettings {
    PolicySettings {
        message: "Rate limit exceeded, please try again later".into(),
        defer_over_quota: false,
        fail_closed: false,
        sender_fallback: false,
        count: CountMode::Messages,
        timeout: Duration::from_secs(1),
    }
}

fn service(settings: PolicySettings) -> PolicyService {
    PolicyService::new(
        Arc::new(Quotas),
        Arc::new(EmbeddedStore::in_memory()),
        Normalizer::new("+"),
        settings,
        PolicyMetrics::register(&Metrics::new().unwrap()).unwrap(),
    )
}

fn request(pairs: &[(&str, &str)]) -> PolicyRequest {
    let mut text = String::new();
    for (k, v) in pairs {
        text.push_str(&format!("{k}={v}\n"));
    }
    text.push('\n');
    PolicyDecoder::default()
        .decode(&mut BytesMut::from(text.as_bytes()))
        .unwrap()
        .unwrap()
}

fn eom(user: &str) -> PolicyRequest {
    request(&[
        ("protocol_state", "END-OF-MESSAGE"),
        ("sasl_username", user),
    ])
}

#[tokio::test]
async fn third_message_in_the_hour_is_rejected() {
    let s = service(settings());
    assert_eq!(s.decide(&eom("limited@x.org")).await.action, Action::Dunno);
    assert_eq!(s.decide(&eom("limited@x.org")).await.action, Action::Dunno);
    let d = s.decide(&eom("limited@x.org")).await;
    assert_eq!(
        d.action,
        Action::Reject("Rate limit exceeded, please try again later".into())
    );
    assert_eq!((d.stage, d.label), ("check", "reject"));
    assert_eq!(s.metrics().quota_exceeded.get(), 1);
}

#[tokio::test]
async fn identities_are_normalised_into_one_bucket() {
    let s = service(settings());
    s.decide(&eom("Limited@X.org")).await;
    s.decide(&eom("limited+tag@x.org")).await;
    assert!(matches!(
        s.decide(&eom("limited@x.org")).await.action,
        Action::Reject(_)
    ));
}

#[tokio::test]
async fn only_end_of_message_is_checked() {
    let s = service(settings());
    for state in ["RCPT", "DATA", "end-of-message", ""] {
        let d = s
            .decide(&request(&[
                ("protocol_state", state),
                ("sasl_username", "limited@x.org"),
            ]))
            .await;
        assert_eq!((d.action, d.stage), (Action::Dunno, "skip"));
    }
}

#[tokio::test]
async fn unauthenticated_mail_is_not_limited_unless_asked() {
    let s = service(settings());
    let r = request(&[
        ("protocol_state", "END-OF-MESSAGE"),
        ("sender", "limited@x.org"),
    ]);
    for _ in 0..5 {
        assert_eq!(s.decide(&r).await.action, Action::Dunno);
    }
    let s = service(PolicySettings {
        sender_fallback: true,
        ..settings()
    });
    for _ in 0..2 {
        s.decide(&r).await;
    }
    assert!(matches!(s.decide(&r).await.action, Action::Reject(_)));
}

#[tokio::test]
async fn unlimited_unknown_and_failing_logins() {
    let s = service(settings());
    for _ in 0..5 {
        assert_eq!(s.decide(&eom("free@x.org")).await.action, Action::Dunno);
        assert_eq!(s.decide(&eom("stranger@x.org")).await.action, Action::Dunno);
    }
    let d = s.decide(&eom("broken@x.org")).await;
    assert_eq!((d.action, d.label), (Action::Dunno, "error"), "fail open");
    let s = service(PolicySettings {
        fail_closed: true,
        ..settings()
    });
    assert!(matches!(
        s.decide(&eom("broken@x.org")).await.action,
        Action::Defer(_)
    ));
}

#[tokio::test]
async fn defer_mode_and_recipient_counting() {
    let s = service(PolicySettings {
        defer_over_quota: true,
        count: CountMode::Recipients,
        ..settings()
    });
    let r = request(&[
        ("protocol_state", "END-OF-MESSAGE"),
        ("sasl_username", "limited@x.org"),
        ("recipient_count", "3"),
    ]);
    let d = s.decide(&r).await;
    assert_eq!(
        d.action,
        Action::Defer("Rate limit exceeded, please try again later".into())
    );
    assert_eq!(d.label, "defer");
}
