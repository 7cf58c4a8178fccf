use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Sources {
    Sources {
        file: None,
        env: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn err(pairs: &[(&str, &str)]) -> String {
    load(&env(pairs)).unwrap_err().to_string()
}

#[test]
fn upstream_defaults() {
    let c = load(&env(&[("USERLI_TOKEN", "t")])).unwrap();
    assert_eq!(c.backend.kind, BackendKind::Userli);
    assert_eq!(c.backend.userli_base_url.as_str(), "http://localhost:8000/");
    assert_eq!(c.listeners.socketmap, ListenAddr::AnyHost(10001));
    assert_eq!(c.listeners.metrics, ListenAddr::AnyHost(10002));
    assert_eq!(c.lookups.recipient_delimiter, "");
    assert_eq!(c.logging.level, LogLevel::Info);
    assert_eq!(c.lookups.timeout, Duration::from_secs(3));
    assert_eq!(c.listeners.max_connections, 10_000);
    assert_eq!(c.listeners.unix_socket_mode, 0o660);
}

#[test]
fn token_is_required_for_userli_with_upstream_wording() {
    assert!(err(&[]).contains("USERLI_TOKEN is required"));
    assert!(err(&[("USERLI_TOKEN", "")]).contains("USERLI_TOKEN is required"));
}

#[test]
fn all_digit_token_stays_a_string() {
    let c = load(&env(&[("USERLI_TOKEN", "0012345")])).unwrap();
    assert_eq!(c.backend.userli_token.unwrap().expose(), "0012345");
}

#[test]
fn token_never_appears_in_debug_or_effective_output() {
    let c = load(&env(&[("USERLI_TOKEN", "s3cr3t-token")])).unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert!(!c.render_effective().contains("s3cr3t"));
    assert!(
        c.render_effective()
            .contains("USERLI_TOKEN=<redacted>  # environment")
    );
}

#[test]
fn token_file_is_read_and_exclusive() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "from-file").unwrap();
    let path = f.path().to_str().unwrap();
    let c = load(&env(&[("USERLI_TOKEN_FILE", path)])).unwrap();
    assert_eq!(c.backend.userli_token.unwrap().expose(), "from-file");
    assert!(err(&[("USERLI_TOKEN_FILE", path), ("USERLI_TOKEN", "x")]).contains("only one"));
    assert!(err(&[("USERLI_TOKEN_FILE", "/nonexistent/token")]).starts_with("USERLI_TOKEN_FILE"));
}

#[test]
fn errors_name_the_variable_and_origin() {
    let cases = [
        (
            "LOOKUP_TIMEOUT",
            "3",
            "LOOKUP_TIMEOUT (environment): missing unit",
        ),
        (
            "LOOKUP_TIMEOUT",
            "2m",
            "LOOKUP_TIMEOUT (environment): must be more than 0 and at most 60s",
        ),
        ("LOOKUP_TIMEOUT", "0", "LOOKUP_TIMEOUT"),
        (
            "SOCKETMAP_LISTEN_ADDR",
            "localhost",
            "SOCKETMAP_LISTEN_ADDR (environment):",
        ),
        (
            "METRICS_LISTEN_ADDR",
            ":99999",
            "METRICS_LISTEN_ADDR (environment): invalid port",
        ),
        (
            "LOG_LEVEL",
            "verbose",
            "LOG_LEVEL (environment): unknown level \"verbose\" (use trace, debug, info, warn or error)",
        ),
        ("LOG_FORMAT", "xml", "LOG_FORMAT (environment)"),
        (
            "LOOKUP_BACKEND",
            "ldap",
            "LOOKUP_BACKEND (environment): unknown backend",
        ),
        (
            "USERLI_BASE_URL",
            "localhost:8000",
            "USERLI_BASE_URL (environment)",
        ),
        (
            "USERLI_BASE_URL",
            "ftp://x/",
            "USERLI_BASE_URL (environment)",
        ),
        (
            "SOCKETMAP_MAX_CONNECTIONS",
            "lots",
            "SOCKETMAP_MAX_CONNECTIONS (environment): \"lots\" is not a whole number",
        ),
        ("SOCKETMAP_MAX_CONNECTIONS", "0", "out of range"),
        ("UNIX_SOCKET_MODE", "rw", "UNIX_SOCKET_MODE (environment)"),
        ("UNIX_SOCKET_MODE", "0999", "UNIX_SOCKET_MODE"),
    ];
    for (name, value, want) in cases {
        let e = err(&[("USERLI_TOKEN", "t"), (name, value)]);
        assert!(
            e.starts_with(want) || e.contains(want),
            "{name}={value}: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn upstream_log_levels_are_accepted() {
    for level in ["debug", "INFO", "warn", "error", "dpanic", "panic", "fatal"] {
        load(&env(&[("USERLI_TOKEN", "t"), ("LOG_LEVEL", level)])).unwrap();
    }
}

#[test]
fn fixture_backend_needs_no_token_but_a_path() {
    assert!(err(&[("LOOKUP_BACKEND", "fixture")]).contains("FIXTURE_PATH is required"));
    let c = load(&env(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", "x.toml"),
    ]))
    .unwrap();
    assert_eq!(c.backend.kind, BackendKind::Fixture);
    assert!(c.backend.userli_token.is_none());
}

#[test]
fn file_is_layered_under_the_environment() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "userli_token = 12345\nlookup_timeout = \"5s\"\nsocketmap_max_connections = 20\nlog_level = \"debug\""
    )
    .unwrap();
    let mut sources = env(&[("LOG_LEVEL", "warn")]);
    sources.file = Some(f.path().to_owned());
    let c = load(&sources).unwrap();
    assert_eq!(c.backend.userli_token.unwrap().expose(), "12345");
    assert_eq!(c.lookups.timeout, Duration::from_secs(5));
    assert_eq!(c.listeners.max_connections, 20);
    assert_eq!(
        c.logging.level,
        LogLevel::Warn,
        "environment beats the file"
    );
    let shown = c
        .effective
        .iter()
        .find(|(n, _, _)| *n == "LOOKUP_TIMEOUT")
        .unwrap();
    assert_eq!(shown.2, f.path().display().to_string());
}

