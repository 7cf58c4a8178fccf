//! A socketmap load generator: drives the adapter (or anything speaking Postfix's
//! socketmap protocol) the way Postfix does and reports throughput, latency
//! percentiles and reply counts.
//!
//! Every connection is persistent and carries one request at a time: it sends a
//! request, waits for the reply, then sends the next (Postfix's `dict_sockmap`
//! never pipelines). Latency is measured per request from just before the write to
//! the complete reply frame; the warm-up is excluded.
//!
//! ```text
//! cargo build --release -p postfix-adapter-tools --bin loadgen
//! L=target/release/loadgen
//! $L floor                                 # trivial netstring server answering `OK 1`: the floor
//! $L adapter                               # the real engine with an in-memory fake backend
//! $L adapter --backend-latency 1ms         # ... whose every call takes 1 ms
//! $L adapter --backend-down                # ... which is down: every answer is TEMP
//! $L compare                               # floor, then adapter; ratio of throughputs and p99s
//! $L remote --addr 127.0.0.1:10001 --map mix --key-pattern demo   # an external server
//! $L cold-key                              # 1000 concurrent lookups of one cold key: backend calls
//! $L miss-overhead                         # never-seen keys, backend latency 1 ms: engine overhead
//! $L idle --connections 10000              # RSS of a server holding idle connections
//! $L serve --target adapter                # the fake-backend adapter as its own process
//! ```
//!
//! Add `--json` for one JSON object per scenario, or `--markdown` for a table row
//! (what `scripts/bench.sh` collects); the human summary then goes to stderr.
//!
//! # Threads
//!
//! The load generator and the server under test share the machine. In-process
//! servers run on their own multi-threaded tokio runtime (`--server-threads`,
//! default: one worker per CPU, as the adapter binary does); the clients run on a
//! separate runtime (`--client-threads`, default 1: a current-thread runtime on the
//! main thread). Keeping them apart means the server's workers are never blocked
//! behind client tasks and the scheduling of the server is the one production has;
//! a single client thread is enough to saturate a 2-core machine with
//! request/response traffic and leaves the server most of the CPU. Both sides
//! compete for the same cores, so absolute numbers are lower than on a dedicated
//! server; compare `floor` and `adapter` runs made the same way.
//!
//! # Fake backend
//!
//! `userN@example.org` is a mailbox and a sender login of itself for `N < --keys`,
//! `aliasN@example.org` forwards to `userN@example.org`, and `dN.example.org` (and
//! `example.org`) are domains. Every call first waits `--backend-latency`; with
//! `--backend-down` it then fails (`TEMP`), with `--backend-hang` it never answers
//! (the engine's `--lookup-timeout` turns that into `TEMP`). Calls are counted, so
//! a cache or request coalescing in front of the backend shows as fewer calls than
//! requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use postfix_adapter_clients::idle::{self, Opened};
use postfix_adapter_clients::process::{open_files_limit, rss_kib};
use postfix_adapter_clients::request::{netstring, netstring_into};
use postfix_adapter_clients::{Conn, Framing, ReadError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use userli_postfix_adapter::Server;
use userli_postfix_adapter::backend_api::{Address, BackendError, LookupBackend, async_trait};
use userli_postfix_adapter::config::{Config, ListenAddr, parse_go_duration};
use userli_postfix_adapter::metrics::Metrics;
use userli_postfix_adapter::protocol::netstring::{NetstringDecoder, encode_into};
use userli_postfix_adapter::server::LocalAddr;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[derive(Debug, Parser)]
#[command(about = "Socketmap load generator for userli-postfix-adapter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    out: OutputOpts,
    #[command(flatten)]
    threads: ThreadOpts,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load an external server (`--addr`).
    Remote {
        /// The server's socketmap address.
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        load: LoadOpts,
    },
    /// Load an in-process trivial netstring server answering `OK 1` to everything.
    Floor {
        #[command(flatten)]
        load: LoadOpts,
    },
    /// Load the real engine in-process, with the fake backend.
    Adapter {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        backend: BackendOpts,
    },
    /// `floor` then `adapter` with the same load; prints the throughput ratio.
    Compare {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        backend: BackendOpts,
    },
    /// Concurrent lookups of one cold key against the in-process adapter.
    ColdKey {
        /// Concurrent lookups (one connection each).
        #[arg(long, default_value_t = 1000)]
        concurrency: usize,
        /// Rounds, each with a fresh cold key.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[command(flatten)]
        backend: BackendOpts,
    },
    /// Every request a never-seen key: the engine's overhead on top of the backend.
    MissOverhead {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        backend: BackendOpts,
    },
    /// Opens many idle connections and reports the server's memory.
    Idle {
        /// Connections to open and hold.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// An external server (default: spawn `loadgen serve` as a child process).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// PID of the external server, whose VmRSS is read from /proc.
        #[arg(long, requires = "addr")]
        server_pid: Option<u32>,
        /// Run the adapter in this process instead (RSS then includes the clients).
        #[arg(long, conflicts_with = "addr")]
        in_process: bool,
        /// The request each connection sends once before idling.
        #[arg(long, default_value = "mailbox user0@example.org")]
        probe: String,
        /// Connections opened concurrently.
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// How long to hold the connections before measuring.
        #[arg(long, default_value = "1s", value_parser = duration)]
        settle: Duration,
    },
    /// Print the header of the `--markdown` table.
    MarkdownHeader,
    /// Serve the fake-backend adapter (or the floor) until killed; prints its address.
    Serve {
        /// What to serve.
        #[arg(long, value_enum, default_value_t = ServeTarget::Adapter)]
        target: ServeTarget,
        /// Socketmap listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The engine's connection limit.
        #[arg(long, default_value_t = 100_000)]
        max_connections: usize,
        #[command(flatten)]
        backend: BackendOpts,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServeTarget {
    Adapter,
    Floor,
}

#[derive(Debug, Clone, Args)]
struct OutputOpts {
    /// Print one JSON object per scenario on stdout.
    #[arg(long, global = true, conflicts_with = "markdown")]
    json: bool,
    /// Print one Markdown table row per scenario on stdout.
    #[arg(long, global = true)]
    markdown: bool,
    /// The scenario name in Markdown/JSON output.
    #[arg(long, global = true)]
    label: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct ThreadOpts {
    /// Worker threads of the in-process server runtime (default: one per CPU).
    #[arg(long, global = true)]
    server_threads: Option<usize>,
    /// Threads of the client runtime (1: current-thread runtime on the main thread).
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
}

#[derive(Debug, Clone, Args)]
struct LoadOpts {
    /// Persistent connections, each with one request in flight
    /// (default 50; `miss-overhead`: 4, to measure overhead rather than queueing).
    #[arg(long)]
    connections: Option<usize>,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Warm-up, not measured.
    #[arg(long, default_value = "1s", value_parser = duration)]
    warmup: Duration,
    /// Map to query; `mix` rotates mailbox, alias, domain, senders.
    #[arg(long, value_enum, default_value_t = MapChoice::Mailbox)]
    map: MapChoice,
    /// Keys are drawn uniformly from index 0..key-range (default: --keys, all found).
    #[arg(long)]
    key_range: Option<u64>,
    /// How keys are spelled.
    #[arg(long, value_enum, default_value_t = KeyPattern::Indexed)]
    key_pattern: KeyPattern,
    /// A reply that takes longer than this counts as an error and the connection is
    /// reopened.
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MapChoice {
    Mailbox,
    Alias,
    Domain,
    Senders,
    Mix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeyPattern {
    /// `userN@example.org`, `aliasN@example.org`, `dN.example.org`: the fake backend's table.
    Indexed,
    /// The bundled demo fixture's keys (`user@example.org`, ...), for `remote` runs
    /// against `scripts/demo.sh`.
    Demo,
}

#[derive(Debug, Clone, Args)]
struct BackendOpts {
    /// Keys that exist in the fake backend (and the default key range).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Latency of every backend call (`cold-key`: 50ms, `miss-overhead`: 1ms).
    #[arg(long, value_parser = duration)]
    backend_latency: Option<Duration>,
    /// Every backend call fails with `Unavailable` (after the latency).
    #[arg(long, conflicts_with = "backend_hang")]
    backend_down: bool,
    /// Every backend call hangs (the engine's lookup timeout answers TEMP).
    #[arg(long)]
    backend_hang: bool,
    /// The engine's lookup deadline.
    #[arg(long, default_value = "3s", value_parser = duration)]
    lookup_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// A reply's status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    NotFound,
    Temp,
    Perm,
    Other,
}

impl Status {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::NotFound,
        Self::Temp,
        Self::Perm,
        Self::Other,
    ];

    fn of(payload: &[u8]) -> Self {
        let word = payload.split(|&b| b == b' ').next().unwrap_or_default();
        match word {
            b"OK" => Self::Ok,
            b"NOTFOUND" => Self::NotFound,
            b"TEMP" => Self::Temp,
            b"PERM" => Self::Perm,
            _ => Self::Other,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::NotFound => "NOTFOUND",
            Self::Temp => "TEMP",
            Self::Perm => "PERM",
            Self::Other => "other",
        }
    }
}

/// Latencies (nanoseconds, 3 significant digits) and reply counts.
#[derive(Debug, Clone)]
struct Stats {
    latency: Histogram<u64>,
    replies: [u64; 5],
    errors: u64,
    disconnects: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 120_000_000_000, 3)
                .expect("valid histogram bounds"),
            replies: [0; 5],
            errors: 0,
            disconnects: 0,
        }
    }
}

impl Stats {
    fn record(&mut self, latency: Duration, status: Status) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.max(1));
        self.replies[status as usize] += 1;
    }

    fn merge(&mut self, other: &Self) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        for (a, b) in self.replies.iter_mut().zip(other.replies) {
            *a += b;
        }
        self.errors += other.errors;
        self.disconnects += other.disconnects;
    }

    fn count(&self) -> u64 {
        self.latency.len()
    }

    fn quantile(&self, q: f64) -> Duration {
        if self.count() == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.latency.max())
    }

    fn mean(&self) -> Duration {
        Duration::from_nanos(self.latency.mean() as u64)
    }

    fn replies_text(&self) -> String {
        Status::ALL
            .iter()
            .zip(self.replies)
            .filter(|&(s, n)| n > 0 || *s == Status::Ok)
            .map(|(s, n)| format!("{} {n}", s.word()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// One scenario's result, printed as text, JSON or a Markdown row.
#[derive(Debug)]
struct Report {
    label: String,
    connections: usize,
    window: Duration,
    stats: Stats,
    backend_calls: Option<u64>,
    notes: Vec<String>,
    extra: serde_json::Map<String, serde_json::Value>,
    /// Scenarios without a throughput (idle, cold-key) print only latencies.
    throughput: bool,
}

impl Report {
    fn rate(&self) -> f64 {
        if self.window.is_zero() {
            0.0
        } else {
            self.stats.count() as f64 / self.window.as_secs_f64()
        }
    }

    fn human(&self) -> String {
        let s = &self.stats;
        let mut line = format!("{}: {} conns", self.label, self.connections);
        if self.throughput {
            line += &format!(
                ", {:.1} s: {:.0} req/s",
                self.window.as_secs_f64(),
                self.rate()
            );
        }
        if s.count() > 0 {
            line += &format!(
                ", {} requests, p50 {}, p99 {}, p99.9 {}, max {}; {}",
                s.count(),
                fmt_dur(s.quantile(0.5)),
                fmt_dur(s.quantile(0.99)),
                fmt_dur(s.quantile(0.999)),
                fmt_dur(s.max()),
                s.replies_text()
            );
        }
        line += &format!("; errors {}, disconnects {}", s.errors, s.disconnects);
        if let Some(calls) = self.backend_calls {
            line += &format!("; backend calls {calls}");
        }
        for note in &self.notes {
            line += "; ";
            line += note;
        }
        line
    }

    fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut v = serde_json::json!({
            "scenario": self.label,
            "connections": self.connections,
            "window_s": self.window.as_secs_f64(),
            "requests": s.count(),
            "throughput_rps": if self.throughput { Some(self.rate().round()) } else { None },
            "latency_us": {
                "p50": us(s.quantile(0.5)),
                "p99": us(s.quantile(0.99)),
                "p999": us(s.quantile(0.999)),
                "max": us(s.max()),
                "mean": us(s.mean()),
            },
            "replies": Status::ALL.iter().zip(s.replies)
                .map(|(st, n)| (st.word().to_owned(), serde_json::Value::from(n)))
                .collect::<serde_json::Map<_, _>>(),
            "errors": s.errors,
            "disconnects": s.disconnects,
            "backend_calls": self.backend_calls,
            "notes": self.notes,
        });
        if let Some(obj) = v.as_object_mut() {
            obj.extend(self.extra.clone());
        }
        v
    }

    fn markdown(&self) -> String {
        let s = &self.stats;
        let dash = || "–".to_owned();
        let lat = |q: f64| {
            if s.count() > 0 {
                fmt_dur(s.quantile(q))
            } else {
                dash()
            }
        };
        let mut replies = s.replies_text();
        if s.errors + s.disconnects > 0 {
            replies += &format!(", errors {}, disconnects {}", s.errors, s.disconnects);
        }
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.label,
            self.connections,
            if self.throughput {
                format!("{:.0}", self.rate())
            } else {
                dash()
            },
            lat(0.5),
            lat(0.99),
            lat(0.999),
            if s.count() > 0 {
                fmt_dur(s.max())
            } else {
                dash()
            },
            if s.count() > 0 { replies } else { dash() },
            self.backend_calls.map_or_else(dash, |c| c.to_string()),
            self.notes.join("; ")
        )
    }
}

/// The header matching [`Report::markdown`].
const MARKDOWN_HEADER: &str = "| Scenario | Conns | req/s | p50 | p99 | p99.9 | max | Replies | Backend calls | Notes |\n|---|---|---|---|---|---|---|---|---|---|";

struct Output {
    opts: OutputOpts,
}

impl Output {
    fn emit(&self, report: &Report) {
        if self.opts.json {
            eprintln!("{}", report.human());
            println!("{}", report.json());
        } else if self.opts.markdown {
            eprintln!("{}", report.human());
            println!("{}", report.markdown());
        } else {
            println!("{}", report.human());
        }
    }

    fn note(&self, text: &str) {
        if self.opts.json || self.opts.markdown {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn label(&self, default: &str) -> String {
        self.opts
            .label
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }
}

// ---------------------------------------------------------------------------
// Fake backend
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Down,
    Hang,
}

/// A deterministic in-memory backend that counts its calls.
#[derive(Debug)]
struct FakeBackend {
    keys: u64,
    latency: Duration,
    mode: Mode,
    calls: AtomicU64,
    /// Time actually spent in calls that wait (the delay is precise to tens of
    /// microseconds, not exact, so the real backend time is measured, not assumed).
    observed: Mutex<Stats>,
    delayer: Delayer,
}

/// Sub-millisecond sleeps. tokio's timer wheel has a 1 ms tick and rounds every
/// sleep up to it (a 1 ms sleep takes 1–2 ms), which would drown the engine
/// overhead `miss-overhead` measures. One thread keeps the deadlines and wakes each
/// caller through a oneshot channel; `Condvar::wait_timeout` wakes within tens of
/// microseconds.
#[derive(Debug)]
struct Delayer {
    shared: Arc<(Mutex<DelayQueue>, std::sync::Condvar)>,
}

#[derive(Debug, Default)]
struct DelayQueue {
    heap: std::collections::BinaryHeap<DelayEntry>,
    seq: u64,
    closed: bool,
}

#[derive(Debug)]
struct DelayEntry {
    at: Instant,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for DelayEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for DelayEntry {}
impl PartialOrd for DelayEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DelayEntry {
    /// Reversed: the earliest deadline is the greatest, on top of the max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Delayer {
    fn new() -> Self {
        let shared = Arc::new((Mutex::new(DelayQueue::default()), std::sync::Condvar::new()));
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("fake-backend-timer".into())
            .spawn(move || {
                let (lock, wakeup) = &*worker;
                let mut queue = lock.lock().expect("not poisoned");
                loop {
                    if queue.closed {
                        return;
                    }
                    let now = Instant::now();
                    while queue.heap.peek().is_some_and(|e| e.at <= now) {
                        if let Some(due) = queue.heap.pop() {
                            let _ = due.wake.send(());
                        }
                    }
                    queue = match queue.heap.peek().map(|e| e.at - now) {
                        Some(wait) => wakeup.wait_timeout(queue, wait).expect("not poisoned").0,
                        None => wakeup.wait(queue).expect("not poisoned"),
                    };
                }
            })
            .expect("timer thread starts");
        Self { shared }
    }

    async fn sleep(&self, d: Duration) {
        let (wake, woken) = tokio::sync::oneshot::channel();
        {
            let (lock, wakeup) = &*self.shared;
            let mut queue = lock.lock().expect("not poisoned");
            queue.seq += 1;
            let seq = queue.seq;
            queue.heap.push(DelayEntry {
                at: Instant::now() + d,
                seq,
                wake,
            });
            wakeup.notify_one();
        }
        let _ = woken.await;
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        let (lock, wakeup) = &*self.shared;
        if let Ok(mut queue) = lock.lock() {
            queue.closed = true;
        }
        wakeup.notify_one();
    }
}

impl FakeBackend {
    fn new(opts: &BackendOpts, default_latency: Duration) -> Self {
        Self {
            keys: opts.keys,
            latency: opts.backend_latency.unwrap_or(default_latency),
            mode: if opts.backend_down {
                Mode::Down
            } else if opts.backend_hang {
                Mode::Hang
            } else {
                Mode::Normal
            },
            calls: AtomicU64::new(0),
            observed: Mutex::new(Stats::default()),
            delayer: Delayer::new(),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn observed(&self) -> Stats {
        self.observed.lock().expect("not poisoned").clone()
    }

    fn index(&self, s: &str, prefix: &str, suffix: &str) -> Option<u64> {
        let n: u64 = s.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()?;
        (n < self.keys).then_some(n)
    }

    async fn call<T>(&self, answer: impl FnOnce() -> T) -> Result<T, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.mode == Mode::Hang {
            std::future::pending::<()>().await;
        }
        if !self.latency.is_zero() {
            let started = Instant::now();
            self.delayer.sleep(self.latency).await;
            let took = started.elapsed();
            self.observed
                .lock()
                .expect("not poisoned")
                .record(took, Status::Ok);
        }
        match self.mode {
            Mode::Down => Err(BackendError::unavailable("loadgen: backend down")),
            _ => Ok(answer()),
        }
    }
}

#[async_trait]
impl LookupBackend for FakeBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.call(|| {
            self.index(address.as_str(), "alias", "@example.org")
                .map(|n| vec![format!("user{n}@example.org")])
                .unwrap_or_default()
        })
        .await
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.call(|| domain == "example.org" || self.index(domain, "d", ".example.org").is_some())
            .await
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.call(|| {
            self.index(address.as_str(), "user", "@example.org")
                .is_some()
        })
        .await
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.call(|| {
            self.index(address.as_str(), "user", "@example.org")
                .map(|_| vec![address.as_str().to_owned()])
                .unwrap_or_default()
        })
        .await
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn name(&self) -> &str {
        "loadgen"
    }
}

// ---------------------------------------------------------------------------
// Servers under test
// ---------------------------------------------------------------------------

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    backend: Option<Arc<FakeBackend>>,
}

impl Running {
    fn shutdown(self, rt: &tokio::runtime::Runtime) {
        self.stop.cancel();
        let _ =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), self.task).await });
    }
}

