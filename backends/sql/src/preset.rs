//! `SQL_PRESET=postfixadmin`: the queries for PostfixAdmin's schema (`domain`,
//! `mailbox`, `alias`, `alias_domain`), in each dialect.
//!
//! - domain: an active domain that is no backup MX, or an active alias domain;
//!   (a key with more than one `@` never goes through an alias domain: the
//!   dialects split such keys differently);
//! - mailbox: an active mailbox, also reached through an active alias domain
//!   (`user@alias.example` is a mailbox when `user@target.example` is);
//! - alias: the `goto` of an active alias row (comma-separated, split by the
//!   backend), also through an alias domain;
//! - senders: the same `goto`: PostfixAdmin gives every mailbox an alias row of its
//!   own, so a mailbox may send as itself and the mailboxes an alias goes to may
//!   send as the alias, as PostfixAdmin's own `smtpd_sender_login_maps` query has it;
//! - auth: the `password` of an active mailbox (Dovecot's `{SCHEME}` prefixes
//!   understood);
//! - quota: none (PostfixAdmin has no sending quotas).

use crate::query::Dialect;

/// The preset's queries, Postfix-style (one `%s`).
#[derive(Debug, Clone)]
pub struct PresetQueries {
    /// `domain`.
    pub domain: String,
    /// `mailbox`.
    pub mailbox: String,
    /// `alias`.
    pub alias: String,
    /// `senders`.
    pub senders: String,
    /// `auth`.
    pub auth: String,
}

/// PostfixAdmin's queries for `dialect`.
pub fn postfixadmin(dialect: Dialect) -> PresetQueries {
    // The key once, as a one-row table, so that its parts can be used twice.
    let (key, local, domain, join) = match dialect {
        Dialect::Postgres => (
            "(SELECT CAST('%s' AS text) AS k) q",
            "split_part(q.k, '@', 1)",
            "split_part(q.k, '@', 2)",
            "{local} || '@' || ad.target_domain",
        ),
        Dialect::MySql => (
            "(SELECT CAST('%s' AS CHAR) AS k) q",
            "SUBSTRING_INDEX(q.k, '@', 1)",
            "SUBSTRING_INDEX(q.k, '@', -1)",
            "CONCAT({local}, '@', ad.target_domain)",
        ),
        Dialect::Sqlite => (
            "(SELECT CAST('%s' AS TEXT) AS k) q",
            "substr(q.k, 1, instr(q.k, '@') - 1)",
            "substr(q.k, instr(q.k, '@') + 1)",
            "{local} || '@' || ad.target_domain",
        ),
    };
    let through_alias_domain = |column: &str| {
        format!(
            "EXISTS (SELECT 1 FROM alias_domain ad WHERE ad.active = '1' AND ad.alias_domain = {domain} \
             AND q.k NOT LIKE '%@%@%' AND {column} = {})",
            join.replace("{local}", local)
        )
    };
    let goto = format!(
        "SELECT a.goto FROM {key} JOIN alias a ON a.active = '1' \
         AND (a.address = q.k OR {})",
        through_alias_domain("a.address")
    );
    PresetQueries {
        domain:
            "SELECT 1 FROM (SELECT domain AS d FROM domain WHERE active = '1' AND backupmx = '0' \
                 UNION SELECT alias_domain FROM alias_domain WHERE active = '1') hosted \
                 WHERE d = '%s'"
                .to_owned(),
        mailbox: format!(
            "SELECT 1 FROM {key} JOIN mailbox m ON m.active = '1' \
             AND (m.username = q.k OR {})",
            through_alias_domain("m.username")
        ),
        alias: goto.clone(),
        senders: goto,
        auth: "SELECT password FROM mailbox WHERE username = '%s' AND active = '1'".to_owned(),
    }
}
