//! The Redis quota store against a real `redis-server` (the Debian package).
//!
//! Every test starts its own throw-away server on a free loopback port, so tests
//! run in parallel and never touch a Redis someone cares about. They are ignored
//! by default because they need the binary:
//! `cargo test --test policy_redis -- --include-ignored`.

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis_server::RedisServer;

use postfix_adapter_backend::SmtpQuota;
use userli_postfix_adapter::policy::redis_store::RedisStore;
use userli_postfix_adapter::policy::store::QuotaStore;

const OP_TIMEOUT: Duration = Duration::from_millis(200);

fn quota(per_hour: u32, per_day: u32) -> SmtpQuota {
    SmtpQuota { per_hour, per_day }
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), OP_TIMEOUT)
        .await
        .unwrap()
}

/// A plain client, to look at what the store wrote.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Checks until one succeeds (after Redis came back), or panics after `limit`.
async fn check_until_ok(
    store: &RedisStore,
    identity: &str,
    now: SystemTime,
    limit: Duration,
) -> userli_postfix_adapter::policy::window::Verdict {
    let deadline = Instant::now() + limit;
    loop {
        match store.check(identity, quota(10, 0), 1, now).await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn exactly_the_hourly_limit_is_allowed() {
    let server = RedisServer::start();
    let store = store(&server).await;
    assert_eq!(store.name(), "redis");
    let now = SystemTime::now();
    let a = store
        .check("a@example.org", quota(2, 0), 1, now)
        .await
        .unwrap();
    let b = store
        .check("a@example.org", quota(2, 0), 1, now)
        .await
        .unwrap();
    let c = store
        .check("a@example.org", quota(2, 0), 1, now)
        .await
        .unwrap();
    assert!(a.allowed && b.allowed);
    assert!(!c.allowed, "the third message is over the limit");
    assert_eq!((c.hour, c.day), (3, 3));
    // Another sender has their own quota.
    let other = store
        .check("b@example.org", quota(2, 0), 1, now)
        .await
        .unwrap();
    assert!(other.allowed);
    assert_eq!((other.hour, other.day), (1, 1));
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn rejected_attempts_keep_counting() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let now = SystemTime::now();
    let mut last = None;
    for _ in 0..5 {
        last = Some(store.check("spam@x", quota(1, 0), 1, now).await.unwrap());
    }
    let last = last.unwrap();
    assert!(!last.allowed);
    assert_eq!(
        (last.hour, last.day),
        (5, 5),
        "rejected attempts are recorded"
    );
    // A daily limit sees them too, after the hour has passed.
    let later = store
        .check("spam@x", quota(1, 5), 1, now + minutes(61))
        .await
        .unwrap();
    assert_eq!((later.hour, later.day), (1, 6));
    assert!(!later.allowed, "over the daily limit");
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn the_hour_and_day_windows_slide() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let t = SystemTime::now();
    for _ in 0..2 {
        assert!(
            store
                .check("a@x", quota(2, 10), 1, t)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !store
            .check("a@x", quota(2, 10), 1, t)
            .await
            .unwrap()
            .allowed
    );

    let v = store
        .check("a@x", quota(2, 10), 1, t + minutes(61))
        .await
        .unwrap();
    assert!(v.allowed, "the hour has passed");
    assert_eq!((v.hour, v.day), (1, 4), "the day still counts");

    // A day after the first messages their bucket is gone from the hash.
    let v = store
        .check("a@x", quota(2, 10), 1, t + minutes(24 * 60 + 1))
        .await
        .unwrap();
    assert_eq!((v.hour, v.day), (1, 2));
    let mut con = raw(&server).await;
    let fields: u64 = redis::cmd("HLEN")
        .arg(store.key_of("a@x"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(fields, 2, "expired buckets are deleted");
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn instances_share_one_quota() {
    let server = RedisServer::start();
    let a = store(&server).await;
    let b = store(&server).await;
    let now = SystemTime::now();
    assert!(
        a.check("shared@x", quota(2, 0), 1, now)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        a.check("shared@x", quota(2, 0), 1, now)
            .await
            .unwrap()
            .allowed
    );
    let v = b.check("shared@x", quota(2, 0), 1, now).await.unwrap();
    assert!(!v.allowed, "instance B sees instance A's messages");
    assert_eq!((v.hour, v.day), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server"]
async fn concurrent_checks_never_exceed_the_limit() {
    let server = RedisServer::start();
    // Two instances, so the race is also across connections.
    let stores = [
        Arc::new(store(&server).await),
        Arc::new(store(&server).await),
    ];
    let now = SystemTime::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move { store.check("race@x", quota(10, 0), 1, now).await })
        })
        .collect();
    let mut allowed = 0;
    let mut max_hour = 0;
    for task in tasks {
        let v = task.await.unwrap().unwrap();
        allowed += usize::from(v.allowed);
        max_hour = max_hour.max(v.hour);
    }
    assert_eq!(
        allowed, 10,
        "exactly the limit, however the checks interleave"
    );
    assert_eq!(max_hour, 50);
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn weights_count_recipients() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let now = SystemTime::now();
    let v = store.check("bulk@x", quota(5, 0), 3, now).await.unwrap();
    assert!(v.allowed);
    let v = store.check("bulk@x", quota(5, 0), 3, now).await.unwrap();
    assert!(!v.allowed);
    assert_eq!((v.hour, v.day), (6, 6));
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn keys_expire_after_25_hours() {
    let server = RedisServer::start();
    let store = store(&server).await;
    store
        .check("ttl@x", quota(1, 0), 1, SystemTime::now())
        .await
        .unwrap();
    let key = store.key_of("ttl@x");
    assert_eq!(key, "userli:ratelimit:v2:ttl@x");
    let mut con = raw(&server).await;
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        ttl_ms > 24 * 3_600_000,
        "longer than the day window: {ttl_ms}"
    );
    assert!(ttl_ms <= 25 * 3_600_000, "at most 25 h: {ttl_ms}");
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kind, "hash");
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn a_flushed_script_is_loaded_again() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let now = SystemTime::now();
    store.check("s@x", quota(5, 0), 1, now).await.unwrap();
    let mut con = raw(&server).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    let v = store.check("s@x", quota(5, 0), 1, now).await.unwrap();
    assert_eq!((v.hour, v.day), (2, 2), "NOSCRIPT falls back to loading it");
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn redis_going_away_fails_fast_and_coming_back_recovers() {
    let mut server = RedisServer::start();
    let store = store(&server).await;
    let now = SystemTime::now();
    assert!(store.check("a@x", quota(10, 0), 1, now).await.is_ok());

    server.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let result = store.check("a@x", quota(10, 0), 1, now).await;
        let took = started.elapsed();
        assert!(result.is_err(), "no Redis, no verdict");
        assert!(
            took < OP_TIMEOUT + Duration::from_millis(150),
            "bounded by the op timeout, took {took:?}"
        );
    }

    server.spawn();
    let v = check_until_ok(&store, "a@x", now, Duration::from_secs(10)).await;
    // The restarted server kept nothing (no persistence): counting starts over.
    assert_eq!((v.hour, v.day), (1, 1));
}

/// A Redis that refuses connections fails each check at once (the decision
/// fails open at once), instead of waiting out the deadline: nothing to wait for.
/// Needs no `redis-server`: nothing listens on the port.
#[tokio::test]
async fn a_refusing_redis_fails_each_check_at_once() {
    let port = redis_server::free_port();
    let store = RedisStore::connect(
        &format!("redis://127.0.0.1:{port}/0"),
        Duration::from_secs(3),
    )
    .await
    .expect("fail open: the adapter starts without Redis");
    let now = SystemTime::now();
    for attempt in 0..10 {
        let started = Instant::now();
        assert!(store.check("a@x", quota(10, 0), 1, now).await.is_err());
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "check {attempt} took {took:?} against a refusing Redis"
        );
    }
}

/// `rediss://`: TLS to a server whose certificate a private CA signed, trusted
/// through the CA file; without it the certificate is not trusted and checks
/// fail (open), never fall back to plain text.
#[tokio::test]
#[ignore = "needs redis-server"]
async fn rediss_with_a_private_ca_counts_and_an_unknown_ca_is_refused() {
    let server = RedisServer::start_tls(None);
    assert!(server.url().starts_with("rediss://"));
    let ca = std::fs::read(server.ca_file()).unwrap();
    let store = RedisStore::connect_with_ca(&server.url(), OP_TIMEOUT * 5, Some(&ca))
        .await
        .unwrap();
    let now = SystemTime::now();
    for want in 1..=3 {
        let v = store.check("tls@x", quota(2, 0), 1, now).await.unwrap();
        assert_eq!(v.hour, want);
        assert_eq!(v.allowed, want <= 2);
    }
    let untrusting = RedisStore::connect(&server.url(), OP_TIMEOUT * 5)
        .await
        .expect("not fatal at start");
    let err = untrusting
        .check("tls@x", quota(2, 0), 1, now)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate") || err.to_string().contains("Unknown"),
        "{err}"
    );
}

/// The binary with `REDIS_URL=rediss://…` and `REDIS_TLS_CA_FILE`: it starts
/// (it used to exit: "can't connect with TLS, the feature is not enabled"),
/// enforces the quota through Redis over TLS, and says where it connected
/// without any secret.
#[tokio::test]
#[ignore = "needs redis-server"]
async fn the_adapter_enforces_quotas_through_rediss() {
    use postfix_adapter_clients::request::policy_end_of_message;
    use postfix_adapter_clients::{Conn, Framing};
    let server = RedisServer::start_tls(Some("tls-pass"));
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(
        &fixture,
        "domains = [\"example.org\"]\n[[users]]\nemail = \"limited@example.org\"\nsmtp_quota = { per_hour = 2 }\n",
    )
    .unwrap();
    let url = format!(
        "{}/0",
        server.url().replace("rediss://", "rediss://:tls-pass@")
    );
    let adapter = common::Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", fixture.to_str().unwrap()),
        ("REDIS_URL", &url),
        ("REDIS_TLS_CA_FILE", server.ca_file().to_str().unwrap()),
    ]);
    let connected = adapter
        .startup_log("connected to redis")
        .expect("connected to Redis over TLS at start")
        .clone();
    let shown = connected["url"].as_str().unwrap();
    assert!(
        shown.starts_with("rediss://") && !shown.contains("tls-pass"),
        "{shown}"
    );
    let policy = adapter
        .policy
        .as_ref()
        .expect("policy listener")
        .parse()
        .unwrap();
    let mut conn = Conn::tcp(policy, Framing::Block).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let reply = conn
            .exchange(&policy_end_of_message("limited@example.org"))
            .await
            .unwrap();
        answers.push(String::from_utf8_lossy(&reply).into_owned());
    }
    assert_eq!(answers[..2], ["action=DUNNO\n\n", "action=DUNNO\n\n"]);
    assert!(answers[2].starts_with("action=REJECT"), "{answers:?}");
    assert!(adapter.terminate().success());
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn redis_down_at_start_is_not_fatal() {
    let mut server = RedisServer::not_started();
    let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
        .await
        .expect("fail open: the adapter starts without Redis");
    let now = SystemTime::now();
    let started = Instant::now();
    assert!(store.check("a@x", quota(10, 0), 1, now).await.is_err());
    assert!(started.elapsed() < OP_TIMEOUT + Duration::from_millis(150));

    server.spawn();
    let v = check_until_ok(&store, "a@x", now, Duration::from_secs(10)).await;
    assert!(v.allowed);
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn a_wrong_password_is_fatal_and_not_logged() {
    let server = RedisServer::start();
    let mut con = raw(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right-one")
        .query_async(&mut con)
        .await
        .unwrap();
    let url = format!("redis://:wrong-one@127.0.0.1:{}", server.port);
    let err = RedisStore::connect(&url, OP_TIMEOUT).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("REDIS_URL"), "{text}");
    assert!(!text.contains("wrong-one"), "{text}");

    let url = format!("redis://:right-one@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url, OP_TIMEOUT).await.unwrap();
    assert!(!format!("{store:?}").contains("right-one"));
    assert!(
        store
            .check("a@x", quota(1, 0), 1, SystemTime::now())
            .await
            .unwrap()
            .allowed
    );
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn a_redis_that_stops_answering_fails_fast_and_recovers() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let now = SystemTime::now();
    assert!(store.check("a@x", quota(100, 0), 1, now).await.is_ok());
    let pid = server.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success());
    };

    // Frozen, not gone: the connection stays open but nothing answers. Long
    // enough for the store to give up on the connection and make a new one.
    signal("-STOP");
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(6) {
        let started = Instant::now();
        let result = store.check("a@x", quota(100, 0), 1, now).await;
        let took = started.elapsed();
        assert!(result.is_err());
        assert!(
            took < OP_TIMEOUT + Duration::from_millis(150),
            "took {took:?}"
        );
    }
    signal("-CONT");
    let v = check_until_ok(&store, "a@x", now, Duration::from_secs(10)).await;
    assert!(v.hour >= 2, "the data survived: {v:?}");
}

