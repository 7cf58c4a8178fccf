//! Load generator for the policy (sending quota) server: decisions per second and
//! latency with the embedded store or with Redis.
//!
//! ```text
//! cargo run --release -p postfix-adapter-tools --bin policy_loadgen -- --connections 50 --duration 5s
//! cargo run --release -p postfix-adapter-tools --bin policy_loadgen -- --redis-url redis://127.0.0.1:6379/0
//! ```
//!
//! It starts the engine in-process (fixture backend with `--logins` logins, each with
//! a quota high enough that nothing is rejected, so every request is a full check:
//! quota lookup from the cache plus one store update), then opens N persistent
//! connections that each send one `END-OF-MESSAGE` request at a time, as Postfix's
//! smtpd processes do. The clients run on their own thread so the server's runtime
//! is not starved by them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use postfix_adapter_clients::request::policy_end_of_message;
use postfix_adapter_clients::{Conn, Framing};
use userli_postfix_adapter::config::{Config, ListenAddr, Secret, parse_go_duration};
use userli_postfix_adapter::metrics::Metrics;
use userli_postfix_adapter::server::LocalAddr;

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Measured duration (after a 1 s warm-up), Go syntax.
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Distinct logins the requests rotate over.
    #[arg(long, default_value_t = 1000)]
    logins: usize,
    /// Keep the windows in this Redis instead of the embedded store.
    #[arg(long)]
    redis_url: Option<String>,
}

fn fixture(logins: usize) -> String {
    let mut text = String::from("domains = [\"example.org\"]\n");
    for i in 0..logins {
        text.push_str(&format!(
            "[[users]]\nemail = \"user{i}@example.org\"\nsmtp_quota = {{ per_hour = 1000000000, per_day = 1000000000 }}\n"
        ));
    }
    text
}

/// Sorted latencies in microseconds; returns the value at quantile `q`.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn client(
    addr: std::net::SocketAddr,
    first: usize,
    logins: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut conn = Conn::tcp(addr, Framing::Block).await.expect("connect");
    let mut latencies = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        let request = policy_end_of_message(&format!("user{}@example.org", i % logins));
        i += 1;
        let started = Instant::now();
        let reply = conn.exchange(&request).await.expect("a policy reply");
        assert!(reply.starts_with(b"action=DUNNO"), "unexpected reply");
        if measuring.load(Ordering::Relaxed) {
            latencies.push(started.elapsed().as_micros() as u64);
        }
    }
    latencies
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let duration = parse_go_duration(&args.duration)?;
    let dir = tempfile_dir()?;
    let fixture_path = dir.join("policy-bench.toml");
    std::fs::write(&fixture_path, fixture(args.logins))?;

    let mut config = Config::for_fixture(&fixture_path);
    config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0")?;
    config.listeners.metrics = ListenAddr::parse("127.0.0.1:0")?;
    config.listeners.policy = Some(ListenAddr::parse("127.0.0.1:0")?);
    config.policy.state_directory = dir.join("state");
    config.policy.redis_url = args.redis_url.clone().map(Secret::new);

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (addr, stop_server, server_task) = server_rt.block_on(async {
        let metrics = Metrics::new()?;
        let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics)?;
        let server = userli_postfix_adapter::Server::bind(config, backend, metrics).await?;
        let LocalAddr::Tcp(addr) = server.policy_addrs()[0].clone() else {
            return Err::<_, Box<dyn std::error::Error>>("TCP policy listener expected".into());
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        Ok((addr, stop, task))
    })?;

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = client_rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            tasks.push(tokio::spawn(client(
                addr,
                c * 7919,
                args.logins,
                measuring.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(duration).await;
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    let mut sorted = latencies;
    sorted.sort_unstable();
    let store = if args.redis_url.is_some() {
        "redis"
    } else {
        "embedded"
    };
    println!(
        "policy ({store} store): {} connections, {:.1} s: {:.0} decisions/s, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        args.connections,
        duration.as_secs_f64(),
        sorted.len() as f64 / duration.as_secs_f64(),
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.99),
        quantile(&sorted, 0.999),
        sorted.last().copied().unwrap_or(0),
    );
    stop_server.cancel();
    server_rt.block_on(server_task)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("policy-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn fixture_lists_every_login() {
        assert_eq!(fixture(3).matches("[[users]]").count(), 3);
    }
}
