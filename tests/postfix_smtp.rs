//! The adapter behind a real Postfix smtpd, driven over SMTP with swaks.
//!
//! `postfix_postmap.rs` proves Postfix's socketmap client understands the adapter's
//! answers; this file proves the answers have the intended effect on mail. Each test
//! starts the adapter binary and a private, throw-away Postfix 3.7 instance (see
//! `support/private_postfix.rs`) whose `virtual_mailbox_domains`,
//! `virtual_mailbox_maps` and `virtual_alias_maps` are the adapter's socketmaps, and
//! checks what an SMTP client is told:
//!
//! - hosted mailboxes (with a `+tag`) and aliases are accepted at RCPT;
//! - unknown and deleted mailboxes get `550 5.1.1 ... User unknown in virtual mailbox
//!   table`, i.e. NOTFOUND from the mailbox map is a clean "no";
//! - a domain the adapter does not host is refused by `reject_unauth_destination`,
//!   i.e. NOTFOUND from the domain map means "not ours";
//! - a dead userli API or a dead adapter gives `451 4.3.0`, never a 5xx: mail is
//!   delayed, not bounced (spec postfix-protocols §2.10);
//! - a whole message to an alias is accepted and cleanup rewrites the recipient to
//!   the alias target through the alias socketmap.
//!
//! The socketmap `senders` map is not exercised: `smtpd_sender_login_maps` only
//! matters with SASL, which this instance does not have.
//!
//! Needs root, Postfix and swaks, hence ignored by default.

mod common;
#[path = "support/private_postfix.rs"]
mod private_postfix;

use common::{Adapter, demo_fixture};
use private_postfix::{PrivatePostfix, Transcript, free_port};

/// swaks' exit code when the server accepted none of the recipients.
const SWAKS_NO_RCPT_ACCEPTED: i32 = 24;

fn demo_adapter() -> Adapter {
    Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        (
            "FIXTURE_PATH",
            demo_fixture().to_str().expect("UTF-8 fixture path"),
        ),
        // Must match main.cf's recipient_delimiter: Postfix sends the full
        // `user+tag@` key and leaves stripping the extension to the adapter.
        ("POSTFIX_RECIPIENT_DELIMITER", "+"),
    ])
}

fn assert_accepted(t: &Transcript, to: &str) {
    let reply = t.rcpt_reply();
    assert!(reply.starts_with("250 "), "{to}: {reply}\n{}", t.text);
    assert_eq!(t.exit, Some(0), "{to}: swaks exit\n{}", t.text);
}

