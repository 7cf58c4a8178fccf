//! The SQL backend: a bounded pool, one statement per question, every call within
//! its deadline, and database trouble as errors (Postfix: `TEMP`), never "not
//! found".

use std::sync::OnceLock;
use std::time::Duration;

use postfix_adapter_backend::{
    AUTH_FAILED, Address, AuthOutcome, BackendError, LookupBackend, MAX_PASSWORD_BYTES, SmtpQuota,
    async_trait,
};
use postfix_adapter_passwords::{Verifier, VerifyFailed};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row};

use crate::SqlError;
use crate::preset;
use crate::query::{Dialect, Statement, statement};

/// The queries, Postfix-style (one `%s` for the key); `None`: not answered.
#[derive(Debug, Clone, Default)]
pub struct Queries {
    /// `SQL_QUERY_DOMAIN`: a row means hosted.
    pub domain: Option<String>,
    /// `SQL_QUERY_MAILBOX`: a row means a mailbox.
    pub mailbox: Option<String>,
    /// `SQL_QUERY_ALIAS`: the first column of every row, comma-separated values split.
    pub alias: Option<String>,
    /// `SQL_QUERY_SENDERS`: as `alias`, the logins that may send as the address.
    pub senders: Option<String>,
    /// `SQL_QUERY_AUTH`: the first column of the first row is the password hash.
    pub auth: Option<String>,
    /// `SQL_QUERY_QUOTA`: two integer columns, per hour and per day (0: no limit).
    pub quota: Option<String>,
}

/// Which preset fills in the queries not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// No preset: only the queries given.
    None,
    /// PostfixAdmin's schema.
    PostfixAdmin,
}

/// How to reach the database and what to ask it.
#[derive(Clone)]
pub struct SqlConfig {
    /// `SQL_URL`: `postgres://…`, `mysql://…` (or `mariadb://…`), `sqlite:…`.
    pub url: String,
    /// `SQL_PRESET`.
    pub preset: Preset,
    /// The queries; given ones override the preset's.
    pub queries: Queries,
    /// `SQL_MAX_CONNECTIONS`: the pool's bound.
    pub max_connections: u32,
    /// The deadline of one statement, waiting for a connection included.
    pub timeout: Duration,
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry the database password.
        f.debug_struct("SqlConfig")
            .field("preset", &self.preset)
            .field("queries", &self.queries)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Statements {
    domain: Option<Statement>,
    mailbox: Option<Statement>,
    alias: Option<Statement>,
    senders: Option<Statement>,
    auth: Option<Statement>,
    quota: Option<Statement>,
}

/// A backend answering from a SQL database.
pub struct SqlBackend {
    pool: AnyPool,
    statements: Statements,
    timeout: Duration,
    verifier: OnceLock<Verifier>,
    hash_log: MinuteLog,
}

/// Lets one warning through per minute.
#[derive(Debug, Default)]
struct MinuteLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl MinuteLog {
    fn allow(&self) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBackend")
            .field("statements", &self.statements)
            .finish_non_exhaustive()
    }
}

impl SqlConfig {
    /// Checks the URL's dialect and every query, without connecting (for
    /// `check-config`).
    ///
    /// # Errors
    /// A [`SqlError`] naming the setting.
    pub fn validate(&self) -> Result<(), SqlError> {
        self.checked().map(|_| ())
    }

    /// The dialect and the statements, once the URL has been parsed by the driver.
    fn checked(&self) -> Result<(Dialect, Statements), SqlError> {
        let (dialect, statements) = self.statements()?;
        // The driver's own parser: a typo such as `sslmode=requir` is named now,
        // not found at the first lookup.
        let url = mariadb_as_mysql(dialect, &self.url);
        let parsed = match dialect {
            Dialect::Postgres => url.parse::<sqlx::postgres::PgConnectOptions>().map(|_| ()),
            Dialect::MySql => url.parse::<sqlx::mysql::MySqlConnectOptions>().map(|_| ()),
            Dialect::Sqlite => url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .map(|_| ()),
        };
        // The driver's message may quote the URL, password included: not shown.
        parsed.map_err(|_| {
            SqlError::new(
                "SQL_URL",
                "cannot be parsed by the database driver (check the host, port and parameters)",
            )
        })?;
        Ok((dialect, statements))
    }

