//! `LOOKUP_BACKEND=sql` with PostfixAdmin databases: SQLite through the binary
//! (always), and real PostgreSQL and MariaDB servers (the Debian packages;
//! ignored by default): the backend contract on each, and a database restarted
//! under a running adapter, which answers stale and `TEMP`, never `NOTFOUND`.
#![cfg(feature = "backend-sql")]

mod common;
#[path = "../backends/sql/tests/support/postfixadmin.rs"]
mod postfixadmin;
#[path = "support/sql_servers.rs"]
mod sql_servers;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postfix_adapter_backend::testkit::conformance::check;
use postfix_adapter_backend::{Address, AuthOutcome, LookupBackend};
use postfix_adapter_backend_sql::{Preset, Queries, SqlBackend, SqlConfig};
use sql_servers::{Kind, SqlServer};

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn sql_config(url: &str) -> SqlConfig {
    SqlConfig {
        url: url.to_owned(),
        preset: Preset::PostfixAdmin,
        queries: Queries::default(),
        max_connections: 4,
        timeout: Duration::from_secs(3),
    }
}

/// The contract and the preset's particulars, on any PostfixAdmin database.
async fn check_postfixadmin(backend: &SqlBackend) {
    let facts = postfixadmin::facts();
    check(backend, &facts).await;
    assert!(backend.domain_exists("alias.example").await.unwrap());
    assert!(!backend.domain_exists("backup.example").await.unwrap());
    assert!(
        backend
            .mailbox_exists(&addr("user@alias.example"))
            .await
            .unwrap()
    );
    assert!(
        !backend
            .mailbox_exists(&addr("disabled@example.org"))
            .await
            .unwrap()
    );
    assert_eq!(
        backend.aliases(&addr("alias@alias.example")).await.unwrap(),
        ["user2@example.org", "user@example.org"]
    );
    assert_eq!(
        backend
            .authenticate(&addr("user2@example.org"), b"abc")
            .await
            .unwrap(),
        AuthOutcome::Success
    );
    assert!(backend.health().await.is_ok());
}

/// A throw-away server of `kind` holding the PostfixAdmin test database
/// `postfixadmin`.
async fn postfixadmin_on(kind: Kind) -> SqlServer {
    let boolean = match kind {
        Kind::Postgres => "boolean",
        Kind::MariaDb => "tinyint(1)",
    };
    SqlServer::started_with(kind, "postfixadmin", &postfixadmin::database(boolean)).await
}

