//! The one table of settings: it drives loading, `--help`, `check-config` and the
//! configuration reference in the README (a test keeps the README in sync).

/// One configuration setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable (upstream's name where upstream has it).
    pub env: &'static str,
    /// The built-in default, if any.
    pub default: Option<&'static str>,
    /// Whether the value must never be printed or logged.
    pub secret: bool,
    /// Whether upstream (the Go adapter) has this setting.
    pub upstream: bool,
    /// What the setting means, one or two sentences of Markdown.
    pub help: &'static str,
    /// Earlier names that keep working (environment and file), for settings renamed
    /// because their old name said less than they do.
    pub aliases: &'static [&'static str],
}

impl Setting {
    /// The key in the TOML configuration file: the variable name in lower case.
    pub fn file_key(&self) -> String {
        self.env.to_ascii_lowercase()
    }

    /// Whether `name` (a variable name, any case) is this setting's name or alias.
    pub fn is_named(&self, name: &str) -> bool {
        self.env.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

const fn s(
    env: &'static str,
    default: Option<&'static str>,
    upstream: bool,
    help: &'static str,
) -> Setting {
    Setting {
        env,
        default,
        secret: false,
        upstream,
        help,
        aliases: &[],
    }
}

/// A setting that also answers to `aliases`, its earlier names.
const fn renamed(
    env: &'static str,
    aliases: &'static [&'static str],
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        env,
        default,
        secret: false,
        upstream: false,
        help,
        aliases,
    }
}

