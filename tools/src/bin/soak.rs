//! Soak test: a sustained, mixed load against an adapter process that is already
//! running, sampled over time, as robustness evidence: memory and file descriptors
//! stay flat, latency stays flat, and no request goes unanswered or gets a wrong
//! answer.
//!
//! ```text
//! cargo build --release -p postfix-adapter-tools --bin soak
//! target/release/soak \
//!     --socketmap 127.0.0.1:10001 --policy 127.0.0.1:10003 --sasl 127.0.0.1:10004 \
//!     --pid "$(pidof userli-postfix-adapter)" --duration 10m --out target/soak/soak.csv
//! ```
//!
//! `scripts/soak.sh` does all of it: builds, starts the adapter on the demo fixture,
//! runs this, plots the CSV with `scripts/plot-soak.py` and stops the adapter.
//!
//! # Load
//!
//! Each service gets its own persistent connections (`--connections-per-service`,
//! or `--socketmap-connections` etc.), each with one request in flight at a time,
//! as Postfix uses them. Requests are paced to a target rate per service
//! (`--socketmap-rate` 2000/s, `--policy-rate` 200/s, `--sasl-rate` 20/s; `0` = as
//! fast as the adapter answers) so the soak measures a steady state rather than a
//! saturated CPU; the rate is split evenly over the connections.
//!
//! - **socketmap**: `map key` netstrings over the demo fixture
//!   (`examples/fixtures/demo.toml`): existing and missing mailboxes, aliases,
//!   domains and senders, spelled with upper case and `+tags`; one request in
//!   [`FRESH_EVERY`] uses a never-seen key (a dictionary attack on `RCPT TO`), so
//!   the negative cache keeps filling and expiring.
//! - **policy**: `END-OF-MESSAGE` requests with the `sasl_username` of demo users
//!   (none has a restrictive quota), mail without a login, and never-seen logins.
//!   Every answer must be `DUNNO`; `REJECT`/`DEFER` are counted apart.
//! - **sasl**: the Dovecot handshake, then repeated `AUTH PLAIN` with `resp=`:
//!   mostly correct passwords (argon2id, bcrypt and SHA512-crypt hashes), some wrong
//!   ones, a spam-role user, a deleted user and never-seen logins. The fixture
//!   backend verifies a hash on its blocking pool in about 25 ms of CPU (argon2id
//!   with 19 MiB of memory; bcrypt cost 10 up to about 100 ms), so one connection
//!   manages some 40 logins/s per core: hence the low default rate, about half a
//!   core. Run the adapter with `SASL_FAILURE_DELAY=0`, or wrong passwords are
//!   answered after a growing delay.
//!
//! Every reply is checked against what the demo fixture must answer, which assumes
//! the adapter runs with `POSTFIX_RECIPIENT_DELIMITER=+` (the `+tag` keys).
//!
//! # Output
//!
//! Every `--sample-interval` one CSV row (and a progress line on stderr): the
//! adapter's RSS (`VmRSS` of `/proc/PID/status`), threads and open file descriptors
//! (`/proc/PID/fd`), then per service the requests answered in the interval, their
//! p50/p99/max latency in µs (write of the request to the complete reply) and the
//! errors. The first row (`elapsed_s` 0) is taken before the load starts, the last
//! one at its end, still under load; the summary adds the adapter's descriptors
//! and threads half a second after the clients disconnected (back at the
//! baseline, or connections leak).
//!
//! Errors are: a failed connect or handshake, a connection closed or broken before
//! the reply, no reply within `--reply-timeout` (5 s), and an unexpected reply (a
//! wrong answer, `TEMP`/`PERM` — the fixture backend is never down — or a
//! malformed frame). After an error the connection is replaced, after a short
//! back-off. The first few errors per service are printed to stderr as they happen.
//!
//! At the end a summary goes to stderr; the exit status is 1 if there was any
//! error or policy rejection, if the adapter process went away, or if a service
//! answered nothing; 2 for bad arguments or an unwritable CSV.
//!
//! Latency is measured from the actual send, so a stalled adapter shows as fewer
//! requests (and, past 5 s, timeouts) rather than as queued-up latency.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use hdrhistogram::Histogram;
use postfix_adapter_clients::idle::{self, Opened};
use postfix_adapter_clients::process::ProcSample;
use postfix_adapter_clients::request::netstring_into;
use postfix_adapter_clients::sasl::SaslClient;
use postfix_adapter_clients::{self as clients, Framing, ReadError};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use userli_postfix_adapter::config::parse_go_duration;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[derive(Debug, Parser)]
#[command(about = "Soak test: sustained mixed load against a running userli-postfix-adapter")]
struct Cli {
    /// The adapter's socketmap address (TCP); omit to skip socketmap load.
    #[arg(long)]
    socketmap: Option<SocketAddr>,
    /// The adapter's policy address (TCP); omit to skip policy load.
    #[arg(long)]
    policy: Option<SocketAddr>,
    /// The adapter's SASL address (TCP); omit to skip SASL load.
    #[arg(long)]
    sasl: Option<SocketAddr>,
    /// PID of the adapter: RSS, threads and file descriptors are sampled from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// How long to load, Go syntax (`90s`, `10m`, `1h`).
    #[arg(long, default_value = "10m", value_parser = duration)]
    duration: Duration,
    /// Time between two CSV rows.
    #[arg(long, default_value = "5s", value_parser = duration)]
    sample_interval: Duration,
    /// Persistent connections per service, unless overridden below.
    #[arg(long, default_value_t = 8)]
    connections_per_service: usize,
    /// Socketmap connections (default: --connections-per-service).
    #[arg(long)]
    socketmap_connections: Option<usize>,
    /// Policy connections (default: --connections-per-service).
    #[arg(long)]
    policy_connections: Option<usize>,
    /// SASL connections (default: --connections-per-service).
    #[arg(long)]
    sasl_connections: Option<usize>,
    /// Target socketmap requests per second over all its connections (0: unpaced).
    #[arg(long, default_value_t = 2000.0)]
    socketmap_rate: f64,
    /// Target policy requests per second (0: unpaced).
    #[arg(long, default_value_t = 200.0)]
    policy_rate: f64,
    /// Target SASL AUTH requests per second (0: unpaced; each hashes a password).
    #[arg(long, default_value_t = 20.0)]
    sasl_rate: f64,
    /// A reply later than this is an error; the connection is then replaced.
    #[arg(long, default_value = "5s", value_parser = duration)]
    reply_timeout: Duration,
    /// The CSV file (parent directories are created).
    #[arg(long, default_value = "target/soak/soak.csv")]
    out: PathBuf,
    /// Further socketmap connections opened before the load, one lookup each, then
    /// held idle through the soak (as Postfix keeps its connections) and asked once
    /// more at the end: the adapter must keep serving all of them.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Workload: requests and the answers the demo fixture must give
// ---------------------------------------------------------------------------

/// The three protocols the adapter serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Socketmap,
    Policy,
    Sasl,
}

