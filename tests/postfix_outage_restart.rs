//! A userli outage with an adapter restart in the middle, through a real Postfix:
//! mail keeps being accepted and delivered, and users who logged in keep sending.
//!
//! A fake userli (wiremock) answers the lookups and the logins; a private Postfix
//! 3.7 instance (see `support/private_postfix.rs`) validates recipients and
//! expands aliases through the adapter's socketmap, delivers into Maildirs, and
//! authenticates through the adapter's SASL server. The adapter keeps its lookup
//! cache (`LOOKUP_CACHE_PERSIST`, on by default) and its verified logins
//! (`SASL_CACHE_PERSIST=true`) in one state directory. Then:
//!
//! 1. userli healthy: mail to an alias and a mailbox is delivered; `user@` logs in
//!    and sends;
//! 2. the adapter stops (saving both), userli fails every request (503), a new
//!    adapter starts on the same addresses and the same state directory;
//! 3. during the outage: mail to both addresses is accepted and delivered, `user@`
//!    logs in (235) and sends, a wrong password gets 454 (not 535), an address
//!    never seen gets a 4xx (not a 5xx);
//! 4. userli comes back with a changed alias and a new mailbox: the fresh answers
//!    replace the stale ones at once, and a wrong password is a 535 again.
//!
//! Needs root, Postfix and swaks, hence ignored by default.

