//! Queries as operators write them for Postfix's own `pgsql:`/`mysql:` maps —
//! `SELECT goto FROM alias WHERE address='%s' AND active = '1'` — turned into a
//! statement with one bound parameter: the key is never put into the SQL text.

use crate::SqlError;

/// The SQL dialect, from the URL's scheme: it decides the placeholder syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `$1`.
    Postgres,
    /// MariaDB and MySQL: `?`.
    MySql,
    /// SQLite: `?`.
    Sqlite,
}

impl Dialect {
    /// The dialect of a database URL (`postgres://`, `postgresql://`, `mysql://`,
    /// `mariadb://`, `sqlite:`).
    ///
    /// # Errors
    /// A [`SqlError`] for any other scheme.
    pub fn of_url(url: &str) -> Result<Self, SqlError> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "sqlite" => Ok(Self::Sqlite),
            _ => Err(SqlError::new(
                "SQL_URL",
                "must start with postgres://, postgresql://, mysql://, mariadb:// or sqlite:",
            )),
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Self::Postgres => "$1",
            Self::MySql | Self::Sqlite => "?",
        }
    }
}

/// A statement with exactly one bound parameter, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL text for the dialect.
    pub sql: String,
}

/// Turns `query`, with one `%s` (quoted, `'%s'`, as Postfix map queries write it,
/// or bare) for the key, into a statement for `dialect`; `setting` names the
/// query in errors.
///
/// # Errors
/// A [`SqlError`] when the query has no `%s`, more than one, or Postfix's other
/// expansions (`%u`, `%d`, `%[1-9]`), which would need the key taken apart in SQL.
pub fn statement(query: &str, dialect: Dialect, setting: &str) -> Result<Statement, SqlError> {
    let query = query.trim();
    if query.is_empty() {
        return Err(SqlError::new(setting, "is empty"));
    }
    for other in [
        "%u", "%d", "%1", "%2", "%3", "%4", "%5", "%6", "%7", "%8", "%9",
    ] {
        if query.contains(other) {
            return Err(SqlError::new(
                setting,
                format!("uses {other}: only %s (the whole key) is supported, bound as a parameter"),
            ));
        }
    }
    let count = query.matches("%s").count();
    if count != 1 {
        return Err(SqlError::new(
            setting,
            format!("must use %s exactly once (the key, bound as a parameter); found {count}"),
        ));
    }
    // Inside a longer string literal (`'%s@example.org'`) a parameter cannot go:
    // the statement would compare with a constant and never find anything.
    if !query.contains("'%s'") {
        let at = query.find("%s").unwrap_or_default();
        if query[..at].matches('\'').count() % 2 == 1 {
            return Err(SqlError::new(
                setting,
                "has %s inside a longer string literal: write '%s' alone, the whole key",
            ));
        }
    }
    // Quoted as in a Postfix map query, or bare: either way a parameter, never text.
    let sql = if query.contains("'%s'") {
        query.replacen("'%s'", dialect.placeholder(), 1)
    } else {
        query.replacen("%s", dialect.placeholder(), 1)
    };
    Ok(Statement { sql })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_map_queries_become_one_parameter() {
        let q = "SELECT goto FROM alias WHERE address='%s' AND active = '1'";
        assert_eq!(
            statement(q, Dialect::Postgres, "q").unwrap().sql,
            "SELECT goto FROM alias WHERE address=$1 AND active = '1'"
        );
        assert_eq!(
            statement(q, Dialect::MySql, "q").unwrap().sql,
            "SELECT goto FROM alias WHERE address=? AND active = '1'"
        );
        assert_eq!(
            statement("SELECT 1 FROM d WHERE name = %s", Dialect::Sqlite, "q")
                .unwrap()
                .sql,
            "SELECT 1 FROM d WHERE name = ?"
        );
        // A LIKE pattern's % is not a placeholder.
        assert!(
            statement(
                "SELECT 1 FROM d WHERE name = '%s' AND x LIKE 'a%'",
                Dialect::Sqlite,
                "q"
            )
            .is_ok()
        );
    }

    #[test]
    fn other_expansions_and_counts_are_refused_by_setting() {
        for (q, why) in [
            ("SELECT 1", "found 0"),
            ("SELECT 1 WHERE a='%s' OR b='%s'", "found 2"),
            ("SELECT 1 WHERE u='%u' AND d='%d'", "uses %u"),
            ("  ", "is empty"),
            (
                "SELECT 1 WHERE a = '%s@example.org'",
                "inside a longer string literal",
            ),
        ] {
            let err = statement(q, Dialect::Postgres, "SQL_QUERY_ALIAS").unwrap_err();
            assert!(err.to_string().starts_with("SQL_QUERY_ALIAS: "), "{err}");
            assert!(err.to_string().contains(why), "{q}: {err}");
        }
    }

    #[test]
    fn dialects_come_from_the_url() {
        assert_eq!(
            Dialect::of_url("postgres://u@h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(
            Dialect::of_url("PostgreSQL://h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::of_url("mariadb://h/db").unwrap(), Dialect::MySql);
        assert_eq!(
            Dialect::of_url("sqlite:///var/db.sqlite").unwrap(),
            Dialect::Sqlite
        );
        assert!(Dialect::of_url("oracle://h").is_err());
    }
}
