//! The answers of userli's `basic` fixture data set (domains `example.org` and
//! `example.com`; users such as `user@`, `user2@`, `spam@` and the deleted
//! `deleted@example.org`; aliases `alias@` and `alias2@` pointing to
//! `user2@example.org`), as the userli API gives them. Both the fixture backend
//! (with the bundled demo file) and the userli backend (against a fake API) run
//! them, so the two cannot drift apart.

use crate::{Address, LookupBackend};

fn addr(s: &str) -> Address {
    Address::parse(s).expect("testkit addresses are valid")
}

/// Asserts every lookup answer of the `basic` data set; panics with the first
/// difference.
pub async fn assert_basic_dataset(backend: &dyn LookupBackend) {
    for domain in ["example.org", "example.com"] {
        assert!(
            backend.domain_exists(domain).await.expect("domain lookup"),
            "domain {domain} should exist"
        );
    }
    assert!(
        !backend
            .domain_exists("example.net")
            .await
            .expect("domain lookup")
    );

    for mailbox in [
        "user@example.org",
        "user2@example.org",
        "spam@example.org",
        "domain@example.com",
    ] {
        assert!(
            backend
                .mailbox_exists(&addr(mailbox))
                .await
                .expect("mailbox lookup"),
            "mailbox {mailbox} should exist"
        );
    }
    for not_mailbox in [
        "deleted@example.org",
        "alias@example.org",
        "nobody@example.org",
    ] {
        assert!(
            !backend
                .mailbox_exists(&addr(not_mailbox))
                .await
                .expect("mailbox lookup"),
            "{not_mailbox} should not be a mailbox"
        );
    }

    for alias in ["alias@example.org", "alias2@example.org"] {
        assert_eq!(
            backend.aliases(&addr(alias)).await.expect("alias lookup"),
            vec!["user2@example.org".to_owned()],
            "alias {alias}"
        );
    }
    for not_alias in [
        "user@example.org",
        "postmaster@example.org",
        "postmaster@unmanaged.org",
    ] {
        assert!(
            backend
                .aliases(&addr(not_alias))
                .await
                .expect("alias lookup")
                .is_empty(),
            "{not_alias} should not be an alias"
        );
    }

    let senders =
        |s: &'static str| async move { backend.senders(&addr(s)).await.expect("senders lookup") };
    assert_eq!(senders("user@example.org").await, vec!["user@example.org"]);
    assert_eq!(
        senders("user2@example.org").await,
        vec!["user2@example.org"]
    );
    assert_eq!(
        senders("alias@example.org").await,
        vec!["user2@example.org"]
    );
    assert!(senders("deleted@example.org").await.is_empty());
    assert!(senders("nobody@example.org").await.is_empty());
}

/// Asserts that the backend answers address-extension look-alikes literally, as
/// userli does: the demo data's mailbox `first-last@example.org` and alias
/// `first@example.org -> user2@example.org` are two different addresses. (The
/// engine, not the backend, decides when to ask for an extension-stripped form.)
pub async fn assert_extension_rows(backend: &dyn LookupBackend) {
    let first_last = addr("first-last@example.org");
    let first = addr("first@example.org");
    assert!(
        backend
            .mailbox_exists(&first_last)
            .await
            .expect("mailbox lookup"),
        "first-last@ is a mailbox"
    );
    assert!(
        !backend
            .mailbox_exists(&first)
            .await
            .expect("mailbox lookup"),
        "first@ is an alias, no mailbox"
    );
    assert_eq!(
        backend.aliases(&first).await.expect("alias lookup"),
        vec!["user2@example.org".to_owned()]
    );
    assert!(
        backend
            .aliases(&first_last)
            .await
            .expect("alias lookup")
            .is_empty(),
        "first-last@ is no alias"
    );
    assert_eq!(
        backend.senders(&first_last).await.expect("senders lookup"),
        vec!["first-last@example.org".to_owned()]
    );
    assert!(
        !backend
            .mailbox_exists(&addr("first-tag@example.org"))
            .await
            .expect("mailbox lookup"),
        "the backend never strips extensions itself"
    );
}
