use super::*;
use crate::metrics::Metrics;
use postfix_adapter_backend::testkit::{Fault, StubBackend};
use postfix_adapter_backend::{Address, AuthOutcome, BackendError, LookupBackend};

/// `user@example.org` / `right` logs in; `slow@` fails after 150 ms; `down@`
/// cannot be checked; `hang@` waits until released.
fn directory() -> StubBackend {
    StubBackend::new()
        .login("user@example.org", "right")
        .fault("slow@example.org", Fault::Delay(Duration::from_millis(150)))
        .fault("down@example.org", Fault::Unavailable)
        .fault("hang@example.org", Fault::Held)
}

fn settings() -> SaslSettings {
    SaslSettings {
        timeout: Duration::from_secs(5),
        throttle: ThrottleSettings {
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            lockout_failures: 0,
            window: Duration::from_secs(60),
        },
        max_checks: 6,
        max_checks_per_client: 4,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(60),
        cache: LoginCacheSettings::OFF,
    }
}

fn service(settings: SaslSettings) -> (Arc<SaslService>, Arc<StubBackend>) {
    let directory = Arc::new(directory());
    let metrics = SaslMetrics::register(&Metrics::new().unwrap()).unwrap();
    let backend: Arc<dyn LookupBackend> = directory.clone();
    (
        Arc::new(SaslService::new(backend, settings, metrics)),
        directory,
    )
}

async fn auth(s: &SaslService, login: &str, password: &str, rip: &str) -> AuthResult {
    s.authenticate(Mechanism::Plain, login, password.as_bytes(), Some(rip))
        .await
}

#[tokio::test]
async fn logins_are_account_names_never_stripped() {
    let (s, _) = service(settings());
    assert_eq!(
        auth(&s, " User@Example.ORG", "right", "192.0.2.1").await,
        AuthResult::Success("user@example.org".into())
    );
    // `user+tag@` is not `user@`: its password is not user's.
    assert!(matches!(
        auth(&s, "user+tag@example.org", "right", "192.0.2.1").await,
        AuthResult::Failure { .. }
    ));
}

#[tokio::test]
async fn every_spelling_of_a_login_shares_one_failure_counter() {
    let (s, _) = service(SaslSettings {
        throttle: ThrottleSettings {
            lockout_failures: 3,
            ..settings().throttle
        },
        ..settings()
    });
    for (i, spelling) in [
        "victim@exämple.org",
        "Victim@EXÄMPLE.org",
        "victim@xn--exmple-cua.org",
    ]
    .into_iter()
    .enumerate()
    {
        let rip = format!("198.51.100.{i}");
        assert!(matches!(
            auth(&s, spelling, "guess", &rip).await,
            AuthResult::Failure { .. }
        ));
    }
    assert_eq!(
        auth(&s, "victim@xn--exmple-cua.org", "guess", "203.0.113.1").await,
        AuthResult::Failure {
            reason: LOCKED_OUT.into(),
            delay: Duration::ZERO
        },
        "three spellings, one login"
    );
    assert_eq!(s.metrics().lockouts.with_label_values(&["login"]).get(), 1);
    assert_eq!(s.metrics().lockouts.with_label_values(&["client"]).get(), 0);
    // A look-alike with a soft hyphen is refused without asking the backend and
    // counts for its client address only.
    for _ in 0..3 {
        auth(&s, "other@exa\u{ad}mple.org", "guess", "192.0.2.99").await;
    }
    assert!(matches!(
        auth(&s, "fresh@example.org", "guess", "192.0.2.99").await,
        AuthResult::Failure { reason, .. } if reason == LOCKED_OUT
    ));
    assert_eq!(s.metrics().lockouts.with_label_values(&["client"]).get(), 1);
}

