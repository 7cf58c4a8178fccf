//! SMTP AUTH through a real Postfix smtpd talking to the adapter's Dovecot-protocol
//! SASL server, driven with swaks.
//!
//! `sasl_server.rs` speaks the Dovecot auth protocol to the adapter directly; this
//! file proves Postfix's `xsasl_dovecot` client understands the adapter and that the
//! answers have the intended effect on SMTP clients. Each test starts the adapter
//! binary on the demo fixture with `SASL_LISTEN_ADDR` on loopback and a private
//! Postfix 3.7 instance (see `support/private_postfix.rs`) with
//! `smtpd_sasl_type = dovecot`, `smtpd_sasl_path = inet:<adapter>` and the
//! adapter's `senders` socketmap as `smtpd_sender_login_maps`, and checks:
//!
//! - the right password gets `235` with `AUTH PLAIN` and `AUTH LOGIN`, with and
//!   without an initial response, and an upper-case login too; a login with an
//!   extension is another account (`user2+tag@` is not `user2@`), and with
//!   `recipient_delimiter = +-` the user `first-last@` logs in as itself;
//! - a wrong password, an unknown user and a spam-flagged user get `535` (swaks
//!   exits 28), the spam user's reason reaching Postfix;
//! - a backend that cannot answer gives `454 4.7.0 Temporary authentication
//!   failure`, never `535`, and the next AUTH still works once it can;
//! - an smtpd process keeps its auth connection across sessions: after more than
//!   15 s idle a wrong password is still a clean `535`, not a `454`;
//! - failed logins are slowed down by `SASL_FAILURE_DELAY`;
//! - `reject_sender_login_mismatch` with the `senders` map: user2@ may send as its
//!   alias, user@ may not send as user2@ (`553 5.7.1`).
//!
//! Loopback is not in the instance's mynetworks, so relaying needs a login.
//!
//! Needs root, Postfix and swaks, hence ignored by default.

mod common;
// Not every helper is used here (`start` is for instances without extra main.cf).
#[allow(dead_code)]
#[path = "support/private_postfix.rs"]
mod private_postfix;

use std::time::{Duration, Instant};

use common::Adapter;
use private_postfix::{PrivatePostfix, Transcript, free_port, sasl_main_cf};

/// swaks' exit code when the server refused the AUTH.
const SWAKS_AUTH_FAILED: i32 = 28;
/// swaks' exit code when the server accepted none of the recipients.
const SWAKS_NO_RCPT_ACCEPTED: i32 = 24;

/// Every demo user's password.
const PASSWORD: &str = "password";

/// The adapter on the demo fixture with the SASL listener on loopback and no
/// failure delay, plus `extra` environment.
fn sasl_adapter(extra: &[(&str, &str)]) -> Adapter {
    Adapter::spawn_demo(extra)
}

/// The adapter and a Postfix using it for SMTP AUTH.
fn setup(extra_env: &[(&str, &str)]) -> (Adapter, PrivatePostfix) {
    let adapter = sasl_adapter(extra_env);
    let sasl = adapter.sasl.clone().expect("SASL listener");
    let postfix =
        PrivatePostfix::start_with(&adapter.socketmap, &sasl_main_cf(&adapter.socketmap, &sasl));
    (adapter, postfix)
}

/// One session that stops after AUTH with `mechanism` as `user`/`password`;
/// `extra` goes after the harness's options (e.g. `--auth-plaintext`).
fn auth(
    postfix: &PrivatePostfix,
    mechanism: &str,
    user: &str,
    password: &str,
    extra: &[&str],
) -> Transcript {
    let mut args = vec![
        "--auth",
        mechanism,
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--quit-after",
        "AUTH",
    ];
    args.extend_from_slice(extra);
    postfix.swaks(&args)
}

