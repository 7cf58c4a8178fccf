//! Sending windows in Redis, so several adapter instances share one quota per
//! sender.
//!
//! Each sender is one Redis HASH, `userli:ratelimit:v2:<identity>`, mapping a
//! minute number (minutes since the Unix epoch) to the weight recorded in that
//! minute: the same one-minute buckets as the embedded store
//! ([`super::window::Windows`]), so both stores judge identically and a sender
//! costs at most [`DAY_MINUTES`] fields however hard it tries. (The `v2` keeps
//! these keys apart from upstream's sorted-set keys, which grew by one member
//! per attempt.)
//!
//! A check is one round trip: a Lua script records the weight, drops buckets
//! older than a day, sums the hour and day and refreshes the key's TTL. Redis
//! runs scripts atomically, so concurrent checks from any number of instances
//! can never both take the last slot of a quota.
//!
//! The minute comes from the caller's `now`, not from Redis' clock, so tests
//! control time. Instances must therefore keep their clocks in sync (NTP); a
//! skew of a few seconds only moves a message into the neighbouring bucket.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use postfix_adapter_backend::{SmtpQuota, async_trait};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};

use super::MAX_RECIPIENT_WEIGHT;
use super::store::{QuotaStore, StoreError, minute_of};
use super::window::{DAY_MINUTES, HOUR_MINUTES, Verdict};

/// The prefix of every sender's key; the identity follows it verbatim.
pub const KEY_PREFIX: &str = "userli:ratelimit:v2:";

/// How long an idle sender's key lives: a day of buckets plus an hour of slack,
/// so a key is never expired while a bucket in it still counts, and senders who
/// stopped sending vanish without a sweeper.
pub const KEY_TTL: Duration = Duration::from_secs(25 * 3600);

/// The longest [`RedisStore::connect`] waits for Redis at start-up; past it the
/// adapter starts anyway (checks fail until Redis answers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Consecutive failures after which the connection is thrown away and a new one
/// made. The redis crate reconnects on a dropped connection, but not when a
/// connection merely stops answering (a half-open TCP connection after a
/// network partition or a vanished host: every check would stall until the
/// kernel gives up on the socket, many minutes later), nor after its
/// reconnection attempts ended in a non-I/O error (say, the password was wrong
/// for a while): that error would then be returned forever.
const FAILURES_BEFORE_RECONNECT: u32 = 3;

/// At most one forced reconnect per this interval, so an outage under load does
/// not make a new connection every few checks.
const MIN_RECONNECT_INTERVAL: Duration = Duration::from_secs(5);

/// The longest pause between reconnection attempts, so checks work again within
/// about a second of Redis coming back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Records the weight and returns `{hour, day}`.
///
/// KEYS[1] = the sender's hash; ARGV = minute now, weight, TTL in milliseconds.
/// The weight goes to HINCRBY as the caller's decimal string, so it is never
/// rounded through a Lua double. Stale fields are deleted in chunks because
/// `unpack` of a very long list would overflow Lua's C stack.
const SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local hour_minutes = tonumber(ARGV[4])
local day_minutes = tonumber(ARGV[5])
-- Saturate instead of overflowing (HINCRBY errors past 2^63, and the sums below
-- are Lua doubles, exact only to 2^53): a bucket holds at most 10^12.
local current = tonumber(redis.call('HGET', key, ARGV[1])) or 0
local weight = tonumber(ARGV[2])
if current + weight > 1e12 then
  redis.call('HSET', key, ARGV[1], '1000000000000')
else
  redis.call('HINCRBY', key, ARGV[1], ARGV[2])
