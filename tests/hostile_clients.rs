//! Hostile clients over real sockets against the adapter binary.
//!
//! Each test starts the release-like binary on the demo fixture with all three
//! listeners (socketmap, policy, SASL) on loopback, keeps a well-behaved client
//! on every listener asking in a loop (the probe), runs one attack, and asserts:
//!
//! - the attack gets the documented treatment (closed, refused, answered);
//! - the probe's every answer was right and came within its deadline;
//! - the adapter's resident memory grew by no more than a stated bound;
//! - the adapter is still up and healthy afterwards.
//!
//! Each test prints one `hostile:` line with what it observed; `scripts/hostile.sh`
//! collects them for `docs/robustness.md`.

mod common;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Adapter, http_get, metric};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use userli_postfix_adapter::protocol::netstring::encode;

/// How long a started request may take (IO_TIMEOUT for these tests).
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The per-listener connection limit for these tests.
const MAX_CONNECTIONS: usize = 400;
/// The slowest acceptable probe answer while an attack runs (the lookup deadline
/// is 3 s; a healthy answer takes well under a millisecond).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// The adapter under attack.
struct Target {
    adapter: Adapter,
    socketmap: String,
    policy: String,
    sasl: String,
}

impl Target {
    fn start() -> Self {
        raise_open_files_limit();
        let io_timeout = format!("{}s", IO_TIMEOUT.as_secs());
        let max_connections = MAX_CONNECTIONS.to_string();
        let adapter = Adapter::spawn_demo(&[
            ("IO_TIMEOUT", &io_timeout),
            ("MAX_CONNECTIONS", &max_connections),
        ]);
        Self {
            socketmap: adapter.socketmap.clone(),
            policy: adapter.policy.clone().expect("policy listener"),
            sasl: adapter.sasl.clone().expect("SASL listener"),
            adapter,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.adapter.child.id()))
            .expect("the adapter is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Still running and healthy.
    async fn assert_healthy(&mut self) {
        assert!(
            self.adapter.child.try_wait().unwrap().is_none(),
            "the adapter died"
        );
        let (status, _) = http_get(self.adapter.metrics.parse().unwrap(), "/health").await;
        assert_eq!(status, 200);
    }

    /// Warms every code path up so later RSS growth is the attack's.
    async fn warm_up(&self) -> u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let probe = Probe::start(self, stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        probe.finish().await;
        self.rss_kib()
    }
}

/// Tests open hundreds of sockets; Debian's default soft limit is 1024.
fn raise_open_files_limit() {
    let _ = rlimit::increase_nofile_limit(65_536);
}

/// What the well-behaved clients saw during an attack.
#[derive(Debug, Default)]
struct ProbeReport {
    answers: u64,
    slowest: Duration,
    wrong: Vec<String>,
}

/// Well-behaved clients on the three listeners, asking until stopped.
struct Probe {
    tasks: Vec<tokio::task::JoinHandle<ProbeReport>>,
    stop: Arc<AtomicBool>,
}

impl Probe {
    fn start(target: &Target, stop: Arc<AtomicBool>) -> Self {
        let tasks = vec![
            tokio::spawn(probe_socketmap(target.socketmap.clone(), stop.clone())),
            tokio::spawn(probe_policy(target.policy.clone(), stop.clone())),
            tokio::spawn(probe_sasl(target.sasl.clone(), stop.clone())),
        ];
        Self { tasks, stop }
    }

    async fn finish(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = ProbeReport::default();
        for task in self.tasks {
            let r = task.await.expect("probe task");
            total.answers += r.answers;
            total.slowest = total.slowest.max(r.slowest);
            total.wrong.extend(r.wrong);
        }
        total
    }
}

/// Times one exchange and files a wrong or missing answer.
async fn timed<F, Fut>(report: &mut ProbeReport, what: &str, exchange: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(5), exchange()).await {
        Ok(Ok(())) => report.answers += 1,
        Ok(Err(e)) => report.wrong.push(format!("{what}: {e}")),
        Err(_) => report.wrong.push(format!("{what}: no answer in 5 s")),
    }
    report.slowest = report.slowest.max(started.elapsed());
}