mod common;
#[allow(dead_code)]
#[path = "support/private_postfix.rs"]
mod private_postfix;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Adapter, metric};
use private_postfix::{PrivatePostfix, Transcript, free_port, sasl_main_cf};
use wiremock::matchers::{any, body_json, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PASSWORD: &str = "password";

/// The directory as the fake userli serves it: `alias@` forwards to
/// `alias_target`; `extra_mailbox` exists too when given.
async fn serve_directory(api: &MockServer, alias_target: &str, extra_mailbox: Option<&str>) {
    api.reset().await;
    let json = |v: serde_json::Value| ResponseTemplate::new(200).set_body_json(v);
    let get = |p: String, v: serde_json::Value| {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(json(v))
    };
    let mut mailboxes = vec!["user@example.org", "user2@example.org"];
    mailboxes.extend(extra_mailbox);
    for mailbox in mailboxes {
        get(
            format!("/api/postfix/mailbox/{mailbox}"),
            serde_json::json!(true),
        )
        .mount(api)
        .await;
        get(
            format!("/api/postfix/senders/{mailbox}"),
            serde_json::json!([mailbox]),
        )
        .mount(api)
        .await;
    }
    get(
        "/api/postfix/domain/example.org".into(),
        serde_json::json!(true),
    )
    .mount(api)
    .await;
    get(
        "/api/postfix/alias/alias@example.org".into(),
        serde_json::json!([alias_target]),
    )
    .mount(api)
    .await;
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .and(body_json(
            serde_json::json!({"email": "user@example.org", "password": PASSWORD}),
        ))
        .respond_with(json(serde_json::json!({"message": "success"})))
        .mount(api)
        .await;
    // Everything else: unknown.
    for (route, unknown) in [
        ("domain", serde_json::json!(false)),
        ("mailbox", serde_json::json!(false)),
        ("alias", serde_json::json!([])),
        ("senders", serde_json::json!([])),
    ] {
        Mock::given(method("GET"))
            .and(path_regex(format!("^/api/postfix/{route}/")))
            .respond_with(json(unknown))
            .with_priority(10)
            .mount(api)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/api/postfix/auth"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"message": "authentication failed"})),
        )
        .with_priority(10)
        .mount(api)
        .await;
}

/// userli down: every request answered 503.
async fn fail_everything(api: &MockServer) {
    api.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(api)
        .await;
}

/// The adapter on `socketmap` and `sasl` (fixed, so Postfix finds the restarted
/// one), keeping its caches in `state`.
fn adapter(api: &str, socketmap: &str, sasl: &str, state: &Path) -> Adapter {
    tokio::task::block_in_place(|| {
        Adapter::spawn(&[
            ("USERLI_BASE_URL", api),
            ("USERLI_TOKEN", "test-token"),
            ("SOCKETMAP_LISTEN_ADDR", socketmap),
            ("SASL_LISTEN_ADDR", sasl),
            ("POLICY_LISTEN_ADDR", "off"),
            ("STATE_DIRECTORY", state.to_str().unwrap()),
            ("SASL_CACHE_PERSIST", "true"),
            ("SASL_FAILURE_DELAY", "0"),
            ("LOOKUP_CACHE_TTL", "2s"),
            ("LOOKUP_NEGATIVE_CACHE_TTL", "2s"),
            ("LOOKUP_TIMEOUT", "1s"),
            ("CIRCUIT_BREAKER_COOLDOWN", "1s"),
        ])
    })
}

/// Mail from outside to `to`, with `subject`.
fn deliver(postfix: &PrivatePostfix, to: &str, subject: &str) -> Transcript {
    tokio::task::block_in_place(|| {
        postfix.swaks(&["--to", to, "--header", &format!("Subject: {subject}")])
    })
}

/// `user@` logs in with `password` and sends to user2@ as itself.
fn submit(postfix: &PrivatePostfix, password: &str, subject: &str) -> Transcript {
    tokio::task::block_in_place(|| {
        postfix.swaks(&[
            "--auth",
            "PLAIN",
            "--auth-user",
            "user@example.org",
            "--auth-password",
            password,
            "--from",
            "user@example.org",
            "--to",
            "user2@example.org",
            "--header",
            &format!("Subject: {subject}"),
        ])
    })
}

/// The reply to AUTH (the first one after the `334` challenges).
fn auth_reply(t: &Transcript) -> &str {
    t.text
        .lines()
        .filter(|l| l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| l.trim_start_matches(['<', '-', '*']).trim_start())
        .find(|r| r.starts_with("235") || r.starts_with("454") || r.starts_with("535"))
        .unwrap_or_else(|| panic!("no AUTH reply:\n{}", t.text))
}

fn assert_accepted(t: &Transcript, what: &str) {
    let reply = t.reply_to(".");
    assert!(reply.starts_with("250 "), "{what}: {reply}\n{}", t.text);
}

/// The subjects delivered to `local@example.org`, waiting for at least `want`.
fn delivered(postfix: &PrivatePostfix, local: &str, want: usize) -> Vec<String> {
    let mut subjects: Vec<String> =
        tokio::task::block_in_place(|| postfix.maildir(local, "example.org", want))
            .iter()
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect();
    subjects.sort();
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix and swaks"]
async fn mail_and_logins_survive_a_userli_outage_across_an_adapter_restart() {
    let api = MockServer::start().await;
    serve_directory(&api, "user2@example.org", None).await;
    let state = tempfile::tempdir().unwrap();
    let socketmap = format!("127.0.0.1:{}", free_port());
    let sasl = format!("127.0.0.1:{}", free_port());

    // 1. userli healthy.
    let first = adapter(&api.uri(), &socketmap, &sasl, state.path());
    let postfix = tokio::task::block_in_place(|| {
        PrivatePostfix::start_delivering(
            &socketmap,
            &sasl_main_cf(&socketmap, &sasl),
            &["user@example.org", "user2@example.org", "new@example.org"],
        )
    });
    assert_accepted(
        &deliver(&postfix, "alias@example.org", "before alias"),
        "alias",
    );
    assert_accepted(
        &deliver(&postfix, "user@example.org", "before user"),
        "user",
    );
    let t = submit(&postfix, PASSWORD, "before submission");
    assert!(auth_reply(&t).starts_with("235 "), "{}", t.text);
    assert_accepted(&t, "submission");
    assert_eq!(
        delivered(&postfix, "user2", 2),
        ["before alias", "before submission"]
    );
    assert_eq!(delivered(&postfix, "user", 1), ["before user"]);

    // 2. Restart into an outage. Not within a second of the login: the adapter
    // resets quiet auth connections at shutdown (so Postfix reconnects without a
    // 454), but closes one that just answered in order, so the answer arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = Instant::now();
    assert!(tokio::task::block_in_place(|| first.terminate()).success());
    for file in ["lookup-cache.json", "sasl-login-cache.json"] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(state.path().join(file))
            .unwrap_or_else(|e| panic!("{file} saved at shutdown: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    let logins = std::fs::read_to_string(state.path().join("sasl-login-cache.json")).unwrap();
    assert!(logins.contains("user@example.org"), "{logins}");
    assert!(!logins.contains(PASSWORD), "never the password itself");
    fail_everything(&api).await;
    let second = adapter(&api.uri(), &socketmap, &sasl, state.path());
    let restarted_in = stopped.elapsed();

    // 3. During the outage.
    let accepted = Instant::now();
    assert_accepted(
        &deliver(&postfix, "alias@example.org", "outage alias"),
        "alias during the outage",
    );
    let first_accepted_after = accepted.elapsed();
    assert_accepted(
        &deliver(&postfix, "user@example.org", "outage user"),
        "mailbox during the outage",
    );
    // The same smtpd process kept its auth connection to the first adapter,
    // which reset it at shutdown: Postfix reconnects at once, no 454 first.
    let t = submit(&postfix, PASSWORD, "outage submission");
    assert!(
        auth_reply(&t).starts_with("235 "),
        "a user who logged in before keeps sending:\n{}",
        t.text
    );
    assert_accepted(&t, "submission during the outage");
    // The adapter answers an outage by dropping the auth connection, which Postfix
    // reports as a lost connection too: the metric tells the two apart.
    let t = submit(&postfix, "mistyped", "never sent");
    assert!(
        auth_reply(&t).starts_with("454 4.7.0 "),
        "a wrong password during the outage is an outage, not a 535:\n{}",
        t.text
    );
    let t = tokio::task::block_in_place(|| postfix.rcpt("new@example.org"));
    let reply = t.rcpt_reply();
    assert!(
        reply.starts_with("4"),
        "an address never seen is deferred, never bounced: {reply}\n{}",
        t.text
    );
    assert_eq!(
        delivered(&postfix, "user2", 4),
        [
            "before alias",
            "before submission",
            "outage alias",
            "outage submission"
        ]
    );
    assert_eq!(
        delivered(&postfix, "user", 2),
        ["before user", "outage user"]
    );
    let scraped = second.scrape().await;
    let stale_logins = metric(
        &scraped,
        "userli_postfix_adapter_sasl_login_cache_answers_total",
        "answer=\"stale\"",
    );
    let stale_lookups = metric(
        &scraped,
        "userli_postfix_adapter_lookup_cache_total",
        "result=\"stale\"",
    );
    assert_eq!(stale_logins, 1.0, "{scraped}");
    let mismatches = metric(
        &scraped,
        "userli_postfix_adapter_sasl_login_cache_answers_total",
        "answer=\"mismatch\"",
    );
    assert_eq!(mismatches, 1.0, "the 454 came from the cache's answer");
    assert!(stale_lookups >= 3.0, "{stale_lookups} stale lookups");

    // 4. userli is back, with alias@ now forwarding to user@ and a new mailbox.
    serve_directory(&api, "user@example.org", Some("new@example.org")).await;
    let back = Instant::now();
    let mut probe = common::Client::tcp(socketmap.parse().unwrap()).await;
    loop {
        let reply = probe.ask("alias alias@example.org").await;
        if reply == "OK user@example.org" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "fresh answers never replaced the stale one: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh_after = back.elapsed();
    assert_accepted(
        &deliver(&postfix, "alias@example.org", "after alias"),
        "alias after the outage",
    );
    assert_accepted(
        &deliver(&postfix, "new@example.org", "after new"),
        "the new mailbox",
    );
    assert_eq!(
        delivered(&postfix, "user", 3),
        ["after alias", "before user", "outage user"]
    );
    assert_eq!(delivered(&postfix, "new", 1), ["after new"]);
    // The 454 above reset the auth connection, so this AUTH reaches the adapter
    // through a new one instead of failing on the dead one.
    let t = submit(&postfix, "mistyped", "never sent");
    assert!(
        auth_reply(&t).starts_with("535 "),
        "userli answers again: a wrong password is wrong\n{}",
        t.text
    );
    eprintln!(
        "outage across a restart: adapter restarted in {restarted_in:?}, first mail accepted {first_accepted_after:?} after; \
         {stale_lookups} stale lookups and {stale_logins} cached login served during the outage; \
         fresh answers {fresh_after:?} after userli came back"
    );
    drop(second);
}
