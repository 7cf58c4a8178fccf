//! The SQL backend on SQLite (in-process, no server): a PostfixAdmin database
//! through `SQL_PRESET=postfixadmin`, held to the backend contract, plus alias
//! domains, inactive rows, Dovecot hash prefixes and database trouble.

use std::time::Duration;

use postfix_adapter_backend::testkit::conformance::{check, check_unavailable};
use postfix_adapter_backend::{Address, AuthOutcome, LookupBackend};
use postfix_adapter_backend_sql::{Preset, Queries, SqlBackend, SqlConfig};

#[path = "support/postfixadmin.rs"]
mod postfixadmin;
use postfixadmin::{data, schema};

/// A PostfixAdmin database in a file; the URL of it.
async fn database(dir: &std::path::Path) -> String {
    let path = dir.join("postfixadmin.sqlite");
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::raw_sql(&schema("tinyint(1)"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(&data()).execute(&pool).await.unwrap();
    pool.close().await;
    // The adapter only reads.
    format!("{url}?mode=ro")
}

fn config(url: &str) -> SqlConfig {
    SqlConfig {
        url: url.to_owned(),
        preset: Preset::PostfixAdmin,
        queries: Queries::default(),
        max_connections: 4,
        timeout: Duration::from_secs(2),
    }
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[tokio::test]
async fn a_postfixadmin_database_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let backend = SqlBackend::new(&config(&url)).unwrap();
    let facts = postfixadmin::facts();
    check(&backend, &facts).await;
    assert!(backend.health().await.is_ok());

    // A database that cannot be reached answers every question with an error.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let unreachable =
        SqlBackend::new(&config(&format!("postgres://u:p@127.0.0.1:{port}/db"))).unwrap();
    check_unavailable(&unreachable, &facts).await;
}

#[tokio::test]
async fn alias_domains_inactive_rows_and_hash_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqlBackend::new(&config(&database(dir.path()).await)).unwrap();
    // Alias domains: hosted, and their addresses reach the target's.
    assert!(b.domain_exists("alias.example").await.unwrap());
    assert!(b.mailbox_exists(&addr("user@alias.example")).await.unwrap());
    assert_eq!(
        b.aliases(&addr("alias@alias.example")).await.unwrap(),
        ["user2@example.org", "user@example.org"]
    );
    assert!(
        !b.mailbox_exists(&addr("nobody@alias.example"))
            .await
            .unwrap()
    );
    // Inactive or backup-MX rows are no answer.
    for domain in ["backup.example", "old.example", "gone.example"] {
        assert!(!b.domain_exists(domain).await.unwrap(), "{domain}");
    }
    assert!(
        !b.mailbox_exists(&addr("disabled@example.org"))
            .await
            .unwrap()
    );
    assert!(!b.mailbox_exists(&addr("user@gone.example")).await.unwrap());
    assert!(
        b.aliases(&addr("off@example.org"))
            .await
            .unwrap()
            .is_empty()
    );
    // Dovecot's prefixes, and an inactive mailbox cannot log in.
    assert_eq!(
        b.authenticate(&addr("user2@example.org"), b"abc")
            .await
            .unwrap(),
        AuthOutcome::Success
    );
    assert!(matches!(
        b.authenticate(&addr("user2@example.org"), b"abd")
            .await
            .unwrap(),
        AuthOutcome::Failure { .. }
    ));
    assert!(matches!(
        b.authenticate(&addr("disabled@example.org"), b"password")
            .await
            .unwrap(),
        AuthOutcome::Failure { .. }
    ));
    // PostfixAdmin's old md5crypt, `openssl passwd -1 -salt saltsalt password`.
    assert_eq!(
        b.authenticate(&addr("old@example.org"), b"password")
            .await
            .unwrap(),
        AuthOutcome::Success
    );
    // A hash nobody can verify (a malformed one here) fails that login (and warns the operator), but is
    // no error: errors count against the logins' circuit breaker, and anyone could
    // take SMTP AUTH down for everyone by trying that account.
    for _ in 0..10 {
        assert!(matches!(
            b.authenticate(&addr("odd@example.org"), b"x")
                .await
                .unwrap(),
            AuthOutcome::Failure { .. }
        ));
    }
}

#[tokio::test]
async fn database_trouble_is_an_error_never_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    // A query on a table that is not there: the database refuses it.
    let mut broken = config(&url);
    broken.preset = Preset::None;
    broken.queries = Queries {
        mailbox: Some("SELECT 1 FROM mailboxes WHERE username = '%s'".into()),
        ..Queries::default()
    };
    let b = SqlBackend::new(&broken).unwrap();
    let err = b
        .mailbox_exists(&addr("user@example.org"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mailboxes"), "{err}");
    // A question no query answers is an error too (Postfix: TEMP).
    assert!(b.aliases(&addr("alias@example.org")).await.is_err());
    // The database file gone.
    let gone = dir.path().join("postfixadmin.sqlite");
    std::fs::remove_file(&gone).unwrap();
    let b = SqlBackend::new(&config(&url)).unwrap();
    assert!(b.mailbox_exists(&addr("user@example.org")).await.is_err());
    assert!(b.health().await.is_err());
}

#[test]
fn configuration_mistakes_name_their_setting() {
    let mut c = config("oracle://h/db");
    assert!(
        SqlBackend::new(&c)
            .unwrap_err()
            .to_string()
            .starts_with("SQL_URL: ")
    );
    c = config("sqlite://x.db");
    c.preset = Preset::None;
    assert!(
        SqlBackend::new(&c)
            .unwrap_err()
            .to_string()
            .starts_with("SQL_PRESET: ")
    );
    c.queries.alias = Some("SELECT goto FROM alias WHERE address = '%u'".into());
    assert!(
        SqlBackend::new(&c)
            .unwrap_err()
            .to_string()
            .starts_with("SQL_QUERY_ALIAS: ")
    );
}