async fn probe_socketmap(addr: String, stop: Arc<AtomicBool>) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut conn = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    let questions = [
        ("mailbox User+probe@example.org", "OK 1"),
        ("alias alias@example.org", "OK user2@example.org"),
        ("domain example.com", "OK 1"),
        ("mailbox nobody@example.org", "NOTFOUND"),
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (question, expected) = questions[i % questions.len()];
        i += 1;
        timed(&mut report, "socketmap", || async {
            conn.write_all(&encode(question.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            let reply = read_netstring(&mut conn).await?;
            (reply == expected)
                .then_some(())
                .ok_or(format!("{question} -> {reply}"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report
}

async fn read_netstring(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut len = Vec::new();
    conn.read_until(b':', &mut len)
        .await
        .map_err(|e| e.to_string())?;
    let len: usize = std::str::from_utf8(&len[..len.len().saturating_sub(1)])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad length")?;
    let mut payload = vec![0; len + 1];
    conn.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    payload.pop();
    Ok(String::from_utf8_lossy(&payload).into_owned())
}

async fn probe_policy(addr: String, stop: Arc<AtomicBool>) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut conn = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    while !stop.load(Ordering::Relaxed) {
        timed(&mut report, "policy", || async {
            conn.write_all(
                b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n\
                  sasl_username=user@example.org\nrecipient_count=1\n\n",
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            while !reply.ends_with("\n\n") {
                if conn
                    .read_line(&mut reply)
                    .await
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    return Err("closed".into());
                }
            }
            (reply == "action=DUNNO\n\n")
                .then_some(())
                .ok_or(format!("policy -> {reply:?}"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report
}

/// Connects and completes the Dovecot handshake.
async fn sasl_connect(addr: &str) -> BufReader<TcpStream> {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    while line != "DONE\n" {
        line.clear();
        assert!(conn.read_line(&mut line).await.unwrap() > 0, "handshake");
    }
    conn.write_all(b"VERSION\t1\t2\nCPID\t42\n").await.unwrap();
    conn
}

async fn probe_sasl(addr: String, stop: Arc<AtomicBool>) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut conn = sasl_connect(&addr).await;
    let resp = STANDARD.encode(b"\0user@example.org\0password");
    let mut id = 0;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        timed(&mut report, "sasl", || async {
            conn.write_all(format!("AUTH\t{id}\tPLAIN\tservice=smtp\tresp={resp}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            conn.read_line(&mut reply)
                .await
                .map_err(|e| e.to_string())?;
            reply
                .starts_with(&format!("OK\t{id}\tuser=user@example.org"))
                .then_some(())
                .ok_or(format!("sasl -> {reply:?}"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report
}

/// Runs `attack` while the probe asks, then checks the probe and memory.
async fn under_attack<F, Fut>(name: &str, max_growth_mib: u64, attack: F) -> Target
where
    F: FnOnce(Rc<Target>) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    // Rc: the attacks run on the test's task and hand only addresses to spawned ones.
    let target = Rc::new(Target::start());
    let rss_before = target.warm_up().await;
    let probe = Probe::start(&target, Arc::new(AtomicBool::new(false)));
    let started = Instant::now();
    let observed = attack(target.clone()).await;
    // Give the probe time to ask even when the attack was over quickly.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    let report = probe.finish().await;
    let rss_after = target.rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "hostile: {name}: {observed}; probe {} answers, slowest {:.1} ms, {} wrong; \
         RSS {} -> {} MiB",
        report.answers,
        report.slowest.as_secs_f64() * 1000.0,
        report.wrong.len(),
        rss_before / 1024,
        rss_after / 1024,
    );
    assert!(
        report.wrong.is_empty(),
        "{name}: probe saw {:?}",
        report.wrong
    );
    assert!(report.answers >= 10, "{name}: the probe kept asking");
    assert!(
        report.slowest < PROBE_DEADLINE,
        "{name}: a probe answer took {:?}",
        report.slowest
    );
    assert!(
        growth_mib <= max_growth_mib,
        "{name}: RSS grew {growth_mib} MiB (bound {max_growth_mib})"
    );
    let mut target = Rc::into_inner(target).expect("the attack released the target");
    target.assert_healthy().await;
    target
}

/// Reads until the server closes; `Err` if it has not within `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Duration> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Err(started.elapsed()),
        }
    }
}

/// Opens `n` connections to `addr`, sends `bytes` on each, and checks every one is
/// closed by the server within `limit` without a reply. Returns the count closed.
async fn send_and_expect_close(addr: &str, bytes: &[u8], n: usize, limit: Duration) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, bytes) = (addr.to_owned(), bytes.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            // The server may close before everything is written: that is the point.
            let _ = conn.write_all(&bytes).await;
            closed_within(&mut conn, limit).await
        }));
    }
    let mut closed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(reply) => {
                assert!(
                    reply.is_empty(),
                    "no reply to a broken request: {:?}",
                    String::from_utf8_lossy(&reply)
                );
                closed += 1;
            }
            Err(waited) => panic!("connection still open after {waited:?}"),
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths_are_refused_before_any_payload_is_buffered() {
    under_attack("declared length 999999999", 8, |t| async move {
        // 999999999 and the just-too-long 10001 (the maximum is 10000), each followed
        // by 256 KiB the adapter must never buffer.
        let mut frames = Vec::new();
        for prefix in [&b"999999999:"[..], b"10001:"] {
            let mut frame = prefix.to_vec();
            frame.extend(std::iter::repeat_n(b'x', 256 * 1024));
            frames.push(frame);
        }
        let mut closed = 0;
        for frame in &frames {
            closed += send_and_expect_close(&t.socketmap, frame, 150, Duration::from_secs(2)).await;
        }
        let framing = metric(
            &t.adapter.scrape().await,
            "userli_postfix_adapter_socketmap_framing_errors_total",
            "",
        );
        assert!(framing >= 300.0, "framing errors counted: {framing}");
        format!("{closed} connections with 256 KiB behind the prefix closed at once")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_closes_only_that_connection() {
    under_attack("malformed netstrings", 8, |t| async move {
        let cases: [&[u8]; 8] = [
            b"abc:mailbox x,",              // not a digit
            b"123456789012345678901234:x,", // over-long length prefix
            b"19:mailbox a@example.org!",   // missing comma
            b"01:x,",                       // leading zero
            b":x,",                         // no length
            b"-1:x,",                       // sign
            b"7 :mailbox,",                 // space in the prefix
            b"\x00\x00\x00\x00",            // binary noise
        ];
        for case in cases {
            send_and_expect_close(&t.socketmap, case, 20, Duration::from_secs(2)).await;
        }
        format!(
            "{} kinds x 20 connections closed without a reply",
            cases.len()
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_non_utf8_keys_are_answered_and_the_connection_stays_usable() {
    under_attack("NUL and non-UTF-8 keys", 8, |t| async move {
        let mut conn = BufReader::new(TcpStream::connect(&t.socketmap).await.unwrap());
        let requests: [&[u8]; 8] = [
            b"mailbox us\0er@example.org",
            b"mailbox \xff\xfe@example.org",
            b"alias \0",
            b"senders user@exa\xc3mple.org",
            b"domain \0example.org",
            b"domain \xc0\xaf",
            b"alias user@example.org\0\0\0",
            b"mailbox \xef\xbb\xbfuser@example.org",
        ];
        let mut replies = Vec::new();
        for request in requests {
            conn.write_all(&encode(request)).await.unwrap();
            let reply = read_netstring(&mut conn).await.expect("a reply");
            // An answer, never a temporary failure (Postfix would retry the mail for
            // days) or PERM. Invisible characters at the ends (NUL, BOM) are trimmed
            // as upstream does, so `\0example.org` is the domain example.org.
            assert!(
                reply == "NOTFOUND" || reply.starts_with("OK "),
                "{:?} -> {reply}",
                String::from_utf8_lossy(request)
            );
            replies.push(reply);
        }
        conn.write_all(&encode(b"mailbox user@example.org"))
            .await
            .unwrap();
        assert_eq!(read_netstring(&mut conn).await.unwrap(), "OK 1");
        format!(
            "{} hostile keys answered ({}), then a normal lookup on the same connection",
            requests.len(),
            replies.join(", ")
        )
    })
    .await;
}

/// Sends `bytes` one per second until the server closes; returns (bytes sent,
/// time until closed).
async fn trickle(mut conn: TcpStream, bytes: &[u8]) -> (usize, Duration) {
    let started = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 256];
    for byte in bytes {
        if conn.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        // Wait one second for the next byte, or for the server to close.
        match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (sent, started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    (sent, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_per_second_trickles_are_cut_off_on_every_listener() {
    under_attack("slowloris, 1 byte/s", 8, |t| async move {
        const PER_LISTENER: usize = 100;
        let socketmap_request = encode(b"mailbox user@example.org");
        let policy_request =
            b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n\n".to_vec();
        let sasl_request = b"AUTH\t1\tPLAIN\tservice=smtp\n".to_vec();
        let mut tasks = Vec::new();
        for i in 0..PER_LISTENER * 3 {
            let (addr, request) = match i % 3 {
                0 => (t.socketmap.clone(), socketmap_request.clone()),
                1 => (t.policy.clone(), policy_request.clone()),
                _ => (t.sasl.clone(), sasl_request.clone()),
            };
            tasks.push(tokio::spawn(async move {
                let conn = if i % 3 == 2 {
                    sasl_connect(&addr).await.into_inner()
                } else {
                    TcpStream::connect(&addr).await.unwrap()
                };
                trickle(conn, &request).await
            }));
        }
        let (mut longest, mut most_bytes) = (Duration::ZERO, 0);
        for task in tasks {
            let (sent, lasted) = task.await.unwrap();
            longest = longest.max(lasted);
            most_bytes = most_bytes.max(sent);
        }
        // Closed one IO_TIMEOUT after the first byte (plus the 1 s read granularity).
        assert!(
            longest <= IO_TIMEOUT + Duration::from_millis(1500),
            "a trickling connection lasted {longest:?}"
        );
        assert!(most_bytes <= 4, "a trickle got {most_bytes} bytes in");
        format!(
            "{} trickling connections ({PER_LISTENER} per listener) closed after at most \
             {:.1} s and {most_bytes} bytes",
            PER_LISTENER * 3,
            longest.as_secs_f64()
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_limit_is_refused_and_counted() {
    under_attack("connection flood", 16, |t| async move {
        // The probe holds one slot per listener; flood every listener with twice
        // the limit and keep the accepted ones open.
        let mut held = Vec::new();
        let mut refused = 0;
        for addr in [&t.socketmap, &t.policy, &t.sasl] {
            let mut conns = Vec::new();
            for _ in 0..MAX_CONNECTIONS * 2 {
                conns.push(TcpStream::connect(addr.as_str()).await.unwrap());
            }
            // Refused connections are closed at once; accepted ones stay open (SASL
            // ones send their handshake).
            let checks: Vec<_> = conns
                .into_iter()
                .map(|mut conn| {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let read =
                            tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf));
                        let closed = matches!(read.await, Ok(Ok(0)) | Ok(Err(_)));
                        (conn, closed)
                    })
                })
                .collect();
            for check in checks {
                match check.await.unwrap() {
                    (_, true) => refused += 1,
                    (conn, false) => held.push(conn),
                }
            }
        }
        let metrics = t.adapter.scrape().await;
        let counted: f64 = ["", "policy_", "sasl_"]
            .iter()
            .map(|service| {
                let name = format!("userli_postfix_adapter_{service}connection_pool_full_total");
                metric(&metrics, &name, "")
            })
            .sum();
        assert_eq!(
            held.len(),
            3 * (MAX_CONNECTIONS - 1),
            "accepted up to the limit"
        );
        assert_eq!(refused, 3 * (MAX_CONNECTIONS + 1), "the rest refused");
        assert!(counted >= refused as f64, "refusals counted: {counted}");
        // Once the flood goes away, new clients get in again.
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fresh = BufReader::new(TcpStream::connect(&t.socketmap).await.unwrap());
        fresh
            .write_all(&encode(b"domain example.org"))
            .await
            .unwrap();
        assert_eq!(read_netstring(&mut fresh).await.unwrap(), "OK 1");
        format!(
            "{} held, {refused} refused at once and counted; new clients served after",
            3 * (MAX_CONNECTIONS - 1)
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_never_reading_clients_stay_bounded() {
    under_attack("half-open and non-reading clients", 48, |t| async move {
        // A maximal request that never completes: buffered (10 KiB each), then cut
        // off at the request deadline.
        let mut almost = b"10000:mailbox ".to_vec();
        almost.resize(6 + 9_999, b'x');
        let stalled = send_and_expect_close(
            &t.socketmap,
            &almost,
            100,
            IO_TIMEOUT + Duration::from_secs(2),
        )
        .await;
        // Clients that pipeline lookups and never read the replies: the adapter stops
        // reading while its replies back up (TCP backpressure), so nothing piles up
        // inside it; a reply write blocked past the deadline closes the connection
        // (unit test `a_client_that_never_reads_its_replies_is_closed_at_the_write_deadline`).
        // Here, with the kernel's autotuned socket buffers (megabytes) and a debug
        // build, reaching that point can take longer than the test: what must hold is
        // that the writers are pushed back (the adapter reads no faster than it
        // answers), what they got in stays within kernel buffer sizes, and the
        // adapter's memory does not grow (checked by `under_attack`).
        let mut writers = Vec::new();
        for _ in 0..20 {
            let addr = t.socketmap.clone();
            writers.push(tokio::spawn(async move {
                // A small receive buffer, so the adapter's replies back up quickly.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let mut conn = socket.connect(addr.parse().unwrap()).await.unwrap();
                let batch: Vec<u8> = encode(b"alias alias@example.org").repeat(1000);
                let started = Instant::now();
                let (mut written, mut blocked, mut closed) = (0usize, false, false);
                while started.elapsed() < Duration::from_secs(10) {
                    match tokio::time::timeout(Duration::from_secs(1), conn.write_all(&batch)).await
                    {
                        Ok(Ok(())) => written += batch.len(),
                        Ok(Err(_)) => {
                            closed = true;
                            break;
                        }
                        Err(_) => blocked = true,
                    }
                }
                (written, blocked, closed)
            }));
        }
        let (mut most_written, mut closed_count) = (0, 0);
        for w in writers {
            let (written, blocked, closed) = w.await.unwrap();
            assert!(
                blocked || closed,
                "a non-reading client was never pushed back"
            );
            most_written = most_written.max(written);
            closed_count += usize::from(closed);
        }
        assert!(
            most_written < 64 << 20,
            "{most_written} bytes accepted from a client that never reads"
        );
        // Connections that never send anything are legitimate (Postfix keeps idle
        // connections); they hold a slot each and nothing else.
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(&t.socketmap).await.unwrap());
        }
        tokio::time::sleep(IO_TIMEOUT + Duration::from_millis(500)).await;
        let mut still_open = 0;
        for conn in &mut idle {
            let mut buf = [0u8; 16];
            if tokio::time::timeout(Duration::from_millis(20), conn.read(&mut buf))
                .await
                .is_err()
            {
                still_open += 1;
            }
        }
        assert_eq!(still_open, 200, "idle connections are kept");
        format!(
            "{stalled} stalled 10 KiB requests closed at the deadline; 20 non-reading \
             pipeliners pushed back after at most {} KiB ({closed_count} already closed \
             within 10 s); 200 idle connections kept",
            most_written / 1024
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_policy_and_sasl_input_closes_without_a_reply() {
    under_attack("over-long policy and SASL input", 16, |t| async move {
        // A policy line longer than Postfix's 2 x 8192, with and without its newline.
        let long_line = format!("sasl_username={}\n", "a".repeat(20_000));
        let policy_line =
            send_and_expect_close(&t.policy, long_line.as_bytes(), 50, Duration::from_secs(2))
                .await;
        let unterminated = "x".repeat(100_000);
        send_and_expect_close(
            &t.policy,
            unterminated.as_bytes(),
            50,
            Duration::from_secs(2),
        )
        .await;
        // Thousands of attributes in one request.
        let mut many = String::from("request=smtpd_access_policy\n");
        for i in 0..5_000 {
            many.push_str(&format!("x{i}=y\n"));
        }
        many.push('\n');
        let attributes =
            send_and_expect_close(&t.policy, many.as_bytes(), 50, Duration::from_secs(2)).await;
        // A SASL line beyond Dovecot's 16384 bytes, after a valid handshake.
        let mut sasl_closed = 0;
        for _ in 0..50 {
            let mut conn = sasl_connect(&t.sasl).await.into_inner();
            let line = format!("AUTH\t1\tPLAIN\tresp={}\n", "A".repeat(20_000));
            let _ = conn.write_all(line.as_bytes()).await;
            let rest = closed_within(&mut conn, Duration::from_secs(2))
                .await
                .expect("closed");
            assert!(rest.is_empty(), "no FAIL line for an over-long line");
            sasl_closed += 1;
        }
        format!(
            "{policy_line} over-long policy lines, 50 unterminated 100 KB lines, \
             {attributes} requests with 5000 attributes, {sasl_closed} 20 KB SASL lines: \
             all closed without a reply"
        )
    })
    .await;
}
