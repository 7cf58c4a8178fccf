use super::file::LoginCacheFile;
use super::*;

fn settings(ttl: Duration, stale_ttl: Duration) -> LoginCacheSettings {
    LoginCacheSettings {
        ttl,
        stale_ttl,
        max_bytes: 1 << 20,
        persist: false,
    }
}

fn cache(ttl: Duration, stale_ttl: Duration) -> Arc<LoginCache> {
    Arc::new(LoginCache::new(settings(ttl, stale_ttl)))
}

const HOUR: Duration = Duration::from_secs(3600);
const LOGIN: &str = "user@example.org";

#[tokio::test]
async fn a_remembered_password_is_fresh_within_the_ttl_and_no_other_is() {
    let c = cache(HOUR, HOUR);
    assert!(
        c.answers_fresh(LOGIN, b"right").is_none(),
        "nothing known yet"
    );
    c.remember(LOGIN, b"right");
    assert!(c.answers_fresh(LOGIN, b"right").is_some());
    assert!(c.answers_fresh(LOGIN, b"wrong").is_none());
    assert!(c.answers_fresh(LOGIN, b"right\0").is_none());
    assert!(c.answers_fresh("other@example.org", b"right").is_none());
}

#[tokio::test]
async fn with_no_ttl_nothing_is_fresh_but_an_outage_is_answered() {
    let c = cache(Duration::ZERO, HOUR);
    c.remember(LOGIN, b"right");
    assert!(c.answers_fresh(LOGIN, b"right").is_none());
    assert_eq!(
        c.answer_in_outage(LOGIN, b"right", None).await,
        OutageAnswer::Verified
    );
    assert_eq!(
        c.answer_in_outage(LOGIN, b"wrong", None).await,
        OutageAnswer::Refuted
    );
    assert_eq!(
        c.answer_in_outage("other@example.org", b"right", None)
            .await,
        OutageAnswer::Unknown
    );
}

#[tokio::test]
async fn past_the_stale_window_nothing_is_known() {
    let c = cache(Duration::from_millis(300), Duration::from_millis(600));
    c.remember(LOGIN, b"right");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(c.answers_fresh(LOGIN, b"right").is_none(), "past the TTL");
    assert_eq!(
        c.answer_in_outage(LOGIN, b"right", None).await,
        OutageAnswer::Verified,
        "within the stale window"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        c.answer_in_outage(LOGIN, b"right", None).await,
        OutageAnswer::Unknown
    );
}