#[test]
fn config_file_from_env_variable() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "userli_token = \"abc\"").unwrap();
    let c = load(&env(&[("CONFIG_FILE", f.path().to_str().unwrap())])).unwrap();
    assert_eq!(c.backend.userli_token.unwrap().expose(), "abc");
}

#[test]
fn unknown_file_keys_and_bad_files_are_errors() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "userli_token = \"abc\"\nlookup_timout = \"5s\"").unwrap();
    let sources = Sources {
        file: Some(f.path().to_owned()),
        env: HashMap::new(),
    };
    let e = load(&sources).unwrap_err().to_string();
    assert!(e.contains("unknown key \"lookup_timout\""), "{e}");

    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "userli_token = [1, 2]").unwrap();
    let sources = Sources {
        file: Some(f.path().to_owned()),
        env: HashMap::new(),
    };
    assert!(
        load(&sources)
            .unwrap_err()
            .to_string()
            .contains("USERLI_TOKEN")
    );

    let sources = Sources {
        file: Some("/nonexistent/adapter.toml".into()),
        env: HashMap::new(),
    };
    assert!(
        load(&sources)
            .unwrap_err()
            .to_string()
            .contains("cannot read")
    );

    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "this is = not toml =").unwrap();
    let sources = Sources {
        file: Some(f.path().to_owned()),
        env: HashMap::new(),
    };
    assert!(load(&sources).is_err());
}

#[test]
fn unrelated_environment_is_ignored() {
    load(&env(&[
        ("USERLI_TOKEN", "t"),
        ("PATH", "/bin"),
        ("REDIS_URL", "redis://x"),
    ]))
    .unwrap();
}