/// Two adapter servers in front of one Redis enforce one quota through the real
/// policy protocol; when Redis goes away, mail flows (fail open) and it is counted.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server"]
async fn two_adapters_share_one_quota_and_fail_open_without_redis() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use userli_postfix_adapter::config::{Config, ListenAddr};

    async fn ask(conn: &mut tokio::net::TcpStream, login: &str) -> String {
        let request = format!(
            "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsasl_username={login}\n\n"
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\n\n") {
            assert!(
                conn.read(&mut byte).await.unwrap() > 0,
                "closed before the reply"
            );
            reply.push(byte[0]);
        }
        String::from_utf8(reply).unwrap()
    }

    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("f.toml");
    std::fs::write(
        &fixture,
        "domains = [\"example.org\"]\n[[users]]\nemail = \"limited@example.org\"\nsmtp_quota = { per_hour = 2 }\n",
    )
    .unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut config = Config::for_fixture(&fixture);
        config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0").unwrap();
        config.listeners.metrics = ListenAddr::parse("127.0.0.1:0").unwrap();
        config.listeners.policy = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
        config.policy.redis_url = Some(userli_postfix_adapter::config::Secret::new(redis.url()));
        config.lookups.timeout = Duration::from_millis(300);
        let metrics = userli_postfix_adapter::metrics::Metrics::new().unwrap();
        let backend = userli_postfix_adapter::backend::build_backend(&config, &metrics).unwrap();
        let server = userli_postfix_adapter::Server::bind(config, backend, metrics.clone())
            .await
            .unwrap();
        let userli_postfix_adapter::server::LocalAddr::Tcp(addr) = server.policy_addrs()[0].clone()
        else {
            panic!("TCP policy listener expected")
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        servers.push((addr, metrics, stop, task));
    }
    let mut a = tokio::net::TcpStream::connect(servers[0].0).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(servers[1].0).await.unwrap();
    assert_eq!(ask(&mut a, "limited@example.org").await, "action=DUNNO\n\n");
    assert_eq!(ask(&mut b, "limited@example.org").await, "action=DUNNO\n\n");
    assert!(
        ask(&mut a, "limited@example.org")
            .await
            .starts_with("action=REJECT")
    );
    assert!(
        ask(&mut b, "limited@example.org")
            .await
            .starts_with("action=REJECT")
    );

    redis.kill();
    let started = std::time::Instant::now();
    assert_eq!(
        ask(&mut a, "limited@example.org").await,
        "action=DUNNO\n\n",
        "fail open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        servers[0].1.render().contains(
            "userli_postfix_adapter_ratelimit_backend_errors_total{operation=\"check\"} 1"
        )
    );
    drop((a, b));
    for (_, _, stop, task) in servers {
        stop.cancel();
        task.await.unwrap();
    }
}
