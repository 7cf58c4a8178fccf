//! The contract of [`LookupBackend`], checked against a backend's own data.
//!
//! Describe a few facts of the data your backend serves ([`Facts`]) and call
//! [`check`] from a test; give a second instance that cannot reach its data to
//! [`check_unavailable`]. Every fact is optional: checks for facts not given are
//! skipped, so a backend without logins or quotas still runs the rest.
//!
//! What is checked, and why it matters to mail:
//! - found is found, and "not found" is a value (`Ok(false)`, `Ok(vec![])`,
//!   `Ok(None)`), never an error: the engine answers `NOTFOUND` only for values;
//! - alias destinations and senders come back in the backend's order, every time;
//! - a wrong password, an unknown login, an empty and an over-long password are
//!   `Ok(Failure)` with the same reason (nothing tells which users exist), never an
//!   error (which would make Postfix answer 454 instead of 535);
//! - quotas: the login's limits, `None` for an address that is no login;
//! - calls are safe concurrently and after a cancelled call (the engine drops a
//!   call's future at its deadline);
//! - a backend that cannot reach its data answers every question with an error,
//!   never "not found" and never a failed login ([`check_unavailable`]).

use std::time::Duration;

use crate::{AUTH_FAILED, Address, AuthOutcome, LookupBackend, MAX_PASSWORD_BYTES, SmtpQuota};