async fn sqlite_database(dir: &Path) -> String {
    let path = dir.join("postfixadmin.sqlite");
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::raw_sql(&postfixadmin::schema("tinyint(1)"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(&postfixadmin::data())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    format!("{url}?mode=ro")
}

fn adapter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_userli-postfix-adapter"));
    cmd.env_clear();
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postfixadmin_sqlite_database_answers_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_database(dir.path()).await;
    let query = |map: &str, key: &str| {
        let out = adapter()
            .env("LOOKUP_BACKEND", "sql")
            .env("SQL_URL", &url)
            .env("SQL_PRESET", "postfixadmin")
            .args(["query", map, key])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    tokio::task::block_in_place(|| {
        assert_eq!(query("domain", "example.org"), (Some(0), "OK 1".into()));
        assert_eq!(
            query("mailbox", "user@alias.example"),
            (Some(0), "OK 1".into())
        );
        assert_eq!(
            query("alias", "alias@example.org"),
            (Some(0), "OK user2@example.org,user@example.org".into())
        );
        assert_eq!(
            query("mailbox", "nobody@example.org").0,
            Some(1),
            "NOTFOUND"
        );
    });

    // check-config names a broken query and never shows the URL's password.
    let out = adapter()
        .env("LOOKUP_BACKEND", "sql")
        .env("SQL_URL", "postgres://u:s3cretpw@127.0.0.1/db")
        .env(
            "SQL_QUERY_ALIAS",
            "SELECT goto FROM alias WHERE address = '%u'",
        )
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SQL_QUERY_ALIAS"), "{stderr}");
    let out = adapter()
        .env("LOOKUP_BACKEND", "sql")
        .env("SQL_URL", "postgres://u:s3cretpw@127.0.0.1/db")
        .env("SQL_PRESET", "postfixadmin")
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("s3cretpw"), "{stdout}");
    assert!(stdout.contains("SQL_URL"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgresql"]
async fn a_postfixadmin_postgresql_database_meets_the_contract() {
    let server = postfixadmin_on(Kind::Postgres).await;
    let backend = SqlBackend::new(&sql_config(&server.url("postfixadmin"))).unwrap();
    check_postfixadmin(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mariadb-server"]
async fn a_postfixadmin_mariadb_database_meets_the_contract() {
    let server = postfixadmin_on(Kind::MariaDb).await;
    // As PostfixAdmin's users write it.
    let url = server
        .url("postfixadmin")
        .replacen("mysql://", "mariadb://", 1);
    let backend = SqlBackend::new(&sql_config(&url)).unwrap();
    check_postfixadmin(&backend).await;
}

/// PostgreSQL restarted under a running adapter: the lookups it answered before
/// are served stale while it is down, an unseen key is `TEMP`, nothing becomes
/// `NOTFOUND`, and once it is back its answers are fresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgresql"]
async fn a_database_restarted_under_the_adapter_gives_stale_answers_and_temp() {
    let mut server = postfixadmin_on(Kind::Postgres).await;
    let url = server.url("postfixadmin");
    let adapter = tokio::task::block_in_place(|| {
        common::Adapter::spawn(&[
            ("LOOKUP_BACKEND", "sql"),
            ("SQL_URL", &url),
            ("SQL_PRESET", "postfixadmin"),
            ("LOOKUP_CACHE_TTL", "1s"),
            ("LOOKUP_NEGATIVE_CACHE_TTL", "1s"),
            ("LOOKUP_TIMEOUT", "1s"),
            ("CIRCUIT_BREAKER_COOLDOWN", "1s"),
        ])
    });
    let mut client = common::Client::tcp(adapter.socketmap.parse().unwrap()).await;
    assert_eq!(client.ask("mailbox user@example.org").await, "OK 1");
    assert_eq!(
        client.ask("alias alias@example.org").await,
        "OK user2@example.org,user@example.org"
    );
    assert_eq!(client.ask("mailbox nobody@example.org").await, "NOTFOUND");

    tokio::task::block_in_place(|| server.stop());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..8 {
        assert_eq!(
            client.ask("mailbox user@example.org").await,
            "OK 1",
            "stale"
        );
        assert_eq!(
            client.ask("alias alias@example.org").await,
            "OK user2@example.org,user@example.org"
        );
        let unseen = client.ask("mailbox user2@example.org").await;
        assert!(unseen.starts_with("TEMP"), "unseen while down: {unseen}");
    }

    tokio::task::block_in_place(|| server.start());
    let back = Instant::now();
    loop {
        let reply = client.ask("mailbox user2@example.org").await;
        if reply == "OK 1" {
            break;
        }
        assert!(reply.starts_with("TEMP"), "never NOTFOUND: {reply}");
        assert!(back.elapsed() < Duration::from_secs(15), "never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "database back: fresh answers {:?} after the restart",
        back.elapsed()
    );
}

/// A statement past the deadline: the caller gets an error in time, and the
/// server stops it too (PostgreSQL's `statement_timeout`, set from the deadline),
/// so its connection is not held for a caller that has long been answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgresql"]
async fn a_slow_statement_is_stopped_at_the_deadline_by_the_server_too() {
    let server = postfixadmin_on(Kind::Postgres).await;
    let mut config = sql_config(&server.url("postfixadmin"));
    config.preset = Preset::None;
    config.timeout = Duration::from_millis(500);
    config.queries = Queries {
        mailbox: Some("SELECT 1 FROM mailbox, pg_sleep(5) WHERE username = '%s'".into()),
        ..Queries::default()
    };
    let backend = SqlBackend::new(&config).unwrap();
    let started = Instant::now();
    let err = backend
        .mailbox_exists(&addr("user@example.org"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            postfix_adapter_backend::BackendError::Timeout
                | postfix_adapter_backend::BackendError::Other(_)
        ),
        "{err}"
    );
    // The server gave up on it as well: no sleeping statement left after the deadline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let admin = sqlx::AnyPool::connect(&server.url("postgres"))
        .await
        .unwrap();
    let (running,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(5)%' AND state = 'active' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(running, 0, "the statement still runs on the server");
}