#[tokio::test]
async fn the_failure_delay_counts_from_the_start_of_the_request() {
    let (s, _) = service(SaslSettings {
        throttle: ThrottleSettings {
            base_delay: Duration::from_millis(400),
            max_delay: Duration::from_millis(400),
            ..settings().throttle
        },
        ..settings()
    });
    // The directory took 150 ms to say no: only the rest of the 400 ms is left.
    let AuthResult::Failure { delay, .. } = auth(&s, "slow@example.org", "x", "192.0.2.1").await
    else {
        panic!("a failure")
    };
    assert!(
        delay <= Duration::from_millis(260) && delay >= Duration::from_millis(150),
        "{delay:?}"
    );
    // An instant no gets the whole delay.
    let AuthResult::Failure { delay, .. } = auth(&s, "nobody@example.org", "x", "192.0.2.2").await
    else {
        panic!("a failure")
    };
    assert!(delay > Duration::from_millis(390), "{delay:?}");
}

#[tokio::test]
async fn checks_in_flight_are_capped_per_client_and_in_total() {
    let (s, directory) = service(settings());
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        waiting.push(tokio::spawn(async move {
            auth(&s, "hang@example.org", "x", "192.0.2.1").await
        }));
    }
    while s.admission.in_flight() < 4 {
        tokio::task::yield_now().await;
    }
    // The fifth from the same address is refused at once, without the backend.
    let started = Instant::now();
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Unavailable
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(
        s.metrics()
            .checks_refused
            .with_label_values(&["client"])
            .get(),
        1
    );
    // The same address written as an IPv4-mapped IPv6 address is the same client.
    assert_eq!(
        auth(&s, "user@example.org", "right", "::ffff:192.0.2.1").await,
        AuthResult::Unavailable
    );
    // Other clients still get in, up to the total of 6.
    for i in 2..4 {
        let s = s.clone();
        waiting.push(tokio::spawn(async move {
            auth(&s, "hang@example.org", "x", &format!("192.0.2.{i}")).await
        }));
    }
    while s.admission.in_flight() < 6 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.50").await,
        AuthResult::Unavailable
    );
    assert_eq!(
        s.metrics()
            .checks_refused
            .with_label_values(&["total"])
            .get(),
        1
    );
    directory.release();
    for w in waiting {
        assert!(matches!(w.await.unwrap(), AuthResult::Failure { .. }));
    }
    assert_eq!(s.admission.in_flight(), 0);
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Success("user@example.org".into()),
        "slots came back"
    );
}

#[tokio::test]
async fn login_checks_have_their_own_breaker() {
    let (s, _) = service(settings());
    for _ in 0..3 {
        assert_eq!(
            auth(&s, "down@example.org", "x", "192.0.2.1").await,
            AuthResult::Unavailable
        );
    }
    assert_eq!(s.metrics().breaker_state.get(), 1, "open after 3 errors");
    // Open: even a check that would succeed is not sent.
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Unavailable
    );
    // Wrong passwords are answers, not failures: they never open it.
    let (s, _) = service(settings());
    for _ in 0..10 {
        auth(&s, "user@example.org", "wrong", "192.0.2.1").await;
    }
    assert_eq!(s.metrics().breaker_state.get(), 0);
}