/// Facts of a backend's data that [`check`] holds it to.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// A hosted domain.
    pub domain: Option<&'a str>,
    /// A domain that is not hosted.
    pub foreign_domain: Option<&'a str>,
    /// A mailbox.
    pub mailbox: Option<&'a str>,
    /// An address that is no mailbox, no alias, no login and no one may send as.
    pub unknown_address: Option<&'a str>,
    /// An alias and its destinations, in order.
    pub alias: Option<(&'a str, &'a [&'a str])>,
    /// An address and the logins that may send as it, in order.
    pub senders: Option<(&'a str, &'a [&'a str])>,
    /// A login and its right password.
    pub login: Option<(&'a str, &'a [u8])>,
    /// A login and its sending limits.
    pub quota: Option<(&'a str, SmtpQuota)>,
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap_or_else(|e| panic!("fact {s:?} is no address: {e}"))
}

/// Checks `backend` against `facts`; panics with the first difference.
pub async fn check(backend: &dyn LookupBackend, facts: &Facts<'_>) {
    if let Some(domain) = facts.domain {
        assert!(
            backend.domain_exists(domain).await.expect("domain lookup"),
            "{domain} is hosted"
        );
    }
    if let Some(domain) = facts.foreign_domain {
        assert!(
            !backend
                .domain_exists(domain)
                .await
                .expect("not found is an answer, not an error"),
            "{domain} is not hosted"
        );
    }
    if let Some(mailbox) = facts.mailbox {
        assert!(
            backend
                .mailbox_exists(&addr(mailbox))
                .await
                .expect("mailbox lookup"),
            "{mailbox} is a mailbox"
        );
    }
    if let Some(unknown) = facts.unknown_address {
        let unknown = addr(unknown);
        let not_found = "not found is an answer, not an error";
        assert!(!backend.mailbox_exists(&unknown).await.expect(not_found));
        assert!(backend.aliases(&unknown).await.expect(not_found).is_empty());
        assert!(backend.senders(&unknown).await.expect(not_found).is_empty());
        assert_eq!(
            backend.smtp_quota(&unknown).await.expect(not_found),
            None,
            "an address that is no login has no quota"
        );
    }
    if let Some((alias, destinations)) = facts.alias {
        for _ in 0..2 {
            assert_eq!(
                backend.aliases(&addr(alias)).await.expect("alias lookup"),
                destinations,
                "destinations of {alias}, in order, every time"
            );
        }
    }
    if let Some((address, logins)) = facts.senders {
        assert_eq!(
            backend
                .senders(&addr(address))
                .await
                .expect("senders lookup"),
            logins,
            "senders of {address}"
        );
    }
    if let Some((login, quota)) = facts.quota {
        assert_eq!(
            backend
                .smtp_quota(&addr(login))
                .await
                .expect("quota lookup"),
            Some(quota),
            "quota of {login}"
        );
    }
    if let Some((login, password)) = facts.login {
        check_authentication(backend, &addr(login), password, facts.unknown_address).await;
    }
    check_concurrency_and_cancellation(backend, facts).await;
}

async fn check_authentication(
    backend: &dyn LookupBackend,
    login: &Address,
    password: &[u8],
    unknown: Option<&str>,
) {
    assert_eq!(
        backend
            .authenticate(login, password)
            .await
            .expect("authentication"),
        AuthOutcome::Success,
        "{login} with its password"
    );
    let failed = AuthOutcome::Failure {
        reason: AUTH_FAILED.to_owned(),
    };
    let mut wrong = password.to_vec();
    wrong.push(b'!');
    let long = vec![b'a'; MAX_PASSWORD_BYTES + 1];
    for (what, password) in [
        ("a wrong password", wrong.as_slice()),
        ("an empty password", &[][..]),
        ("an over-long password", long.as_slice()),
    ] {
        assert_eq!(
            backend
                .authenticate(login, password)
                .await
                .unwrap_or_else(|e| panic!("{what} is a failure, not an error: {e}")),
            failed,
            "{what} for {login}"
        );
    }
    if let Some(unknown) = unknown {
        assert_eq!(
            backend
                .authenticate(&addr(unknown), password)
                .await
                .expect("an unknown login is a failure, not an error"),
            failed,
            "an unknown login fails like a wrong password"
        );
    }
}

async fn check_concurrency_and_cancellation(backend: &dyn LookupBackend, facts: &Facts<'_>) {
    let Some(mailbox) = facts.mailbox.map(addr) else {
        return;
    };
    // A call dropped half-way (the engine's deadline) leaves the backend usable.
    let _ = tokio::time::timeout(Duration::ZERO, backend.mailbox_exists(&mailbox)).await;
    let answers = futures_all(backend, &mailbox, 16).await;
    assert!(
        answers.iter().all(|a| *a),
        "16 concurrent lookups of {mailbox} all find it"
    );
}

async fn futures_all(backend: &dyn LookupBackend, mailbox: &Address, n: usize) -> Vec<bool> {
    let mut calls: Vec<_> = (0..n).map(|_| backend.mailbox_exists(mailbox)).collect();
    let mut answers: Vec<Option<bool>> = vec![None; n];
    // Polled together, so all are in flight at once.
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (call, answer) in calls.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match call.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        *answer = Some(r.expect("concurrent lookup"));
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    answers.into_iter().map(|a| a.unwrap_or(false)).collect()
}

/// Checks that `backend`, which cannot reach its data (a dead server, a missing
/// database), answers every question with an error: never "not found", never a
/// failed login, never healthy.
pub async fn check_unavailable(backend: &dyn LookupBackend, facts: &Facts<'_>) {
    let address = addr(
        facts
            .mailbox
            .or(facts.unknown_address)
            .unwrap_or("user@example.org"),
    );
    let domain = facts.domain.unwrap_or("example.org");
    assert!(
        backend.domain_exists(domain).await.is_err(),
        "domain: an error"
    );
    assert!(
        backend.mailbox_exists(&address).await.is_err(),
        "mailbox: an error"
    );
    assert!(backend.aliases(&address).await.is_err(), "alias: an error");
    assert!(
        backend.senders(&address).await.is_err(),
        "senders: an error"
    );
    if let Some((login, password)) = facts.login {
        assert!(
            backend.authenticate(&addr(login), password).await.is_err(),
            "a password that cannot be checked is an error, not a failed login"
        );
    }
    if let Some((login, _)) = facts.quota {
        assert!(
            backend.smtp_quota(&addr(login)).await.is_err(),
            "quota: an error"
        );
    }
    assert!(backend.health().await.is_err(), "not healthy");
}