/// Every setting, in the order of the reference.
pub const SETTINGS: &[Setting] = &[
    Setting {
        env: "USERLI_TOKEN",
        default: None,
        secret: true,
        upstream: true,
        help: "API token for userli's `/api/postfix` endpoints. Required with the `userli` backend. Never logged or printed.",
        aliases: &[],
    },
    Setting {
        env: "SQL_URL",
        default: None,
        secret: true,
        upstream: false,
        help: "The database of `LOOKUP_BACKEND=sql`: `postgres://user:password@host/db`, `mysql://…` (or `mariadb://…`), `sqlite:///path/to/db` (add `?mode=ro`). TLS is used when the server offers it (`sslmode=require` / `ssl-mode=REQUIRED` in the URL to insist). Never logged or printed.",
        aliases: &[],
    },
    Setting {
        env: "SQL_URL_FILE",
        default: None,
        secret: false,
        upstream: false,
        help: "Read `SQL_URL` from this file instead (trailing newline removed); for Docker/systemd secrets. Setting both is an error.",
        aliases: &[],
    },
    Setting {
        env: "USERLI_TOKEN_FILE",
        default: None,
        secret: false,
        upstream: false,
        help: "Read the token from this file instead (trailing newline removed); for Docker/systemd secrets. Setting both is an error.",
        aliases: &[],
    },
    s(
        "USERLI_BASE_URL",
        Some("http://localhost:8000"),
        true,
        "Base URL of userli; with or without a trailing slash, may carry a path prefix. `http` or `https`.",
    ),
    s(
        "SOCKETMAP_LISTEN_ADDR",
        Some(":10001"),
        true,
        "Socketmap listener: `:port` (all interfaces), `host:port`, `[v6]:port`, a UNIX socket path (contains `/`, ends in `.sock`, or starts with `unix:`), or `systemd:NAME` for the sockets systemd passes with `FileDescriptorName=NAME` (socket activation; see `deploy/systemd/socket-activation.conf`).",
    ),
    s(
        "METRICS_LISTEN_ADDR",
        Some(":10002"),
        true,
        "Listener for `/metrics`, `/health` and `/ready`; same syntax. Like the other listeners it has its own connection slots (`METRICS_MAX_CONNECTIONS`) and `IO_TIMEOUT` as the deadline for a request's headers, which also closes a kept-alive connection idle that long; a connection lives at most 2 minutes.",
    ),
    s(
        "METRICS_MAX_CONNECTIONS",
        Some("64"),
        false,
        "Concurrent connections on the metrics listener (Prometheus and health probes need a few); further connections are closed at once and counted in `metrics_connection_pool_full_total`.",
    ),
    s(
        "ALLOWED_CLIENTS",
        Some(crate::access::DEFAULT_ALLOWED_CLIENTS),
        false,
        "Comma-separated networks (CIDR, or single addresses) whose TCP connections every listener accepts; others are closed at once, counted in `connections_denied_total{listener}` and logged (rate-limited). The default admits loopback and private networks only. `any` admits everyone (upstream's behaviour). IPv4-mapped IPv6 peers count as their IPv4 address. UNIX sockets are governed by `UNIX_SOCKET_MODE` instead.",
    ),
    s(
        "POSTFIX_RECIPIENT_DELIMITER",
        Some(""),
        true,
        "Address extension delimiters, as Postfix's `recipient_delimiter`: *each character* is a delimiter. As Postfix does for its own tables, the address as given is looked up first and the address without its extension (local part cut at the first delimiter, `user+tag@x` → `user@x`) only when the first is not found; an address that is a mailbox of its own is never read as an extension of another. SASL logins and quota identities are never stripped. Empty: addresses have no extensions.",
    ),
    s(
        "LOG_LEVEL",
        Some("info"),
        true,
        "`trace`, `debug`, `info`, `warn`, `error` (upstream's `dpanic`, `panic`, `fatal` mean `error`). Addresses appear only at `debug`, where every lookup logs one line: map, key, answer and where it came from (`cache`, `backend`, `stale`, or `none` when the key needed no question), as upstream does.",
    ),
    s(
        "LOG_FORMAT",
        Some("json"),
        false,
        "`json`: one object per line in the Go adapter's zap schema (`level`, `ts`, `logger`, `msg`, then the fields), so its log queries keep working; `text`: one human-readable line per event.",
    ),
    s(
        "LOOKUP_BACKEND",
        Some("userli"),
        false,
        "Where answers come from: `userli` (the HTTP API), `fixture` (a TOML file, see `FIXTURE_PATH`) or `http` (any HTTP/JSON API, described in the config file's `[http]` table; see [Other directories over HTTP](#other-directories-over-http)).",
    ),
    s(
        "FIXTURE_PATH",
        None,
        false,
        "The fixture file for `LOOKUP_BACKEND=fixture`; reloaded on SIGHUP.",
    ),
    s(
        "LOOKUP_TIMEOUT",
        Some("3s"),
        false,
        "Deadline for one lookup (Go duration syntax, at most `60s`); on expiry Postfix gets `TEMP`. Keep it far below Postfix's 100 s.",
    ),
    s(
        "LOOKUP_CACHE_TTL",
        Some("300s"),
        true,
        "How long a found answer is served from the in-process cache. `0` disables the cache (no stored answers, no stale answers).",
    ),
    s(
        "LOOKUP_NEGATIVE_CACHE_TTL",
        Some("30s"),
        false,
        "How long a not-found answer is cached: short, so a new mailbox works quickly, but enough that dictionary attacks do not reach the backend once per probe. `0` disables negative caching.",
    ),
    s(
        "LOOKUP_CACHE_STALE_TTL",
        Some("24h"),
        false,
        "When the backend fails or misses the deadline, an expired *found* answer up to this much older than its TTL is served instead of `TEMP`: mail to every address seen in the last day keeps being accepted through an outage (and across restarts, `LOOKUP_CACHE_PERSIST`). Trade-off: during an outage a mailbox deleted within that day keeps receiving. `0`: never serve stale answers.",
    ),
    s(
        "LOOKUP_NEGATIVE_CACHE_STALE_TTL",
        Some("1h"),
        false,
        "The same for *not-found* answers, kept shorter: during an outage a stale \"no such address\" for one created since is a bounce (Postfix answers 550), while past this window the address gets `TEMP` and the mail is deferred until the backend is back. `0`: never serve a stale not-found.",
    ),
    s(
        "LOOKUP_CACHE_SIZE",
        Some("100000"),
        false,
        "Most cached answers (all maps together); the least recently useful are evicted beyond it. `LOOKUP_CACHE_MAX_BYTES` bounds the same cache in bytes; whichever is reached first applies.",
    ),
    s(
        "LOOKUP_CACHE_MAX_BYTES",
        Some("48MiB"),
        false,
        "Most memory the cached answers may take, keys and bookkeeping included (a cached answer for an ordinary address costs about 0.4 KiB, so the default holds the default 100,000 entries); bytes, or with `KiB`, `MiB`, `GiB`. Keys longer than a valid address (64-octet local part, 255-octet domain) are answered `NOTFOUND` and never cached. `0` disables the cache.",
    ),
    s(
        "LOOKUP_CACHE_PERSIST",
        Some("true"),
        false,
        "`true`: the cached answers (with their ages) are kept in `STATE_DIRECTORY/lookup-cache.json`, written every minute and at shutdown (mode 0600: it holds addresses) and loaded at start, so a restart during a backend outage keeps serving stale answers. Loaded answers are served only when the backend fails or misses the deadline, never instead of a healthy backend. Off (with a warning) when the state directory cannot be written; `false` turns it off.",
    ),
    s(
        "BACKEND_MAX_CONCURRENT_REQUESTS",
        Some("64"),
        false,
        "Most backend calls (HTTP requests to userli) in flight at once; further lookups wait, within their deadline. Also the size of the HTTP keep-alive pool.",
    ),
    s(
        "CIRCUIT_BREAKER_FAILURES",
        Some("5"),
        false,
        "Consecutive backend failures that open the circuit breaker: lookups then get stale answers or `TEMP` at once, without calling the backend. The policy server's quota store (Redis) has its own breaker with the same settings: while open, decisions fail open (or closed) at once. `0` disables both.",
    ),
    s(
        "CIRCUIT_BREAKER_COOLDOWN",
        Some("5s"),
        false,
        "How long the breaker stays open before one probe call is let through; a successful probe closes it.",
    ),
    s(
        "POLICY_LISTEN_ADDR",
        Some(":10003"),
        true,
        "Policy (sending quota) listener, same syntax as the others; `off` disables the policy server.",
    ),
    s(
        "RATE_LIMIT_MESSAGE",
        Some("Rate limit exceeded, please try again later"),
        true,
        "The text Postfix sends to a client over its quota (line breaks are not allowed).",
    ),
    Setting {
        env: "REDIS_URL",
        default: None,
        secret: true,
        upstream: true,
        help: "Keep the quota windows in Redis (`redis://[user:password@]host:port/db`, `rediss://` for TLS, `redis+unix:///path?db=0&pass=…`) so several adapter instances share one quota. Unset: embedded store in `STATE_DIRECTORY`. Upstream required it; here it is optional. User and password are never shown.",
        aliases: &[],
    },
    s(
        "REDIS_TLS_CA_FILE",
        None,
        false,
        "With a `rediss://` `REDIS_URL`: a PEM file with the CA certificate(s) that signed the Redis server's certificate, for a private CA. Unset: the system's trusted CAs.",
    ),
    s(
        "REDIS_TIMEOUT",
        Some("500ms"),
        false,
        "The longest one Redis operation may take, connecting included (at most `LOOKUP_TIMEOUT`, the decision's own deadline); then the decision fails open (or closed, `POLICY_FAIL_MODE`). A Redis that refuses connections fails at once, without waiting.",
    ),
    s(
        "STATE_DIRECTORY",
        Some("/var/lib/userli-postfix-adapter"),
        false,
        "Where the embedded store keeps the quota windows across restarts (systemd sets it for `StateDirectory=`). Created if missing; must be writable. A damaged state file is moved aside (`*.corrupt-<unix time>`) and the windows start empty.",
    ),
    s(
        "POLICY_SENDER_FALLBACK",
        Some("false"),
        false,
        "`true`: rate-limit mail without SASL login by its envelope sender (upstream's behaviour, forgeable on port 25). Default: such mail is not limited.",
    ),
    s(
        "POLICY_COUNT",
        Some("messages"),
        false,
        "What a quota counts: `messages` (upstream) or `recipients` (`recipient_count` of each message).",
    ),
    s(
        "POLICY_OVER_QUOTA_ACTION",
        Some("reject"),
        false,
        "`reject` (5xx, upstream) or `defer` (4xx: the client retries later).",
    ),
    s(
        "POLICY_FAIL_MODE",
        Some("open"),
        false,
        "When the quota lookup or the store fails: `open` lets the message through (`DUNNO`, upstream), `closed` defers it (4xx).",
    ),
    s(
        "POLICY_IDLE_TIMEOUT",
        Some("1h"),
        false,
        "Close a policy connection idle this long (`0` = never); far above Postfix's 300 s reuse window so Postfix never finds a closed socket.",
    ),
    s(
        "SQL_PRESET",
        Some("none"),
        false,
        "`postfixadmin`: queries for PostfixAdmin's schema (`domain`, `mailbox`, `alias`, `alias_domain`: active rows, backup MX domains excluded, comma-separated `goto`, alias domains; passwords in SHA512-/SHA256-CRYPT, BLF-CRYPT (bcrypt), ARGON2I/ARGON2ID and the old MD5-CRYPT, with or without the `{SCHEME}` prefix). `none`: only the `SQL_QUERY_*` given. A `SQL_QUERY_*` overrides the preset's query for its question.",
    ),
    s(
        "SQL_QUERY_DOMAIN",
        None,
        false,
        "A query written as for Postfix's own `pgsql:`/`mysql:` maps, with `%s` (quoted or not) for the key, which is bound as a parameter, never put into the SQL: a row means the domain is hosted. Only `%s`; `%u`/`%d` are refused.",
    ),
    s(
        "SQL_QUERY_MAILBOX",
        None,
        false,
        "As `SQL_QUERY_DOMAIN`: a row means the address is a mailbox.",
    ),
    s(
        "SQL_QUERY_ALIAS",
        None,
        false,
        "As `SQL_QUERY_DOMAIN`: the first column of every row is a destination (comma-separated values are split).",
    ),
    s(
        "SQL_QUERY_SENDERS",
        None,
        false,
        "As `SQL_QUERY_ALIAS`: the logins that may send as the address.",
    ),
    s(
        "SQL_QUERY_AUTH",
        None,
        false,
        "As `SQL_QUERY_DOMAIN`: the first column of the first row is the login's password hash (argon2, SHA-crypt or bcrypt, with or without Dovecot's `{SCHEME}` prefix), verified off the async workers; no row is a failed login.",
    ),
    s(
        "SQL_QUERY_QUOTA",
        None,
        false,
        "As `SQL_QUERY_DOMAIN`: two integer columns, messages per hour and per day (`0`: no limit); no row or no query: no quota.",
    ),
    s(
        "SQL_MAX_CONNECTIONS",
        Some("10"),
        false,
        "Database connections at most (the pool's bound); each statement must finish, waiting for a connection included, within the backend deadline (`LOOKUP_TIMEOUT`).",
    ),
    s(
        "SASL_LISTEN_ADDR",
        Some(""),
        true,
        "Dovecot-protocol SMTP AUTH listener (empty: off, as upstream), e.g. `/var/spool/postfix/userli-postfix-adapter/auth` (a directory of the adapter's own in Postfix's chroot, group `postfix`, mode 2750; see docs/postfix-guide.md) or `127.0.0.1:10004`.",
    ),
    s(
        "SASL_FAILURE_DELAY",
        Some("250ms"),
        false,
        "Delay before the reply to a failed login; doubles with each further failure of the same client address or login. `0` disables. Successful logins are never delayed.",
    ),
    s(
        "SASL_MAX_FAILURE_DELAY",
        Some("4s"),
        false,
        "The longest failure delay (at most `8s`, below Postfix's 10 s auth timeout).",
    ),
    s(
        "SASL_LOCKOUT_FAILURES",
        Some("0"),
        false,
        "Failures after which a client address or login is refused without asking the backend, until `SASL_FAILURE_WINDOW` passes without failures. `0`: no lock-out. Trade-off: the per-login count lets anyone who knows a login lock its owner out (from anywhere, without any password), while the per-address count alone lets a botnet guess one password per address; lock-outs are counted by cause in `sasl_lockouts_total{scope=\"client\"|\"login\"}` so you can see which one bites.",
    ),
    s(
        "SASL_FAILURE_WINDOW",
        Some("15m"),
        false,
        "How long failure counts are remembered after the last failure.",
    ),
    s(
        "SASL_MAX_CONCURRENT_CHECKS",
        Some("32"),
        false,
        "Password checks in flight at most. Logins have their own slots and their own circuit breaker, apart from lookups', so a flood of wrong passwords never slows or fails lookups and never changes `/ready`. Beyond the cap a login is refused at once without asking the backend (the auth connection is dropped, Postfix answers 454 and the client retries).",
    ),
    s(
        "SASL_MAX_CHECKS_PER_CLIENT",
        Some("4"),
        false,
        "Password checks in flight at most for one SMTP client address (Postfix's `rip=`); beyond it, as above.",
    ),
    s(
        "SASL_CACHE_TTL",
        Some("1h"),
        false,
        "After userli passes a login, the same password succeeds this long without asking userli again (as Dovecot's `auth_cache_ttl`); another password always asks userli. A password changed or an account locked in userli therefore stops the *old* password only after this time (or at once after SIGHUP, which drops the login cache); the new password works at once. `0`: always ask userli, the cache then answers only while userli fails. At most `720h`.",
    ),
    s(
        "SASL_CACHE_STALE_TTL",
        Some("24h"),
        false,
        "How long beyond `SASL_CACHE_TTL` a verified login still succeeds, but only while userli fails or misses `LOOKUP_TIMEOUT`: users who logged in during the last day keep sending through an outage. During an outage any other password is answered as an outage (the auth connection is dropped, Postfix answers 454), never as a success or a wrong password, and counts towards the client address's lock-out. Userli refusing the cached password itself (changed, account locked) drops the login at once; a wrong password leaves it, so nobody can erase someone else's outage protection. `0` with `SASL_CACHE_TTL=0`: no login cache. At most `720h`.",
    ),
    s(
        "SASL_CACHE_MAX_BYTES",
        Some("16MiB"),
        false,
        "The most the login cache may hold in memory (about 350 bytes per login: some 45,000 logins); the least recently used go first. `0`: no login cache.",
    ),
    s(
        "SASL_CACHE_PERSIST",
        Some("false"),
        false,
        "`true`: the login cache survives restarts in `STATE_DIRECTORY/sasl-login-cache.json` (mode 0600; argon2id, 64 MiB and 4 passes, no weaker than userli's own hashes; loaded logins are used only while userli fails). Trade-off: it is a second copy of password hashes on the mail host. `false` (the default) keeps verifiers in memory only, as a keyed hash whose key never leaves the process, and removes a file left from when it was on.",
    ),
    s(
        "SOCKETMAP_MAX_REQUEST_SIZE",
        Some("16384"),
        false,
        "Largest accepted request netstring payload in bytes (Postfix sends at most 10000-byte keys); a larger declared length closes the connection before anything is buffered.",
    ),
    renamed(
        "MAX_CONNECTIONS",
        &["SOCKETMAP_MAX_CONNECTIONS"],
        Some("10000"),
        "Concurrent connections per service: socketmap, policy and SASL each have this many slots (earlier name `SOCKETMAP_MAX_CONNECTIONS`, still accepted). Further connections are closed at once and counted (`connection_pool_full_total` and the policy and SASL counterparts).",
    ),
    s(
        "SOCKETMAP_IDLE_TIMEOUT",
        Some("1h"),
        false,
        "Close a connection that has sent nothing for this long (`0` = never). Postfix reconnects transparently.",
    ),
    renamed(
        "IO_TIMEOUT",
        &["SOCKETMAP_IO_TIMEOUT"],
        Some("10s"),
        "On every listener (socketmap, policy, SASL, metrics; earlier name `SOCKETMAP_IO_TIMEOUT`, still accepted): the deadline for a started request (a socketmap netstring, a policy request, a SASL line, the headers of an HTTP request) to arrive in full, counted from its first byte, and for writing a reply; a client trickling bytes is cut off at it.",
    ),
    s(
        "UNIX_SOCKET_MODE",
        Some("0660"),
        false,
        "File mode (octal) of UNIX listener sockets. Upstream used `0666`.",
    ),
    s(
        "SHUTDOWN_GRACE_PERIOD",
        Some("10s"),
        false,
        "On SIGTERM/SIGINT: how long to wait for requests in progress before exiting.",
    ),
    s(
        "CONFIG_FILE",
        None,
        false,
        "A TOML file with any of these settings, keys in lower case (`lookup_timeout = \"5s\"`); same as `--config`. The environment overrides it.",
    ),
];

