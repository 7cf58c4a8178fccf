//! A custom backend, written only against the public API: answers come from a
//! plain-text table in the spirit of Postfix's own lookup tables.
//!
//! ```text
//! # comment
//! domain  example.org
//! mailbox user@example.org
//! alias   info@example.org  user@example.org,other@example.net
//! sender  user@example.org  user@example.org
//! ```
//!
//! Run it (socketmap on 127.0.0.1:10001, metrics on 127.0.0.1:10002):
//!
//! ```text
//! cargo run --example custom_backend -- examples/fixtures/table.txt
//! postmap -q user@example.org socketmap:inet:127.0.0.1:10001:mailbox
//! ```
//!
//! The engine supplies the protocol, normalisation (keys arrive lower-cased; with a
//! recipient delimiter the engine asks for the address as given first and for the
//! address without its extension only when that is not found), deadlines, metrics
//! and health endpoints; the backend only answers, for exactly the key it gets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use userli_postfix_adapter::Server;
use userli_postfix_adapter::backend_api::{Address, BackendError, LookupBackend, async_trait};
use userli_postfix_adapter::config::{Config, ListenAddr};
use userli_postfix_adapter::metrics::Metrics;

/// Lookups answered from a parsed text table.
#[derive(Debug, Default)]
struct TableBackend {
    domains: HashSet<String>,
    mailboxes: HashSet<String>,
    aliases: HashMap<String, Vec<String>>,
    senders: HashMap<String, Vec<String>>,
}

/// A line of the table that is not `kind key [values]`.
#[derive(Debug, PartialEq, Eq)]
struct TableError {
    line: usize,
    message: String,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl TableBackend {
    fn parse(text: &str) -> Result<Self, TableError> {
        let mut table = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: &str| TableError {
                line: index + 1,
                message: message.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let kind = fields.next().unwrap_or_default();
            let key = fields
                .next()
                .ok_or_else(|| err("missing key"))?
                .to_lowercase();
            let values: Vec<String> = fields
                .next()
                .map(|v| v.split(',').map(str::to_lowercase).collect())
                .unwrap_or_default();
            match kind {
                "domain" => {
                    table.domains.insert(key);
                }
                "mailbox" => {
                    table.mailboxes.insert(key);
                }
                "alias" if !values.is_empty() => {
                    table.aliases.entry(key).or_default().extend(values);
                }
                "sender" if !values.is_empty() => {
                    table.senders.entry(key).or_default().extend(values);
                }
                "alias" | "sender" => return Err(err("missing destinations")),
                _ => return Err(err("unknown kind (use domain, mailbox, alias or sender)")),
            }
        }
        Ok(table)
    }
}

#[async_trait]
impl LookupBackend for TableBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        Ok(self
            .aliases
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        Ok(self.domains.contains(domain))
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        Ok(self.mailboxes.contains(address.as_str()))
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        Ok(self
            .senders
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    fn name(&self) -> &str {
        "table"
    }
}

const SAMPLE: &str = "\
domain  example.org
mailbox user@example.org
alias   info@example.org  user@example.org,other@example.net
sender  user@example.org  user@example.org
";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let text = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => SAMPLE.to_owned(),
    };
    let backend = TableBackend::parse(&text).map_err(|e| e.to_string())?;

    // The engine's defaults for a backend of our own: its configuration only
    // decides listeners and limits here.
    let mut config = Config::embedded();
    config.listeners.socketmap = ListenAddr::parse("127.0.0.1:10001")?;
    config.listeners.metrics = ListenAddr::parse("127.0.0.1:10002")?;

    let server = Server::bind(config, Arc::new(backend), Metrics::new()?).await?;
    println!(
        "table backend serving socketmap on {:?}",
        server.socketmap_addrs()
    );
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use userli_postfix_adapter::Lookups;
    use userli_postfix_adapter::protocol::socketmap::Reply;

    fn lookups() -> Lookups {
        let mut config = Config::embedded();
        config.lookups.recipient_delimiter = "+".into();
        Lookups::new(&config, Arc::new(TableBackend::parse(SAMPLE).unwrap())).unwrap()
    }

    #[tokio::test]
    async fn answers_through_the_engine() {
        let s = lookups();
        let ok = |v: &str| Reply::Ok(v.to_owned());
        assert_eq!(s.answer(b"domain Example.ORG").await, ok("1"));
        assert_eq!(s.answer(b"mailbox user+tag@example.org").await, ok("1"));
        assert_eq!(
            s.answer(b"alias info@example.org").await,
            ok("user@example.org,other@example.net")
        );
        assert_eq!(
            s.answer(b"senders user@example.org").await,
            ok("user@example.org")
        );
        assert_eq!(
            s.answer(b"mailbox nobody@example.org").await,
            Reply::NotFound
        );
    }

    #[tokio::test]
    async fn serves_a_real_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut config = Config::embedded();
        config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0").unwrap();
        config.listeners.metrics = ListenAddr::parse("127.0.0.1:0").unwrap();
        let backend = Arc::new(TableBackend::parse(SAMPLE).unwrap());
        let server = Server::bind(config, backend, Metrics::new().unwrap())
            .await
            .unwrap();
        let userli_postfix_adapter::server::LocalAddr::Tcp(addr) =
            server.socketmap_addrs()[0].clone()
        else {
            panic!("tcp expected")
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"18:domain example.org,").await.unwrap();
        let mut reply = [0u8; 7];
        conn.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"4:OK 1,");
        stop.cancel();
        drop(conn);
        run.await.unwrap();
    }

    /// The contract every backend keeps, checked by the backend kit's conformance
    /// suite against this backend's own sample data. (A table has no logins or
    /// quotas, and cannot be unreachable, so those checks do not apply.)
    #[tokio::test]
    async fn conforms_to_the_backend_contract() {
        use postfix_adapter_backend::testkit::conformance::{Facts, check};
        let backend = TableBackend::parse(SAMPLE).unwrap();
        let facts = Facts {
            domain: Some("example.org"),
            foreign_domain: Some("example.net"),
            mailbox: Some("user@example.org"),
            unknown_address: Some("nobody@example.org"),
            alias: Some((
                "info@example.org",
                &["user@example.org", "other@example.net"],
            )),
            senders: Some(("user@example.org", &["user@example.org"])),
            ..Facts::default()
        };
        check(&backend, &facts).await;
    }

    #[test]
    fn rejects_bad_lines_with_their_number() {
        let err = TableBackend::parse("domain example.org\nfrobnicate x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(TableBackend::parse("alias a@example.org").is_err());
    }
}