impl Service {
    const ALL: [Self; 3] = [Self::Socketmap, Self::Policy, Self::Sasl];

    /// The CSV column prefix and the name in reports.
    fn name(self) -> &'static str {
        match self {
            Self::Socketmap => "socketmap",
            Self::Policy => "policy",
            Self::Sasl => "sasl",
        }
    }
}

/// One request in this many uses a never-seen key or login, so the adapter's
/// caches and failure counters keep taking new entries (and must keep them bounded).
const FRESH_EVERY: u64 = 8;

/// Socketmap requests over the demo fixture and the exact reply payload each must
/// get (with `POSTFIX_RECIPIENT_DELIMITER=+`). The mix follows what Postfix asks:
/// mostly existing recipients, some unknown ones, alias probes with bare domains.
const SOCKETMAP_TABLE: &[(&str, &str)] = &[
    ("domain example.org", "OK 1"),
    ("domain EXAMPLE.COM", "OK 1"),
    ("domain example.net", "NOTFOUND"),
    ("mailbox user@example.org", "OK 1"),
    ("mailbox User+soak@Example.ORG", "OK 1"),
    ("mailbox user2@example.org", "OK 1"),
    ("mailbox ADMIN@example.org", "OK 1"),
    ("mailbox domain@example.com", "OK 1"),
    // A spam-role user still receives mail.
    ("mailbox spam@example.org", "OK 1"),
    ("mailbox deleted@example.org", "NOTFOUND"),
    ("mailbox alias@example.org", "NOTFOUND"),
    ("mailbox nobody@example.org", "NOTFOUND"),
    ("mailbox user@example.net", "NOTFOUND"),
    ("alias alias@example.org", "OK user2@example.org"),
    ("alias Alias2+list@EXAMPLE.org", "OK user2@example.org"),
    ("alias user@example.org", "NOTFOUND"),
    // Postfix probes virtual_alias_maps with the bare domain too.
    ("alias example.org", "NOTFOUND"),
    ("alias nobody@example.org", "NOTFOUND"),
    ("senders user@example.org", "OK user@example.org"),
    ("senders USER+tag@example.org", "OK user@example.org"),
    ("senders alias@example.org", "OK user2@example.org"),
    ("senders domain@example.com", "OK domain@example.com"),
    ("senders deleted@example.org", "NOTFOUND"),
    ("senders nobody@example.org", "NOTFOUND"),
];

/// `sasl_username` values of policy requests; empty is mail without SMTP AUTH
/// (inbound mail), which is never limited. None of the demo users has a
/// restrictive quota, so every answer must be `DUNNO`.
const POLICY_LOGINS: &[&str] = &[
    "user@example.org",
    "User+soak@Example.ORG",
    "user2@example.org",
    "",
    "admin@example.org",
    "support@example.org",
    "domain@example.com",
    "alias@example.org",
];

