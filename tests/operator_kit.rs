//! The operator kit in `deploy/`: Prometheus alerting rules and the Grafana
//! dashboard stay valid and in sync with the metrics the adapter exports
//! (README.md, "Metrics and health").

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Adapter, Client, demo_fixture, http_get};

const PREFIX: &str = "userli_postfix_adapter_";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn alerts_path() -> PathBuf {
    root().join("deploy/prometheus/alerts.yml")
}

fn dashboard_path() -> PathBuf {
    root().join("deploy/grafana/userli-postfix-adapter.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `userli_postfix_adapter_…` name in `text`, with histogram series
/// suffixes stripped.
fn metric_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
                break;
            }
        }
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metrics documented in README.md's "Metrics and health" table.
fn documented_metrics() -> HashSet<String> {
    let readme = read(&root().join("README.md"));
    let names = metric_names(&readme);
    assert!(
        names.contains("userli_postfix_adapter_requests_total"),
        "README documents the metrics"
    );
    names
}

/// The PromQL expressions of every dashboard panel (and templating queries).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn dashboard_is_valid_and_uses_documented_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&dashboard_path())).expect("dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));

    let panels = panels(&dashboard);
    assert!(panels.len() > 10, "{} panels", panels.len());
    let mut ids = HashSet::new();
    for p in &panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let pos = &p["gridPos"];
        for k in ["x", "y", "w", "h"] {
            assert!(pos[k].is_u64(), "panel {id} gridPos.{k}");
        }
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {id} has queries"
            );
        }
    }

    let exprs = dashboard_exprs(&dashboard);
    assert!(!exprs.is_empty());
    let used = metric_names(&exprs.join("\n"));
    let documented = documented_metrics();
    let unknown: Vec<_> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses undocumented metrics: {unknown:?}"
    );
    for must in [
        "userli_postfix_adapter_requests_total",
        "userli_postfix_adapter_request_duration_seconds",
        "userli_postfix_adapter_lookup_cache_total",
        "userli_postfix_adapter_circuit_breaker_state",
        "userli_postfix_adapter_sasl_auth_total",
        "userli_postfix_adapter_policy_requests_total",
    ] {
        assert!(used.contains(must), "dashboard shows {must}");
    }
}

#[test]
fn alerts_use_documented_metrics() {
    let alerts = read(&alerts_path());
    let used = metric_names(&alerts);
    let documented = documented_metrics();
    let unknown: Vec<_> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "alerts use undocumented metrics: {unknown:?}"
    );
    for must in [
        "userli_postfix_adapter_health_check_status",
        "userli_postfix_adapter_circuit_breaker_state",
        "userli_postfix_adapter_requests_total",
        "userli_postfix_adapter_connection_pool_full_total",
        "userli_postfix_adapter_ratelimit_backend_errors_total",
        "userli_postfix_adapter_sasl_backend_unavailable_total",
        "userli_postfix_adapter_lookup_cache_total",
        "userli_postfix_adapter_connections_denied_total",
        "userli_postfix_adapter_sasl_checks_refused_total",
    ] {
        assert!(used.contains(must), "an alert watches {must}");
    }
    assert!(alerts.contains(r#"up{job="userli-postfix-adapter"} == 0"#));
}

#[test]
fn metric_name_scan() {
    let names = metric_names(
        "rate(userli_postfix_adapter_request_duration_seconds_bucket{x=\"1\"}[5m]) \
         userli_postfix_adapter_sasl_auth_total",
    );
    let want: HashSet<String> = [
        "userli_postfix_adapter_request_duration_seconds",
        "userli_postfix_adapter_sasl_auth_total",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, want);
}

#[test]
#[ignore = "needs promtool"]
fn promtool_checks_alert_rules() {
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(alerts_path())
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "needs promtool"]
async fn promtool_lints_live_metrics() {
    let fixture = demo_fixture();
    let adapter = Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", fixture.to_str().unwrap()),
        ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
    ]);
    let mut client = Client::tcp(adapter.socketmap.parse().unwrap()).await;
    assert_eq!(client.ask("domain example.org").await, "OK 1");
    assert_eq!(client.ask("mailbox nobody@example.org").await, "NOTFOUND");
    client.ask("alias admin@example.org").await;
    client.ask("senders admin@example.org").await;
    client.ask("nosuchmap key").await;

    let (status, body) = http_get(adapter.metrics.parse().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("userli_postfix_adapter_requests_total{"),
        "{body}"
    );

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every selector `name{label="value",...}` in `expr`: the metric (histogram
/// suffixes kept) and its equality matchers (`=~`, `!=` and `!~` are skipped).
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        if let Some(inner) = tail[end..]
            .strip_prefix('{')
            .and_then(|t| t.split_once('}'))
        {
            for part in inner.0.split(',') {
                if let Some((k, v)) = part.split_once('=')
                    && !k.ends_with('!')
                    && !v.starts_with('~')
                {
                    matchers.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
                }
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// A dashboard panel or alert on a healthy system says 0, never "No data": every
/// series they select exists in `/metrics` from the start, before any traffic.
#[tokio::test]
async fn every_series_the_dashboard_and_alerts_select_exists_on_a_fresh_adapter() {
    // The userli backend, as deployed (its HTTP client has series of its own).
    let userli = wiremock::MockServer::start().await;
    let adapter = Adapter::spawn(&[
        ("USERLI_TOKEN", "t"),
        ("USERLI_BASE_URL", &userli.uri()),
        ("SASL_LISTEN_ADDR", "127.0.0.1:0"),
    ]);
    let (status, body) = http_get(adapter.metrics.parse().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let samples: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    let dashboard: serde_json::Value = serde_json::from_str(&read(&dashboard_path())).unwrap();
    let mut exprs = dashboard_exprs(&dashboard);
    exprs.push(read(&alerts_path()));
    let mut checked = 0;
    for expr in &exprs {
        for (name, matchers) in selectors(expr) {
            let found = samples.iter().any(|line| {
                line.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && matchers
                        .iter()
                        .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            });
            assert!(
                found,
                "no series {name}{matchers:?} on a fresh adapter (used in {expr})"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} selectors found");
}
