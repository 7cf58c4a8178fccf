use super::*;
use crate::normalize::Normalizer;
use crate::protocol::policy::PolicyDecoder;
use bytes::BytesMut;
use postfix_adapter_backend::testkit::{Fault, StubBackend};
use postfix_adapter_backend::{SmtpQuota, async_trait};
use store::EmbeddedStore;

/// `limited@x.org` may send 2 per hour, `idn@xn--exmple-cua.org` 1; `free@x.org`
/// has no limit; `broken@x.org` errors; anyone else is no login.
fn quotas() -> StubBackend {
    StubBackend::new()
        .quota(
            "limited@x.org",
            SmtpQuota {
                per_hour: 2,
                per_day: 0,
            },
        )
        .quota("free@x.org", SmtpQuota::default())
        .quota(
            "idn@xn--exmple-cua.org",
            SmtpQuota {
                per_hour: 1,
                per_day: 0,
            },
        )
        .fault("broken@x.org", Fault::Timeout)
}

fn settings() -> PolicySettings {
    PolicySettings {
        message: "Rate limit exceeded, please try again later".into(),
        defer_over_quota: false,
        fail_closed: false,
        sender_fallback: false,
        count: CountMode::Messages,
        timeout: Duration::from_secs(1),
        store_breaker_failures: 3,
        store_breaker_cooldown: Duration::from_millis(200),
    }
}

