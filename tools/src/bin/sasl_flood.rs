//! Lookups during a flood of wrong-password logins: does one abusive SMTP client
//! slow or fail everyone's mail?
//!
//! ```text
//! cargo run --release -p postfix-adapter-tools --bin sasl_flood              # 400 flooding connections, 10 s per phase
//! cargo run --release -p postfix-adapter-tools --bin sasl_flood -- --flood-connections 400 --duration 10s --markdown
//! ```
//!
//! The real engine runs in-process with a fake directory: every lookup takes
//! `--backend-latency` (1 ms) and answers "exists", every password check takes
//! `--auth-latency` (100 ms, what hashing a password costs userli) and answers
//! "wrong password". Two phases of the same length follow each other:
//!
//! 1. **quiet**: `--lookup-connections` clients look up never-seen mailboxes, one
//!    request at a time each (every lookup is a cache miss and a backend call);
//! 2. **flood**: the same, while `--flood-connections` Dovecot-protocol clients, each
//!    as a Postfix smtpd relaying a different SMTP client address (`rip=`), send
//!    wrong-password `AUTH PLAIN` in a loop (reconnecting 10 ms after a dropped
//!    connection, as smtpd does on the next AUTH).
//!
//! Reported per phase: lookup p50/p99/max and how many answers were not `OK`
//! (`TEMP` would mean deferred mail); after the flood: `/ready`, the lookup and
//! login circuit breakers, and how many logins were refused by the in-flight caps.
//! The load generator shares the machine with the server (see `loadgen.rs`): compare
//! the two phases of one run, not runs on different machines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use postfix_adapter_clients::request::netstring_into;
use postfix_adapter_clients::sasl::SaslClient;
use postfix_adapter_clients::{Conn, Framing, http};
use tokio_util::sync::CancellationToken;
use userli_postfix_adapter::Server;
use userli_postfix_adapter::backend_api::{
    Address, AuthOutcome, BackendError, LookupBackend, async_trait,
};
use userli_postfix_adapter::config::{Config, ListenAddr, parse_go_duration};
use userli_postfix_adapter::metrics::Metrics;
use userli_postfix_adapter::server::LocalAddr;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "Lookup latency with and without a wrong-password login flood")]
struct Cli {
    /// Concurrent flooding SASL connections, each with its own client address.
    #[arg(long, default_value_t = 400)]
    flood_connections: u32,
    /// Concurrent lookup clients (one request in flight each).
    #[arg(long, default_value_t = 4)]
    lookup_connections: u32,
    /// Length of each phase.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Latency of a lookup in the fake directory.
    #[arg(long, default_value = "1ms", value_parser = duration)]
    backend_latency: Duration,
    /// Latency of a password check in the fake directory.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    auth_latency: Duration,
    /// `SASL_FAILURE_DELAY` of the engine (the shipped default; `0` floods hardest).
    #[arg(long, default_value = "250ms", value_parser = duration)]
    failure_delay: Duration,
    /// Check passwords with the fixture backend on this file instead (real password
    /// hashing on the adapter's own CPUs); `--auth-latency` is then unused.
    #[arg(long)]
    fixture: Option<std::path::PathBuf>,
    /// Print Markdown table rows (for the README) instead of text.
    #[arg(long)]
    markdown: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

/// Every mailbox exists; every password is wrong.
struct Directory {
    lookup: Duration,
    auth: Duration,
    auth_calls: AtomicU64,
    /// Password checks by the fixture backend, when given.
    fixture: Option<postfix_adapter_backend_fixture::FixtureBackend>,
}

#[async_trait]
impl LookupBackend for Directory {
    async fn aliases(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        tokio::time::sleep(self.lookup).await;
        Ok(vec![])
    }
    async fn domain_exists(&self, _: &str) -> Result<bool, BackendError> {
        tokio::time::sleep(self.lookup).await;
        Ok(true)
    }
    async fn mailbox_exists(&self, _: &Address) -> Result<bool, BackendError> {
        tokio::time::sleep(self.lookup).await;
        Ok(true)
    }
    async fn senders(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        tokio::time::sleep(self.lookup).await;
        Ok(vec![])
    }
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        self.auth_calls.fetch_add(1, Ordering::Relaxed);
        if let Some(fixture) = &self.fixture {
            return fixture.authenticate(login, password).await;
        }
        tokio::time::sleep(self.auth).await;
        Ok(AuthOutcome::Failure {
            reason: "authentication failed".into(),
        })
    }
    fn name(&self) -> &str {
        "sasl-flood"
    }
}