end
local fields = redis.call('HGETALL', key)
local hour, day = 0, 0
local stale = {}
for i = 1, #fields, 2 do
  local minute = tonumber(fields[i])
  local count = tonumber(fields[i + 1])
  if minute == nil or count == nil or minute + day_minutes <= now then
    stale[#stale + 1] = fields[i]
  else
    day = day + count
    if minute + hour_minutes > now then
      hour = hour + count
    end
  end
end
for i = 1, #stale, 500 do
  redis.call('HDEL', key, unpack(stale, i, math.min(i + 499, #stale)))
end
redis.call('PEXPIRE', key, ARGV[3])
return {hour, day}
";

/// A [`QuotaStore`] in Redis, shared by every adapter instance using the same
/// server.
///
/// Every operation is bounded by the `op_timeout` given to
/// [`connect`](Self::connect); a slow or absent Redis turns into a
/// [`StoreError::Remote`] quickly, and the policy server decides whether to fail
/// open or closed. The connection reconnects by itself, so the store recovers
/// without a restart once Redis is back.
pub struct RedisStore {
    client: Client,
    manager_config: ConnectionManagerConfig,
    connection: Mutex<Connection>,
    consecutive_failures: AtomicU32,
    script: Script,
    key_prefix: String,
    op_timeout: Duration,
    /// The URL with its password replaced, for logs and errors.
    redacted_url: String,
    /// The passwords in the URL, to scrub from any error text that might quote them.
    secrets: Vec<String>,
}

/// The current connection and when it was made (to rate-limit forced
/// reconnects).
struct Connection {
    manager: ConnectionManager,
    made: Instant,
}

impl fmt::Debug for RedisStore {
    // Hand-written so the password can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.redacted_url)
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`) and loads the script, waiting at most
    /// [`CONNECT_TIMEOUT`]. Each later check may take at most `op_timeout`.
    ///
    /// Redis being unreachable at start is not fatal: a rate limiter must not
    /// keep mail from flowing because Redis restarts at the same time as the
    /// adapter. The store is returned anyway, checks fail until Redis answers,
    /// and the connection keeps retrying in the background.
    ///
    /// # Errors
    /// [`StoreError::Remote`] naming `REDIS_URL` when the URL is invalid, and
    /// when Redis answers but refuses the credentials (a configuration error no
    /// retry fixes). Neither message contains the password.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, op_timeout, None).await
    }

    /// [`connect`](Self::connect), trusting the CA certificates in `ca_pem`
    /// (PEM) instead of the system's for a `rediss://` URL.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); also when `ca_pem` holds no certificate.
    pub async fn connect_with_ca(
        url: &str,
        op_timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, StoreError> {
        let (redacted_url, secrets) = redact(url);
        let scrub = |text: String| scrub(text, &secrets);
        // rediss:// goes through rustls, which needs a process-wide crypto provider;
        // ring, as for HTTPS (a provider installed earlier is kept).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match ca_pem {
            None => Client::open(url),
            Some(pem) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        }
        .map_err(|e| {
            StoreError::Remote(scrub(format!("REDIS_URL {redacted_url} is invalid: {e}")))
        })?;
        // The handshake may need a few round trips (HELLO, AUTH, SELECT), so it
        // gets a little more than one operation.
        let connection_timeout = op_timeout.max(Duration::from_secs(1));
        // No retries inside a reconnect: a refused connection must fail the check
        // at once (fail open now), not after backed-off attempts that outlast the
        // deadline; the next check tries again.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connection_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(0)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let manager = new_manager(&client, &manager_config, &redacted_url)?;
        let store = Self {
            client,
            manager_config,
            connection: Mutex::new(Connection {
                manager,
                made: Instant::now(),
            }),
            consecutive_failures: AtomicU32::new(0),
            script: Script::new(SCRIPT),
            key_prefix: KEY_PREFIX.to_owned(),
            op_timeout,
            redacted_url,
            secrets,
        };

        // Loading the script now proves the URL, credentials and database; the
        // first check then needs no SCRIPT LOAD. If it is flushed later, the
        // NOSCRIPT fallback of `invoke_async` loads it again. This goes over a
        // one-off connection rather than the manager, which would keep retrying
        // a refused password until the timeout and hide why it failed.
        let probe = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connection_timeout))
                .set_response_timeout(Some(CONNECT_TIMEOUT));
            let mut connection = store
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            store.script.load_async(&mut connection).await?;
            // Then open the shared connection, so the first check does not pay
            // for the handshake.
            redis::cmd("PING")
                .query_async::<()>(&mut store.manager())
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
            Ok(Ok(_)) => {
                tracing::info!(url = %store.redacted_url, "connected to redis");
            }
            Ok(Err(e)) if is_credentials_error(&e) => {
                return Err(StoreError::Remote(format!(
                    "REDIS_URL {}: {}",
                    store.redacted_url,
                    store.scrub(e.to_string())
                )));
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    url = %store.redacted_url,
                    error = %store.scrub(e.to_string()),
                    "redis is not available at start; quota checks fail until it is"
                );
            }
            Err(_) => {
                tracing::warn!(
                    url = %store.redacted_url,
                    timeout = ?CONNECT_TIMEOUT,
                    "redis did not answer at start; quota checks fail until it does"
                );
            }
        }
        Ok(store)
    }

    /// The URL with its password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The key holding `identity`'s buckets.
    pub fn key_of(&self, identity: &str) -> String {
        format!("{}{identity}", self.key_prefix)
    }

    fn manager(&self) -> ConnectionManager {
        // A cheap clone (an `Arc`), so the lock is never held across an await.
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .manager
            .clone()
    }

    /// Counts a failure and, after several in a row, replaces a connection
    /// that may never recover by itself (see [`FAILURES_BEFORE_RECONNECT`]).
    fn note_failure(&self, error: &str) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_BEFORE_RECONNECT {
            return;
        }
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if connection.made.elapsed() < MIN_RECONNECT_INTERVAL {
            return;
        }
        // Lazy: nothing is sent until the next check, so this never blocks.
        if let Ok(manager) = new_manager(&self.client, &self.manager_config, &self.redacted_url) {
            tracing::warn!(
                url = %self.redacted_url,
                failures,
                last_error = error,
                "redis keeps failing; making a new connection"
            );
            *connection = Connection {
                manager,
                made: Instant::now(),
            };
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    fn scrub(&self, text: String) -> String {
        scrub(text, &self.secrets)
    }
}

#[async_trait]
impl QuotaStore for RedisStore {
    async fn check(
        &self,
        identity: &str,
        limits: SmtpQuota,
        weight: u64,
        now: SystemTime,
    ) -> Result<Verdict, StoreError> {
        let key = self.key_of(identity);
        let ttl_ms = u64::try_from(KEY_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&key)
            .arg(minute_of(now))
            .arg(weight.clamp(1, MAX_RECIPIENT_WEIGHT))
            .arg(ttl_ms)
            .arg(HOUR_MINUTES)
            .arg(DAY_MINUTES);
        // After a failure the connection may be gone: make sure of one first with
        // PING, which (unlike the script, which counts) can be repeated safely. A
        // failed PING makes the manager start a new connection; the second one
        // waits for it: refused again at once while Redis is down, answered the
        // moment it is back. Without this a check right after Redis's return would
        // still see the old failed connection and, behind an open breaker,
        // enforcement would resume a whole cool-down late.
        let recovering = self.consecutive_failures.load(Ordering::Relaxed) > 0;
        let ping = || async {
            redis::cmd("PING")
                .query_async::<()>(&mut self.manager())
                .await
        };
        let result = tokio::time::timeout(self.op_timeout, async {
            if recovering && ping().await.is_err() {
                ping().await?;
            }
            invocation
                .invoke_async::<(u64, u64)>(&mut self.manager())
                .await
        })
        .await;
        match result {
            Ok(Ok((hour, day))) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(Verdict::judge(limits, hour, day))
            }
            // Redis ran the script and refused this request's numbers: not the
            // server's fault, so no reconnect and no strike against the breaker.
            Ok(Err(e)) if refuses_the_request(&e) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                Err(StoreError::Rejected(format!(
                    "redis refused the check: {}",
                    self.scrub(e.to_string())
                )))
            }
            Ok(Err(e)) => {
                let error = format!("redis: {}", self.scrub(e.to_string()));
                self.note_failure(&error);
                Err(StoreError::Remote(error))
            }
            Err(_) => {
                self.note_failure("redis timeout");
                Err(StoreError::Remote("redis timeout".to_owned()))
            }
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Whether Redis refused one request for its own data (a number out of range),
/// rather than failing as a server. Weights are clamped before they are sent, so
/// this should never happen; if it does, one client's request must not switch
/// quotas off for everyone. Every other error, generic `ERR`s included (too many
/// clients, a missing database, a script that cannot run), is the server's.
fn refuses_the_request(e: &RedisError) -> bool {
    if e.kind() != ErrorKind::Server(ServerErrorKind::ResponseError) {
        return false;
    }
    let text = e.to_string();
    text.contains("not an integer or out of range") || text.contains("would overflow")
}

/// A connection manager that connects on first use (so `connect` controls how
/// long start-up waits, and building one never blocks).
fn new_manager(
    client: &Client,
    config: &ConnectionManagerConfig,
    redacted_url: &str,
) -> Result<ConnectionManager, StoreError> {
    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(|e| StoreError::Remote(format!("REDIS_URL {redacted_url}: {:?}", e.kind())))
}

/// Whether Redis answered but refused who we are: wrong password, unknown user,
/// or a server that requires a password we did not give.
fn is_credentials_error(e: &RedisError) -> bool {
    if e.kind() == ErrorKind::AuthenticationFailed {
        return true;
    }
    matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Query parameters of a Redis URL that carry credentials (`redis+unix:///path?
/// db=0&user=u&pass=secret`; the redis crate reads `user` and `pass`, the others
/// are redacted in case a client of the future reads them).
const SECRET_PARAMETERS: [&str; 4] = ["pass", "password", "user", "username"];
/// Of those, the ones holding a password: scrubbed from error texts too (a user
/// name is only hidden in the URL: scrubbing a short one would mangle messages).
const PASSWORD_PARAMETERS: [&str; 2] = ["pass", "password"];

/// The URL for display with every credential replaced by `***` (user and password
/// in the userinfo and in the query, in every URL form the redis crate accepts),
/// and the passwords themselves as Redis sees them, to scrub from error texts.
fn redact(url: &str) -> (String, Vec<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL at all: show none of it, since it may still hold a secret.
        return ("(unparsable)".to_owned(), Vec::new());
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
        secrets.push(percent_decode(password));
        let _ = parsed.set_password(Some("***"));
    }
    if !parsed.username().is_empty() {
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (name, value) in pairs {
            let lower = name.to_ascii_lowercase();
            if SECRET_PARAMETERS.contains(&lower.as_str()) && !value.is_empty() {
                if PASSWORD_PARAMETERS.contains(&lower.as_str()) {
                    secrets.push(value);
                }
                query.append_pair(&name, "***");
            } else {
                query.append_pair(&name, &value);
            }
        }
        drop(query);
    }
    // Scrub longer secrets first, so one that contains another goes whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (parsed.to_string().replace("%2A%2A%2A", "***"), secrets)
}

/// Decodes `%xx` escapes, so the secret is also recognised as Redis sees it.
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some(&[b'%', hi, lo]) => hex(hi).zip(hex(lo)),
            _ => None,
        };
        if let Some((hi, lo)) = escaped {
            // Two hex digits are at most 0xff.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces every occurrence of each secret in `text`.
fn scrub(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_requests_numbers_spare_the_breaker() {
        let server = |detail: &str| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "An error was signalled by the server",
                detail.to_owned(),
            ))
        };
        assert!(refuses_the_request(&server(
            "value is not an integer or out of range"
        )));
        assert!(refuses_the_request(&server(
            "increment or decrement would overflow"
        )));
        for detail in [
            "max number of clients reached",
            "DB index is out of range",
            "Error running script (call to f_x): @user_script:1: Script attempted to access nonexistent global variable",
        ] {
            assert!(!refuses_the_request(&server(detail)), "{detail}");
        }
        let io = RedisError::from(std::io::Error::other("connection reset"));
        assert!(!refuses_the_request(&io));
    }

    #[test]
    fn the_password_is_redacted() {
        let (shown, secrets) = redact("redis://user:s3cr%21t@localhost:6379/2");
        assert_eq!(shown, "redis://***:***@localhost:6379/2");
        assert_eq!(secrets, ["s3cr!t"]);
        assert_eq!(
            scrub("auth s3cr!t failed".to_owned(), &secrets),
            "auth *** failed"
        );
        let (shown, secrets) = redact("redis://localhost");
        assert_eq!((shown.as_str(), secrets), ("redis://localhost", vec![]));
        assert_eq!(redact("not a url :pw").0, "(unparsable)");
    }

    #[test]
    fn credentials_are_redacted_in_every_url_form_redis_accepts() {
        for (url, shown) in [
            (
                "redis+unix:///run/redis.sock?db=0&pass=SECRET",
                "redis+unix:///run/redis.sock?db=0&pass=***",
            ),
            (
                "unix:///run/redis.sock?user=ALICE&pass=SECRET&db=2",
                "unix:///run/redis.sock?user=***&pass=***&db=2",
            ),
            ("redis://:SECRET@host:6379/0", "redis://:***@host:6379/0"),
            ("rediss://ALICE:SECRET@host/1", "rediss://***:***@host/1"),
            (
                "redis://host/0?password=SECRET",
                "redis://host/0?password=***",
            ),
        ] {
            let (got, secrets) = redact(url);
            assert_eq!(got, shown, "{url}");
            assert!(!got.contains("SECRET") && !got.contains("ALICE"), "{got}");
            assert!(secrets.iter().any(|s| s == "SECRET"), "{url}: {secrets:?}");
            assert!(
                !scrub(format!("failed for {url}"), &secrets).contains("SECRET"),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn an_invalid_url_names_redis_url_without_the_password() {
        let err = RedisStore::connect("http://u:hunter2@host", Duration::from_millis(100))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("REDIS_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_not_fatal_and_checks_fail_quickly() {
        // Port 1 on loopback: connection refused.
        let store = RedisStore::connect("redis://:pw@127.0.0.1:1", Duration::from_millis(100))
            .await
            .expect("unreachable at start is not fatal");
        assert_eq!(store.name(), "redis");
        let quota = SmtpQuota {
            per_hour: 1,
            per_day: 0,
        };
        let started = Instant::now();
        let err = store
            .check("a@x", quota, 1, SystemTime::now())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{err}");
        assert!(!format!("{store:?}").contains("pw@"));
    }
}
