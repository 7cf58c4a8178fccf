//! The log subscriber of the binary: JSON (one object per line, in the Go
//! adapter's zap schema) or text, with every client-supplied string unable to
//! start a new line.
//!
//! The JSON lines are the ones the Go adapter's zap production encoder writes, so
//! log queries and alerts written for it keep working:
//! `{"level":"info","ts":1700000000.123456,"logger":"lookup","msg":"…",<fields>}`:
//! lower-case level (`debug`, `info`, `warn`, `error`), `ts` in seconds since the
//! epoch, `logger` naming the component as upstream's named loggers do (`lookup`,
//! `lookupcache`, `policy`, `ratelimit`, `redis`, `sasl`; absent elsewhere, as for
//! upstream's userli client and metrics server), then the event's own fields.
//!
//! Clients choose much of what ends up in logs: lookup keys, SASL logins, policy
//! attributes. The JSON format escapes them by construction. The text format writes
//! a `%`-formatted field as it is, so a key holding a line break could forge a whole
//! log line, and one holding ` user=root` an extra field; here every field value
//! (and the message) has its control and invisible characters (bidirectional
//! overrides included) escaped, and a value with white space or quotes is quoted,
//! whichever way the call site formatted it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogLevel};

/// `text` with every control character (line breaks, tabs, escape sequences) and
/// the Unicode line and paragraph separators written as escapes.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || crate::normalize::is_invisible(c)
}

/// A field value that cannot pass for more than one value: escaped, and quoted
/// (logfmt style) when it has white space or quotes and is not already a
/// well-formed quoted string (what `?` formatting of a string gives).
fn field_value(rendered: &str) -> std::borrow::Cow<'_, str> {
    let escaped = escape_controls(rendered);
    let plain = !escaped.is_empty() && !escaped.contains([' ', '"']);
    if plain || is_quoted_literal(&escaped) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 2);
    out.push('"');
    for c in escaped.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    std::borrow::Cow::Owned(out)
}

/// `"…"` with every inner quote escaped.
fn is_quoted_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            _ => {}
        }
    }
    !escaped
}

fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let rendered = format!("{value:?}");
    if field.name() == "message" {
        write!(w, "{}", escape_controls(&rendered))
    } else {
        write!(w, "{}={}", field.name(), field_value(&rendered))
    }
}

/// Installs the global subscriber: `level` and coarser, in `format`, to `writer`.
pub fn init<W>(level: LogLevel, format: LogFormat, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_max_level(level.as_tracing())
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    match format {
        LogFormat::Json => builder.event_format(ZapJson).init(),
        LogFormat::Text => builder
            .fmt_fields(tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" "))
            .init(),
    }
}

/// Upstream's named logger for events of the module `target`, if it has one.
fn logger_of(target: &str) -> Option<&'static str> {
    let module = target
        .strip_prefix("userli_postfix_adapter::")
        .unwrap_or("");
    let first = |prefix: &str| module == prefix || module.starts_with(&format!("{prefix}::"));
    if first("policy::redis_store") {
        Some("redis")
    } else if first("policy::store") || first("policy::flusher") || first("policy::window") {
        Some("ratelimit")
    } else if first("policy") || first("server::policy") {
        Some("policy")
    } else if first("sasl") || first("server::sasl") {
        Some("sasl")
    } else if first("cache") {
        Some("lookupcache")
    } else if first("lookup") || first("server::socketmap") {
        Some("lookup")
    } else {
        None
    }
}

/// zap's level names; zap has no `trace`, so trace events are `debug`.
fn zap_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        _ => "debug",
    }
}

/// An event's message and fields as JSON values, in the order they were given.
#[derive(Default)]
struct JsonFields {
    message: String,
    fields: Vec<(&'static str, serde_json::Value)>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// One JSON object per event in the Go adapter's zap schema (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        write!(
            writer,
            "{{\"level\":\"{}\",\"ts\":{ts}",
            zap_level(meta.level())
        )?;
        if let Some(logger) = logger_of(meta.target()) {
            write!(writer, ",\"logger\":\"{logger}\"")?;
        }
        write!(writer, ",\"msg\":{}", json_string(&fields.message))?;
        for (name, value) in &fields.fields {
            // Field names are identifiers in the source, never client data.
            write!(writer, ",{}:{}", json_string(name), value)?;
        }
        writeln!(writer, "}}")
    }
}

/// `text` as a JSON string literal (quoted, escaped).
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The JSON-format subscriber [`init`] installs, for tests that capture it locally.
pub fn json_subscriber<W>(level: LogLevel, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_max_level(level.as_tracing())
        .with_writer(writer)
        .with_ansi(false)
        .event_format(ZapJson)
        .finish()
}

/// The text-format subscriber [`init`] installs, for tests that capture it locally.
pub fn text_subscriber<W>(level: LogLevel, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_max_level(level.as_tracing())
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .fmt_fields(tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" "))
        .finish()
}