    fn statements(&self) -> Result<(Dialect, Statements), SqlError> {
        let dialect = Dialect::of_url(&self.url)?;
        let preset = match self.preset {
            Preset::PostfixAdmin => Some(preset::postfixadmin(dialect)),
            Preset::None => None,
        };
        let pick = |given: &Option<String>, preset: Option<&String>, setting: &str| {
            given
                .as_ref()
                .or(preset)
                .map(|q| statement(q, dialect, setting))
                .transpose()
        };
        let p = preset.as_ref();
        let q = &self.queries;
        let statements = Statements {
            domain: pick(&q.domain, p.map(|p| &p.domain), "SQL_QUERY_DOMAIN")?,
            mailbox: pick(&q.mailbox, p.map(|p| &p.mailbox), "SQL_QUERY_MAILBOX")?,
            alias: pick(&q.alias, p.map(|p| &p.alias), "SQL_QUERY_ALIAS")?,
            senders: pick(&q.senders, p.map(|p| &p.senders), "SQL_QUERY_SENDERS")?,
            auth: pick(&q.auth, p.map(|p| &p.auth), "SQL_QUERY_AUTH")?,
            quota: pick(&q.quota, None, "SQL_QUERY_QUOTA")?,
        };
        if [
            &statements.domain,
            &statements.mailbox,
            &statements.alias,
            &statements.senders,
            &statements.auth,
        ]
        .iter()
        .all(|s| s.is_none())
        {
            return Err(SqlError::new(
                "SQL_PRESET",
                "no query is given: set SQL_PRESET=postfixadmin or SQL_QUERY_* settings",
            ));
        }
        Ok((dialect, statements))
    }
}