#[tokio::test]
async fn only_a_refusal_of_the_cached_password_forgets_it_and_clearing_forgets_all() {
    let c = cache(HOUR, HOUR);
    c.remember(LOGIN, b"right");
    c.remember("other@example.org", b"pw");
    // Someone else's wrong password says nothing about the cached one.
    c.forget_if_refused(LOGIN, b"guess", true);
    assert!(c.answers_fresh(LOGIN, b"right").is_some());
    // The cached password itself refused: changed, or the account locked.
    c.forget_if_refused(LOGIN, b"right", false);
    assert!(c.answers_fresh(LOGIN, b"right").is_none());
    assert_eq!(
        c.answer_in_outage(LOGIN, b"right", None).await,
        OutageAnswer::Unknown
    );
    assert!(c.answers_fresh("other@example.org", b"pw").is_some());
    c.clear();
    assert!(c.answers_fresh("other@example.org", b"pw").is_none());
    assert_eq!(c.exact_size().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_loaded_from_disk_goes_only_on_a_screened_refusal() {
    let dir = tempfile::tempdir().unwrap();
    keep_login_on_disk(dir.path()).await;
    let second = load_kept_logins(dir.path());
    // Refused without reaching the directory (say, an over-long password while
    // userli is down): kept.
    second.forget_if_refused(LOGIN, b"x", false);
    assert_eq!(second.exact_size().0, 1);
    second.forget_if_refused(LOGIN, b"guess", true);
    assert_eq!(second.exact_size().0, 0);
}

#[tokio::test]
async fn a_new_password_replaces_the_old_one() {
    let c = cache(HOUR, HOUR);
    c.remember(LOGIN, b"old");
    c.remember(LOGIN, b"new");
    assert!(c.answers_fresh(LOGIN, b"old").is_none());
    assert!(c.answers_fresh(LOGIN, b"new").is_some());
    assert_eq!(
        c.answer_in_outage(LOGIN, b"old", None).await,
        OutageAnswer::Refuted
    );
}

#[tokio::test]
async fn the_cache_is_bounded_in_bytes() {
    let c = Arc::new(LoginCache::new(LoginCacheSettings {
        max_bytes: 100 * 1024,
        ..settings(HOUR, HOUR)
    }));
    for i in 0..5_000 {
        c.remember(&format!("user{i}@example.org"), b"pw");
    }
    let (entries, bytes) = c.exact_size();
    assert!(bytes <= 100 * 1024, "{bytes} bytes");
    assert!((100..400).contains(&entries), "{entries} logins in 100 KiB");
}

#[test]
fn the_memory_verifier_is_keyed_per_process() {
    let one = LoginCache::new(settings(HOUR, HOUR));
    let two = LoginCache::new(settings(HOUR, HOUR));
    assert_eq!(
        one.keyed_hash(LOGIN, b"right"),
        one.keyed_hash(LOGIN, b"right")
    );
    assert_ne!(
        one.keyed_hash(LOGIN, b"right"),
        two.keyed_hash(LOGIN, b"right"),
        "another key, another hash: nothing to precompute"
    );
    // Login and password cannot be shifted into each other.
    assert_ne!(
        one.keyed_hash("a@example.org", b"x"),
        one.keyed_hash("a@example.or", b"gx")
    );
}

/// Waits until the background argon2id hash of every remembered login is there.
async fn until_hashed(c: &LoginCache, logins: usize) {
    let started = Instant::now();
    while c.export().len() < logins {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "argon2id verifiers never computed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn persisted(ttl: Duration, stale_ttl: Duration) -> Arc<LoginCache> {
    Arc::new(LoginCache::new(LoginCacheSettings {
        persist: true,
        ..settings(ttl, stale_ttl)
    }))
}

/// `LOGIN` with `right` verified by a cache that keeps logins in `dir`, saved.
async fn keep_login_on_disk(dir: &std::path::Path) {
    let metrics = crate::metrics::Metrics::new().unwrap();
    let cache = persisted(HOUR, HOUR);
    let file = LoginCacheFile::open(dir, cache.clone(), &metrics).unwrap();
    cache.remember(LOGIN, b"right");
    until_hashed(&cache, 1).await;
    file.save().await;
}

/// A restarted cache (a new key) loading the logins kept in `dir`.
fn load_kept_logins(dir: &std::path::Path) -> Arc<LoginCache> {
    let cache = persisted(HOUR, HOUR);
    LoginCacheFile::open(dir, cache.clone(), &crate::metrics::Metrics::new().unwrap()).unwrap();
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_verifiers_survive_a_restart_as_stale_only_argon2id_hashes() {
    let dir = tempfile::tempdir().unwrap();
    keep_login_on_disk(dir.path()).await;

    let path = dir.path().join(file::LOGIN_CACHE_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("right") && !text.contains("cmlnaHQ"),
        "no password in the file, not even in base64: {text}"
    );
    let contents: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(contents["argon2id"]["m"], 65536);
    assert_eq!(contents["argon2id"]["t"], 4);

    // The restart: a new key, the file loaded.
    let second = load_kept_logins(dir.path());
    assert_eq!(second.exact_size().0, 1);
    assert!(
        second.answers_fresh(LOGIN, b"right").is_none(),
        "loaded: used only when the backend fails"
    );
    assert_eq!(
        second.answer_in_outage(LOGIN, b"wrong", None).await,
        OutageAnswer::Refuted
    );
    assert_eq!(
        second.answer_in_outage(LOGIN, b"right", None).await,
        OutageAnswer::Verified
    );
    // Proven once, the keyed hash answers next time; still not fresh.
    assert!(second.entries.get(LOGIN).unwrap().keyed.is_some());
    assert!(second.answers_fresh(LOGIN, b"right").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_login_file_is_set_aside_and_an_unwanted_one_removed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = crate::metrics::Metrics::new().unwrap();
    let path = dir.path().join(file::LOGIN_CACHE_FILE);
    std::fs::write(&path, r#"{"version":1,"argon2id":{"m":65536,"t":4,"p":1},"entries":[{"login":"a@example.org","salt":"!!","hash":"","age":1}]}"#).unwrap();
    let c = persisted(HOUR, HOUR);
    assert!(LoginCacheFile::open(dir.path(), c.clone(), &metrics).is_some());
    assert_eq!(c.exact_size().0, 0);
    assert!(!path.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("sasl-login-cache.json.corrupt-")),
        "{names:?}"
    );
    assert!(
        metrics
            .render()
            .contains(r#"state_files_damaged_total{file="sasl-login-cache"} 1"#)
    );

    std::fs::write(&path, "{}").unwrap();
    LoginCacheFile::remove_leftover(dir.path());
    assert!(!path.exists(), "persistence off: no password hashes left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_foreign_entries_are_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = crate::metrics::Metrics::new().unwrap();
    let path = dir.path().join(file::LOGIN_CACHE_FILE);
    let salt = "AAAAAAAAAAAAAAAAAAAAAA";
    let hash = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let entry = |login: &str, age: &str| {
        format!(r#"{{"login":"{login}","salt":"{salt}","hash":"{hash}","age":{age}}}"#)
    };
    std::fs::write(
        &path,
        format!(
            r#"{{"version":1,"argon2id":{{"m":65536,"t":4,"p":1}},"entries":[{},{},{},{}]}}"#,
            entry("young@example.org", "10"),
            entry("old@example.org", "7300"),
            entry("negative@example.org", "-1"),
            entry("not a login", "10"),
        ),
    )
    .unwrap();
    let c = persisted(HOUR, HOUR);
    LoginCacheFile::open(dir.path(), c.clone(), &metrics).unwrap();
    assert_eq!(c.exact_size().0, 1, "only the young, valid one");
    assert!(path.exists());

    // Made with another cost: they could not be checked, so none is loaded.
    std::fs::write(
        &path,
        format!(
            r#"{{"version":1,"argon2id":{{"m":1024,"t":1,"p":1}},"entries":[{}]}}"#,
            entry("young@example.org", "10")
        ),
    )
    .unwrap();
    let c = persisted(HOUR, HOUR);
    LoginCacheFile::open(dir.path(), c.clone(), &metrics).unwrap();
    assert_eq!(c.exact_size().0, 0);
}

/// How long loading 50,000 kept logins takes, and one argon2id check (printed;
/// `cargo test --release` for the figures in the README).
#[test]
fn a_login_file_of_50k_entries_loads_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = crate::metrics::Metrics::new().unwrap();
    let salt = "AAAAAAAAAAAAAAAAAAAAAA";
    let hash = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let entries: Vec<String> = (0..50_000)
        .map(|i| {
            format!(
                r#"{{"login":"user{i}@example.org","salt":"{salt}","hash":"{hash}","age":60.5}}"#
            )
        })
        .collect();
    let text = format!(
        r#"{{"version":1,"argon2id":{{"m":65536,"t":4,"p":1}},"entries":[{}]}}"#,
        entries.join(",")
    );
    std::fs::write(dir.path().join(file::LOGIN_CACHE_FILE), &text).unwrap();
    let c = Arc::new(LoginCache::new(LoginCacheSettings {
        max_bytes: 64 << 20,
        ..settings(HOUR, HOUR)
    }));
    let started = Instant::now();
    LoginCacheFile::open(dir.path(), c.clone(), &metrics).unwrap();
    let took = started.elapsed();
    assert_eq!(c.exact_size().0, 50_000);

    let started = Instant::now();
    let hashed = Argon2Cost::CURRENT.hash(b"password", &[7u8; SALT_LEN]);
    let argon2 = started.elapsed();
    assert!(hashed.is_some());
    eprintln!(
        "50k kept logins ({} bytes) loaded in {took:?}; one argon2id check (m=64 MiB, t=4) {argon2:?}",
        text.len()
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// With logins kept on disk, an outage answer for an unknown login takes as long
/// as one for a login in the file (whose check costs an argon2id hash), so the
/// timing does not tell who was active in the last day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_login_takes_as_long_as_a_kept_one_during_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    keep_login_on_disk(dir.path()).await;
    let second = load_kept_logins(dir.path());

    let started = Instant::now();
    assert_eq!(
        second.answer_in_outage(LOGIN, b"guess", None).await,
        OutageAnswer::Refuted
    );
    let kept = started.elapsed();
    let started = Instant::now();
    assert_eq!(
        second
            .answer_in_outage("nobody@example.org", b"guess", None)
            .await,
        OutageAnswer::Unknown
    );
    let unknown = started.elapsed();
    assert!(
        unknown * 2 >= kept,
        "unknown {unknown:?} against kept {kept:?}"
    );
}