/// A log sink for tests that read what a subscriber wrote.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    /// Everything written, shared by its clones.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::capture::Captured;

    #[test]
    fn no_field_can_start_a_new_line() {
        let out = Captured::default();
        let forged = "x@example.org\n2026-01-01T00:00:00Z ERROR forged line";
        tracing::subscriber::with_default(text_subscriber(LogLevel::Debug, out.clone()), || {
            let client_key = forged.to_owned();
            tracing::debug!(key = %client_key, "display field");
            tracing::debug!(key = ?client_key, "debug field");
            tracing::debug!(key = client_key.as_str(), "str field");
            tracing::warn!("message with {client_key}");
            tracing::info!(error = %std::io::Error::other(forged), "error field");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("2026-01-01")), "{text}");
        assert!(text.contains("x@example.org\\n2026"), "{text}");
    }

    #[test]
    fn no_field_can_pass_for_another_field() {
        let out = Captured::default();
        tracing::subscriber::with_default(text_subscriber(LogLevel::Debug, out.clone()), || {
            let login = "x\" user=root level=ERROR \u{202e}";
            tracing::info!(login = %login, count = 3, ok = "plain@example.org", "attempt");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(r#"login="x\" user=root level=ERROR \\u{202e}""#),
            "{text}"
        );
        assert!(text.contains("count=3 ok=\"plain@example.org\""), "{text}");
        assert!(
            !text.contains('\u{202e}'),
            "a bidi override reached the log"
        );
    }

    fn json_lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        tracing::subscriber::with_default(json_subscriber(LogLevel::Trace, out.clone()), emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_are_the_go_adapters_zap_lines() {
        let lines = json_lines(|| {
            let key = "a@x\n{\"level\":\"error\"}";
            tracing::info!(target: "userli_postfix_adapter::lookup", map = "mailbox", key = %key, took_ms = 3u64, ok = true, "lookup answered");
            tracing::warn!(target: "userli_postfix_adapter::policy::redis_store", "redis keeps failing");
            tracing::error!(target: "userli_postfix_adapter::http", error = %std::io::Error::other("x"), "readiness check failed");
            tracing::trace!(target: "userli_postfix_adapter::sasl", "a trace event");
        });
        assert_eq!(lines.len(), 4);
        let first = &lines[0];
        assert_eq!(first["level"], "info");
        assert_eq!(first["logger"], "lookup");
        assert_eq!(first["msg"], "lookup answered");
        assert_eq!(first["map"], "mailbox");
        assert_eq!(
            first["key"], "a@x\n{\"level\":\"error\"}",
            "escaped, one line"
        );
        assert_eq!(first["took_ms"], 3);
        assert_eq!(first["ok"], true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let ts = first["ts"].as_f64().expect("ts is a number of seconds");
        assert!((now - ts).abs() < 60.0, "{ts} vs {now}");
        assert!(first.get("timestamp").is_none() && first.get("message").is_none());
        assert_eq!(
            (lines[1]["level"].as_str(), lines[1]["logger"].as_str()),
            (Some("warn"), Some("redis"))
        );
        assert_eq!(lines[2]["level"], "error");
        assert!(
            lines[2].get("logger").is_none(),
            "no name, as upstream's HTTP server"
        );
        assert_eq!(lines[2]["error"], "x");
        assert_eq!(
            (lines[3]["level"].as_str(), lines[3]["logger"].as_str()),
            (Some("debug"), Some("sasl"))
        );
    }

    #[test]
    fn components_log_under_upstreams_logger_names() {
        for (target, want) in [
            ("userli_postfix_adapter::lookup", Some("lookup")),
            ("userli_postfix_adapter::server::socketmap", Some("lookup")),
            (
                "userli_postfix_adapter::cache::backend",
                Some("lookupcache"),
            ),
            ("userli_postfix_adapter::policy", Some("policy")),
            ("userli_postfix_adapter::server::policy", Some("policy")),
            ("userli_postfix_adapter::policy::store", Some("ratelimit")),
            ("userli_postfix_adapter::policy::flusher", Some("ratelimit")),
            ("userli_postfix_adapter::policy::redis_store", Some("redis")),
            ("userli_postfix_adapter::sasl::throttle", Some("sasl")),
            ("userli_postfix_adapter::server::sasl", Some("sasl")),
            ("userli_postfix_adapter::http", None),
            ("userli_postfix_adapter", None),
            ("postfix_adapter_backend_userli", None),
            ("userli_postfix_adapter::lookupx", None),
        ] {
            assert_eq!(logger_of(target), want, "{target}");
        }
    }

    #[test]
    fn escaping_leaves_ordinary_text_alone() {
        assert!(matches!(
            escape_controls("user@exämple.org"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\r\nb\u{1b}[31m\u{2028}"),
            "a\\r\\nb\\u{1b}[31m\\u{2028}"
        );
        assert_eq!(field_value("plain"), "plain");
        assert_eq!(field_value(""), r#""""#);
        assert_eq!(field_value("a b"), r#""a b""#);
        assert_eq!(
            field_value(r#""already \" quoted""#),
            r#""already \" quoted""#
        );
        assert_eq!(field_value(r#""x" y=z"#), r#""\"x\" y=z""#);
    }
}
