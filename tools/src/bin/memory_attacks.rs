//! How much memory a client can make the adapter hold: each attack against a fresh
//! adapter process, resident memory (RSS) before, during and after.
//!
//! ```text
//! cargo build --release --bin userli-postfix-adapter
//! cargo run --release -p postfix-adapter-tools --bin memory_attacks             # every attack
//! cargo run --release -p postfix-adapter-tools --bin memory_attacks -- --adapter /tmp/old/userli-postfix-adapter long-keys-16k
//! ```
//!
//! The adapter runs as a child process on the demo fixture (`--adapter`, default
//! `target/release/userli-postfix-adapter`), every listener on loopback, SASL
//! failures without delay (so the attacks run at full speed), and negative answers
//! cached for an hour (so no entry expires during a run). Attacks:
//!
//! | Name | What the client sends |
//! |---|---|
//! | `long-keys-16k` | 30,000 mailbox lookups, each a different 16 KB key |
//! | `long-keys-2k` | 100,000 mailbox lookups, each a different 2 KB key (an SMTP `RCPT TO` can carry that through Postfix) |
//! | `long-logins` | 20,000 failed SASL logins, each a different 12 KB name |
//! | `policy-attributes` | 200 policy connections, each sending 255 attributes of 16 KB and never finishing the request |
//! | `long-valid-keys` | 200,000 mailbox lookups, each a different address of the longest valid form (64-octet local part, 250-octet domain): what fills the cache fastest |
//! | `cache-100k` | 100,000 lookups of different ordinary addresses (`user123@example.org`): the cost of a cached answer |
//!
//! RSS "after" is read once the attack's connections are closed, so it is what
//! the attack left behind; "peak" is the largest sample taken during the attack.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use postfix_adapter_clients::process::rss_kib;
use postfix_adapter_clients::request::netstring;
use postfix_adapter_clients::sasl::SaslClient;
use postfix_adapter_clients::{Conn, Framing};
use tokio::io::AsyncWriteExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "Resident memory of the adapter under memory attacks")]
struct Cli {
    /// The adapter binary to attack.
    #[arg(long, default_value = "target/release/userli-postfix-adapter")]
    adapter: PathBuf,
    /// Concurrent client connections for the lookup and login attacks.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Print a Markdown table row per attack.
    #[arg(long)]
    markdown: bool,
    /// Extra `NAME=VALUE` settings for the adapter (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Attacks to run (all when none is given).
    attacks: Vec<Attack>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attack {
    #[value(name = "long-keys-16k")]
    LongKeys16k,
    #[value(name = "long-keys-2k")]
    LongKeys2k,
    LongLogins,
    PolicyAttributes,
    LongValidKeys,
    #[value(name = "cache-100k")]
    Cache100k,
}

impl Attack {
    const ALL: [Self; 6] = [
        Self::LongKeys16k,
        Self::LongKeys2k,
        Self::LongLogins,
        Self::PolicyAttributes,
        Self::LongValidKeys,
        Self::Cache100k,
    ];

    fn describe(self) -> &'static str {
        match self {
            Self::LongKeys16k => "30k lookups, 16 KB keys",
            Self::LongKeys2k => "100k lookups, 2 KB keys",
            Self::LongLogins => "20k failed logins, 12 KB names",
            Self::PolicyAttributes => "200 policy connections x 255 attributes of 16 KB",
            Self::LongValidKeys => "200k lookups, longest valid addresses (314 B)",
            Self::Cache100k => "100k cached answers (ordinary addresses)",
        }
    }
}

/// The adapter under attack; killed when dropped.
struct Adapter {
    child: Child,
    socketmap: SocketAddr,
    policy: SocketAddr,
    sasl: SocketAddr,
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn spawn(cli: &Cli, state: &std::path::Path) -> Result<Adapter, BoxError> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/fixtures/demo.toml");
    let (socketmap, policy, sasl, metrics) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(&cli.adapter);
    cmd.env_clear()
        .env("LOOKUP_BACKEND", "fixture")
        .env("FIXTURE_PATH", &fixture)
        .env("SOCKETMAP_LISTEN_ADDR", socketmap.to_string())
        .env("POLICY_LISTEN_ADDR", policy.to_string())
        .env("SASL_LISTEN_ADDR", sasl.to_string())
        .env("METRICS_LISTEN_ADDR", metrics.to_string())
        .env("STATE_DIRECTORY", state)
        .env("SASL_FAILURE_DELAY", "0")
        .env("LOOKUP_NEGATIVE_CACHE_TTL", "1h")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in &cli.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let adapter = Adapter {
        child,
        socketmap,
        policy,
        sasl,
    };
    // Up when all three listeners accept.
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in [socketmap, policy, sasl] {
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the adapter did not listen on {addr}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(adapter)
}

/// RSS samples of the adapter taken while an attack runs.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(Some(pid)) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// `count` lookups `mailbox <key(i)>` over `connections` connections; the number
/// of replies.
async fn lookups(
    addr: SocketAddr,
    connections: usize,
    count: u64,
    key: impl Fn(u64) -> String + Send + Sync + 'static,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let key = Arc::new(key);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, key) = (next.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut replies = 0u64;
            let Ok(mut conn) = Conn::tcp(addr, Framing::Netstring).await else {
                return 0;
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return replies;
                }
                let request = netstring(format!("mailbox {}", key(i)).as_bytes());
                if conn.exchange(&request).await.is_err() {
                    // Closed (a key too long for the listener): reconnect.
                    match Conn::tcp(addr, Framing::Netstring).await {
                        Ok(c) => conn = c,
                        Err(_) => return replies,
                    }
                } else {
                    replies += 1;
                }
            }
        }));
    }
    let mut replies = 0;
    for t in tasks {
        replies += t.await.unwrap_or(0);
    }
    replies
}

