use super::*;
use postfix_adapter_backend::testkit::{Fault, StubBackend};

/// A directory with a mailbox `first-last@` next to an alias `first@`, as in the
/// demo data; every question about `broken-x@` fails, and so does the mailbox
/// question about `mbxdown-x@`; every call is recorded.
fn directory() -> StubBackend {
    StubBackend::new()
        .domain("example.org")
        .domain("xn--exmple-cua.org")
        .mailbox("first-last@example.org")
        .mailbox("user@example.org")
        .mailbox("user2@example.org")
        .mailbox("quiet-box@example.org")
        // A mailbox whose own senders row is empty.
        .senders_of("quiet-box@example.org", &[])
        .alias("first@example.org", &["user2@example.org"])
        .alias("broken@example.org", &["user2@example.org"])
        .alias("mbxdown@example.org", &["user2@example.org"])
        // An alias of its own whose senders list is empty.
        .alias("first-sales@example.org", &["sales@elsewhere.example"])
        .alias("comma@example.org", &["x@evil.example,root@example.org"])
        .alias("space@example.org", &["a@x.org b@y.org"])
        .alias("control@example.org", &["a@x.org\u{1}"])
        .alias("fine@example.org", &["a@x.org", "", "b@y.org"])
        .senders_of("first@example.org", &["user2@example.org"])
        .senders_of("sender-comma@example.org", &["u@x.org,evil@x.org"])
        .fault("broken-x@example.org", Fault::Unavailable)
        .fault_on("mailbox", "mbxdown-x@example.org", Fault::Unavailable)
}

fn service(delimiters: &str) -> (LookupService, Arc<StubBackend>) {
    let directory = Arc::new(directory());
    let backend: Arc<dyn LookupBackend> = directory.clone();
    let service = LookupService::new(
        backend,
        Normalizer::new(delimiters),
        Duration::from_secs(1),
        Metrics::new().unwrap(),
    );
    (service, directory)
}

async fn ask(s: &LookupService, map: MapName, key: &str) -> String {
    String::from_utf8(s.lookup(map, key.as_bytes()).await.render().to_vec()).unwrap()
}

fn sorted(mut calls: Vec<String>) -> Vec<String> {
    calls.sort();
    calls
}

#[tokio::test]
async fn an_address_that_is_a_mailbox_is_never_read_as_an_extension() {
    let (s, d) = service("+-");
    assert_eq!(
        ask(&s, MapName::Mailbox, "first-last@example.org").await,
        "OK 1"
    );
    assert_eq!(
        d.take_calls(),
        ["mailbox first-last@example.org"],
        "one call"
    );

    // Not `OK user2@...`: mail to first-last stays with first-last.
    assert_eq!(
        ask(&s, MapName::Alias, "First-Last@example.org").await,
        "NOTFOUND"
    );
    assert_eq!(
        sorted(d.take_calls()),
        [
            "alias first-last@example.org",
            "mailbox first-last@example.org"
        ],
        "first@ is never asked"
    );

    // Not `OK user2@...`: first@'s owner may not send as first-last.
    assert_eq!(
        ask(&s, MapName::Senders, "first-last@example.org").await,
        "OK first-last@example.org"
    );
}

#[tokio::test]
async fn an_address_that_exists_on_its_own_never_borrows_anothers_senders() {
    let (s, d) = service("-");
    // A mailbox whose own senders row is empty: nobody may send as it, certainly
    // not the owners of `quiet@`.
    assert_eq!(
        ask(&s, MapName::Senders, "quiet-box@example.org").await,
        "NOTFOUND"
    );
    assert!(
        !d.take_calls()
            .iter()
            .any(|c| c == "senders quiet@example.org")
    );
    // An alias of its own listing no sender: not first@'s senders either.
    assert_eq!(
        ask(&s, MapName::Senders, "first-sales@example.org").await,
        "NOTFOUND"
    );
    assert!(
        !d.take_calls()
            .iter()
            .any(|c| c == "senders first@example.org")
    );
    // Unknown: first@'s senders.
    assert_eq!(
        ask(&s, MapName::Senders, "first-nobody@example.org").await,
        "OK user2@example.org"
    );
}