/// The server's final answer to the AUTH exchange (skipping `334` challenges).
fn auth_reply(t: &Transcript) -> &str {
    let mut lines = t.text.lines();
    lines
        .by_ref()
        .find(|l| {
            l.strip_prefix(" -> ")
                .is_some_and(|c| c.starts_with("AUTH "))
        })
        .unwrap_or_else(|| panic!("swaks never sent AUTH:\n{}", t.text));
    lines
        .filter(|l| l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| l.trim_start_matches(['<', '-', '*']).trim_start())
        .find(|reply| !reply.starts_with("334"))
        .unwrap_or_else(|| panic!("no final reply to AUTH:\n{}", t.text))
}

fn assert_auth_ok(t: &Transcript, what: &str) {
    let reply = auth_reply(t);
    assert!(reply.starts_with("235 "), "{what}: {reply}\n{}", t.text);
    assert_eq!(t.exit, Some(0), "{what}: swaks exit\n{}", t.text);
}

/// A permanent "no": 535, swaks exit 28. Returns the reply.
fn assert_auth_failed<'a>(t: &'a Transcript, what: &str) -> &'a str {
    let reply = auth_reply(t);
    assert!(
        reply.starts_with("535 5.7.8 "),
        "{what}: want 535, got {reply}\n{}",
        t.text
    );
    assert_eq!(
        t.exit,
        Some(SWAKS_AUTH_FAILED),
        "{what}: swaks exit\n{}",
        t.text
    );
    reply
}

/// The pids of the smtpd processes that logged "connect from", in order.
fn smtpd_connect_pids(postfix: &PrivatePostfix) -> Vec<String> {
    postfix
        .maillog()
        .lines()
        .filter(|l| l.contains("/smtpd[") && l.contains(": connect from "))
        .filter_map(|l| {
            let (_, rest) = l.split_once("/smtpd[")?;
            Some(rest.split_once(']')?.0.to_owned())
        })
        .collect()
}

#[test]
#[ignore = "needs postfix and swaks"]
fn correct_password_is_accepted_with_plain_and_login() {
    let (_adapter, postfix) = setup(&[]);
    for mechanism in ["PLAIN", "LOGIN"] {
        // swaks sends PLAIN's credentials as an initial response.
        let t = auth(&postfix, mechanism, "user@example.org", PASSWORD, &[]);
        assert_auth_ok(&t, mechanism);
    }
    // LOGIN always goes through two 334 challenges.
    let t = auth(&postfix, "LOGIN", "user2@example.org", PASSWORD, &[]);
    assert!(t.text.contains("334 VXNlcm5hbWU6"), "{}", t.text);
    assert!(t.text.contains("334 UGFzc3dvcmQ6"), "{}", t.text);
    assert_auth_ok(&t, "LOGIN user2");

    // The login is canonical: case does not matter, and Postfix learns the
    // canonical name (logged once a queue file exists, at RCPT).
    let t = postfix.swaks(&[
        "--auth",
        "PLAIN",
        "--auth-user",
        "User2@Example.org",
        "--auth-password",
        PASSWORD,
        // reject_sender_login_mismatch: the sender must be owned by the login.
        "--from",
        "user2@example.org",
        "--to",
        "user@example.org",
        "--quit-after",
        "RCPT",
    ]);
    assert_auth_ok(&t, "PLAIN upper-case");
    assert!(t.rcpt_reply().starts_with("250 "), "{}", t.text);
    postfix.wait_for_log(&["sasl_method=PLAIN", "sasl_username=user2@example.org"]);

    // A login is an account name, never an address with an extension: user2's
    // password does not open `user2+tag@`.
    let t = auth(&postfix, "PLAIN", "user2+tag@example.org", PASSWORD, &[]);
    assert_auth_failed(&t, "PLAIN with an extension");
}

