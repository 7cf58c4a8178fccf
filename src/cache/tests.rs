use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn settings() -> CacheSettings {
    CacheSettings {
        positive_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(60),
        negative_stale_ttl: Duration::from_secs(60),
        max_entries: 1000,
        max_bytes: 64 << 20,
        deadline: Duration::from_millis(300),
        call_timeout: Duration::from_secs(5),
    }
}

fn counter() -> IntCounterVec {
    IntCounterVec::new(prometheus::Opts::new("c", "c"), &["handler", "result"]).unwrap()
}

fn cache(s: CacheSettings) -> (Arc<AnswerCache<String, bool>>, IntCounterVec) {
    let c = counter();
    (Arc::new(AnswerCache::new(s, c.clone())), c)
}

fn n(c: &IntCounterVec, result: &str) -> u64 {
    c.with_label_values(&["t", result]).get()
}

/// A fetch that counts calls and answers `answer` after `delay`.
fn fetch(
    calls: &Arc<AtomicUsize>,
    delay: Duration,
    answer: Result<bool, ()>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<bool, BackendError>> + Send>> + use<>
{
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            answer.map_err(|()| BackendError::InvalidResponse("HTTP 500".into()))
        })
    }
}

#[tokio::test]
async fn second_lookup_is_a_hit() {
    let (c, m) = cache(settings());
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v = c
            .get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
            .await;
        assert!(v.unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((n(&m, "miss"), n(&m, "hit")), (1, 2));
}

#[tokio::test]
async fn negative_answers_have_their_own_ttl() {
    let (c, m) = cache(CacheSettings {
        negative_ttl: Duration::from_millis(100),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let ask = |c: Arc<AnswerCache<String, bool>>, calls: Arc<AtomicUsize>| async move {
        c.get(
            "t",
            "nobody".into(),
            fetch(&calls, Duration::ZERO, Ok(false)),
        )
        .await
    };
    assert!(!ask(c.clone(), calls.clone()).await.unwrap());
    assert!(!ask(c.clone(), calls.clone()).await.unwrap());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "dictionary probes stop at the cache"
    );
    assert_eq!(n(&m, "negative_hit"), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    ask(c, calls.clone()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "expired negative entry refetched"
    );
}

#[tokio::test]
async fn zero_negative_ttl_never_stores_not_found() {
    let (c, _) = cache(CacheSettings {
        negative_ttl: Duration::ZERO,
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        c.get("t", "x".into(), fetch(&calls, Duration::ZERO, Ok(false)))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_lookups_of_a_cold_key_make_one_call() {
    let (c, m) = cache(settings());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let f = fetch(&calls, Duration::from_millis(50), Ok(true));
        tasks.push(tokio::spawn(
            async move { c.get("t", "cold".into(), f).await },
        ));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(n(&m, "miss") + n(&m, "coalesced") + n(&m, "hit"), 1000);
    assert!(n(&m, "coalesced") > 0);
}

#[tokio::test]
async fn a_caller_giving_up_does_not_cancel_the_call() {
    let (c, _) = cache(settings());
    let calls = Arc::new(AtomicUsize::new(0));
    let first = {
        let c = c.clone();
        let f = fetch(&calls, Duration::from_millis(100), Ok(true));
        tokio::spawn(async move { c.get("t", "k".into(), f).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.abort();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v = c
        .get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(false)))
        .await;
    assert!(
        v.unwrap(),
        "the aborted caller's call finished and filled the cache"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn errors_are_never_cached() {
    let (c, m) = cache(settings());
    let calls = Arc::new(AtomicUsize::new(0));
    assert!(
        c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Err(())))
            .await
            .is_err()
    );
    assert!(
        c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
            .await
            .unwrap()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(n(&m, "error"), 1);
}

#[tokio::test]
async fn stale_entry_served_when_the_backend_fails() {
    let (c, m) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(50),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let v = c
        .get("t", "k".into(), fetch(&calls, Duration::ZERO, Err(())))
        .await;
    assert!(v.unwrap(), "stale answer instead of TEMP");
    assert_eq!(n(&m, "stale"), 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the backend was asked first"
    );
}

#[tokio::test]
async fn stale_entry_served_at_the_deadline_when_the_backend_hangs() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(50),
        deadline: Duration::from_millis(100),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let started = std::time::Instant::now();
    let v = c
        .get(
            "t",
            "k".into(),
            fetch(&calls, Duration::from_secs(3), Ok(false)),
        )
        .await;
    assert!(v.unwrap());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn unseen_key_with_a_hanging_backend_times_out_at_the_deadline() {
    let (c, _) = cache(CacheSettings {
        deadline: Duration::from_millis(100),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let r = c
        .get(
            "t",
            "new".into(),
            fetch(&calls, Duration::from_secs(3), Ok(true)),
        )
        .await;
    assert!(matches!(r, Err(BackendError::Timeout)));
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn stale_window_is_bounded() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(30),
        stale_ttl: Duration::from_millis(30),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .get("t", "k".into(), fetch(&calls, Duration::ZERO, Err(())))
        .await;
    assert!(r.is_err(), "too old to serve");
}

/// A stale "no" for an address created since would be a bounce: not-found
/// answers have their own, shorter stale window.
#[tokio::test]
async fn a_not_found_answer_is_served_stale_only_within_its_own_window() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(30),
        negative_ttl: Duration::from_millis(30),
        stale_ttl: Duration::from_secs(60),
        negative_stale_ttl: Duration::from_millis(30),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    for (key, answer) in [("found", true), ("not-found", false)] {
        c.get("t", key.into(), fetch(&calls, Duration::ZERO, Ok(answer)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let found = c
        .get("t", "found".into(), fetch(&calls, Duration::ZERO, Err(())))
        .await;
    assert!(found.unwrap(), "found: within its stale window");
    let not_found = c
        .get(
            "t",
            "not-found".into(),
            fetch(&calls, Duration::ZERO, Err(())),
        )
        .await;
    assert!(not_found.is_err(), "not found: past its stale window, TEMP");
    // Loaded from a snapshot, the same rule.
    assert_eq!(
        c.import([
            ("old-no".to_owned(), false, Duration::from_millis(70)),
            ("old-yes".to_owned(), true, Duration::from_millis(70)),
        ]),
        1
    );
}

#[tokio::test]
async fn disabled_cache_stores_nothing() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::ZERO,
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test]
async fn size_is_bounded() {
    let (c, _) = cache(CacheSettings {
        max_entries: 100,
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..1000 {
        c.get(
            "t",
            format!("k{i}"),
            fetch(&calls, Duration::ZERO, Ok(true)),
        )
        .await
        .unwrap();
    }
    assert!(c.entry_count() <= 110, "{} entries", c.entry_count());
}

#[tokio::test]
async fn bytes_are_bounded_whatever_the_key_length() {
    let max_bytes = 1 << 20;
    let (c, _) = cache(CacheSettings {
        max_bytes,
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    // 1000 keys of 10 KB would be 10 MB; the cache keeps at most 1 MiB of them.
    for i in 0..1000 {
        let key = format!("k{i}{}", "x".repeat(10_000));
        c.get("t", key, fetch(&calls, Duration::ZERO, Ok(true)))
            .await
            .unwrap();
    }
    let weighted = c.weighted_bytes();
    assert!(weighted <= max_bytes, "{weighted} bytes weighed");
    assert!(weighted > max_bytes / 2, "the budget is used: {weighted}");
    let held = c.entry_count();
    assert!(
        (50..=104).contains(&held),
        "{held} entries of 10 KB in 1 MiB"
    );
}

#[test]
fn an_entry_weighs_at_least_its_share_of_the_byte_budget() {
    let s = CacheSettings {
        max_entries: 100,
        max_bytes: 10_000,
        ..settings()
    };
    assert_eq!(s.weight(1), 100);
    assert_eq!(s.weight(5000), 5000);
    assert!(!CacheSettings { max_bytes: 0, ..s }.enabled());
}

#[tokio::test]
async fn refreshed_entries_get_a_new_lifetime() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(60),
        stale_ttl: Duration::ZERO,
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(70)).await;
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.get("t", "k".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "third lookup is a hit on the refreshed entry"
    );
}

#[tokio::test]
async fn a_call_in_flight_during_a_clear_neither_stores_nor_is_joined() {
    let (c, _) = cache(settings());
    let calls = Arc::new(AtomicUsize::new(0));
    // Started before the reload: the backend still says "no".
    let before = tokio::spawn({
        let (c, calls) = (c.clone(), calls.clone());
        async move {
            c.get(
                "t",
                "new".into(),
                fetch(&calls, Duration::from_millis(100), Ok(false)),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.clear();
    // After the reload the backend says "yes": a lookup now must not join the old
    // call, and the old call's answer must not be stored.
    let after = c
        .get("t", "new".into(), fetch(&calls, Duration::ZERO, Ok(true)))
        .await;
    assert!(after.unwrap());
    assert!(
        !before.await.unwrap().unwrap(),
        "the old caller gets its answer"
    );
    let later = c
        .get("t", "new".into(), fetch(&calls, Duration::ZERO, Ok(false)))
        .await;
    assert!(later.unwrap(), "the post-reload answer is the one cached");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_source_of_each_answer_is_noted_for_the_request_log() {
    let (c, _) = cache(CacheSettings {
        positive_ttl: Duration::from_millis(30),
        ..settings()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let get = |answer| c.get("t", "k".to_owned(), fetch(&calls, Duration::ZERO, answer));
    assert_eq!(AnswerSource::track(get(Ok(true))).await.1, "backend");
    assert_eq!(AnswerSource::track(get(Ok(true))).await.1, "cache");
    tokio::time::sleep(Duration::from_millis(40)).await;
    let (answer, source) = AnswerSource::track(get(Err(()))).await;
    assert_eq!((answer.unwrap(), source), (true, "stale"));
    assert_eq!(AnswerSource::track(async {}).await.1, "none");
}

#[tokio::test]
async fn imported_answers_are_stale_only_and_old_ones_are_dropped() {
    let (c, _) = cache(settings());
    let imported = c.import([
        ("fresh-looking".to_owned(), true, Duration::from_secs(1)),
        ("old".to_owned(), true, Duration::from_secs(110)),
        (
            "past-the-stale-window".to_owned(),
            true,
            Duration::from_secs(121),
        ),
    ]);
    assert_eq!(imported, 2, "60 s TTL + 60 s stale window");
    let calls = Arc::new(AtomicUsize::new(0));
    // A healthy backend is asked, even for an answer loaded a second old.
    let fresh = c
        .get(
            "t",
            "fresh-looking".to_owned(),
            fetch(&calls, Duration::ZERO, Ok(false)),
        )
        .await;
    assert_eq!((fresh.unwrap(), calls.load(Ordering::SeqCst)), (false, 1));
    // A failing one: the loaded answer, stale.
    let (answer, source) = AnswerSource::track(c.get(
        "t",
        "old".to_owned(),
        fetch(&calls, Duration::ZERO, Err(())),
    ))
    .await;
    assert_eq!((answer.unwrap(), source), (true, "stale"));
    assert!(
        c.get(
            "t",
            "past-the-stale-window".to_owned(),
            fetch(&calls, Duration::ZERO, Err(()))
        )
        .await
        .is_err()
    );
    // An answer already held is not replaced by a loaded one.
    assert_eq!(
        c.import([("fresh-looking".to_owned(), true, Duration::ZERO)]),
        0
    );
    let exported = c.export();
    assert!(exported.iter().any(|(k, v, _)| k == "fresh-looking" && !*v));
}

#[tokio::test]
async fn a_snapshot_brings_the_socketmap_answers_back_as_stale_ones() {
    use postfix_adapter_backend::testkit::{Fault, StubBackend};
    use postfix_adapter_backend::{Address, LookupBackend};
    let addr = |s: &str| Address::parse(s).unwrap();
    let stub = StubBackend::new()
        .domain("example.org")
        .mailbox("user@example.org")
        .alias("a@example.org", &["b@example.org"]);
    let first = CachedBackend::new(Arc::new(stub), settings(), counter());
    assert!(first.domain_exists("example.org").await.unwrap());
    assert!(
        first
            .mailbox_exists(&addr("user@example.org"))
            .await
            .unwrap()
    );
    assert!(
        !first
            .mailbox_exists(&addr("nobody@example.org"))
            .await
            .unwrap()
    );
    assert_eq!(
        first.aliases(&addr("a@example.org")).await.unwrap(),
        ["b@example.org"]
    );
    let bytes = first.snapshot();

    // After a restart, with the backend down for every key.
    let mut down = StubBackend::new();
    for key in [
        "example.org",
        "user@example.org",
        "nobody@example.org",
        "a@example.org",
        "new@example.org",
    ] {
        down = down.fault(key, Fault::Unavailable);
    }
    let second = CachedBackend::new(Arc::new(down), settings(), counter());
    assert_eq!(second.restore(&bytes, Duration::from_secs(5)).unwrap(), 4);
    assert!(second.domain_exists("example.org").await.unwrap());
    assert!(
        second
            .mailbox_exists(&addr("user@example.org"))
            .await
            .unwrap()
    );
    assert!(
        !second
            .mailbox_exists(&addr("nobody@example.org"))
            .await
            .unwrap()
    );
    assert_eq!(
        second.aliases(&addr("a@example.org")).await.unwrap(),
        ["b@example.org"]
    );
    assert!(
        second
            .mailbox_exists(&addr("new@example.org"))
            .await
            .is_err(),
        "unseen: an error"
    );

    assert!(
        second
            .restore(b"{\"version\":1,\"entries\":[", Duration::ZERO)
            .is_err()
    );
    assert!(
        second
            .restore(br#"{"version":9,"entries":[]}"#, Duration::ZERO)
            .is_err()
    );
}

/// How long 100,000 loaded answers take (printed; `cargo test --release` for the
/// figure in the README).
#[test]
fn a_snapshot_of_100k_answers_loads_quickly() {
    use postfix_adapter_backend::testkit::StubBackend;
    let mut text = String::from(r#"{"version":1,"entries":["#);
    for i in 0..100_000 {
        if i > 0 {
            text.push(',');
        }
        if i % 4 == 0 {
            text.push_str(&format!(
                r#"{{"q":"alias","k":"alias{i}@example.org","a":["user{i}@example.org"],"age":30.5}}"#
            ));
        } else {
            text.push_str(&format!(
                r#"{{"q":"mailbox","k":"user{i}@example.org","a":true,"age":30.5}}"#
            ));
        }
    }
    text.push_str("]}");
    let cache = CachedBackend::new(
        Arc::new(StubBackend::new()),
        CacheSettings {
            max_entries: 200_000,
            ..settings()
        },
        counter(),
    );
    let started = std::time::Instant::now();
    let loaded = cache.restore(text.as_bytes(), Duration::ZERO).unwrap();
    let took = started.elapsed();
    eprintln!(
        "100k snapshot entries ({} bytes) loaded in {took:?}",
        text.len()
    );
    assert_eq!(loaded, 100_000);
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn an_unwritable_state_directory_turns_the_snapshot_off() {
    use postfix_adapter_backend::testkit::StubBackend;
    let dir = tempfile::tempdir().unwrap();
    // Root may write anywhere: a regular file where the directory should be
    // stands in for a directory it may not write.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let cache = Arc::new(CachedBackend::new(
        Arc::new(StubBackend::new()),
        settings(),
        counter(),
    ));
    let metrics = crate::metrics::Metrics::new().unwrap();
    assert!(
        persist::CachePersistence::open(&file.join("state"), cache.clone(), &metrics).is_none()
    );
    assert!(persist::CachePersistence::open(dir.path(), cache, &metrics).is_some());
    assert!(!dir.path().join(".lookup-cache-write-test").exists());
}

#[tokio::test]
async fn a_snapshot_written_in_the_future_loads_nothing() {
    use postfix_adapter_backend::testkit::StubBackend;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(persist::SNAPSHOT_FILE);
    let snapshot = r#"{"version":1,"entries":[{"q":"domain","k":"example.org","a":true,"age":0.0},{"q":"domain","k":"example.net","a":true,"age":1.0}]}"#;
    let open = |cache: Arc<CachedBackend>| {
        let metrics = crate::metrics::Metrics::new().unwrap();
        persist::CachePersistence::open(dir.path(), cache, &metrics).unwrap()
    };
    let entries = |cache: &CachedBackend| {
        let held: serde_json::Value = serde_json::from_slice(&cache.snapshot()).unwrap();
        held["entries"].as_array().unwrap().len()
    };
    let new_cache = || {
        Arc::new(CachedBackend::new(
            Arc::new(StubBackend::new()),
            settings(),
            counter(),
        ))
    };

    std::fs::write(&path, snapshot).unwrap();
    let cache = new_cache();
    open(cache.clone());
    assert_eq!(entries(&cache), 2, "written now: both loaded");

    // A clock set back since the write: the answers' ages cannot be known.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    let cache = new_cache();
    open(cache.clone());
    assert_eq!(entries(&cache), 0, "none loaded");
}
