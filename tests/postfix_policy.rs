//! Sending quotas enforced by a real Postfix through the adapter's policy server.
//!
//! `policy_server.rs` speaks the policy protocol to the adapter directly; this file
//! proves Postfix asks at the right moment and acts on the answers. Each test starts
//! the adapter binary on a fixture with per-user quotas and a private Postfix 3.7
//! instance (see `support/private_postfix.rs`) whose
//! `smtpd_end_of_data_restrictions` is the adapter's policy service, then sends whole
//! messages with swaks:
//!
//! - a sender under its hourly quota gets `250` at the end of DATA; the message over
//!   it gets a 5xx with `RATE_LIMIT_MESSAGE` (swaks exits 26), or a 4xx with
//!   `POLICY_OVER_QUOTA_ACTION=defer`;
//! - quotas are per sender: another limited sender and a sender without quota are
//!   unaffected, while `Limited+tag@Example.org` shares `limited@example.org`'s count;
//! - with the policy server down, `default_action=DUNNO` lets mail through
//!   (fail-open), and without it Postfix defers with `451 4.3.5`.
//!
//! The instance has no SASL, so the adapter runs with `POLICY_SENDER_FALLBACK=true`
//! and rate-limits by envelope sender.
//!
//! Needs root, Postfix and swaks, hence ignored by default.

mod common;
// Not every helper is used here (`rcpt` is for recipient-only checks).
#[allow(dead_code)]
#[path = "support/private_postfix.rs"]
mod private_postfix;

use common::Adapter;
use private_postfix::{PrivatePostfix, Transcript, free_port};

/// swaks' exit code when the server refused the message at the end of DATA.
const SWAKS_DATA_REFUSED: i32 = 26;

const RATE_LIMIT_MESSAGE: &str = "Too many messages, slow down";

const FIXTURE: &str = r#"
domains = ["example.org"]

[[users]]
email = "limited@example.org"
password_hash = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
smtp_quota = { per_hour = 2 }

[[users]]
email = "user@example.org"
password_hash = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"

[[users]]
email = "other@example.org"
password_hash = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
smtp_quota = { per_hour = 2 }
"#;

/// The adapter on [`FIXTURE`], with its quota state in `state` (a fresh tempdir, so
/// no counts leak between tests) and `extra` environment on top.
fn quota_adapter(state: &tempfile::TempDir, extra: &[(&str, &str)]) -> Adapter {
    let fixture = state.path().join("fixture.toml");
    std::fs::write(&fixture, FIXTURE).expect("write the fixture");
    let store = state.path().join("state");
    let mut env = vec![
        ("LOOKUP_BACKEND", "fixture"),
        (
            "FIXTURE_PATH",
            fixture.to_str().expect("UTF-8 fixture path"),
        ),
        ("STATE_DIRECTORY", store.to_str().expect("UTF-8 state path")),
        ("POLICY_SENDER_FALLBACK", "true"),
        ("RATE_LIMIT_MESSAGE", RATE_LIMIT_MESSAGE),
        // As main.cf's recipient_delimiter: `limited+tag@` counts as `limited@`.
        ("POSTFIX_RECIPIENT_DELIMITER", "+"),
    ];
    env.extend_from_slice(extra);
    let adapter = Adapter::spawn(&env);
    assert!(
        adapter.policy.is_some(),
        "the adapter's policy listener is up"
    );
    adapter
}

/// main.cf lines that ask the policy service at `policy` ("127.0.0.1:PORT") at the
/// end of each message (the README's `smtpd_end_of_data_restrictions`), failing
/// open when it is down (`default_action=DUNNO`, which the README's line lacks).
fn policy_main_cf(policy: &str) -> String {
    format!(
        "smtpd_end_of_data_restrictions = \
         check_policy_service {{ inet:{policy}, timeout=10s, default_action=DUNNO }}\n"
    )
}

/// Sends a whole message from `from` to `user@example.org`.
fn send(postfix: &PrivatePostfix, from: &str) -> Transcript {
    let t = postfix.swaks(&[
        // The harness passes its own --from first; swaks uses the last one.
        "--from",
        from,
        "--to",
        "user@example.org",
        "--header",
        "Subject: postfix_policy integration test",
    ]);
    let mail_from = t.reply_to("MAIL FROM:");
    assert!(
        mail_from.starts_with("250 "),
        "{from}: {mail_from}\n{}",
        t.text
    );
    assert!(
        t.text.contains(&format!("MAIL FROM:<{from}>")),
        "swaks sent another sender than {from}:\n{}",
        t.text
    );
    t
}

fn assert_accepted(t: &Transcript, what: &str) {
    let reply = t.reply_to(".");
    assert!(
        reply.starts_with("250 ") && reply.contains("queued as"),
        "{what}: want 250 at end of DATA, got {reply}\n{}",
        t.text
    );
    assert_eq!(t.exit, Some(0), "{what}: swaks exit\n{}", t.text);
}