fn server_runtime(threads: &ThreadOpts) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads.server_threads {
        builder.worker_threads(n.max(1));
    }
    builder.thread_name("server").enable_all().build()
}

fn client_runtime(threads: &ThreadOpts) -> std::io::Result<tokio::runtime::Runtime> {
    if threads.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.client_threads)
            .thread_name("client")
            .enable_all()
            .build()
    }
}

/// The engine, bound on loopback, with `backend`.
async fn start_adapter(
    backend: Arc<FakeBackend>,
    listen: &str,
    lookup_timeout: Duration,
    max_connections: usize,
) -> Result<Running, BoxError> {
    // Defaults for an engine with a backend of its own.
    let mut config = Config::embedded();
    config.listeners.socketmap = ListenAddr::parse(listen)?;
    config.listeners.metrics = ListenAddr::parse("127.0.0.1:0")?;
    config.lookups.timeout = lookup_timeout;
    config.listeners.max_connections = config.listeners.max_connections.max(max_connections);
    let server = Server::bind(config, backend.clone(), Metrics::new()?).await?;
    let LocalAddr::Tcp(addr) = server.socketmap_addrs()[0].clone() else {
        return Err("the socketmap listener is not TCP".into());
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    Ok(Running {
        addr,
        stop,
        task,
        backend: Some(backend),
    })
}

/// The floor: the same runtime, framing code and write pattern as the engine's
/// connection handler, but every request is answered `OK 1` at once.
async fn start_floor(listen: &str) -> Result<Running, BoxError> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = token.cancelled() => break,
                r = listener.accept() => r,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            tracker.spawn(floor_connection(stream, token.clone()));
        }
        tracker.close();
        tracker.wait().await;
    });
    Ok(Running {
        addr,
        stop,
        task,
        backend: None,
    })
}