/// Looks a setting up by variable name (or one of its earlier names).
pub fn find(env: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.env == env || s.aliases.contains(&env))
}

/// The configuration reference as a Markdown table (embedded in the README).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| Environment variable | File key | Default | Meaning |\n|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let default = match s.default {
            Some("") => "(empty)".to_owned(),
            Some(d) => format!("`{d}`"),
            None if s.env == "USERLI_TOKEN" => "required for `userli`".to_owned(),
            None => "—".to_owned(),
        };
        let origin = if s.upstream { "" } else { " *(new)*" };
        let aliases: String = s.aliases.iter().map(|a| format!("<br>`{a}`")).collect();
        out.push_str(&format!(
            "| `{}`{origin}{aliases} | `{}` | {default} | {} |\n",
            s.env,
            s.file_key(),
            s.help
        ));
    }
    out
}

/// The settings as plain text for `--help`.
pub fn help_text() -> String {
    let mut out = String::from(
        "Settings (environment variable; a TOML file via --config takes the same names in lower case):\n",
    );
    for s in SETTINGS {
        let default = match s.default {
            Some(d) => format!(" [default: {d:?}]"),
            None => String::new(),
        };
        out.push_str(&format!("  {}{default}\n", s.env));
    }
    out.push_str(SIGNALS);
    out
}

/// What the signals do, for both helps: how to flush the caches without a restart.
const SIGNALS: &str =
    "\nSignals: SIGTERM/SIGINT drain and exit. SIGHUP reloads the backend (the fixture file),
clears the lookup cache and drops every cached SMTP login, in memory and on disk
(systemctl reload userli-postfix-adapter, or kill -HUP <pid>): a password changed or an
account locked in userli then takes effect at once.
";

/// Every setting with its default and meaning, for `--help` (the long help).
pub fn long_help_text() -> String {
    let mut out = String::from(
        "Settings (environment variables; a TOML file via --config or CONFIG_FILE takes the same\nnames in lower case; the environment wins):\n",
    );
    for s in SETTINGS {
        let default = match s.default {
            Some("") => " [default: empty]".to_owned(),
            Some(d) => format!(" [default: {d}]"),
            None => String::new(),
        };
        out.push_str(&format!("\n  {}{default}\n", s.env));
        let plain: String = s.help.chars().filter(|&c| c != '`' && c != '*').collect();
        let mut line = String::from("     ");
        for word in plain.split_whitespace() {
            if line.len() + word.len() > 88 {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from("     ");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(SIGNALS);
    out
}