/// SASL logins, passwords and the `user=` of the expected `OK` (`None`: `FAIL`).
/// Every demo password is `password`; the hash schemes differ (see the fixture).
const SASL_TABLE: &[(&str, &str, Option<&str>)] = &[
    ("user@example.org", "password", Some("user@example.org")),
    (
        "User+soak@Example.ORG",
        "password",
        Some("user@example.org"),
    ),
    ("admin@example.org", "password", Some("admin@example.org")),
    ("user2@example.org", "password", Some("user2@example.org")),
    ("user@example.org", "wrong password", None),
    // bcrypt
    (
        "support@example.org",
        "password",
        Some("support@example.org"),
    ),
    // SHA512-crypt
    (
        "suspicious@example.org",
        "password",
        Some("suspicious@example.org"),
    ),
    ("domain@example.com", "password", Some("domain@example.com")),
    // Right password, but the spam role may not authenticate.
    ("spam@example.org", "password", None),
    (
        "inactive@example.org",
        "password",
        Some("inactive@example.org"),
    ),
    ("deleted@example.org", "password", None),
    ("admin@example.org", "Password", None),
];

/// What a request must be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A socketmap reply payload, exactly.
    Payload(String),
    /// `action=DUNNO` (`REJECT`/`DEFER` are counted as rejections).
    Dunno,
    /// `OK <id> user=<user>`.
    AuthOk { id: u64, user: String },
    /// `FAIL <id> ...`.
    AuthFail { id: u64 },
}

/// How a reply compares with the expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Expected,
    /// A policy `REJECT` or `DEFER`: an answer, but not one this load may get.
    Rejected,
    Unexpected,
}

/// Compares a reply (payload for socketmap, whole reply otherwise) with `expect`.
fn check(expect: &Expect, reply: &str) -> Verdict {
    let ok = match expect {
        Expect::Payload(want) => reply == want,
        Expect::Dunno => {
            if reply.starts_with("action=REJECT") || reply.starts_with("action=DEFER") {
                return Verdict::Rejected;
            }
            reply == "action=DUNNO\n\n"
        }
        Expect::AuthOk { id, user } => reply == format!("OK\t{id}\tuser={user}\n"),
        Expect::AuthFail { id } => reply.starts_with(&format!("FAIL\t{id}\t")),
    };
    if ok {
        Verdict::Expected
    } else {
        Verdict::Unexpected
    }
}

/// The request stream of one connection.
#[derive(Debug)]
struct Workload {
    service: Service,
    /// Requests made on this connection so far (also the SASL request id).
    n: u64,
    /// Spreads the connections over the tables and the client addresses.
    conn: usize,
    /// Shared counter for never-seen keys; with the process id, keys are fresh
    /// even against an adapter that already served an earlier soak.
    fresh: Arc<AtomicU64>,
    run: u32,
}

impl Workload {
    fn new(service: Service, conn: usize, fresh: Arc<AtomicU64>) -> Self {
        Self {
            service,
            n: 0,
            conn,
            fresh,
            run: std::process::id(),
        }
    }

    /// Writes the next request into `out`; returns what it must be answered with
    /// and a description for error reports (never a password).
    fn next(&mut self, out: &mut Vec<u8>) -> (Expect, String) {
        out.clear();
        self.n += 1;
        let n = self.n;
        let turn = n + self.conn as u64;
        let fresh = turn
            .is_multiple_of(FRESH_EVERY)
            .then(|| self.fresh.fetch_add(1, Ordering::Relaxed));
        match self.service {
            Service::Socketmap => {
                let (payload, want) = match fresh {
                    Some(k) => (fresh_socketmap_request(self.run, k), "NOTFOUND"),
                    None => {
                        let (request, want) =
                            SOCKETMAP_TABLE[turn as usize % SOCKETMAP_TABLE.len()];
                        (request.to_owned(), want)
                    }
                };
                netstring_into(payload.as_bytes(), out);
                (Expect::Payload(want.to_owned()), payload)
            }
            Service::Policy => {
                let login = match fresh {
                    Some(k) => format!("soak-{}-{k}@example.net", self.run),
                    None => POLICY_LOGINS[turn as usize % POLICY_LOGINS.len()].to_owned(),
                };
                let method = if login.is_empty() { "" } else { "plain" };
                let sender = if login.is_empty() {
                    "someone@example.net"
                } else {
                    &login
                };
                // The attributes Postfix sends at END-OF-MESSAGE (abridged).
                let _ = write!(
                    Buf(out),
                    "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n\
                     protocol_name=ESMTP\nclient_address=192.0.2.{c}\nclient_name=unknown\n\
                     reverse_client_name=unknown\nhelo_name=soak{c}.example.net\n\
                     sender={sender}\nrecipient=\nrecipient_count=1\nqueue_id=SOAK{n:X}\n\
                     instance={c}.{n}\nsize=2048\nsasl_method={method}\nsasl_username={login}\n\
                     sasl_sender=\nccert_subject=\nencryption_protocol=TLSv1.3\n\n",
                    c = self.conn % 250 + 1,
                );
                (Expect::Dunno, format!("sasl_username={login}"))
            }
            Service::Sasl => {
                let (login, password, user) = match fresh {
                    Some(k) => (
                        format!("soak-{}-{k}@example.org", self.run),
                        "password",
                        None,
                    ),
                    None => {
                        let (login, password, user) = SASL_TABLE[turn as usize % SASL_TABLE.len()];
                        (login.to_owned(), password, user)
                    }
                };
                let resp = STANDARD.encode(format!("\0{login}\0{password}"));
                // As Postfix's xsasl_dovecot_server sends it.
                let _ = writeln!(
                    Buf(out),
                    "AUTH\t{n}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.{c}\tsecured\tresp={resp}",
                    c = self.conn % 250 + 1,
                );
                let expect = match user {
                    Some(user) => Expect::AuthOk {
                        id: n,
                        user: user.to_owned(),
                    },
                    None => Expect::AuthFail { id: n },
                };
                (expect, format!("AUTH PLAIN {login}"))
            }
        }
    }
}

