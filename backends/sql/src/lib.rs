//! A SQL backend (`LOOKUP_BACKEND=sql`): PostgreSQL, MariaDB/MySQL and SQLite
//! through one async driver (sqlx), with a bounded pool, a deadline on every
//! statement, TLS when the server offers it, one query per question with the key
//! bound as a parameter (written as Postfix's map queries write it, `'%s'`), and
//! a PostfixAdmin preset ([`preset`]). Passwords are verified with
//! `postfix-adapter-passwords` (argon2, SHA-crypt, bcrypt, with or without
//! Dovecot's `{SCHEME}` prefix) on dedicated threads. Database trouble is an error
//! (Postfix: `TEMP`), never "not found".

mod backend;
pub mod preset;
pub mod query;

pub use backend::{Preset, Queries, SqlBackend, SqlConfig};

/// A configuration the backend cannot use, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct SqlError {
    /// The setting (`SQL_URL`, `SQL_QUERY_ALIAS`, ...).
    pub setting: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SqlError {
    /// An error about `setting`.
    pub fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            problem: problem.into(),
        }
    }
}