/// A local part of `len` bytes, different for each `i`.
fn long_local(i: u64, len: usize) -> String {
    let prefix = format!("k{i}x");
    let mut s = String::with_capacity(len);
    s.push_str(&prefix);
    s.extend(std::iter::repeat_n('a', len.saturating_sub(prefix.len())));
    s
}

async fn failed_logins(addr: SocketAddr, connections: usize, count: u64, name_len: usize) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = 0u64;
            // A different SMTP client per connection, as many smtpd would relay.
            let rip = format!("10.{}.{}.1", c / 250, c % 250);
            let mut sasl = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return answers;
                }
                if sasl.is_none() {
                    sasl = SaslClient::tcp(addr).await.ok();
                }
                let Some(client) = sasl.as_mut() else {
                    continue;
                };
                let login = format!("{}@example.org", long_local(i, name_len));
                match client.auth_plain(&login, "wrong", &rip).await {
                    Ok(_) => answers += 1,
                    Err(_) => sasl = None,
                }
            }
        }));
    }
    let mut answers = 0;
    for t in tasks {
        answers += t.await.unwrap_or(0);
    }
    answers
}

/// Opens `connections` policy connections and sends each 255 attributes of
/// `value_len` bytes without the ending empty line; returns the open connections
/// (the adapter may have closed some).
async fn policy_attributes(
    addr: SocketAddr,
    connections: usize,
    value_len: usize,
) -> Vec<tokio::net::TcpStream> {
    let value = "v".repeat(value_len);
    let mut held = Vec::new();
    for _ in 0..connections {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let mut open = true;
        for n in 0..255 {
            let line = format!("attr{n}={value}\n");
            if s.write_all(line.as_bytes()).await.is_err() {
                open = false;
                break;
            }
        }
        if open {
            held.push(s);
        }
    }
    held
}

#[derive(Debug)]
struct Outcome {
    attack: Attack,
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    note: String,
}

fn run(cli: &Cli, attack: Attack) -> Result<Outcome, BoxError> {
    let state = std::env::temp_dir().join(format!("memory-attacks-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let adapter = spawn(cli, &state)?;
    let pid = adapter.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    std::thread::sleep(Duration::from_millis(300));
    let before_kib = rss_kib(Some(pid)).ok_or("cannot read the adapter's RSS")?;
    let sampler = Sampler::start(pid);
    let connections = cli.connections;
    let note = match attack {
        Attack::LongKeys16k => {
            let n = rt.block_on(lookups(adapter.socketmap, connections, 30_000, |i| {
                format!("{}@example.org", long_local(i, 16_000))
            }));
            format!("{n} replies")
        }
        Attack::LongKeys2k => {
            let n = rt.block_on(lookups(adapter.socketmap, connections, 100_000, |i| {
                format!("{}@example.org", long_local(i, 2_000))
            }));
            format!("{n} replies")
        }
        Attack::LongValidKeys => {
            let domain = format!("{}.example.org", "d".repeat(238));
            let n = rt.block_on(lookups(adapter.socketmap, connections, 200_000, move |i| {
                format!("{}@{domain}", long_local(i, 64))
            }));
            format!("{n} replies")
        }
        Attack::Cache100k => {
            let n = rt.block_on(lookups(adapter.socketmap, connections, 100_000, |i| {
                format!("user{i}@example.org")
            }));
            format!("{n} replies")
        }
        Attack::LongLogins => {
            let n = rt.block_on(failed_logins(adapter.sasl, connections, 20_000, 12_000));
            format!("{n} answers")
        }
        Attack::PolicyAttributes => {
            let held = rt.block_on(policy_attributes(adapter.policy, 200, 16_000));
            std::thread::sleep(Duration::from_millis(500));
            let peak_now = rss_kib(Some(pid)).unwrap_or(0);
            let held_count = held.len();
            drop(held);
            format!(
                "{held_count} of 200 connections still open after sending; RSS then {:.1} MiB",
                peak_now as f64 / 1024.0
            )
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let peak_kib = sampler.finish();
    let after_kib = rss_kib(Some(pid)).ok_or("the adapter is gone")?;
    drop(adapter);
    let _ = std::fs::remove_dir_all(&state);
    Ok(Outcome {
        attack,
        before_kib,
        peak_kib,
        after_kib,
        note,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let attacks = if cli.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        cli.attacks.clone()
    };
    if cli.markdown {
        println!("| Attack | RSS before | peak | after | Notes |\n|---|---|---|---|---|");
    }
    for attack in attacks {
        let o = run(&cli, attack)?;
        if cli.markdown {
            println!(
                "| {} | {} | {} | {} | {} |",
                o.attack.describe(),
                mib(o.before_kib),
                mib(o.peak_kib),
                mib(o.after_kib),
                o.note
            );
        } else {
            println!(
                "{:<50} before {:>10}  peak {:>10}  after {:>10}  ({})",
                o.attack.describe(),
                mib(o.before_kib),
                mib(o.peak_kib),
                mib(o.after_kib),
                o.note
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_local_parts_are_as_long_as_asked_and_distinct() {
        assert_eq!(long_local(7, 100).len(), 100);
        assert_ne!(long_local(1, 50), long_local(2, 50));
    }
}