/// A never-seen key, rotating over the maps; always `NOTFOUND`.
fn fresh_socketmap_request(run: u32, k: u64) -> String {
    match k % 4 {
        0 => format!("mailbox ghost-{run}-{k}@example.org"),
        1 => format!("alias Ghost-{run}-{k}+tag@Example.org"),
        2 => format!("senders ghost-{run}-{k}@example.com"),
        _ => format!("domain ghost-{run}-{k}.example.net"),
    }
}

/// `fmt::Write` into a byte buffer, so requests are formatted without a detour
/// through a `String`.
struct Buf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// Why a request got no usable reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    /// Connect or handshake failed.
    Connect,
    /// The connection closed or broke before the reply.
    Closed,
    /// No reply within `--reply-timeout`.
    Timeout,
    /// A wrong answer or a malformed reply.
    Unexpected,
}

impl ErrorKind {
    const ALL: [Self; 4] = [Self::Connect, Self::Closed, Self::Timeout, Self::Unexpected];

    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Unexpected => "unexpected",
        }
    }
}

/// A failed exchange: the kind and a description.
type Failure = (ErrorKind, String);

/// One persistent connection: the shared client with the soak's failure kinds.
struct Conn(clients::Conn<TcpStream>);

impl Conn {
    /// Connects and, for SASL, does the Dovecot handshake, all within `limit`.
    async fn open(service: Service, addr: SocketAddr, limit: Duration) -> Result<Self, Failure> {
        let connect = async {
            let framing = match service {
                Service::Socketmap => Framing::Netstring,
                Service::Policy => Framing::Block,
                Service::Sasl => Framing::Line,
            };
            let conn = clients::Conn::tcp(addr, framing)
                .await
                .map_err(|e| (ErrorKind::Connect, format!("connect {addr}: {e}")))?;
            if service != Service::Sasl {
                return Ok(Self(conn));
            }
            let sasl = SaslClient::handshake(conn)
                .await
                .map_err(|e| (ErrorKind::Connect, e.to_string()))?;
            if !sasl.plain_offered() {
                return Err((ErrorKind::Connect, "handshake offers no PLAIN".into()));
            }
            Ok(Self(sasl.into_conn()))
        };
        tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| Err((ErrorKind::Connect, "connect/handshake timed out".into())))
    }

    /// Sends `request` and returns the reply (the netstring payload for socketmap).
    async fn exchange(&mut self, request: &[u8]) -> Result<String, Failure> {
        match self.0.exchange(request).await {
            Ok(frame) => Ok(String::from_utf8_lossy(&frame).into_owned()),
            Err(e @ (ReadError::Malformed(_) | ReadError::TooLong)) => {
                Err((ErrorKind::Unexpected, e.to_string()))
            }
            Err(e) => Err((ErrorKind::Closed, e.to_string())),
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Errors printed as they happen, per service; the rest are only counted.
const ERRORS_PRINTED: u64 = 10;

/// Latencies (µs) up to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one service did in an interval (or the whole run).
#[derive(Debug, Clone)]
struct Window {
    /// Latencies of answered requests, µs.
    latency: Histogram<u64>,
    errors: [u64; 4],
    rejects: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            latency: histogram(),
            errors: [0; 4],
            rejects: 0,
        }
    }
}

impl Window {
    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn merge(&mut self, other: &Self) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.rejects += other.rejects;
    }

    /// `q` quantile in µs, `None` without samples.
    fn quantile(&self, q: f64) -> Option<u64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q))
    }

    fn max(&self) -> Option<u64> {
        (!self.latency.is_empty()).then(|| self.latency.max())
    }
}

/// A service's current interval, shared by its connections and the sampler. A
/// plain mutex: it is held for a histogram update, never across an await.
#[derive(Debug)]
struct ServiceStats {
    service: Service,
    started: Instant,
    window: Mutex<Window>,
    printed: AtomicU64,
}