impl SqlBackend {
    /// Prepares the pool (lazily: the adapter starts, and answers from its caches,
    /// while the database is down) and the statements.
    ///
    /// # Errors
    /// A [`SqlError`] naming the setting: an unusable URL or query.
    pub fn new(config: &SqlConfig) -> Result<Self, SqlError> {
        let (dialect, statements) = config.checked()?;
        sqlx::any::install_default_drivers();
        let mut url = mariadb_as_mysql(dialect, &config.url);
        // The server stops a statement at the deadline too, rather than working on
        // for a caller that has long been answered (unless the URL says otherwise).
        if dialect == Dialect::Postgres && !url.contains("statement_timeout") {
            let separator = if url.contains('?') { '&' } else { '?' };
            url.push_str(&format!(
                "{separator}options=-c%20statement_timeout%3D{}",
                config.timeout.as_millis().max(1)
            ));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(config.timeout)
            // A connection the server or a firewall closed is found out before a
            // lookup uses it, not by the lookup.
            .test_before_acquire(true)
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_lazy(&url)
            .map_err(|e| {
                SqlError::new(
                    "SQL_URL",
                    format!("cannot be used: {}", short(&e.to_string())),
                )
            })?;
        Ok(Self {
            pool,
            statements,
            timeout: config.timeout,
            verifier: OnceLock::new(),
            hash_log: MinuteLog::default(),
        })
    }

    /// Runs `statement` with `key` within the deadline: every row.
    async fn rows(&self, statement: &Statement, key: &str) -> Result<Vec<AnyRow>, BackendError> {
        tracing::debug!(key, "querying the database");
        let query = sqlx::query::<Any>(&statement.sql).bind(key.to_owned());
        match tokio::time::timeout(self.timeout, query.fetch_all(&self.pool)).await {
            Ok(rows) => rows.map_err(|e| database_error(e, key)),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    async fn exists(&self, statement: Option<&Statement>, key: &str) -> Result<bool, BackendError> {
        Ok(!self.rows(configured(statement)?, key).await?.is_empty())
    }

    async fn list(
        &self,
        statement: Option<&Statement>,
        key: &str,
    ) -> Result<Vec<String>, BackendError> {
        let rows = self.rows(configured(statement)?, key).await?;
        let mut out = Vec::new();
        for row in &rows {
            // PostfixAdmin's `goto` holds several addresses, comma-separated.
            if let Some(text) = text(row)? {
                out.extend(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        Ok(out)
    }

    fn verifier(&self) -> Result<&Verifier, BackendError> {
        if let Some(v) = self.verifier.get() {
            return Ok(v);
        }
        let started = Verifier::for_this_machine()
            .map_err(|e| BackendError::Other(format!("cannot start password verification: {e}")))?;
        Ok(self.verifier.get_or_init(|| started))
    }
}

/// `url` with `mariadb:` as `mysql:`, the name sqlx knows MariaDB by.
fn mariadb_as_mysql(dialect: Dialect, url: &str) -> String {
    if dialect == Dialect::MySql && url.to_ascii_lowercase().starts_with("mariadb:") {
        format!("mysql:{}", &url["mariadb:".len()..])
    } else {
        url.to_owned()
    }
}

/// The first column as text (`NULL`: none); a binary column holding UTF-8 too.
fn text(row: &AnyRow) -> Result<Option<String>, BackendError> {
    if let Ok(value) = row.try_get_unchecked::<Option<String>, _>(0) {
        return Ok(value);
    }
    match row.try_get_unchecked::<Option<Vec<u8>>, _>(0) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => String::from_utf8(bytes).map(Some).map_err(|_| {
            BackendError::InvalidResponse("the query's first column is not UTF-8 text".into())
        }),
        Err(_) => Err(BackendError::InvalidResponse(
            "the query's first column is not text".into(),
        )),
    }
}

fn configured(statement: Option<&Statement>) -> Result<&Statement, BackendError> {
    statement.ok_or_else(|| {
        BackendError::Other("no query answers this question (SQL_QUERY_* or SQL_PRESET)".into())
    })
}

/// A database failure in the backend's vocabulary: unreachable, too slow, or a
/// query the database refused (named by its message, on one short line, with the
/// key taken out: `invalid input syntax for type integer: "user@…"` would put an
/// address into a log at error level).
fn database_error(err: sqlx::Error, key: &str) -> BackendError {
    let redact = |text: &str| {
        let text = short(text);
        if key.is_empty() {
            text
        } else {
            text.replace(key, "<key>")
        }
    };
    match err {
        sqlx::Error::PoolTimedOut => BackendError::Timeout,
        sqlx::Error::Io(e) => BackendError::unavailable(e),
        sqlx::Error::Tls(e) => BackendError::Unavailable(e),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            BackendError::unavailable("database connection pool closed")
        }
        sqlx::Error::Protocol(e) => BackendError::unavailable(redact(&e)),
        sqlx::Error::Database(e) => BackendError::Other(format!(
            "the database refused the query{}: {}",
            e.code().map_or_else(String::new, |c| format!(" ({c})")),
            redact(e.message())
        )),
        sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => BackendError::InvalidResponse(format!(
            "unexpected query result: {}",
            redact(&err.to_string())
        )),
        other => BackendError::Other(redact(&other.to_string())),
    }
}

/// One line, at most 200 characters.
fn short(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[async_trait]
impl LookupBackend for SqlBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(self.statements.alias.as_ref(), address.as_str())
            .await
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.exists(self.statements.domain.as_ref(), domain).await
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.exists(self.statements.mailbox.as_ref(), address.as_str())
            .await
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list(self.statements.senders.as_ref(), address.as_str())
            .await
    }

    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        let Some(statement) = self.statements.quota.as_ref() else {
            return Ok(None);
        };
        let rows = self.rows(statement, login.as_str()).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let number = |i: usize| -> Result<u32, BackendError> {
            let value: Option<i64> = row.try_get_unchecked(i).map_err(|_| {
                BackendError::InvalidResponse(format!("quota column {} is not an integer", i + 1))
            })?;
            Ok(value.map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)))
        };
        Ok(Some(SmtpQuota {
            per_hour: number(0)?,
            per_day: number(1)?,
        }))
    }

    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        let failure = || {
            Ok(AuthOutcome::Failure {
                reason: AUTH_FAILED.to_owned(),
            })
        };
        // Never verified, and no query spent on them.
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return failure();
        }
        let rows = self
            .rows(configured(self.statements.auth.as_ref())?, login.as_str())
            .await?;
        let Some(hash) = rows.first().map(text).transpose()?.flatten() else {
            return failure();
        };
        let password = password.to_vec();
        let verified = self
            .verifier()?
            .run(move || postfix_adapter_passwords::verify(&hash, &password))
            .await
            .map_err(|e| {
                BackendError::Other(match e {
                    VerifyFailed::Panicked => "password verification panicked".into(),
                    VerifyFailed::Stopped => "password verification was cancelled".into(),
                })
            })?
            .unwrap_or_else(|why| {
                // One account's row, not the database: an error would make every
                // attempt at it (by anyone, unauthenticated) count against the
                // logins' circuit breaker and take SMTP AUTH down for everyone.
                // The operator hears of it; the login fails as for a wrong password.
                if self.hash_log.allow() {
                    tracing::warn!(%why, "a stored password hash cannot be verified, so that login fails (which login: at debug level; at most one such warning a minute)");
                }
                tracing::debug!(login = login.as_str(), %why, "unusable password hash");
                false
            });
        if verified {
            Ok(AuthOutcome::Success)
        } else {
            failure()
        }
    }

    async fn health(&self) -> Result<(), BackendError> {
        match tokio::time::timeout(
            self.timeout,
            sqlx::query::<Any>("SELECT 1").fetch_one(&self.pool),
        )
        .await
        {
            Ok(result) => result.map(|_| ()).map_err(|e| database_error(e, "")),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    fn name(&self) -> &str {
        "sql"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_messages_never_carry_the_key() {
        let key = "user@example.org";
        for err in [
            sqlx::Error::Protocol(format!("unexpected {key} in\nthe answer")),
            sqlx::Error::ColumnNotFound(format!("column {key}")),
        ] {
            let text = database_error(err, key).to_string();
            assert!(!text.contains(key), "{text}");
            assert!(text.contains("<key>"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        assert!(matches!(
            database_error(sqlx::Error::PoolTimedOut, key),
            BackendError::Timeout
        ));
    }
}