#[test]
#[ignore = "needs postfix and swaks"]
fn a_login_with_a_delimiter_character_is_its_own_account() {
    // With `-` as a delimiter the adapter used to check first-last@'s password
    // against first@ (an alias, no login): first-last could never log in.
    let adapter = sasl_adapter(&[("POSTFIX_RECIPIENT_DELIMITER", "+-")]);
    let sasl = adapter.sasl.clone().expect("SASL listener");
    let main_cf = format!(
        "{}recipient_delimiter = +-\n",
        sasl_main_cf(&adapter.socketmap, &sasl)
    );
    let postfix = PrivatePostfix::start_with(&adapter.socketmap, &main_cf);
    for mechanism in ["PLAIN", "LOGIN"] {
        let t = auth(&postfix, mechanism, "first-last@example.org", PASSWORD, &[]);
        assert_auth_ok(&t, mechanism);
    }
    let send_as = |user: &str| {
        postfix.swaks(&[
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            PASSWORD,
            "--from",
            "first-last@example.org",
            "--to",
            "user@example.org",
            "--quit-after",
            "RCPT",
        ])
    };
    // It owns its own address for reject_sender_login_mismatch...
    let t = send_as("first-last@example.org");
    assert!(t.rcpt_reply().starts_with("250 "), "{}", t.text);
    // ...and user2 (first@'s owner) may not send as first-last@.
    let t = send_as("user2@example.org");
    let reply = t.rcpt_reply();
    assert!(reply.starts_with("553 5.7.1 "), "{reply}\n{}", t.text);
}