/// One phase's lookups.
struct Phase {
    latency: Histogram<u64>,
    not_ok: u64,
}

impl Phase {
    fn merge(&mut self, other: &Phase) {
        let _ = self.latency.add(&other.latency);
        self.not_ok += other.not_ok;
    }
    fn us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Looks up never-seen mailboxes over one connection until `end`.
async fn lookups(addr: SocketAddr, next: Arc<AtomicU64>, end: Instant) -> Phase {
    let mut phase = Phase {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        not_ok: 0,
    };
    let Ok(mut conn) = Conn::tcp(addr, Framing::Netstring).await else {
        return phase;
    };
    let mut wire = Vec::with_capacity(64);
    while Instant::now() < end {
        let n = next.fetch_add(1, Ordering::Relaxed);
        wire.clear();
        netstring_into(
            format!("mailbox fresh{n}@example.org").as_bytes(),
            &mut wire,
        );
        let started = Instant::now();
        let reply = conn.exchange(&wire).await.ok();
        let took = started.elapsed();
        let _ = phase.latency.record(took.as_nanos() as u64);
        if reply.as_deref() != Some(&b"OK 1"[..]) {
            phase.not_ok += 1;
        }
        if reply.is_none() {
            break;
        }
    }
    phase
}

async fn lookup_phase(addr: SocketAddr, clients: u32, length: Duration) -> Phase {
    let end = Instant::now() + length;
    let next = Arc::new(AtomicU64::new(rand_start()));
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(lookups(addr, next.clone(), end)))
        .collect();
    let mut total = Phase {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        not_ok: 0,
    };
    for t in tasks {
        if let Ok(p) = t.await {
            total.merge(&p);
        }
    }
    total
}