async fn floor_connection(mut stream: TcpStream, stop: CancellationToken) {
    let decoder = NetstringDecoder::new(16_384);
    let mut buf = BytesMut::with_capacity(1024);
    let mut out = Vec::with_capacity(256);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_request)) => {
                    out.clear();
                    encode_into(b"OK 1", &mut out);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        tokio::select! {
            () = stop.cancelled(), if buf.is_empty() => return,
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// How keys are chosen.
#[derive(Debug, Clone)]
enum Keys {
    /// Uniform over 0..range.
    Uniform { range: u64 },
    /// A fresh index for every request, from a shared counter.
    Fresh { next: Arc<AtomicU64> },
}

#[derive(Debug, Clone)]
struct Plan {
    addr: SocketAddr,
    map: MapChoice,
    pattern: KeyPattern,
    keys: Keys,
    measure_from: Instant,
    end: Instant,
    request_timeout: Duration,
}

const MAPS: [&str; 4] = ["mailbox", "alias", "domain", "senders"];

/// Writes the request payload `map key` for request number `seq` with key index `n`.
fn request_payload(out: &mut String, map: MapChoice, pattern: KeyPattern, seq: u64, n: u64) {
    use std::fmt::Write;
    out.clear();
    let map = match map {
        MapChoice::Mailbox => "mailbox",
        MapChoice::Alias => "alias",
        MapChoice::Domain => "domain",
        MapChoice::Senders => "senders",
        MapChoice::Mix => MAPS[(seq % 4) as usize],
    };
    let _ = match (pattern, map) {
        (KeyPattern::Indexed, "alias") => write!(out, "alias alias{n}@example.org"),
        (KeyPattern::Indexed, "domain") => write!(out, "domain d{n}.example.org"),
        (KeyPattern::Indexed, m) => write!(out, "{m} user{n}@example.org"),
        (KeyPattern::Demo, m) => {
            const DEMO: [(&str, &str); 4] = [
                ("mailbox", "user@example.org"),
                ("alias", "alias@example.org"),
                ("domain", "example.org"),
                ("senders", "user2@example.org"),
            ];
            let key = DEMO.iter().find(|(k, _)| *k == m).map_or("x", |(_, v)| v);
            write!(out, "{m} {key}")
        }
    };
}

/// xorshift64*: deterministic, per connection, no dependency.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Sends one request and waits for its reply; `Ok(None)` when the server
/// closed the connection instead.
async fn round_trip(conn: &mut Conn<TcpStream>, wire: &[u8]) -> Result<Option<Status>, ReadError> {
    match conn.exchange(wire).await {
        Ok(frame) => Ok(Some(Status::of(&frame))),
        Err(ReadError::Closed { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One persistent connection sending one request at a time until the plan ends.
async fn client_connection(plan: Arc<Plan>, id: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (id + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut payload = String::with_capacity(64);
    let mut wire = Vec::with_capacity(80);
    let mut seq = id;
    let mut stream: Option<Conn<TcpStream>> = None;
    while Instant::now() < plan.end {
        let conn = match stream.as_mut() {
            Some(s) => s,
            None => match Conn::tcp(plan.addr, Framing::Netstring).await {
                Ok(s) => stream.insert(s),
                Err(_) => {
                    stats.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let n = match &plan.keys {
            Keys::Uniform { range } => next_random(&mut rng) % (*range).max(1),
            Keys::Fresh { next } => next.fetch_add(1, Ordering::Relaxed),
        };
        request_payload(&mut payload, plan.map, plan.pattern, seq, n);
        seq += 1;
        wire.clear();
        netstring_into(payload.as_bytes(), &mut wire);
        let started = Instant::now();
        let result = tokio::time::timeout(plan.request_timeout, round_trip(conn, &wire)).await;
        let took = started.elapsed();
        match result {
            Ok(Ok(Some(status))) => {
                if started >= plan.measure_from && started + took <= plan.end {
                    stats.record(took, status);
                }
            }
            Ok(Ok(None)) => {
                stats.disconnects += 1;
                stream = None;
            }
            Ok(Err(_)) | Err(_) => {
                stats.errors += 1;
                stream = None;
            }
        }
    }
    stats
}

/// Runs `connections` clients against `plan.addr`; returns the merged statistics.
async fn run_clients(plan: Plan, connections: usize) -> Stats {
    let plan = Arc::new(plan);
    let mut set = tokio::task::JoinSet::new();
    for id in 0..connections {
        set.spawn(client_connection(plan.clone(), id as u64));
    }
    let mut total = Stats::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => total.merge(&s),
            Err(_) => total.errors += 1,
        }
    }
    total
}

fn load_report(
    label: String,
    load: &LoadOpts,
    connections: usize,
    stats: Stats,
    backend: Option<&FakeBackend>,
    calls_before: u64,
) -> Report {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "map".into(),
        format!("{:?}", load.map).to_lowercase().into(),
    );
    Report {
        label,
        connections,
        window: load.duration,
        stats,
        backend_calls: backend.map(|b| b.calls() - calls_before),
        notes: Vec::new(),
        extra,
        throughput: true,
    }
}

/// Loads `server` (already running) with `load` from the client runtime.
fn drive(
    client_rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    load: &LoadOpts,
    keys: Keys,
    connections: usize,
) -> Stats {
    let now = Instant::now();
    let plan = Plan {
        addr,
        map: load.map,
        pattern: load.key_pattern,
        keys,
        measure_from: now + load.warmup,
        end: now + load.warmup + load.duration,
        request_timeout: load.request_timeout,
    };
    client_rt.block_on(run_clients(plan, connections))
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

fn check_fd_limit(needed: usize, out: &Output) {
    if let Some(limit) = open_files_limit()
        && (limit as usize) < needed + 64
    {
        out.note(&format!(
            "warning: the open-files limit is {limit}, {needed} sockets are needed: run `ulimit -n 65536` first"
        ));
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

struct Ctx {
    server_rt: tokio::runtime::Runtime,
    client_rt: tokio::runtime::Runtime,
    out: Output,
}

fn start_adapter_on(
    ctx: &Ctx,
    backend: &BackendOpts,
    default_latency: Duration,
    max_connections: usize,
) -> Result<Running, BoxError> {
    let fake = Arc::new(FakeBackend::new(backend, default_latency));
    ctx.server_rt.block_on(start_adapter(
        fake,
        "127.0.0.1:0",
        backend.lookup_timeout,
        max_connections,
    ))
}

fn backend_note(b: &FakeBackend) -> String {
    let mode = match b.mode {
        Mode::Normal => "",
        Mode::Down => ", down",
        Mode::Hang => ", hanging",
    };
    format!("backend {}{mode}", fmt_dur(b.latency))
}

fn scenario_floor(ctx: &Ctx, load: &LoadOpts, keys: u64, label: &str) -> Result<Report, BoxError> {
    let conns = load.connections.unwrap_or(50);
    let server = ctx.server_rt.block_on(start_floor("127.0.0.1:0"))?;
    let range = load.key_range.unwrap_or(keys);
    let stats = drive(
        &ctx.client_rt,
        server.addr,
        load,
        Keys::Uniform { range },
        conns,
    );
    server.shutdown(&ctx.server_rt);
    let mut report = load_report(label.to_owned(), load, conns, stats, None, 0);
    report.notes.push("trivial netstring server".into());
    Ok(report)
}

fn scenario_adapter(
    ctx: &Ctx,
    load: &LoadOpts,
    backend: &BackendOpts,
    label: &str,
) -> Result<Report, BoxError> {
    let conns = load.connections.unwrap_or(50);
    let server = start_adapter_on(ctx, backend, Duration::ZERO, conns)?;
    let fake = server.backend.clone().expect("adapter has a backend");
    let range = load.key_range.unwrap_or(backend.keys);
    let stats = drive(
        &ctx.client_rt,
        server.addr,
        load,
        Keys::Uniform { range },
        conns,
    );
    server.shutdown(&ctx.server_rt);
    let mut report = load_report(label.to_owned(), load, conns, stats, Some(&fake), 0);
    report.notes.push(format!(
        "{}, {} keys of {range} exist",
        backend_note(&fake),
        backend.keys.min(range)
    ));
    report
        .notes
        .push("backend calls include warm-up".to_owned());
    Ok(report)
}

fn scenario_compare(ctx: &Ctx, load: &LoadOpts, backend: &BackendOpts) -> Result<(), BoxError> {
    // With --label L the rows are `floor (L)` and `adapter (L)`.
    let named = |what: &str| match &ctx.out.opts.label {
        Some(l) => format!("{what} ({l})"),
        None => what.to_owned(),
    };
    let floor = scenario_floor(ctx, load, backend.keys, &named("floor"))?;
    ctx.out.emit(&floor);
    let label = named("adapter");
    let mut adapter = scenario_adapter(ctx, load, backend, &label)?;
    let ratio = adapter.rate() / floor.rate().max(1e-9);
    let p99 = |r: &Report| fmt_dur(r.stats.quantile(0.99));
    adapter.notes.push(format!(
        "{:.0}% of floor throughput; p99 {} vs floor {}",
        ratio * 100.0,
        p99(&adapter),
        p99(&floor)
    ));
    adapter.extra.insert(
        "floor_ratio".into(),
        ((ratio * 1000.0).round() / 1000.0).into(),
    );
    adapter
        .extra
        .insert("floor_throughput_rps".into(), floor.rate().round().into());
    adapter
        .extra
        .insert("floor_p99_us".into(), us(floor.stats.quantile(0.99)).into());
    ctx.out.emit(&adapter);
    Ok(())
}

fn scenario_miss_overhead(
    ctx: &Ctx,
    load: &LoadOpts,
    backend: &BackendOpts,
) -> Result<Report, BoxError> {
    let conns = load.connections.unwrap_or(4);
    // Every index exists, so each fresh key is a positive answer the cache would keep.
    let opts = BackendOpts {
        keys: u64::MAX,
        ..backend.clone()
    };
    let server = start_adapter_on(ctx, &opts, Duration::from_millis(1), conns)?;
    let fake = server.backend.clone().expect("adapter has a backend");
    let stats = drive(
        &ctx.client_rt,
        server.addr,
        load,
        Keys::Fresh {
            next: Arc::new(AtomicU64::new(0)),
        },
        conns,
    );
    server.shutdown(&ctx.server_rt);
    let mut report = load_report(
        ctx.out.label("miss-overhead"),
        load,
        conns,
        stats,
        Some(&fake),
        0,
    );
    let p50 = report.stats.quantile(0.5);
    let observed = fake.observed().quantile(0.5);
    let signed_us = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e6;
    let over_nominal = signed_us(p50, fake.latency);
    let over_observed = signed_us(p50, observed);
    report.notes.push(format!(
        "{}, measured in backend p50 {}; p50 − L = {over_nominal:.0} µs, p50 − backend p50 = {over_observed:.0} µs",
        backend_note(&fake),
        fmt_dur(observed)
    ));
    report
        .extra
        .insert("backend_observed_p50_us".into(), us(observed).into());
    report
        .extra
        .insert("overhead_vs_nominal_us".into(), over_nominal.round().into());
    report.extra.insert(
        "overhead_vs_observed_us".into(),
        over_observed.round().into(),
    );
    Ok(report)
}

fn scenario_cold_key(
    ctx: &Ctx,
    concurrency: usize,
    rounds: u32,
    backend: &BackendOpts,
) -> Result<Report, BoxError> {
    check_fd_limit(2 * concurrency, &ctx.out);
    let server = start_adapter_on(ctx, backend, Duration::from_millis(50), concurrency)?;
    let fake = server.backend.clone().expect("adapter has a backend");
    let addr = server.addr;
    let result = ctx.client_rt.block_on(async {
        // Connect everything first and make sure the server has accepted each
        // connection: an unknown map is answered without asking the backend.
        let mut conns = Vec::with_capacity(concurrency);
        let ping = netstring(b"ping x");
        for _ in 0..concurrency {
            let mut s = Conn::tcp(addr, Framing::Netstring).await?;
            round_trip(&mut s, &ping).await?;
            conns.push(s);
        }
        let mut stats = Stats::default();
        let mut per_round = Vec::new();
        for round in 0..rounds {
            let before = fake.calls();
            let wire: Arc<[u8]> =
                netstring(format!("mailbox user{round}@example.org").as_bytes()).into();
            let gate = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
            let mut set = tokio::task::JoinSet::new();
            for mut s in conns.drain(..) {
                let (gate, wire) = (gate.clone(), wire.clone());
                set.spawn(async move {
                    gate.wait().await;
                    let started = Instant::now();
                    let r = round_trip(&mut s, &wire).await;
                    (s, r, started.elapsed())
                });
            }
            gate.wait().await;
            while let Some(joined) = set.join_next().await {
                let (s, r, took) = joined?;
                match r {
                    Ok(Some(status)) => stats.record(took, status),
                    Ok(None) => stats.disconnects += 1,
                    Err(_) => stats.errors += 1,
                }
                conns.push(s);
            }
            per_round.push(fake.calls() - before);
        }
        Ok::<_, BoxError>((stats, per_round))
    });
    server.shutdown(&ctx.server_rt);
    let (stats, per_round) = result?;
    let calls: u64 = per_round.iter().sum();
    let mut extra = serde_json::Map::new();
    extra.insert("backend_calls_per_round".into(), per_round.clone().into());
    Ok(Report {
        label: ctx.out.label("cold-key"),
        connections: concurrency,
        window: Duration::ZERO,
        stats,
        backend_calls: Some(calls),
        notes: vec![format!(
            "{concurrency} concurrent lookups of one cold key × {rounds} round(s), {}; calls per round {per_round:?} (1 = coalesced)",
            backend_note(&fake)
        )],
        extra,
        throughput: false,
    })
}

/// Opens `n` connections to `addr`, each doing one `probe` round trip.
async fn open_idle(
    addr: SocketAddr,
    n: usize,
    probe: &str,
    concurrency: usize,
) -> (Vec<Conn<TcpStream>>, Stats) {
    let opened = idle::open(
        addr,
        n,
        &netstring(probe.as_bytes()),
        concurrency,
        Duration::from_secs(60),
    )
    .await;
    let mut conns = Vec::with_capacity(n);
    let mut stats = Stats::default();
    for o in opened {
        match o {
            Opened::Answered(conn, reply, took) => {
                stats.record(took, Status::of(&reply));
                conns.push(conn);
            }
            Opened::Closed => stats.disconnects += 1,
            Opened::Failed(_) => stats.errors += 1,
        }
    }
    (conns, stats)
}

struct SpawnedServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `loadgen serve` as a child process and reads its address.
fn spawn_server(max_connections: usize) -> Result<SpawnedServer, BoxError> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--target",
            "adapter",
            "--max-connections",
            &max_connections.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected output from `loadgen serve`: {line:?}"))?
        .parse()?;
    Ok(SpawnedServer { child, addr })
}

#[allow(clippy::too_many_arguments)]
fn scenario_idle(
    ctx: &Ctx,
    connections: usize,
    addr: Option<SocketAddr>,
    server_pid: Option<u32>,
    in_process: bool,
    probe: &str,
    connect_concurrency: usize,
    settle: Duration,
) -> Result<Report, BoxError> {
    let fds = if in_process {
        2 * connections
    } else {
        connections
    };
    check_fd_limit(fds, &ctx.out);
    let mut spawned = None;
    let mut running = None;
    let (addr, pid, what) = match (addr, in_process) {
        (Some(a), _) => (a, server_pid, "external server".to_owned()),
        (None, true) => {
            let opts = BackendOpts {
                keys: 1000,
                backend_latency: None,
                backend_down: false,
                backend_hang: false,
                lookup_timeout: Duration::from_secs(3),
            };
            let r = start_adapter_on(ctx, &opts, Duration::ZERO, connections + 100)?;
            let a = r.addr;
            running = Some(r);
            (
                a,
                None,
                "in-process adapter; RSS includes the client side".to_owned(),
            )
        }
        (None, false) => {
            let s = spawn_server(connections + 100)?;
            let r = (
                s.addr,
                Some(s.child.id()),
                "`loadgen serve` child process".to_owned(),
            );
            spawned = Some(s);
            // Let the child finish starting before the baseline.
            std::thread::sleep(Duration::from_millis(200));
            r
        }
    };
    let before = rss_kib(pid);
    let client_before = rss_kib(None);
    let (mut conns, stats) =
        ctx.client_rt
            .block_on(open_idle(addr, connections, probe, connect_concurrency));
    std::thread::sleep(settle);
    let closed = ctx.client_rt.block_on(idle::closed_by_server(&mut conns));
    let after = rss_kib(pid);
    let client_after = rss_kib(None);
    let held = conns.len() - closed;
    drop(conns);
    if let Some(r) = running {
        r.shutdown(&ctx.server_rt);
    }
    drop(spawned);

    let mut notes = vec![format!("{held} held ({what})")];
    let mut extra = serde_json::Map::new();
    extra.insert("held".into(), held.into());
    if closed > 0 {
        notes.push(format!("{closed} closed by the server"));
    }
    match (before, after) {
        (Some(b), Some(a)) => {
            let delta = a.saturating_sub(b);
            let per_conn = delta as f64 * 1024.0 / held.max(1) as f64;
            notes.push(format!(
                "server RSS {:.1} → {:.1} MiB (+{:.1} MiB, {:.1} KiB/conn)",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                delta as f64 / 1024.0,
                per_conn / 1024.0
            ));
            extra.insert("server_rss_before_kib".into(), b.into());
            extra.insert("server_rss_after_kib".into(), a.into());
            extra.insert("server_bytes_per_conn".into(), per_conn.round().into());
        }
        _ if pid.is_none() && !in_process => {
            notes.push("server RSS unknown (pass --server-pid)".into());
        }
        _ => {}
    }
    if let (Some(b), Some(a)) = (client_before, client_after)
        && !in_process
    {
        notes.push(format!(
            "loadgen RSS +{:.1} MiB",
            a.saturating_sub(b) as f64 / 1024.0
        ));
    }
    Ok(Report {
        label: ctx.out.label("idle"),
        connections,
        window: Duration::ZERO,
        stats,
        backend_calls: None,
        notes,
        extra,
        throughput: false,
    })
}

fn serve(
    ctx: &Ctx,
    target: ServeTarget,
    listen: &str,
    max_connections: usize,
    backend: &BackendOpts,
) -> Result<(), BoxError> {
    let running = match target {
        ServeTarget::Floor => ctx.server_rt.block_on(start_floor(listen))?,
        ServeTarget::Adapter => {
            let fake = Arc::new(FakeBackend::new(backend, Duration::ZERO));
            ctx.server_rt.block_on(start_adapter(
                fake,
                listen,
                backend.lookup_timeout,
                max_connections,
            ))?
        }
    };
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", running.addr)?;
        stdout.flush()?;
    }
    ctx.server_rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Some(b) = &running.backend {
        eprintln!("backend calls: {}", b.calls());
    }
    running.shutdown(&ctx.server_rt);
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let ctx = Ctx {
        server_rt: server_runtime(&cli.threads)?,
        client_rt: client_runtime(&cli.threads)?,
        out: Output {
            opts: cli.out.clone(),
        },
    };
    match &cli.command {
        Command::Remote { addr, load } => {
            let conns = load.connections.unwrap_or(50);
            let range = load.key_range.unwrap_or(1000);
            let stats = drive(&ctx.client_rt, *addr, load, Keys::Uniform { range }, conns);
            let report = load_report(
                ctx.out.label(&addr.to_string()),
                load,
                conns,
                stats,
                None,
                0,
            );
            ctx.out.emit(&report);
        }
        Command::Floor { load } => {
            let label = ctx.out.label("floor");
            ctx.out.emit(&scenario_floor(&ctx, load, 1000, &label)?);
        }
        Command::Adapter { load, backend } => {
            let label = ctx.out.label("adapter");
            ctx.out
                .emit(&scenario_adapter(&ctx, load, backend, &label)?);
        }
        Command::Compare { load, backend } => scenario_compare(&ctx, load, backend)?,
        Command::ColdKey {
            concurrency,
            rounds,
            backend,
        } => ctx
            .out
            .emit(&scenario_cold_key(&ctx, *concurrency, *rounds, backend)?),
        Command::MissOverhead { load, backend } => {
            ctx.out.emit(&scenario_miss_overhead(&ctx, load, backend)?)
        }
        Command::Idle {
            connections,
            addr,
            server_pid,
            in_process,
            probe,
            connect_concurrency,
            settle,
        } => ctx.out.emit(&scenario_idle(
            &ctx,
            *connections,
            *addr,
            *server_pid,
            *in_process,
            probe,
            *connect_concurrency,
            *settle,
        )?),
        Command::Serve {
            target,
            listen,
            max_connections,
            backend,
        } => serve(&ctx, *target, listen, *max_connections, backend)?,
        Command::MarkdownHeader => println!("{MARKDOWN_HEADER}"),
    }
    let Ctx {
        server_rt,
        client_rt,
        ..
    } = ctx;
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut stats = Stats::default();
        for us in 1..=1000u64 {
            stats.record(Duration::from_micros(us), Status::Ok);
        }
        let close = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() <= us * 0.002;
        assert_eq!(stats.count(), 1000);
        assert!(
            close(stats.quantile(0.5), 500.0),
            "{:?}",
            stats.quantile(0.5)
        );
        assert!(
            close(stats.quantile(0.99), 990.0),
            "{:?}",
            stats.quantile(0.99)
        );
        assert!(
            close(stats.quantile(0.999), 999.0),
            "{:?}",
            stats.quantile(0.999)
        );
        assert!(close(stats.max(), 1000.0));
        assert_eq!(Stats::default().quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn merging_adds_counts_and_samples() {
        let mut a = Stats::default();
        a.record(Duration::from_millis(1), Status::Ok);
        a.errors = 2;
        let mut b = Stats::default();
        b.record(Duration::from_millis(3), Status::Temp);
        b.record(Duration::from_millis(5), Status::NotFound);
        b.disconnects = 1;
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.replies, [1, 1, 1, 0, 0]);
        assert_eq!((a.errors, a.disconnects), (2, 1));
        assert!(a.max() >= Duration::from_millis(5));
        assert_eq!(a.replies_text(), "OK 1, NOTFOUND 1, TEMP 1");
    }

    #[test]
    fn status_words_are_classified() {
        assert_eq!(Status::of(b"OK 1"), Status::Ok);
        assert_eq!(Status::of(b"OK"), Status::Ok);
        assert_eq!(Status::of(b"NOTFOUND"), Status::NotFound);
        assert_eq!(Status::of(b"TEMP Error fetching mailbox"), Status::Temp);
        assert_eq!(Status::of(b"PERM Unknown map name"), Status::Perm);
        assert_eq!(Status::of(b"OKAY"), Status::Other);
        assert_eq!(Status::of(b""), Status::Other);
    }

    #[test]
    fn requests_follow_the_fake_backend_table() {
        let mut s = String::new();
        request_payload(&mut s, MapChoice::Mix, KeyPattern::Indexed, 1, 7);
        assert_eq!(s, "alias alias7@example.org");
        request_payload(&mut s, MapChoice::Mix, KeyPattern::Indexed, 2, 7);
        assert_eq!(s, "domain d7.example.org");
        request_payload(&mut s, MapChoice::Senders, KeyPattern::Demo, 0, 7);
        assert_eq!(s, "senders user2@example.org");
        let backend = FakeBackend::new(
            &BackendOpts {
                keys: 10,
                backend_latency: None,
                backend_down: false,
                backend_hang: false,
                lookup_timeout: Duration::from_secs(1),
            },
            Duration::ZERO,
        );
        assert_eq!(
            backend.index("user9@example.org", "user", "@example.org"),
            Some(9)
        );
        assert_eq!(
            backend.index("user10@example.org", "user", "@example.org"),
            None
        );
    }

    #[test]
    fn markdown_row_has_every_column() {
        let mut stats = Stats::default();
        stats.record(Duration::from_micros(250), Status::Ok);
        let report = Report {
            label: "x".into(),
            connections: 1,
            window: Duration::from_secs(1),
            stats,
            backend_calls: Some(1),
            notes: vec!["n".into()],
            extra: serde_json::Map::new(),
            throughput: true,
        };
        let header_cols = MARKDOWN_HEADER.lines().next().unwrap().matches('|').count();
        assert_eq!(report.markdown().matches('|').count(), header_cols);
        assert!(report.human().contains("p50 250 µs"));
        assert_eq!(report.json()["replies"]["OK"], 1);
    }
}