#[test]
fn renamed_settings_keep_their_earlier_names() {
    for (env_name, value) in [
        ("MAX_CONNECTIONS", "500"),
        ("SOCKETMAP_MAX_CONNECTIONS", "500"),
    ] {
        let c = load(&env(&[("USERLI_TOKEN", "t"), (env_name, value)])).unwrap();
        assert_eq!(c.listeners.max_connections, 500, "{env_name}");
    }
    let c = load(&env(&[
        ("USERLI_TOKEN", "t"),
        ("SOCKETMAP_IO_TIMEOUT", "3s"),
    ]))
    .unwrap();
    assert_eq!(c.listeners.io_timeout, Duration::from_secs(3));
    assert!(
        c.render_effective()
            .contains("IO_TIMEOUT=3s  # environment (as SOCKETMAP_IO_TIMEOUT)"),
        "{}",
        c.render_effective()
    );
    // Errors name what was written.
    assert_eq!(
        err(&[("USERLI_TOKEN", "t"), ("IO_TIMEOUT", "0s")]),
        "IO_TIMEOUT (environment): must be more than 0"
    );
    assert_eq!(
        err(&[("USERLI_TOKEN", "t"), ("SOCKETMAP_IO_TIMEOUT", "0s")]),
        "SOCKETMAP_IO_TIMEOUT (environment): must be more than 0"
    );
    // Both names at once is a mistake.
    assert!(
        err(&[
            ("USERLI_TOKEN", "t"),
            ("MAX_CONNECTIONS", "5"),
            ("SOCKETMAP_MAX_CONNECTIONS", "6")
        ])
        .contains("are the same setting")
    );
    // In the file too, under either name; the environment still wins.
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    writeln!(f, "socketmap_max_connections = 42\nio_timeout = \"4s\"").unwrap();
    let sources = Sources {
        file: Some(f.path().to_owned()),
        env: [("USERLI_TOKEN", "t")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let c = load(&sources).unwrap();
    assert_eq!(
        (c.listeners.max_connections, c.listeners.io_timeout),
        (42, Duration::from_secs(4))
    );
    let mut both = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    writeln!(both, "socketmap_max_connections = 42\nmax_connections = 43").unwrap();
    let sources = Sources {
        file: Some(both.path().to_owned()),
        ..sources
    };
    assert!(
        load(&sources)
            .unwrap_err()
            .to_string()
            .contains("are the same setting")
    );
}

#[test]
fn idle_timeout_zero_means_never() {
    let c = load(&env(&[
        ("USERLI_TOKEN", "t"),
        ("SOCKETMAP_IDLE_TIMEOUT", "0"),
    ]))
    .unwrap();
    assert_eq!(c.listeners.socketmap_idle_timeout, None);
}

#[test]
fn embedding_needs_no_backend_settings() {
    let c = Config::embedded();
    assert_eq!(c.backend.kind, BackendKind::Custom);
    assert!(c.backend.fixture_path.is_none() && c.backend.userli_token.is_none());
    assert!(c.listeners.policy.is_none(), "policy off, as for_fixture");
    assert_eq!(c.lookups.timeout, Duration::from_secs(3), "defaults");
}

#[test]
fn sections_produce_their_components_settings() {
    let c = load(&env(&[
        ("USERLI_TOKEN", "t"),
        ("LOOKUP_TIMEOUT", "2s"),
        ("CIRCUIT_BREAKER_FAILURES", "7"),
        ("SASL_MAX_CHECKS_PER_CLIENT", "2"),
        ("POLICY_COUNT", "recipients"),
        ("IO_TIMEOUT", "4s"),
    ]))
    .unwrap();
    let sasl = c.sasl.settings(&c.lookups);
    assert_eq!(
        (
            sasl.timeout,
            sasl.breaker_failures,
            sasl.max_checks_per_client
        ),
        (Duration::from_secs(2), 7, 2)
    );
    let policy = c.policy.settings(&c.lookups);
    assert_eq!(policy.count, crate::policy::CountMode::Recipients);
    assert_eq!(policy.store_breaker_failures, 7);
    let cache = c.lookups.cache_settings();
    assert_eq!(
        (cache.deadline, cache.call_timeout),
        (Duration::from_secs(2), Duration::from_secs(4))
    );
    assert_eq!(
        c.listeners.socketmap_limits().io_timeout,
        Duration::from_secs(4)
    );
    assert_eq!(
        c.listeners.policy_limits().io_timeout,
        Duration::from_secs(4)
    );
}

#[test]
fn for_fixture_builds() {
    let c = Config::for_fixture("/x.toml");
    assert_eq!(
        c.backend.fixture_path.as_deref(),
        Some(Path::new("/x.toml"))
    );
}

#[test]
fn policy_settings() {
    let c = load(&env(&[("USERLI_TOKEN", "t")])).unwrap();
    assert_eq!(
        c.listeners.policy,
        Some(ListenAddr::AnyHost(10003)),
        "upstream default"
    );
    assert_eq!(
        c.policy.rate_limit_message,
        "Rate limit exceeded, please try again later"
    );
    assert!(!c.policy.sender_fallback && !c.policy.defer_over_quota && !c.policy.fail_closed);
    let c = load(&env(&[
        ("USERLI_TOKEN", "t"),
        ("POLICY_LISTEN_ADDR", "off"),
        ("POLICY_COUNT", "recipients"),
        ("POLICY_OVER_QUOTA_ACTION", "defer"),
        ("POLICY_FAIL_MODE", "closed"),
        ("POLICY_SENDER_FALLBACK", "true"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:6379/0"),
    ]))
    .unwrap();
    assert_eq!(c.listeners.policy, None);
    assert!(c.policy.count_recipients && c.policy.defer_over_quota && c.policy.fail_closed);
    assert!(
        !c.render_effective().contains(":pw@"),
        "REDIS_URL is redacted"
    );
    for (name, value) in [
        ("RATE_LIMIT_MESSAGE", "two\nlines"),
        ("POLICY_COUNT", "bytes"),
        ("POLICY_FAIL_MODE", "sideways"),
        ("REDIS_URL", "localhost:6379"),
    ] {
        let e = err(&[("USERLI_TOKEN", "t"), (name, value)]);
        assert!(e.starts_with(name), "{name}: {e}");
    }
}
