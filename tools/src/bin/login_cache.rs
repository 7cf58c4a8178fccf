//! What the SASL login cache saves userli: password checks and login latency,
//! with the cache (`SASL_CACHE_TTL=1h`, the default) and without (`0`: every login
//! asks userli).
//!
//! ```text
//! cargo run --release -p postfix-adapter-tools --bin login_cache              # 200 users, 8 smtpd connections, 10 s per run
//! cargo run --release -p postfix-adapter-tools --bin login_cache -- --users 1000 --duration 20s --markdown
//! ```
//!
//! The real engine runs in-process with a fake directory whose password checks
//! take `--auth-latency` (100 ms: what hashing a password with argon2id costs
//! userli) and always succeed. `--connections` Dovecot-protocol clients, each as a
//! Postfix smtpd, log in as one of `--users` users after another (round robin, the
//! right password each time), as mail clients submitting mail do. Each run reports
//! logins per second, login latency p50/p99, and how many password checks reached
//! the directory per login.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use postfix_adapter_clients::sasl::SaslClient;
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
#[command(about = "Password checks and login latency with and without the login cache")]
struct Cli {
    /// Distinct users logging in.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Concurrent SASL connections (Postfix smtpd processes), one login in flight each.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Length of each run.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Latency of a password check in the fake directory.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    auth_latency: Duration,
    /// Print Markdown table rows (for the README) instead of text.
    #[arg(long)]
    markdown: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

/// Every password is right, after `auth` of hashing.
struct Directory {
    auth: Duration,
    auth_calls: AtomicU64,
}

#[async_trait]
impl LookupBackend for Directory {
    async fn aliases(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        Ok(vec![])
    }
    async fn domain_exists(&self, _: &str) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn mailbox_exists(&self, _: &Address) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn senders(&self, _: &Address) -> Result<Vec<String>, BackendError> {
        Ok(vec![])
    }
    async fn authenticate(&self, _: &Address, _: &[u8]) -> Result<AuthOutcome, BackendError> {
        self.auth_calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.auth).await;
        Ok(AuthOutcome::Success)
    }
    fn name(&self) -> &str {
        "login-cache"
    }
}

/// One run's logins.
struct Run {
    latency: Histogram<u64>,
    failed: u64,
    checks: u64,
}

/// Logs in as the next user, over one connection, until `end`.
async fn logins(addr: SocketAddr, users: u32, next: Arc<AtomicU64>, end: Instant) -> Run {
    let mut run = Run {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        failed: 0,
        checks: 0,
    };
    let Ok(mut sasl) = SaslClient::tcp(addr).await else {
        return run;
    };
    while Instant::now() < end {
        let user = next.fetch_add(1, Ordering::Relaxed) % u64::from(users);
        let started = Instant::now();
        let reply = sasl
            .auth_plain(
                &format!("user{user}@example.org"),
                "right password",
                "192.0.2.1",
            )
            .await;
        let _ = run.latency.record(started.elapsed().as_nanos() as u64);
        match reply {
            Ok(line) if line.starts_with("OK\t") => {}
            Ok(_) => run.failed += 1,
            Err(_) => {
                run.failed += 1;
                break;
            }
        }
    }
    run
}

/// One run against a fresh engine with `SASL_CACHE_TTL` = `ttl`.
fn run(cli: &Cli, ttl: Duration) -> Result<Run, BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let directory = Arc::new(Directory {
        auth: cli.auth_latency,
        auth_calls: AtomicU64::new(0),
    });
    rt.block_on(async {
        let mut config = Config::embedded();
        config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0")?;
        config.listeners.metrics = ListenAddr::parse("127.0.0.1:0")?;
        config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0")?);
        config.sasl.cache_ttl = ttl;
        // One smtpd relays many users' logins from one address: no per-client cap.
        config.sasl.max_checks_per_client = config.sasl.max_checks;
        let server = Server::bind(config, directory.clone(), Metrics::new()?).await?;
        let Some(LocalAddr::Tcp(sasl)) = server.sasl_addrs().first().cloned() else {
            return Err::<Run, BoxError>("not a TCP listener".into());
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        let end = Instant::now() + cli.duration;
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..cli.connections)
            .map(|_| tokio::spawn(logins(sasl, cli.users, next.clone(), end)))
            .collect();
        let mut total = Run {
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            failed: 0,
            checks: 0,
        };
        for t in tasks {
            let r = t.await?;
            let _ = total.latency.add(&r.latency);
            total.failed += r.failed;
        }
        total.checks = directory.auth_calls.load(Ordering::Relaxed);
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        Ok(total)
    })
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let runs = [
        ("SASL_CACHE_TTL=0", run(&cli, Duration::ZERO)?),
        ("SASL_CACHE_TTL=1h", run(&cli, Duration::from_secs(3600))?),
    ];
    if !cli.markdown {
        println!(
            "{} users, {} connections, password check {:?}, {:?} per run",
            cli.users, cli.connections, cli.auth_latency, cli.duration
        );
    }
    for (name, r) in &runs {
        let logins = r.latency.len();
        let per_second = logins as f64 / cli.duration.as_secs_f64();
        let p50 = r.latency.value_at_quantile(0.5) as f64 / 1e6;
        let p99 = r.latency.value_at_quantile(0.99) as f64 / 1e6;
        let checks_per_login = r.checks as f64 / logins.max(1) as f64;
        if cli.markdown {
            println!(
                "| `{name}` | {logins} | {per_second:.0} | {p50:.2} ms | {p99:.1} ms | {} ({checks_per_login:.3} per login) | {} |",
                r.checks, r.failed
            );
        } else {
            println!(
                "  {name:<18} {logins:>7} logins  {per_second:>7.0}/s  p50 {p50:>7.2} ms  p99 {p99:>7.1} ms  password checks {:>6} ({checks_per_login:.3} per login)  failed {}",
                r.checks, r.failed
            );
        }
    }
    Ok(())
}
