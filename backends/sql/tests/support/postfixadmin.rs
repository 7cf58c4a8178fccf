//! A small PostfixAdmin database: the schema (the columns the preset reads) and
//! rows covering active and inactive domains, mailboxes and aliases, an alias
//! domain, and password hashes with Dovecot's prefixes. Shared by the SQL tests
//! (SQLite here, PostgreSQL and MariaDB in the engine's tests).
#![allow(dead_code)]

/// PostfixAdmin's tables (the columns the preset reads), with `boolean` as the
/// flags' type: `boolean` in PostgreSQL, `tinyint(1)` in MariaDB and SQLite, as
/// PostfixAdmin's own schemas have them.
pub(crate) fn schema(boolean: &str) -> String {
    format!(
        "
CREATE TABLE domain (domain varchar(255) PRIMARY KEY, description varchar(255) DEFAULT '',
  backupmx {boolean} NOT NULL DEFAULT '0', active {boolean} NOT NULL DEFAULT '1');
CREATE TABLE mailbox (username varchar(255) PRIMARY KEY, password varchar(255) NOT NULL,
  name varchar(255) DEFAULT '', maildir varchar(255) DEFAULT '', local_part varchar(255),
  domain varchar(255), active {boolean} NOT NULL DEFAULT '1');
CREATE TABLE alias (address varchar(255) PRIMARY KEY, goto text NOT NULL, domain varchar(255),
  active {boolean} NOT NULL DEFAULT '1');
CREATE TABLE alias_domain (alias_domain varchar(255) PRIMARY KEY, target_domain varchar(255),
  active {boolean} NOT NULL DEFAULT '1');
"
    )
}

/// `openssl passwd -6 -salt saltsalt password`, with Dovecot's prefix.
pub(crate) const SHA512_PASSWORD: &str = "{SHA512-CRYPT}$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
/// OpenBSD's bcrypt test vector for `abc`, with Dovecot's prefix.
pub(crate) const BCRYPT_ABC: &str =
    "{BLF-CRYPT}$2a$06$If6bvum7DFjUnE9p2uDeDu0YHzrHM6tf.iqN8.yx.jNN1ILEf7h0i";

/// The schema and the data, for a server whose flags are of type `boolean`.
pub(crate) fn database(boolean: &str) -> String {
    format!("{}{}", schema(boolean), data())
}

pub(crate) fn data() -> String {
    format!(
        "
INSERT INTO domain (domain, backupmx, active) VALUES ('example.org', '0', '1'),
  ('backup.example', '1', '1'), ('old.example', '0', '0');
INSERT INTO alias_domain (alias_domain, target_domain, active) VALUES
  ('alias.example', 'example.org', '1'), ('gone.example', 'example.org', '0');
INSERT INTO mailbox (username, password, local_part, domain, active) VALUES
  ('user@example.org', '{SHA512_PASSWORD}', 'user', 'example.org', '1'),
  ('user2@example.org', '{BCRYPT_ABC}', 'user2', 'example.org', '1'),
  ('disabled@example.org', '{SHA512_PASSWORD}', 'disabled', 'example.org', '0'),
  ('odd@example.org', '{{MD5-CRYPT}}$1$abc$def', 'odd', 'example.org', '1'),
  ('old@example.org', '{{MD5-CRYPT}}$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/', 'old', 'example.org', '1');
INSERT INTO alias (address, goto, domain, active) VALUES
  ('user@example.org', 'user@example.org', 'example.org', '1'),
  ('user2@example.org', 'user2@example.org', 'example.org', '1'),
  ('alias@example.org', 'user2@example.org, user@example.org', 'example.org', '1'),
  ('off@example.org', 'user@example.org', 'example.org', '0');
"
    )
}

/// What the data holds, for the backend contract (`testkit::conformance::check`).
pub(crate) fn facts() -> postfix_adapter_backend::testkit::conformance::Facts<'static> {
    postfix_adapter_backend::testkit::conformance::Facts {
        domain: Some("example.org"),
        foreign_domain: Some("example.net"),
        mailbox: Some("user@example.org"),
        unknown_address: Some("nobody@example.org"),
        alias: Some((
            "alias@example.org",
            &["user2@example.org", "user@example.org"],
        )),
        senders: Some(("user@example.org", &["user@example.org"])),
        login: Some(("user@example.org", b"password")),
        quota: None,
    }
}