/// Refused at the end of DATA with a reply starting with `class` ('4' or '5') and
/// carrying the configured text.
fn assert_refused(t: &Transcript, class: char, what: &str) {
    let reply = t.reply_to(".");
    assert!(
        reply.starts_with(class),
        "{what}: want {class}xx at end of DATA, got {reply}\n{}",
        t.text
    );
    assert!(
        reply.contains(RATE_LIMIT_MESSAGE),
        "{what}: reply lacks {RATE_LIMIT_MESSAGE:?}: {reply}"
    );
    assert_eq!(
        t.exit,
        Some(SWAKS_DATA_REFUSED),
        "{what}: swaks exit\n{}",
        t.text
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn over_quota_message_is_rejected_per_sender() {
    let state = tempfile::tempdir().expect("create a tempdir");
    let adapter = quota_adapter(&state, &[]);
    let policy = adapter.policy.clone().expect("policy listener");
    let postfix = PrivatePostfix::start_with(&adapter.socketmap, &policy_main_cf(&policy));

    assert_accepted(&send(&postfix, "limited@example.org"), "1st of 2");
    assert_accepted(&send(&postfix, "limited@example.org"), "2nd of 2");
    let t = send(&postfix, "limited@example.org");
    assert_refused(&t, '5', "3rd of 2");
    // Postfix's own code for a policy REJECT at the end of DATA.
    assert!(
        t.reply_to(".").starts_with("554 5.7.1 "),
        "{}",
        t.reply_to(".")
    );
    adapter.wait_for_log("Rate limit exceeded");
    postfix.wait_for_log(&["reject: END-OF-MESSAGE", RATE_LIMIT_MESSAGE]);

    // The count is by normalised login: case and extension do not escape it.
    assert_refused(
        &send(&postfix, "Limited+tag@Example.org"),
        '5',
        "limited with an extension",
    );
    // Another limited sender has its own count; no quota means no limit.
    assert_accepted(&send(&postfix, "other@example.org"), "other, 1st of 2");
    for n in 1..=3 {
        assert_accepted(
            &send(&postfix, "user@example.org"),
            &format!("unlimited sender, message {n}"),
        );
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn over_quota_message_is_deferred_when_configured() {
    let state = tempfile::tempdir().expect("create a tempdir");
    let adapter = quota_adapter(&state, &[("POLICY_OVER_QUOTA_ACTION", "defer")]);
    let policy = adapter.policy.clone().expect("policy listener");
    let postfix = PrivatePostfix::start_with(&adapter.socketmap, &policy_main_cf(&policy));

    assert_accepted(&send(&postfix, "limited@example.org"), "1st of 2");
    assert_accepted(&send(&postfix, "limited@example.org"), "2nd of 2");
    let t = send(&postfix, "limited@example.org");
    assert_refused(&t, '4', "3rd of 2");
    // Postfix's own code for a policy DEFER: the client keeps the message.
    assert!(
        t.reply_to(".").starts_with("450 4.7.1 "),
        "{}",
        t.reply_to(".")
    );
    assert_accepted(&send(&postfix, "other@example.org"), "other, 1st of 2");
}

#[test]
#[ignore = "needs postfix and swaks"]
fn policy_server_down_fails_open_with_default_action_dunno() {
    // Two adapters: `lookups` serves the socketmaps (recipients still have to be
    // looked up), `policy` only the policy service, so it can go away alone.
    let lookups_state = tempfile::tempdir().expect("create a tempdir");
    let lookups = quota_adapter(&lookups_state, &[]);
    let policy_state = tempfile::tempdir().expect("create a tempdir");
    let policy = quota_adapter(&policy_state, &[]);
    let policy_addr = policy.policy.clone().expect("policy listener");
    let postfix = PrivatePostfix::start_with(&lookups.socketmap, &policy_main_cf(&policy_addr));
    // Up first, so smtpd holds a policy connection that then goes dead.
    assert_accepted(&send(&postfix, "limited@example.org"), "1st of 2");
    assert_accepted(&send(&postfix, "limited@example.org"), "2nd of 2");
    assert!(
        policy.terminate().success(),
        "adapter exits cleanly on SIGTERM"
    );
    // Over quota, but nobody is there to say so: Postfix's default_action decides.
    assert_accepted(
        &send(&postfix, "limited@example.org"),
        "3rd of 2, policy server down",
    );
    postfix.wait_for_log(&["warning: connect to ", &policy_addr]);

    // Without default_action, Postfix answers its own 451 4.3.5: the fail-open
    // behaviour above comes from the main.cf setting, not from luck.
    let strict = PrivatePostfix::start_with(
        &lookups.socketmap,
        &format!("smtpd_end_of_data_restrictions = check_policy_service inet:{policy_addr}\n"),
    );
    let t = send(&strict, "user@example.org");
    let reply = t.reply_to(".");
    assert!(reply.starts_with("451 4.3.5 "), "{reply}\n{}", t.text);
    assert_eq!(t.exit, Some(SWAKS_DATA_REFUSED), "{}", t.text);

    // And a port where no policy server ever listened, same as a dead one.
    let never = format!("127.0.0.1:{}", free_port());
    let never_up = PrivatePostfix::start_with(&lookups.socketmap, &policy_main_cf(&never));
    assert_accepted(
        &send(&never_up, "user@example.org"),
        "policy server never up",
    );
}
