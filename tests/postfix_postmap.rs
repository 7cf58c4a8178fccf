//! Debian's real Postfix socketmap client (`postmap -q`) against the adapter binary.
//!
//! `postmap -q` exits 0 when found and 1 both when not found and on a lookup
//! error; the difference is on stderr: a clean not-found prints nothing, an
//! error prints Postfix's "socketmap server temporary error" warning and a fatal
//! "query error".

mod common;
#[path = "support/postmap.rs"]
mod postmap_client;

use std::process::Output;

use common::{Adapter, demo_fixture, free_loopback_addr};

fn postmap(key: &str, addr: &str, map: &str) -> Output {
    postmap_client::postmap(key, &format!("socketmap:inet:{addr}:{map}"))
}

fn demo() -> Adapter {
    Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", demo_fixture().to_str().unwrap()),
        ("POSTFIX_RECIPIENT_DELIMITER", "+"),
    ])
}

#[test]
#[ignore = "needs postfix (postmap)"]
fn postmap_finds_every_map_of_the_demo_data() {
    let adapter = demo();
    for (key, map, want) in [
        ("example.org", "domain", "1"),
        ("user@example.org", "mailbox", "1"),
        ("User+Tag@Example.org", "mailbox", "1"),
        ("alias@example.org", "alias", "user2@example.org"),
        ("user@example.org", "senders", "user@example.org"),
        ("alias@example.org", "senders", "user2@example.org"),
    ] {
        let out = postmap(key, &adapter.socketmap, map);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{key} {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            want,
            "{key} {map}"
        );
    }
}

#[test]
#[ignore = "needs postfix (postmap)"]
fn postmap_not_found_is_clean() {
    let adapter = demo();
    for (key, map) in [
        ("example.net", "domain"),
        ("nobody@example.org", "mailbox"),
        ("deleted@example.org", "mailbox"),
        ("user@example.org", "alias"),
        ("example.org", "alias"),
        ("nobody@example.org", "senders"),
    ] {
        let out = postmap(key, &adapter.socketmap, map);
        assert_eq!(out.status.code(), Some(1), "{key} {map}");
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.is_empty(),
            "{key} {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs postfix (postmap)"]
fn postmap_sees_a_temporary_error_when_the_backend_is_down() {
    let dead = free_loopback_addr();
    let adapter = Adapter::spawn(&[
        ("USERLI_TOKEN", "t"),
        ("USERLI_BASE_URL", &format!("http://{dead}")),
    ]);
    for (key, map, reason) in [
        ("example.org", "domain", "Error fetching domain"),
        ("user@example.org", "mailbox", "Error fetching mailbox"),
        ("alias@example.org", "alias", "Error fetching aliases"),
        ("user@example.org", "senders", "Error fetching senders"),
    ] {
        let out = postmap(key, &adapter.socketmap, map);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_ne!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty(), "no answer on a backend failure");
        assert!(
            err.contains(&format!("socketmap server temporary error: {reason}")),
            "{err}"
        );
        assert!(err.contains("query error"), "{err}");
    }
}

#[test]
#[ignore = "needs postfix (postmap)"]
fn postmap_reports_unknown_maps_as_permanent_errors() {
    let adapter = demo();
    let out = postmap("user@example.org", &adapter.socketmap, "transport");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("socketmap server permanent error: Unknown map name"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postfix (postmap)"]
async fn postmap_keeps_resolving_warm_keys_when_the_api_dies() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/mailbox/user@example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(true)))
        .mount(&api)
        .await;
    let uri = api.uri();
    let adapter = Adapter::spawn(&[
        ("USERLI_TOKEN", "t"),
        ("USERLI_BASE_URL", &uri),
        ("LOOKUP_CACHE_TTL", "100ms"),
        ("LOOKUP_TIMEOUT", "500ms"),
    ]);
    let warm = postmap("user@example.org", &adapter.socketmap, "mailbox");
    assert_eq!(String::from_utf8(warm.stdout).unwrap().trim_end(), "1");

    drop(api); // the API is gone: connection refused
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stale = postmap("user@example.org", &adapter.socketmap, "mailbox");
    assert_eq!(
        stale.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );
    assert_eq!(String::from_utf8(stale.stdout).unwrap().trim_end(), "1");

    let unseen = postmap("new@example.org", &adapter.socketmap, "mailbox");
    assert!(unseen.stdout.is_empty());
    assert!(
        String::from_utf8(unseen.stderr)
            .unwrap()
            .contains("socketmap server temporary error: Error fetching mailbox")
    );
}

/// With `recipient_delimiter = +-`, Postfix asks for `first-last@` as given and the
/// adapter answers for that address, never for `first@` (an alias to user2@):
/// first-last@ is a mailbox of its own and no alias, user2@ may not send as it,
/// while an unknown `first-tag@` still follows first@'s alias.
#[test]
#[ignore = "needs postfix (postmap)"]
fn postmap_never_reads_a_mailbox_as_an_extension_of_an_alias() {
    let adapter = Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", demo_fixture().to_str().unwrap()),
        ("POSTFIX_RECIPIENT_DELIMITER", "+-"),
    ]);
    for (key, map, want) in [
        ("first-last@example.org", "mailbox", Some("1")),
        ("first-last@example.org", "alias", None),
        (
            "first-last@example.org",
            "senders",
            Some("first-last@example.org"),
        ),
        ("first-tag@example.org", "alias", Some("user2@example.org")),
        (
            "first-tag@example.org",
            "senders",
            Some("user2@example.org"),
        ),
        ("first-tag@example.org", "mailbox", None),
        ("user+tag@example.org", "mailbox", Some("1")),
        ("user-tag@example.org", "mailbox", Some("1")),
    ] {
        let out = postmap(key, &adapter.socketmap, map);
        assert!(
            out.stderr.is_empty(),
            "{key} {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            (out.status.code(), got.trim_end()),
            (Some(if want.is_some() { 0 } else { 1 }), want.unwrap_or("")),
            "{key} {map}"
        );
    }
}