/// A backend that answers the address as given only after a while: both rounds of
/// a lookup together keep one deadline.
#[tokio::test(start_paused = true)]
async fn both_rounds_of_a_lookup_share_one_deadline() {
    // Each call is within the 1 s deadline, the two rounds together are not.
    let s = LookupService::new(
        Arc::new(
            StubBackend::new()
                .alias("first@example.org", &["user2@example.org"])
                .fault(
                    "first-tag@example.org",
                    Fault::Delay(Duration::from_millis(700)),
                )
                .fault(
                    "first@example.org",
                    Fault::Delay(Duration::from_millis(700)),
                ),
        ),
        Normalizer::new("-"),
        Duration::from_secs(1),
        Metrics::new().unwrap(),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        ask(&s, MapName::Alias, "first-tag@example.org").await,
        "TEMP Error fetching aliases"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // Without an extension one round, well within it.
    assert_eq!(
        ask(&s, MapName::Alias, "first@example.org").await,
        "OK user2@example.org"
    );
}

#[tokio::test]
async fn an_unknown_address_with_an_extension_falls_back_to_the_stripped_one() {
    let (s, d) = service("+-");
    assert_eq!(
        ask(&s, MapName::Alias, "first-tag@example.org").await,
        "OK user2@example.org"
    );
    let calls = d.take_calls();
    assert_eq!(
        sorted(calls[..2].to_vec()),
        [
            "alias first-tag@example.org",
            "mailbox first-tag@example.org"
        ]
    );
    assert_eq!(
        calls[2..],
        ["alias first@example.org"],
        "stripped form last"
    );

    assert_eq!(
        ask(&s, MapName::Senders, "first+tag@example.org").await,
        "OK user2@example.org"
    );
    assert_eq!(d.take_calls().last().unwrap(), "senders first@example.org");

    assert_eq!(
        ask(&s, MapName::Mailbox, "user+tag@example.org").await,
        "OK 1"
    );
    assert_eq!(
        d.take_calls(),
        ["mailbox user+tag@example.org", "mailbox user@example.org"]
    );
    assert_eq!(
        ask(&s, MapName::Mailbox, "first-tag@example.org").await,
        "NOTFOUND"
    );
}

#[tokio::test]
async fn an_address_without_a_delimiter_costs_one_call() {
    let (s, d) = service("+-");
    for map in [MapName::Alias, MapName::Mailbox, MapName::Senders] {
        ask(&s, map, "user@example.org").await;
        assert_eq!(d.take_calls().len(), 1, "{map:?}");
    }
    let (s, d) = service("");
    ask(&s, MapName::Alias, "first-last@example.org").await;
    assert_eq!(
        d.take_calls(),
        ["alias first-last@example.org"],
        "no delimiter set"
    );
}

#[tokio::test]
async fn a_backend_error_is_temp_and_never_a_reason_to_strip() {
    let (s, d) = service("-");
    // broken@ is an alias, but broken-x@ could not be asked: TEMP, not broken@'s answer.
    assert_eq!(
        ask(&s, MapName::Alias, "broken-x@example.org").await,
        "TEMP Error fetching aliases"
    );
    assert!(
        !d.take_calls()
            .iter()
            .any(|c| c.ends_with(" broken@example.org")),
        "the stripped key was asked after an error"
    );
    assert_eq!(
        ask(&s, MapName::Mailbox, "broken-x@example.org").await,
        "TEMP Error fetching mailbox"
    );
    // The alias answer for the full key is "no", but whether it is a mailbox of its
    // own is unknown: TEMP rather than mbxdown@'s alias.
    assert_eq!(
        ask(&s, MapName::Alias, "mbxdown-x@example.org").await,
        "TEMP Error fetching aliases"
    );
    assert!(
        !d.take_calls()
            .iter()
            .any(|c| c == "alias mbxdown@example.org")
    );
}

#[tokio::test]
async fn destinations_postfix_would_split_are_temp_never_extra_recipients() {
    let (s, _) = service("");
    for key in [
        "comma@example.org",
        "space@example.org",
        "control@example.org",
    ] {
        assert_eq!(
            ask(&s, MapName::Alias, key).await,
            "TEMP Error fetching aliases",
            "{key}"
        );
    }
    assert_eq!(
        ask(&s, MapName::Senders, "sender-comma@example.org").await,
        "TEMP Error fetching senders"
    );
    assert_eq!(
        s.metrics()
            .backend_errors
            .with_label_values(&["alias", "invalid_response"])
            .get(),
        3
    );
    // Empty entries are dropped, the rest kept in order.
    assert_eq!(
        ask(&s, MapName::Alias, "fine@example.org").await,
        "OK a@x.org,b@y.org"
    );
}

#[tokio::test]
async fn idn_domains_are_asked_in_ascii_form() {
    let (s, d) = service("");
    assert_eq!(ask(&s, MapName::Domain, "EXÄMPLE.org").await, "OK 1");
    assert_eq!(d.take_calls(), ["domain xn--exmple-cua.org"]);
    assert_eq!(
        ask(&s, MapName::Domain, "exa\u{ad}mple.org").await,
        "NOTFOUND"
    );
    assert!(
        d.take_calls().is_empty(),
        "a look-alike never reaches the backend"
    );
}

#[tokio::test]
async fn keys_longer_than_any_valid_address_are_notfound_without_a_backend_call() {
    let (s, d) = service("+");
    let long_local = format!("{}@example.org", "a".repeat(65));
    let long_domain = format!("user@{}.org", "d".repeat(252));
    let huge = "x".repeat(16_000);
    for map in [MapName::Alias, MapName::Mailbox, MapName::Senders] {
        for key in [&long_local, &long_domain, &huge] {
            assert_eq!(ask(&s, map, key).await, "NOTFOUND", "{map:?}");
        }
    }
    assert_eq!(ask(&s, MapName::Domain, &huge).await, "NOTFOUND");
    assert_eq!(
        ask(&s, MapName::Domain, &format!("{}.org", "d".repeat(252))).await,
        "NOTFOUND"
    );
    assert_eq!(d.take_calls(), Vec::<String>::new());
    // The longest valid address is asked as usual.
    let longest = format!("{}@example.org", "a".repeat(64));
    assert_eq!(ask(&s, MapName::Mailbox, &longest).await, "NOTFOUND");
    assert_eq!(d.take_calls().len(), 1);
}

#[tokio::test]
async fn at_debug_level_every_request_logs_one_line_with_its_source() {
    let sink = crate::logging::capture::Captured::default();
    let _guard = tracing::subscriber::set_default(crate::logging::json_subscriber(
        crate::config::LogLevel::Debug,
        sink.clone(),
    ));
    let directory = Arc::new(directory());
    let cached: Arc<dyn LookupBackend> = Arc::new(crate::cache::CachedBackend::new(
        directory.clone(),
        crate::cache::CacheSettings {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(60),
            negative_stale_ttl: Duration::from_secs(60),
            max_entries: 1000,
            max_bytes: 1 << 20,
            deadline: Duration::from_millis(300),
            call_timeout: Duration::from_secs(1),
        },
        prometheus::IntCounterVec::new(prometheus::Opts::new("c", "c"), &["handler", "result"])
            .unwrap(),
    ));
    let s = LookupService::new(
        cached,
        Normalizer::new("+"),
        Duration::from_secs(1),
        Metrics::new().unwrap(),
    );
    assert_eq!(ask(&s, MapName::Mailbox, "user@example.org").await, "OK 1");
    assert_eq!(ask(&s, MapName::Mailbox, "user@example.org").await, "OK 1");
    assert_eq!(ask(&s, MapName::Mailbox, "no at sign\n").await, "NOTFOUND");
    let lines: Vec<serde_json::Value> = String::from_utf8(sink.0.lock().unwrap().clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["msg"] == "lookup")
        .collect();
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap(),
                v["answer"].as_str().unwrap(),
                v["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("\"user@example.org\"", "OK 1", "backend"),
            ("\"user@example.org\"", "OK 1", "cache"),
            ("\"no at sign\\n\"", "NOTFOUND", "none"),
        ]
    );
    assert!(
        lines
            .iter()
            .all(|v| v["map"] == "mailbox" && v["logger"] == "lookup")
    );
}