#[test]
fn one_client_is_an_ipv4_address_or_an_ipv6_64() {
    let n = |s: &str| client_network(s.parse().unwrap()).to_string();
    assert_eq!(n("192.0.2.7"), "192.0.2.7");
    assert_eq!(n("::ffff:192.0.2.7"), "192.0.2.7");
    assert_eq!(n("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
    assert_eq!(n("2001:db8:1:2:ffff::1"), n("2001:db8:1:2::9"));
    assert_ne!(n("2001:db8:1:2::1"), n("2001:db8:1:3::1"));
}

#[tokio::test]
async fn an_ipv6_client_cannot_dodge_the_cap_by_rotating_through_its_64() {
    let (s, directory) = service(settings());
    let mut waiting = Vec::new();
    for i in 0..4 {
        let s = s.clone();
        waiting.push(tokio::spawn(async move {
            auth(&s, "hang@example.org", "x", &format!("2001:db8::{i}")).await
        }));
    }
    while s.admission.in_flight() < 4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        auth(&s, "user@example.org", "right", "2001:db8::ffff").await,
        AuthResult::Unavailable
    );
    directory.release();
    for w in waiting {
        w.await.unwrap();
    }
}

fn cached(ttl: Duration) -> SaslSettings {
    SaslSettings {
        cache: LoginCacheSettings {
            ttl,
            stale_ttl: Duration::from_secs(3600),
            max_bytes: 1 << 20,
            persist: false,
        },
        ..settings()
    }
}

/// A service with the login cache over a directory that can go down.
fn cached_service(ttl: Duration) -> (Arc<SaslService>, Arc<StubBackend>) {
    let directory = Arc::new(
        StubBackend::new()
            .login("user@example.org", "right")
            .refused("spammer@example.org", "account locked for spam"),
    );
    let metrics = SaslMetrics::register(&Metrics::new().unwrap()).unwrap();
    let backend: Arc<dyn LookupBackend> = directory.clone();
    (
        Arc::new(SaslService::new(backend, cached(ttl), metrics)),
        directory,
    )
}

fn cache_answers(s: &SaslService, answer: &str) -> u64 {
    s.metrics()
        .login_cache_answers
        .with_label_values(&[answer])
        .get()
}

#[tokio::test]
async fn within_the_ttl_the_same_password_is_answered_without_the_backend() {
    let (s, directory) = cached_service(Duration::from_secs(3600));
    let ok = AuthResult::Success("user@example.org".into());
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);
    assert_eq!(directory.take_calls(), ["auth user@example.org"]);
    for _ in 0..10 {
        assert_eq!(auth(&s, "User@Example.org", "right", "192.0.2.1").await, ok);
    }
    assert!(directory.take_calls().is_empty(), "answered from the cache");
    assert_eq!(cache_answers(&s, "fresh"), 10);
    // Another password always asks the backend.
    assert!(matches!(
        auth(&s, "user@example.org", "wrong", "192.0.2.1").await,
        AuthResult::Failure { .. }
    ));
    assert_eq!(directory.take_calls(), ["auth user@example.org"]);
}

#[tokio::test]
async fn during_an_outage_a_known_password_succeeds_and_any_other_is_an_outage() {
    let (s, directory) = cached_service(Duration::ZERO);
    let ok = AuthResult::Success("user@example.org".into());
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);
    directory.start_outage(Fault::Unavailable);
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);
    assert_eq!(
        directory.take_calls().len(),
        2,
        "TTL 0: the backend is asked first every time"
    );
    assert_eq!(cache_answers(&s, "stale"), 1);
    // A mistyped password during the outage: retry later (454), never 535.
    assert_eq!(
        auth(&s, "user@example.org", "wrong", "192.0.2.1").await,
        AuthResult::Unavailable
    );
    assert_eq!(cache_answers(&s, "mismatch"), 1);
    assert_eq!(
        s.throttle
            .failures("nobody@example.org", Some("192.0.2.1".parse().unwrap())),
        1,
        "a mismatch counts towards the client's lock-out"
    );
    assert_eq!(
        s.throttle.failures("user@example.org", None),
        0,
        "not the login's: its owner must not be locked out by others' guesses"
    );
    // Never seen: an outage as before.
    assert_eq!(
        auth(&s, "other@example.org", "right", "192.0.2.1").await,
        AuthResult::Unavailable
    );
    directory.end_outage();
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);
}

/// A directory whose answer for `user@example.org` / `right` can change:
/// accepted, refused (spam lock, password changed), or unreachable.
struct ChangingDirectory {
    state: std::sync::atomic::AtomicU8,
}

const ACCEPTS: u8 = 0;
const REFUSES: u8 = 1;
const DOWN: u8 = 2;

