//! A private Postfix delivering mail and authenticating users from a PostfixAdmin
//! database on PostgreSQL, through the adapter (`LOOKUP_BACKEND=sql`,
//! `SQL_PRESET=postfixadmin`): the socketmap for recipients and aliases, the
//! Dovecot-protocol SASL server for SMTP AUTH against the stored
//! `{SHA512-CRYPT}` and `{BLF-CRYPT}` hashes.
//!
//! Needs root, PostgreSQL, Postfix and swaks, hence ignored by default.
#![cfg(feature = "backend-sql")]

mod common;
#[path = "../backends/sql/tests/support/postfixadmin.rs"]
mod postfixadmin;
#[allow(dead_code)]
#[path = "support/private_postfix.rs"]
mod private_postfix;
#[allow(dead_code)]
#[path = "support/sql_servers.rs"]
mod sql_servers;

use private_postfix::{PrivatePostfix, Transcript, sasl_main_cf};
use sql_servers::{Kind, SqlServer};

fn accepted(t: &Transcript, what: &str) {
    let reply = t.reply_to(".");
    assert!(reply.starts_with("250 "), "{what}: {reply}\n{}", t.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgresql, postfix and swaks"]
async fn postfix_delivers_and_authenticates_from_a_postfixadmin_database() {
    let server = SqlServer::started_with(
        Kind::Postgres,
        "postfixadmin",
        &postfixadmin::database("boolean"),
    )
    .await;
    let url = server.url("postfixadmin");
    let adapter = tokio::task::block_in_place(|| {
        common::Adapter::spawn(&[
            ("LOOKUP_BACKEND", "sql"),
            ("SQL_URL", &url),
            ("SQL_PRESET", "postfixadmin"),
            ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
            ("SASL_FAILURE_DELAY", "0"),
        ])
    });
    let sasl = adapter.sasl.clone().unwrap();
    let postfix = tokio::task::block_in_place(|| {
        PrivatePostfix::start_delivering(
            &adapter.socketmap,
            &sasl_main_cf(&adapter.socketmap, &sasl),
            &["user@example.org", "user2@example.org"],
        )
    });
    tokio::task::block_in_place(|| {
        // An alias (comma-separated goto) and an address in an alias domain.
        accepted(
            &postfix.swaks(&[
                "--to",
                "alias@example.org",
                "--header",
                "Subject: to the alias",
            ]),
            "alias",
        );
        accepted(
            &postfix.swaks(&[
                "--to",
                "user@alias.example",
                "--header",
                "Subject: via the alias domain",
            ]),
            "alias domain",
        );
        // Unknown and disabled mailboxes are refused at RCPT (the database said so).
        for refused in ["nobody@example.org", "disabled@example.org"] {
            let reply = postfix.rcpt(refused).rcpt_reply().to_owned();
            assert!(reply.starts_with("550 "), "{refused}: {reply}");
        }
        // SMTP AUTH against the stored hashes: SHA512-CRYPT, then bcrypt.
        for (login, password) in [
            ("user@example.org", "password"),
            ("user2@example.org", "abc"),
        ] {
            let t = postfix.swaks(&[
                "--auth",
                "PLAIN",
                "--auth-user",
                login,
                "--auth-password",
                password,
                "--from",
                login,
                "--to",
                "user@example.org",
                "--header",
                &format!("Subject: from {login}"),
            ]);
            assert!(t.text.contains("235 "), "{login}: {}", t.text);
            accepted(&t, login);
        }
        let t = postfix.swaks(&[
            "--auth",
            "PLAIN",
            "--auth-user",
            "user@example.org",
            "--auth-password",
            "wrong",
            "--quit-after",
            "AUTH",
        ]);
        assert!(t.text.contains("535 "), "{}", t.text);
    });
    let subjects = |local: &str, want: usize| -> Vec<String> {
        let mut s: Vec<String> = postfix
            .maildir(local, "example.org", want)
            .iter()
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect();
        s.sort();
        s
    };
    tokio::task::block_in_place(|| {
        assert_eq!(
            subjects("user", 4),
            [
                "from user2@example.org",
                "from user@example.org",
                "to the alias",
                "via the alias domain"
            ]
        );
        assert_eq!(subjects("user2", 1), ["to the alias"]);
    });
}