/// Keys of one run never repeat those of another (nothing is cached across phases).
fn rand_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Counts of the flood.
#[derive(Default)]
struct Flood {
    attempts: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// One smtpd relaying wrong passwords for the SMTP client `rip`.
async fn flood_connection(addr: SocketAddr, rip: String, stop: Arc<AtomicBool>, flood: Arc<Flood>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut sasl) = SaslClient::tcp(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            flood.attempts.fetch_add(1, Ordering::Relaxed);
            if sasl
                .auth_plain("victim@example.org", "guess", &rip)
                .await
                .is_ok()
            {
                flood.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                // Dropped (Postfix would say 454): smtpd reconnects on the next AUTH.
                flood.dropped.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                break;
            }
        }
    }
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()?;
    let directory = Arc::new(Directory {
        lookup: cli.backend_latency,
        auth: cli.auth_latency,
        auth_calls: AtomicU64::new(0),
        fixture: match &cli.fixture {
            Some(path) => Some(postfix_adapter_backend_fixture::FixtureBackend::load(path)?),
            None => None,
        },
    });
    let metrics = Metrics::new()?;
    let (socketmap, sasl, http, stop_server, server_task) = server_rt.block_on(async {
        // Defaults for an engine with a backend of its own.
        let mut config = Config::embedded();
        config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0")?;
        config.listeners.metrics = ListenAddr::parse("127.0.0.1:0")?;
        config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0")?);
        config.sasl.failure_delay = cli.failure_delay;
        // Long-lived flood connections: one slot each.
        config.listeners.max_connections = config
            .listeners
            .max_connections
            .max(cli.flood_connections as usize + 64);
        let server = Server::bind(config, directory.clone(), metrics.clone()).await?;
        let tcp = |addrs: Vec<LocalAddr>| match addrs.first() {
            Some(LocalAddr::Tcp(a)) => Ok(*a),
            _ => Err::<SocketAddr, BoxError>("not a TCP listener".into()),
        };
        let (socketmap, sasl, http) = (
            tcp(server.socketmap_addrs())?,
            tcp(server.sasl_addrs())?,
            tcp(server.http_addrs())?,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        Ok::<_, BoxError>((socketmap, sasl, http, stop, task))
    })?;

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let quiet = client_rt.block_on(lookup_phase(
        socketmap,
        cli.lookup_connections,
        cli.duration,
    ));

    // The flood gets its own thread, as an attacker's load would come from elsewhere.
    let flood = Arc::new(Flood::default());
    let stop_flood = Arc::new(AtomicBool::new(false));
    let flood_thread = {
        let (flood, stop) = (flood.clone(), stop_flood.clone());
        let connections = cli.flood_connections;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("flood runtime");
            rt.block_on(async move {
                let tasks: Vec<_> = (0..connections)
                    .map(|i| {
                        let rip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
                        tokio::spawn(flood_connection(sasl, rip, stop.clone(), flood.clone()))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    // Let every flooding connection get going before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let flooded = client_rt.block_on(lookup_phase(
        socketmap,
        cli.lookup_connections,
        cli.duration,
    ));
    let (ready, _) = client_rt.block_on(http::get(http, "/ready", Duration::from_secs(10)));
    stop_flood.store(true, Ordering::Relaxed);
    let _ = flood_thread.join();
    let text = metrics.render();
    stop_server.cancel();
    let _ = server_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), server_task).await });

    let refused = http::metric(
        &text,
        "userli_postfix_adapter_sasl_checks_refused_total",
        "",
    );
    let lookup_breaker = http::metric(&text, "userli_postfix_adapter_circuit_breaker_state", "");
    let login_breaker = http::metric(
        &text,
        "userli_postfix_adapter_sasl_circuit_breaker_state",
        "",
    );
    let attempts = flood.attempts.load(Ordering::Relaxed);
    let flood_note = format!(
        "{} connections, {attempts} AUTH attempts ({} answered FAIL, {} dropped: {refused} refused by the caps), {} reached the directory",
        cli.flood_connections,
        flood.failed.load(Ordering::Relaxed),
        flood.dropped.load(Ordering::Relaxed),
        directory.auth_calls.load(Ordering::Relaxed)
    );
    let row = |name: &str, p: &Phase, note: &str| {
        format!(
            "| {name} | {} | {:.0} µs | {:.0} µs | {:.1} ms | {} | {note} |",
            p.latency.len(),
            p.us(0.5),
            p.us(0.99),
            p.latency.max() as f64 / 1e6,
            p.not_ok
        )
    };
    let after =
        format!("`/ready` {ready}, lookup breaker {lookup_breaker}, login breaker {login_breaker}");
    if cli.markdown {
        println!("{}", row("quiet", &quiet, "no logins"));
        println!(
            "{}",
            row("login flood", &flooded, &format!("{flood_note}; {after}"))
        );
    } else {
        println!(
            "fresh-key lookups, {} clients, backend {:?}, {:?} per phase",
            cli.lookup_connections, cli.backend_latency, cli.duration
        );
        for (name, p) in [("quiet", &quiet), ("login flood", &flooded)] {
            println!(
                "  {name:<12} {:>7} lookups  p50 {:>6.0} µs  p99 {:>6.0} µs  max {:>6.1} ms  not OK {}",
                p.latency.len(),
                p.us(0.5),
                p.us(0.99),
                p.latency.max() as f64 / 1e6,
                p.not_ok
            );
        }
        println!("  flood: {flood_note}");
        println!("  after: {after}");
    }
    Ok(())
}