#[postfix_adapter_backend::async_trait]
impl LookupBackend for ChangingDirectory {
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
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        match self.state.load(std::sync::atomic::Ordering::SeqCst) {
            DOWN => Err(BackendError::Timeout),
            ACCEPTS if login.as_str() == "user@example.org" && password == b"right" => {
                Ok(AuthOutcome::Success)
            }
            REFUSES if password == b"right" => Ok(AuthOutcome::Failure {
                reason: "user disabled due to spam role".into(),
            }),
            _ => Ok(AuthOutcome::Failure {
                reason: AUTH_FAILED.into(),
            }),
        }
    }
}

#[tokio::test]
async fn a_login_userli_refuses_later_is_dropped_and_a_wrong_password_drops_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let directory = Arc::new(ChangingDirectory {
        state: std::sync::atomic::AtomicU8::new(ACCEPTS),
    });
    let metrics = SaslMetrics::register(&Metrics::new().unwrap()).unwrap();
    let backend: Arc<dyn LookupBackend> = directory.clone();
    let s = SaslService::new(backend, cached(Duration::ZERO), metrics);
    let ok = AuthResult::Success("user@example.org".into());
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);

    // Anyone's wrong password, against the healthy directory: the cached login
    // stays, so an outage right after still finds it.
    assert!(matches!(
        auth(&s, "user@example.org", "guess", "192.0.2.66").await,
        AuthResult::Failure { .. }
    ));
    // So does a password the backend refuses unscreened (empty).
    assert!(matches!(
        auth(&s, "user@example.org", "", "192.0.2.66").await,
        AuthResult::Failure { .. }
    ));
    directory.state.store(DOWN, SeqCst);
    assert_eq!(auth(&s, "user@example.org", "right", "192.0.2.1").await, ok);

    // Then userli locks the account (or the password changes): the refusal of
    // the cached password itself drops it, so the next outage cannot bring it
    // back; a refused login was never a cached success.
    directory.state.store(REFUSES, SeqCst);
    assert!(matches!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Failure { .. }
    ));
    directory.state.store(DOWN, SeqCst);
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Unavailable
    );
}

#[tokio::test]
async fn guesses_against_the_cache_in_an_outage_lock_the_client_out_not_the_owner() {
    let (s, directory) = service(SaslSettings {
        throttle: ThrottleSettings {
            lockout_failures: 3,
            ..settings().throttle
        },
        ..cached(Duration::ZERO)
    });
    assert!(matches!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Success(_)
    ));
    directory.start_outage(Fault::Unavailable);
    for _ in 0..3 {
        assert_eq!(
            auth(&s, "user@example.org", "guess", "192.0.2.66").await,
            AuthResult::Unavailable
        );
    }
    assert!(
        matches!(
            auth(&s, "user@example.org", "right", "192.0.2.66").await,
            AuthResult::Failure { ref reason, .. } if reason == LOCKED_OUT
        ),
        "the guessing client is locked out"
    );
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Success("user@example.org".into()),
        "the owner is not"
    );
}

#[tokio::test]
async fn forgetting_the_logins_makes_every_login_ask_the_backend() {
    let (s, directory) = cached_service(Duration::from_secs(3600));
    assert!(matches!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Success(_)
    ));
    assert_eq!(s.metrics().login_cache_entries.get(), 1);
    s.forget_logins();
    assert_eq!(s.metrics().login_cache_entries.get(), 0);
    directory.take_calls();
    directory.start_outage(Fault::Unavailable);
    assert_eq!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Unavailable
    );
    assert_eq!(directory.take_calls(), ["auth user@example.org"]);
}

#[tokio::test]
async fn a_locked_out_login_is_not_answered_from_the_cache() {
    let (s, _) = service(SaslSettings {
        throttle: ThrottleSettings {
            lockout_failures: 2,
            ..settings().throttle
        },
        ..cached(Duration::from_secs(3600))
    });
    assert!(matches!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Success(_)
    ));
    for _ in 0..2 {
        auth(&s, "user@example.org", "wrong", "192.0.2.9").await;
    }
    assert!(matches!(
        auth(&s, "user@example.org", "right", "192.0.2.1").await,
        AuthResult::Failure { .. }
    ));
}