#[test]
#[ignore = "needs postfix and swaks"]
fn wrong_password_unknown_and_spam_users_get_535() {
    let (_adapter, postfix) = setup(&[]);
    for mechanism in ["PLAIN", "LOGIN"] {
        let t = auth(&postfix, mechanism, "user@example.org", "wrong", &[]);
        assert_auth_failed(&t, &format!("{mechanism} wrong password"));
    }
    let t = auth(&postfix, "PLAIN", "nobody@example.org", PASSWORD, &[]);
    assert_auth_failed(&t, "unknown user");

    // The right password, but the account is flagged as spam.
    let t = auth(&postfix, "PLAIN", "spam@example.org", PASSWORD, &[]);
    let reply = assert_auth_failed(&t, "spam user");
    assert!(
        reply.contains("user disabled due to spam role"),
        "spam user: reason missing from {reply}"
    );
    postfix.wait_for_log(&[
        "SASL PLAIN authentication failed",
        "user disabled due to spam role",
    ]);

    // After all those failures the same client still logs in (no lock-out by default).
    assert_auth_ok(
        &auth(&postfix, "PLAIN", "user@example.org", PASSWORD, &[]),
        "after failures",
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn backend_down_is_a_temporary_failure() {
    let dead = free_port();
    let base_url = format!("http://127.0.0.1:{dead}");
    let adapter = Adapter::spawn(&[
        ("USERLI_TOKEN", "t"),
        ("USERLI_BASE_URL", &base_url),
        ("LOOKUP_TIMEOUT", "1s"),
        ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
        ("SASL_FAILURE_DELAY", "0"),
    ]);
    let sasl = adapter.sasl.clone().expect("SASL listener");
    let postfix =
        PrivatePostfix::start_with(&adapter.socketmap, &sasl_main_cf(&adapter.socketmap, &sasl));
    // The socketmap cannot answer either, so stop right after AUTH.
    for (mechanism, password) in [("PLAIN", PASSWORD), ("LOGIN", PASSWORD), ("PLAIN", "wrong")] {
        let t = auth(&postfix, mechanism, "user@example.org", password, &[]);
        let reply = auth_reply(&t);
        assert!(
            reply.starts_with("454 4.7.0 Temporary authentication failure"),
            "{mechanism}/{password}: want 454, got {reply}\n{}",
            t.text
        );
        assert!(!reply.starts_with("535"), "{reply}");
        assert_ne!(t.exit, Some(0), "{}", t.text);
    }
    // Postfix saw the auth connection go away, and reconnects for the next AUTH
    // (which got its 454 above instead of "no SASL authentication mechanisms").
    // Each of the three reached the adapter: the dropped connection is reset, so
    // smtpd's next write fails and it reconnects, instead of writing into the
    // dead connection and failing on reading without asking the adapter at all.
    let scraped = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(adapter.scrape());
    assert_eq!(
        common::metric(
            &scraped,
            "userli_postfix_adapter_sasl_backend_unavailable_total",
            ""
        ),
        3.0,
        "every AUTH reached the adapter"
    );
    postfix.wait_for_log(&["SASL PLAIN authentication failed"]);
    assert!(
        !postfix
            .maillog()
            .contains("no SASL authentication mechanisms"),
        "{}",
        postfix.maillog()
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn idle_auth_connection_survives_between_sessions() {
    let adapter = sasl_adapter(&[]);
    let sasl = adapter.sasl.clone().expect("SASL listener");
    // One smtpd process, so the second session reuses the first one's process and
    // with it the auth connection (xsasl_dovecot keeps it for the process's life).
    let postfix = PrivatePostfix::start_with_smtpd_limit(
        &adapter.socketmap,
        &sasl_main_cf(&adapter.socketmap, &sasl),
        Some(1),
    );
    assert_auth_failed(
        &auth(&postfix, "PLAIN", "user@example.org", "wrong", &[]),
        "first session",
    );
    std::thread::sleep(Duration::from_secs(16));
    let t = auth(&postfix, "PLAIN", "user@example.org", "wrong", &[]);
    assert_auth_failed(&t, "after 16 s idle");
    assert_auth_ok(
        &auth(&postfix, "PLAIN", "user@example.org", PASSWORD, &[]),
        "after 16 s idle, right password",
    );
    // The wait for the banner connected too; every SMTP session, including both
    // AUTH sessions around the idle time, was served by one smtpd process.
    let pids = smtpd_connect_pids(&postfix);
    assert!(pids.len() >= 3, "{pids:?}\n{}", postfix.maillog());
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "sessions served by several smtpd processes: {pids:?}"
    );
    assert!(
        !postfix
            .maillog()
            .contains("Temporary authentication failure")
            && !postfix
                .maillog()
                .contains("Connection lost to authentication server"),
        "{}",
        postfix.maillog()
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn failures_are_delayed() {
    let (_adapter, postfix) = setup(&[("SASL_FAILURE_DELAY", "1s")]);
    let started = Instant::now();
    assert_auth_ok(
        &auth(&postfix, "PLAIN", "user@example.org", PASSWORD, &[]),
        "success",
    );
    let success = started.elapsed();
    let started = Instant::now();
    assert_auth_failed(
        &auth(&postfix, "PLAIN", "user2@example.org", "wrong", &[]),
        "failure",
    );
    let failure = started.elapsed();
    assert!(
        failure >= Duration::from_secs(1),
        "failure answered after {failure:?}"
    );
    assert!(
        failure >= success + Duration::from_millis(500),
        "failure {failure:?} vs success {success:?}"
    );
}

#[test]
#[ignore = "needs postfix and swaks"]
fn sender_login_maps_come_from_the_senders_socketmap() {
    let (_adapter, postfix) = setup(&[]);
    let send_as = |user: &str, from: &str, to: &str| {
        postfix.swaks(&[
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            PASSWORD,
            // The harness passes its own --from first; swaks uses the last one.
            "--from",
            from,
            "--to",
            to,
            "--quit-after",
            "RCPT",
        ])
    };

    // user2@ owns alias@; relaying to a foreign domain works once authenticated.
    for (from, to) in [
        ("alias@example.org", "x@example.net"),
        ("user2@example.org", "user@example.org"),
    ] {
        let t = send_as("user2@example.org", from, to);
        assert_auth_ok(&t, from);
        assert!(t.reply_to("MAIL FROM:").starts_with("250 "), "{}", t.text);
        let reply = t.rcpt_reply();
        assert!(
            reply.starts_with("250 "),
            "user2 as {from}: {reply}\n{}",
            t.text
        );
        assert_eq!(t.exit, Some(0), "{}", t.text);
    }

    // user@ may not use user2@'s address (nor its alias).
    for from in ["user2@example.org", "alias@example.org"] {
        let t = send_as("user@example.org", from, "x@example.net");
        assert!(auth_reply(&t).starts_with("235 "), "{}", t.text);
        let reply = t.rcpt_reply();
        assert!(
            reply.starts_with("553 5.7.1 ")
                && reply.contains("Sender address rejected: not owned by user user@example.org"),
            "user as {from}: {reply}\n{}",
            t.text
        );
        assert_eq!(t.exit, Some(SWAKS_NO_RCPT_ACCEPTED), "{}", t.text);
    }

    // Without a login there is no relaying at all.
    let t = postfix.rcpt("x@example.net");
    let reply = t.rcpt_reply();
    assert!(reply.contains("Relay access denied"), "{reply}\n{}", t.text);
}

/// Drops to `nobody` (no supplementary groups), as a service user would run.
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// The SASL socket setup docs/postfix-guide.md and the systemd unit document, as
/// written, for an unprivileged adapter: Postfix's own `private/` directory
/// (Debian: `drwx------ postfix`) refuses it, as it refused the setup documented
/// before; the adapter's own directory in the spool, `install -d -o <adapter user>
/// -g postfix -m 2750`, works: the socket gets the group `postfix` from the setgid
/// directory, mode 0660, and Postfix's smtpd authenticates through it.
#[test]
#[ignore = "needs postfix and swaks, and root to drop to nobody"]
fn the_documented_unix_socket_setup_works_for_an_unprivileged_adapter() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let socketmap = format!("127.0.0.1:{}", private_postfix::free_port());
    let main_cf = sasl_main_cf(&socketmap, "x").replace(
        "smtpd_sasl_path = inet:x",
        "smtpd_sasl_path = userli-postfix-adapter/auth",
    );
    let demo = common::demo_fixture();
    let env = |sasl: &str| {
        vec![
            ("LOOKUP_BACKEND".to_owned(), "fixture".to_owned()),
            ("FIXTURE_PATH".to_owned(), demo.display().to_string()),
            ("SOCKETMAP_LISTEN_ADDR".to_owned(), socketmap.clone()),
            ("METRICS_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("POLICY_LISTEN_ADDR".to_owned(), "off".to_owned()),
            ("SASL_LISTEN_ADDR".to_owned(), sasl.to_owned()),
            ("SASL_FAILURE_DELAY".to_owned(), "0".to_owned()),
        ]
    };
    let postfix_gid = group_id("postfix");
    let mut adapter = None;
    // Before smtpd starts (it connects to the auth socket as it does).
    let postfix = PrivatePostfix::start_after(&socketmap, &main_cf, &mut |queue| {
        let private = std::fs::metadata(queue.join("private")).unwrap();
        assert_eq!(
            private.mode() & 0o777,
            0o700,
            "Debian's private/ permissions"
        );

        // Postfix's private/: no other user may create anything there.
        let refused = std::process::Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .arg(env!("CARGO_BIN_EXE_userli-postfix-adapter"))
            .env_clear()
            .envs(env(&queue.join("private/auth").display().to_string()))
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("SASL_LISTEN_ADDR") && stderr.contains("Permission denied"),
            "{stderr}"
        );

        // The documented directory of the adapter's own.
        let own = queue.join("userli-postfix-adapter");
        std::fs::create_dir(&own).unwrap();
        std::os::unix::fs::chown(&own, Some(65534), Some(postfix_gid)).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o2750)).unwrap();
        let socket = own.join("auth");
        let vars = env(&socket.display().to_string());
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let spawned = Adapter::spawn_wrapped(&AS_NOBODY, &vars);
        assert!(spawned.sasl.is_some(), "the SASL socket is up");
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (65534, postfix_gid, 0o660),
            "owned by the adapter, group postfix, 0660"
        );
        adapter = Some(spawned);
    });
    let t = auth(&postfix, "PLAIN", "user@example.org", PASSWORD, &[]);
    assert_auth_ok(&t, "through the documented UNIX socket");
    drop(adapter);
}

/// The numeric id of group `name` (from /etc/group).
fn group_id(name: &str) -> u32 {
    std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no group {name}"))
}