fn service(settings: PolicySettings) -> PolicyService {
    PolicyService::new(
        Arc::new(quotas()),
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
async fn identities_are_canonical_account_names() {
    let s = service(settings());
    s.decide(&eom("Limited@X.org")).await;
    // `limited+tag@` is another account, as `first-last@` is not `first@`: no
    // quota of its own here, and not counted against `limited@`.
    assert_eq!(
        s.decide(&eom("limited+tag@x.org")).await.action,
        Action::Dunno
    );
    assert_eq!(s.decide(&eom(" limited@x.org")).await.action, Action::Dunno);
    assert!(matches!(
        s.decide(&eom("limited@x.org")).await.action,
        Action::Reject(_)
    ));
    // An IDN domain in either spelling is one bucket.
    assert_eq!(
        s.decide(&eom("IDN@Exämple.org")).await.action,
        Action::Dunno
    );
    assert!(matches!(
        s.decide(&eom("idn@xn--exmple-cua.org")).await.action,
        Action::Reject(_)
    ));
    // A look-alike with an invisible character is no account at all.
    let d = s.decide(&eom("limited@x\u{ad}.org")).await;
    assert_eq!((d.action, d.label), (Action::Dunno, "dunno"));
}

#[tokio::test]
async fn envelope_senders_follow_postfix_extension_order() {
    let s = service(PolicySettings {
        sender_fallback: true,
        ..settings()
    });
    let from = |sender: &str| request(&[("protocol_state", "END-OF-MESSAGE"), ("sender", sender)]);
    // `limited+list@` names no account: it counts as `limited@`...
    s.decide(&from("limited+list@x.org")).await;
    s.decide(&from("Limited@x.org")).await;
    assert!(matches!(
        s.decide(&from("limited+other@x.org")).await.action,
        Action::Reject(_)
    ));
    // ...but a SASL login is an account name and never stripped.
    let d = s.decide(&eom("limited+list@x.org")).await;
    assert_eq!((d.action, d.label), (Action::Dunno, "dunno"));
}

#[tokio::test]
async fn recipient_counts_are_clamped_and_never_wrap() {
    let s = service(PolicySettings {
        count: CountMode::Recipients,
        ..settings()
    });
    let big = |n: &str| {
        request(&[
            ("protocol_state", "END-OF-MESSAGE"),
            ("sasl_username", "limited@x.org"),
            ("recipient_count", n),
        ])
    };
    // u64::MAX used to wrap the counter back to a small number and reset the window.
    for n in [
        "18446744073709551615",
        "99999999999999999999999",
        "18446744073709551615",
    ] {
        let d = s.decide(&big(n)).await;
        assert!(matches!(d.action, Action::Reject(_)), "{n}: {d:?}");
    }
    assert_eq!(
        recipient_weight("18446744073709551615"),
        MAX_RECIPIENT_WEIGHT
    );
    assert_eq!(
        recipient_weight("99999999999999999999999"),
        MAX_RECIPIENT_WEIGHT
    );
    assert_eq!(recipient_weight("0"), 1);
    assert_eq!(recipient_weight("-5"), 1);
    assert_eq!(recipient_weight("x"), 1);
    assert_eq!(recipient_weight(" 7 "), 7);
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

/// A store that is down (each check fails after `delay`) until `up` is set.
struct FlakyStore {
    up: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicUsize,
    delay: Duration,
}

#[async_trait]
impl QuotaStore for FlakyStore {
    async fn check(
        &self,
        _: &str,
        limits: SmtpQuota,
        weight: u64,
        _: SystemTime,
    ) -> Result<window::Verdict, store::StoreError> {
        use std::sync::atomic::Ordering;
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.up.load(Ordering::SeqCst) {
            Ok(window::Verdict::judge(limits, weight, weight))
        } else {
            Err(store::StoreError::Remote("connection refused".into()))
        }
    }

    fn name(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test]
async fn a_failing_store_stops_costing_time_per_message_and_is_probed_again() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(FlakyStore {
        up: false.into(),
        calls: 0.into(),
        delay: Duration::from_millis(50),
    });
    let metrics = PolicyMetrics::register(&Metrics::new().unwrap()).unwrap();
    let s = PolicyService::new(
        Arc::new(quotas()),
        store.clone(),
        Normalizer::new("+"),
        settings(),
        metrics.clone(),
    );
    // Three failures (the threshold) each wait for the store...
    for _ in 0..3 {
        let d = s.decide(&eom("limited@x.org")).await;
        assert_eq!((d.action, d.label), (Action::Dunno, "error"));
    }
    assert_eq!(store.calls.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.store_breaker_state.get(), 1, "open");
    // ...then messages fail open at once, without a store call.
    let started = Instant::now();
    for _ in 0..100 {
        let d = s.decide(&eom("limited@x.org")).await;
        assert_eq!((d.action, d.label), (Action::Dunno, "error"));
    }
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(store.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        metrics.store_errors.with_label_values(&["check"]).get(),
        103,
        "every message let through is counted"
    );
    // After the cool-down one probe goes through; the store is back: closed.
    store.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let d = s.decide(&eom("limited@x.org")).await;
    assert_eq!(d.label, "dunno");
    assert_eq!(metrics.store_breaker_state.get(), 0, "closed");
    assert_eq!(store.calls.load(Ordering::SeqCst), 4);
}

#[allow(dead_code)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

/// A recipient count beyond any integer type used to make Redis answer `value is
/// not an integer`; five such requests opened the store breaker and switched quotas
/// off for everyone. Now the weight is clamped, the counters saturate, and the
/// breaker never hears of it.
#[tokio::test]
#[ignore = "needs redis-server"]
async fn huge_recipient_counts_are_clamped_and_never_open_the_breaker() {
    use super::redis_store::RedisStore;
    use redis_server::RedisServer;
    let quota = |per_hour, per_day| SmtpQuota { per_hour, per_day };

    let server = RedisServer::start();
    let url = server.url();
    let store = || RedisStore::connect(&url, Duration::from_millis(200));
    let direct = store().await.unwrap();
    let verdict = direct
        .check(
            "direct@example.org",
            quota(10, 0),
            u64::MAX,
            SystemTime::now(),
        )
        .await
        .expect("a huge weight is clamped, not refused");
    assert!(!verdict.allowed);

    let metrics = PolicyMetrics::register(&Metrics::new().unwrap()).unwrap();
    let service = PolicyService::new(
        Arc::new(
            StubBackend::new()
                .quota("attacker@example.org", quota(10, 0))
                .quota("other@example.org", quota(10, 0)),
        ),
        Arc::new(store().await.unwrap()),
        Normalizer::new("+"),
        PolicySettings {
            message: "over quota".into(),
            defer_over_quota: false,
            fail_closed: false,
            sender_fallback: false,
            count: CountMode::Recipients,
            timeout: Duration::from_secs(1),
            store_breaker_failures: 5,
            store_breaker_cooldown: Duration::from_secs(60),
        },
        metrics.clone(),
    );
    let request = |user: &str, count: &str| {
        let text = format!(
            "protocol_state=END-OF-MESSAGE\nsasl_username={user}\nrecipient_count={count}\n\n"
        );
        PolicyDecoder::default()
            .decode(&mut BytesMut::from(text.as_bytes()))
            .unwrap()
            .unwrap()
    };
    for _ in 0..6 {
        let d = service
            .decide(&request("attacker@example.org", "18446744073709551615"))
            .await;
        assert_eq!(d.action, Action::Reject("over quota".into()));
    }
    assert_eq!(metrics.store_breaker_state.get(), 0, "breaker closed");
    assert_eq!(metrics.store_errors.with_label_values(&["check"]).get(), 0);
    // Quotas still hold for everyone else.
    let d = service.decide(&request("other@example.org", "3")).await;
    assert_eq!((d.action, d.label), (Action::Dunno, "dunno"));
}