impl ServiceStats {
    fn new(service: Service, started: Instant) -> Self {
        Self {
            service,
            started,
            window: Mutex::new(Window::default()),
            printed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answered(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.lock().latency.saturating_record(us.max(1));
    }

    fn reject(&self, what: &str, reply: &str) {
        self.lock().rejects += 1;
        self.report("rejected", what, reply);
    }

    fn error(&self, kind: ErrorKind, what: &str, why: &str) {
        self.lock().errors[kind as usize] += 1;
        self.report(kind.name(), what, why);
    }

    /// Prints the first few problems at once, so a long soak can be diagnosed
    /// while it runs.
    fn report(&self, kind: &str, what: &str, detail: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < ERRORS_PRINTED {
            eprintln!(
                "soak: [{:.1}s] {} {kind}: {what}: {}",
                self.started.elapsed().as_secs_f64(),
                self.service.name(),
                detail.escape_debug()
            );
        } else if n == ERRORS_PRINTED {
            eprintln!(
                "soak: {}: further errors are only counted",
                self.service.name()
            );
        }
    }

    /// Takes the interval's numbers and starts a new interval.
    fn take(&self) -> Window {
        std::mem::take(&mut *self.lock())
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// Back-off before reconnecting after an error, doubling up to the maximum; keeps
/// a dead adapter from turning the soak into a connect storm.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What one client connection needs.
struct ClientSpec {
    service: Service,
    addr: SocketAddr,
    index: usize,
    /// Time between two requests, `None` to send back to back.
    period: Option<Duration>,
    /// When the first request is due; staggered so connections don't send in bursts.
    first: tokio::time::Instant,
    reply_timeout: Duration,
    stats: Arc<ServiceStats>,
    fresh: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// One persistent connection sending one request at a time until `stop`; a
/// request in flight at `stop` still completes (within the reply timeout) so it is
/// counted.
async fn client(spec: ClientSpec) {
    let ClientSpec {
        service,
        addr,
        index,
        period,
        first,
        reply_timeout,
        stats,
        fresh,
        stop,
    } = spec;
    let mut workload = Workload::new(service, index, fresh);
    let mut ticker = period.map(|p| {
        let mut t = tokio::time::interval_at(first, p);
        // After a slow reply, continue at the set pace rather than catching up in a
        // burst: the soak is about a steady load.
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut conn: Option<Conn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut request = Vec::with_capacity(1024);
    loop {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = t.tick() => {}
            }
        } else if stop.is_cancelled() {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(service, addr, reply_timeout).await {
                Ok(c) => conn.insert(c),
                Err((kind, why)) => {
                    stats.error(kind, &addr.to_string(), &why);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let (expect, what) = workload.next(&mut request);
        let started = Instant::now();
        let result = tokio::time::timeout(reply_timeout, c.exchange(&request)).await;
        let latency = started.elapsed();
        let failure = match result {
            Err(_) => Some((
                ErrorKind::Timeout,
                format!("no reply within {reply_timeout:?}"),
            )),
            Ok(Err(failure)) => Some(failure),
            Ok(Ok(reply)) => {
                stats.answered(latency);
                match check(&expect, &reply) {
                    Verdict::Expected => None,
                    Verdict::Rejected => {
                        stats.reject(&what, &reply);
                        None
                    }
                    Verdict::Unexpected => Some((
                        ErrorKind::Unexpected,
                        format!("got {reply:?}, want {expect:?}"),
                    )),
                }
            }
        };
        match failure {
            None => backoff = BACKOFF_MIN,
            Some((kind, why)) => {
                stats.error(kind, &what, &why);
                // The stream may be out of step (a late reply would answer the next
                // request): start over on a new connection.
                conn = None;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Process sampling
// ---------------------------------------------------------------------------

/// The adapter's resources now; nothing when no `--pid` was given.
fn sample_proc(pid: Option<u32>) -> ProcSample {
    pid.map(|p| ProcSample::of(Some(p))).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// CSV and reports
// ---------------------------------------------------------------------------

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn csv_header(services: &[Service]) -> String {
    let mut h = String::from("elapsed_s,rss_kib,fds,threads");
    for s in services {
        let n = s.name();
        let _ = write!(
            h,
            ",{n}_requests,{n}_p50_us,{n}_p99_us,{n}_max_us,{n}_errors"
        );
        if *s == Service::Policy {
            h.push_str(",policy_rejects");
        }
    }
    h
}

fn csv_row(elapsed: Duration, proc: ProcSample, windows: &[(Service, Window)]) -> String {
    let mut row = format!(
        "{:.1},{},{},{}",
        elapsed.as_secs_f64(),
        opt(proc.rss_kib),
        opt(proc.fds),
        opt(proc.threads)
    );
    for (s, w) in windows {
        let _ = write!(
            row,
            ",{},{},{},{},{}",
            w.latency.len(),
            opt(w.quantile(0.5)),
            opt(w.quantile(0.99)),
            opt(w.max()),
            w.errors()
        );
        if *s == Service::Policy {
            let _ = write!(row, ",{}", w.rejects);
        }
    }
    row
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// The one-line progress report of a sample.
fn progress(elapsed: Duration, proc: ProcSample, windows: &[(Service, Window)]) -> String {
    let mut parts = Vec::new();
    if proc.rss_kib.is_some() {
        parts.push(format!(
            "rss {}, {} fds, {} threads",
            mib(proc.rss_kib),
            opt(proc.fds),
            opt(proc.threads)
        ));
    }
    for (s, w) in windows {
        let mut part = format!(
            "{} {} p99 {}",
            s.name(),
            w.latency.len(),
            fmt_us(w.quantile(0.99))
        );
        let problems = w.errors() + w.rejects;
        if problems > 0 {
            let _ = write!(part, " ERRORS {problems}");
        }
        parts.push(part);
    }
    format!(
        "soak: [{:>6.0}s] {}",
        elapsed.as_secs_f64(),
        parts.join(" | ")
    )
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread for all clients: a few thousand requests per second need far less,
    // and on a small machine every further client thread takes CPU from the
    // adapter under test.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the soak; `Ok(false)` when it failed.
async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let targets: Vec<(Service, SocketAddr, usize, f64)> = [
        (
            Service::Socketmap,
            cli.socketmap,
            cli.socketmap_connections,
            cli.socketmap_rate,
        ),
        (
            Service::Policy,
            cli.policy,
            cli.policy_connections,
            cli.policy_rate,
        ),
        (Service::Sasl, cli.sasl, cli.sasl_connections, cli.sasl_rate),
    ]
    .into_iter()
    .filter_map(|(s, addr, conns, rate)| {
        addr.map(|a| (s, a, conns.unwrap_or(cli.connections_per_service), rate))
    })
    .collect();
    if targets.is_empty() {
        return Err("nothing to load: give at least one of --socketmap, --policy, --sasl".into());
    }
    if cli.sample_interval.is_zero() || cli.duration.is_zero() {
        return Err("--duration and --sample-interval must be above 0".into());
    }
    if let Some(pid) = cli.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        return Err(format!("--pid {pid}: no such process").into());
    }
    for &(s, addr, conns, rate) in &targets {
        if conns == 0 || !rate.is_finite() || rate < 0.0 {
            return Err(
                format!("{}: need at least one connection and a rate >= 0", s.name()).into(),
            );
        }
        let pace = if rate > 0.0 {
            format!("{rate}/s")
        } else {
            "unpaced".into()
        };
        eprintln!("soak: {}: {addr}, {conns} connections, {pace}", s.name());
    }
    let services: Vec<Service> = Service::ALL
        .into_iter()
        .filter(|s| targets.iter().any(|t| t.0 == *s))
        .collect();

    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut csv = std::io::BufWriter::new(
        std::fs::File::create(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?,
    );
    writeln!(csv, "{}", csv_header(&services))?;

    let started = Instant::now();
    let stats: Vec<Arc<ServiceStats>> = services
        .iter()
        .map(|&s| Arc::new(ServiceStats::new(s, started)))
        .collect();
    let mut totals: Vec<(Service, Window)> =
        services.iter().map(|&s| (s, Window::default())).collect();

    // The baseline row, before any load.
    let first = sample_proc(cli.pid);
    let empty: Vec<(Service, Window)> = services.iter().map(|&s| (s, Window::default())).collect();
    writeln!(csv, "{}", csv_row(Duration::ZERO, first, &empty))?;
    csv.flush()?;
    eprintln!("{}", progress(Duration::ZERO, first, &empty));

    let mut idle = Vec::new();
    if cli.idle_connections > 0 {
        let addr = cli
            .socketmap
            .ok_or("--idle-connections needs --socketmap")?;
        idle = open_idle(addr, cli.idle_connections, cli.reply_timeout).await?;
        eprintln!("soak: {} idle socketmap connections open", idle.len());
    }

    let stop = CancellationToken::new();
    let fresh = Arc::new(AtomicU64::new(0));
    let now = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for &(service, addr, conns, rate) in &targets {
        let stats = &stats[services.iter().position(|s| *s == service).expect("listed")];
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / rate));
        for index in 0..conns {
            let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(index as f64 / conns as f64));
            tasks.push(tokio::spawn(client(ClientSpec {
                service,
                addr,
                index,
                period,
                first: now + offset,
                reply_timeout: cli.reply_timeout,
                stats: stats.clone(),
                fresh: fresh.clone(),
                stop: stop.clone(),
            })));
        }
    }

    let mut memory = Memory {
        first,
        last: first,
        peak_rss: first.rss_kib,
        after: ProcSample::default(),
        gone: false,
    };
    let deadline = tokio::time::Instant::now() + cli.duration;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + cli.sample_interval,
        cli.sample_interval,
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupted = false;
    loop {
        // `biased`: when the last sample tick and the deadline coincide, the
        // deadline wins, so the final row is a full interval, not an empty one.
        let finishing = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => true,
            r = tokio::signal::ctrl_c() => {
                interrupted = r.is_ok();
                true
            }
            _ = ticker.tick() => false,
        };
        // Sampled while the load still runs: the last row shows the loaded state.
        let proc = sample_proc(cli.pid);
        if cli.pid.is_some() && proc.rss_kib.is_none() {
            memory.gone = true;
        }
        if finishing || memory.gone {
            // Let requests in flight finish so the last row counts them.
            stop.cancel();
            for t in tasks.drain(..) {
                let _ = t.await;
            }
        }
        memory.peak_rss = memory.peak_rss.max(proc.rss_kib);
        if proc.rss_kib.is_some() {
            memory.last = proc;
        }
        let windows: Vec<(Service, Window)> = stats.iter().map(|s| (s.service, s.take())).collect();
        for ((_, total), (_, w)) in totals.iter_mut().zip(&windows) {
            total.merge(w);
        }
        let elapsed = started.elapsed();
        writeln!(csv, "{}", csv_row(elapsed, proc, &windows))?;
        // Flushed every row: a soak that dies still leaves its data.
        csv.flush()?;
        eprintln!("{}", progress(elapsed, proc, &windows));
        if finishing || memory.gone {
            break;
        }
    }
    let elapsed = started.elapsed();
    let idle_held = idle.len();
    let (_, idle_failed) = idle::ask_again(idle, IDLE_REQUEST, IDLE_REPLY, cli.reply_timeout).await;
    // Once the clients have disconnected, descriptors (and threads) should be back
    // at their baseline; give the adapter a moment to close its ends first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    memory.after = sample_proc(cli.pid);

    eprintln!();
    eprintln!(
        "soak summary: {:.0} s{}, CSV {}",
        elapsed.as_secs_f64(),
        if interrupted { " (interrupted)" } else { "" },
        cli.out.display()
    );
    if let Some(pid) = cli.pid {
        memory.report(pid);
    }
    if idle_held > 0 {
        eprintln!(
            "idle: {idle_held} connections held through the soak, {} answered at the end",
            idle_held - idle_failed
        );
    }
    let mut passed = !memory.gone && idle_failed == 0;
    for (s, w) in &totals {
        eprintln!("{}", summary_line(*s, w, elapsed));
        if w.latency.is_empty() || w.errors() > 0 || w.rejects > 0 {
            passed = false;
        }
    }
    eprintln!("soak: {}", if passed { "PASS" } else { "FAIL" });
    Ok(passed)
}

/// The idle connections' lookup and its answer in the demo fixture.
const IDLE_REQUEST: &[u8] = b"18:domain example.org,";
const IDLE_REPLY: &[u8] = b"OK 1";

/// Opens `n` idle connections to `addr`, 500 at a time, each answered once.
async fn open_idle(
    addr: SocketAddr,
    n: usize,
    limit: Duration,
) -> Result<Vec<clients::Conn<TcpStream>>, String> {
    // Each connection is a descriptor here too; Debian's soft limit is 1024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut conns = Vec::with_capacity(n);
    for (i, opened) in idle::open(addr, n, IDLE_REQUEST, 500, limit)
        .await
        .into_iter()
        .enumerate()
    {
        match opened {
            Opened::Answered(conn, reply, _) if reply[..] == *IDLE_REPLY => conns.push(conn),
            Opened::Answered(_, reply, _) => {
                return Err(format!(
                    "idle connection {i}: unexpected reply {:?}",
                    String::from_utf8_lossy(&reply)
                ));
            }
            Opened::Closed => return Err(format!("idle connection {i}: closed by the adapter")),
            Opened::Failed(why) => return Err(format!("idle connection {i}: {why}")),
        }
    }
    Ok(conns)
}

/// The adapter's resources over the run, for the summary.
#[derive(Debug)]
struct Memory {
    /// Before the load.
    first: ProcSample,
    /// The last sample under load.
    last: ProcSample,
    peak_rss: Option<u64>,
    /// Half a second after the clients disconnected: descriptors (and threads)
    /// should be back at their baseline.
    after: ProcSample,
    /// The process went away during the soak.
    gone: bool,
}

impl Memory {
    fn report(&self, pid: u32) {
        let (first, last, after) = (self.first, self.last, self.after);
        eprintln!(
            "  adapter pid {pid}: rss {} before the load, {} at its end (peak {}), {} after the clients disconnected",
            mib(first.rss_kib),
            mib(last.rss_kib),
            mib(self.peak_rss),
            mib(after.rss_kib),
        );
        eprintln!(
            "  fds {} before, {} at the end, {} after; threads {} before, {} at the end, {} after",
            opt(first.fds),
            opt(last.fds),
            opt(after.fds),
            opt(first.threads),
            opt(last.threads),
            opt(after.threads),
        );
        if self.gone {
            eprintln!("  THE ADAPTER PROCESS WENT AWAY during the soak");
        }
    }
}

/// A service's totals in one line.
fn summary_line(service: Service, w: &Window, elapsed: Duration) -> String {
    let count = w.latency.len();
    let mut line = format!(
        "  {:<9} {count} answered ({:.0}/s), p50 {}, p99 {}, p99.9 {}, max {}; errors {}",
        service.name(),
        count as f64 / elapsed.as_secs_f64(),
        fmt_us(w.quantile(0.5)),
        fmt_us(w.quantile(0.99)),
        fmt_us(w.quantile(0.999)),
        fmt_us(w.max()),
        w.errors()
    );
    if w.errors() > 0 {
        let kinds: Vec<String> = ErrorKind::ALL
            .iter()
            .zip(w.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        let _ = write!(line, " ({})", kinds.join(", "));
    }
    if service == Service::Policy {
        let _ = write!(line, "; REJECT/DEFER {}", w.rejects);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_exactly() {
        let payload = Expect::Payload("OK 1".into());
        assert_eq!(check(&payload, "OK 1"), Verdict::Expected);
        assert_eq!(
            check(&payload, "TEMP Error fetching mailbox"),
            Verdict::Unexpected
        );
        assert_eq!(check(&Expect::Dunno, "action=DUNNO\n\n"), Verdict::Expected);
        assert_eq!(
            check(&Expect::Dunno, "action=REJECT over quota\n\n"),
            Verdict::Rejected
        );
        assert_eq!(
            check(&Expect::Dunno, "action=DEFER x\n\n"),
            Verdict::Rejected
        );
        assert_eq!(check(&Expect::Dunno, "action=OK\n\n"), Verdict::Unexpected);
        let ok = Expect::AuthOk {
            id: 3,
            user: "user@example.org".into(),
        };
        assert_eq!(
            check(&ok, "OK\t3\tuser=user@example.org\n"),
            Verdict::Expected
        );
        assert_eq!(
            check(&ok, "OK\t4\tuser=user@example.org\n"),
            Verdict::Unexpected
        );
        assert_eq!(check(&ok, "FAIL\t3\treason=x\n"), Verdict::Unexpected);
        let fail = Expect::AuthFail { id: 3 };
        assert_eq!(
            check(&fail, "FAIL\t3\tuser=x\treason=y\n"),
            Verdict::Expected
        );
        assert_eq!(check(&fail, "OK\t3\tuser=x\n"), Verdict::Unexpected);
    }

    #[test]
    fn workloads_mix_fresh_keys_and_frame_requests() {
        let fresh = Arc::new(AtomicU64::new(0));
        let mut w = Workload::new(Service::Socketmap, 0, fresh.clone());
        let mut out = Vec::new();
        for _ in 0..FRESH_EVERY * 10 {
            let (expect, what) = w.next(&mut out);
            assert!(out.starts_with(format!("{}:", what.len()).as_bytes()));
            assert!(out.ends_with(b","));
            if what.contains("ghost-") {
                assert_eq!(expect, Expect::Payload("NOTFOUND".into()));
            }
        }
        assert_eq!(fresh.load(Ordering::Relaxed), 10);

        let mut p = Workload::new(Service::Policy, 1, fresh.clone());
        let (expect, _) = p.next(&mut out);
        assert_eq!(expect, Expect::Dunno);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("protocol_state=END-OF-MESSAGE\n"));
        assert!(text.ends_with("\n\n") && !text.ends_with("\n\n\n"));

        let mut s = Workload::new(Service::Sasl, 2, fresh);
        let (expect, what) = s.next(&mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("AUTH\t1\tPLAIN\t") && text.ends_with('\n'));
        assert!(
            !what.contains("password"),
            "descriptions never carry passwords"
        );
        assert!(matches!(
            expect,
            Expect::AuthOk { id: 1, .. } | Expect::AuthFail { id: 1 }
        ));
    }

    #[test]
    fn samples_the_adapter_only_when_given_its_pid() {
        let own = sample_proc(Some(std::process::id()));
        assert!(own.rss_kib.is_some_and(|k| k > 0) && own.fds.is_some());
        assert_eq!(sample_proc(None), ProcSample::default());
    }

    #[test]
    fn csv_rows_match_the_header() {
        let services = [Service::Socketmap, Service::Policy, Service::Sasl];
        let mut w = Window::default();
        w.latency.record(250).unwrap();
        let windows: Vec<_> = services.iter().map(|&s| (s, w.clone())).collect();
        let row = csv_row(Duration::from_secs(5), ProcSample::default(), &windows);
        assert_eq!(
            row.matches(',').count(),
            csv_header(&services).matches(',').count()
        );
        assert!(row.starts_with("5.0,,,,1,250,250,250,0"));
    }
}