/// A 4xx reply: the client keeps the message and retries later.
fn assert_temporary_failure(t: &Transcript, to: &str) {
    let reply = t.rcpt_reply();
    assert!(
        reply.starts_with('4'),
        "{to}: want 4xx, got {reply}\n{}",
        t.text
    );
    assert_eq!(
        t.exit,
        Some(SWAKS_NO_RCPT_ACCEPTED),
        "{to}: swaks exit\n{}",
        t.text
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn hosted_mailboxes_and_aliases_are_accepted() {
    let adapter = demo_adapter();
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    for to in [
        "user@example.org",
        // Case and the extension are the adapter's job: socketmaps get no partial keys.
        "User+tag@Example.org",
        "alias@example.org",
        // Spam-flagged users may not log in but still receive mail.
        "spam@example.org",
        // The second hosted domain.
        "domain@example.com",
    ] {
        assert_accepted(&postfix.rcpt(to), to);
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn unknown_and_deleted_mailboxes_are_user_unknown() {
    let adapter = demo_adapter();
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    for to in [
        "nobody@example.org",
        "deleted@example.org",
        "nobody+tag@example.com",
    ] {
        let t = postfix.rcpt(to);
        let reply = t.rcpt_reply();
        assert!(reply.starts_with("550 5.1.1 "), "{to}: {reply}\n{}", t.text);
        assert!(
            reply.contains("User unknown in virtual mailbox table"),
            "{to}: {reply}"
        );
        assert_eq!(t.exit, Some(SWAKS_NO_RCPT_ACCEPTED), "{to}\n{}", t.text);
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn foreign_domains_are_not_relayed() {
    let adapter = demo_adapter();
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    for to in ["x@example.net", "user@sub.example.org"] {
        let t = postfix.rcpt(to);
        let reply = t.rcpt_reply();
        // 554 is reject_unauth_destination; a 4xx here would mean the domain lookup
        // failed rather than answered NOTFOUND.
        assert!(reply.starts_with('5'), "{to}: {reply}\n{}", t.text);
        assert!(reply.contains("Relay access denied"), "{to}: {reply}");
        assert_eq!(t.exit, Some(SWAKS_NO_RCPT_ACCEPTED), "{to}\n{}", t.text);
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn backend_down_defers_instead_of_rejecting() {
    let dead = free_port();
    let adapter = Adapter::spawn(&[
        ("USERLI_TOKEN", "t"),
        ("USERLI_BASE_URL", &format!("http://127.0.0.1:{dead}")),
    ]);
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    // Addresses that would be accepted, rejected as unknown, and relay-denied with
    // a working backend: when it cannot know, the adapter must never make Postfix
    // say "no" for good.
    for to in ["user@example.org", "nobody@example.org", "x@example.net"] {
        let t = postfix.rcpt(to);
        assert_temporary_failure(&t, to);
        assert!(
            t.rcpt_reply().starts_with("451 4.3.0 "),
            "{to}: {}",
            t.rcpt_reply()
        );
    }
    // The adapter told Postfix why, and Postfix logged it.
    postfix.wait_for_log(&["socketmap server temporary error"]);
}

#[test]
#[ignore = "needs postfix and swaks"]
fn adapter_down_defers_instead_of_rejecting() {
    let adapter = demo_adapter();
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    // First with the adapter up, so smtpd and trivial-rewrite hold open socketmap
    // connections that then go dead: that path (EOF, one reconnect, refused) differs
    // from never having connected.
    assert_accepted(&postfix.rcpt("user@example.org"), "user@example.org");
    assert!(
        adapter.terminate().success(),
        "adapter exits cleanly on SIGTERM"
    );
    for to in [
        "user@example.org",
        "alias@example.org",
        "nobody@example.org",
        "x@example.net",
    ] {
        assert_temporary_failure(&postfix.rcpt(to), to);
    }
    postfix.wait_for_log(&["Connection refused"]);

    // And an instance that never reached an adapter at all.
    let nobody_home = format!("127.0.0.1:{}", free_port());
    let postfix = PrivatePostfix::start(&nobody_home);
    for to in ["user@example.org", "x@example.net"] {
        assert_temporary_failure(&postfix.rcpt(to), to);
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn message_to_an_alias_is_delivered_to_its_target() {
    let adapter = demo_adapter();
    let postfix = PrivatePostfix::start(&adapter.socketmap);
    let t = postfix.swaks(&[
        "--to",
        "alias@example.org",
        "--header",
        "Subject: postfix_smtp integration test",
    ]);
    let reply = t.reply_to(".");
    assert!(
        reply.starts_with("250 "),
        "end of DATA: {reply}\n{}",
        t.text
    );
    assert_eq!(t.exit, Some(0), "{}", t.text);
    let queue_id = reply
        .rsplit_once("queued as ")
        .map(|(_, id)| id.trim())
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"));
    // cleanup expanded virtual_alias_maps through the socketmap before queueing; the
    // discard transport then "delivers" the rewritten recipient.
    let line = postfix.wait_for_log(&[
        queue_id,
        "to=<user2@example.org>",
        "orig_to=<alias@example.org>",
        "status=sent",
    ]);
    assert!(line.contains("/discard["), "{line}");
}

/// With `recipient_delimiter = +-`, real mail through smtpd, cleanup and virtual(8):
/// first-last@ (a mailbox) lands in first-last's Maildir, not with user2 (the
/// target of the alias first@); first-tag@ (unknown) follows first@'s alias to
/// user2; user+tag@ still reaches user@.
#[test]
#[ignore = "needs postfix and swaks"]
fn mail_lands_where_postfix_extension_rules_say() {
    let adapter = Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        (
            "FIXTURE_PATH",
            demo_fixture().to_str().expect("UTF-8 fixture path"),
        ),
        ("POSTFIX_RECIPIENT_DELIMITER", "+-"),
    ]);
    let postfix = PrivatePostfix::start_delivering(
        &adapter.socketmap,
        "recipient_delimiter = +-\n",
        &[
            "first-last@example.org",
            "user@example.org",
            "user2@example.org",
        ],
    );
    for (to, subject) in [
        ("first-last@example.org", "for first-last"),
        ("first-tag@example.org", "for first-tag"),
        ("user+tag@example.org", "for user+tag"),
    ] {
        let t = postfix.swaks(&["--to", to, "--header", &format!("Subject: {subject}")]);
        let reply = t.reply_to(".");
        assert!(reply.starts_with("250 "), "{to}: {reply}\n{}", t.text);
    }
    let first_last = postfix.maildir("first-last", "example.org", 1);
    assert_eq!(first_last.len(), 1, "{}", postfix.maillog());
    assert!(first_last[0].contains("Subject: for first-last"));
    let user2 = postfix.maildir("user2", "example.org", 1);
    assert_eq!(user2.len(), 1, "{}", postfix.maillog());
    assert!(
        user2[0].contains("Subject: for first-tag"),
        "only first-tag@ follows the alias first@"
    );
    let user = postfix.maildir("user", "example.org", 1);
    assert_eq!(user.len(), 1, "{}", postfix.maillog());
    assert!(user[0].contains("Subject: for user+tag"));
    postfix.wait_for_log(&[
        "to=<first-last@example.org>",
        "relay=virtual",
        "status=sent",
    ]);
}
