//! The log subscriber of the binary: JSON (one object per line, as upstream) or
//! text, with every client-supplied string unable to start a new line.
//!
//! Clients choose much of what ends up in logs: lookup keys, SASL logins, policy
//! attributes. The JSON format escapes them by construction. The text format writes
//! a `%`-formatted field as it is, so a key holding a line break could forge a whole
//! log line, and one holding ` user=root` an extra field; here every field value
//! (and the message) has its control and invisible characters (bidirectional
//! overrides included) escaped, and a value with white space or quotes is quoted,
//! whichever way the call site formatted it.

use std::fmt::{self, Write as _};

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;

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
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder
            .fmt_fields(tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" "))
            .init(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

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
