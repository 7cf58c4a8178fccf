//! The socketmap request and reply grammar (`socketmap_table(5)`), without framing.
//!
//! A request payload is `name SP key`; a reply payload is `OK data`, `NOTFOUND`,
//! `TEMP reason` or `PERM reason`. The strings Postfix sees are upstream's, byte for
//! byte, because operators grep their logs for them.

use bytes::Bytes;

/// Postfix's limit on a reply payload (`DICT_SOCKMAP_DEF_MAX_REPLY`, framing not
/// counted). A longer reply makes Postfix fail the lookup mid-stream, so we never
/// send one.
pub const MAX_REPLY_LEN: usize = 100_000;

/// The reason sent when the request is not `name SP key`.
pub const INVALID_REQUEST_FORMAT: &str = "Invalid request format";
/// The reason sent for a map name the adapter does not serve.
pub const UNKNOWN_MAP_NAME: &str = "Unknown map name";
/// The reason sent instead of a reply longer than [`MAX_REPLY_LEN`].
pub const REPLY_TOO_LARGE: &str = "Reply too large";

/// A parsed socketmap request, borrowing from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The map name, case-sensitive as upstream (`alias`, `domain`, ...).
    pub map: &'a str,
    /// The lookup key, raw bytes: Postfix may send anything, including non-UTF-8.
    pub key: &'a [u8],
}

/// Why a payload is not a request; always answered `PERM Invalid request format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid socketmap request")]
pub struct InvalidRequest;

/// Parses a request payload.
///
/// Like upstream, surrounding white space is trimmed and the payload is split at the
/// first space; a key may contain further spaces. Unlike upstream, `name SP` with an
/// empty key is a valid request for the empty key: Postfix sends it for the null
/// sender `<>`, and answering `PERM` there makes cleanup refuse the message.
///
/// # Errors
/// [`InvalidRequest`] when there is no space after a non-empty map name, or the map
/// name is not UTF-8.
pub fn parse_request(payload: &[u8]) -> Result<Request<'_>, InvalidRequest> {
    let start = payload
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(InvalidRequest)?;
    let payload = &payload[start..];
    let space = payload
        .iter()
        .position(|&b| b == b' ')
        .ok_or(InvalidRequest)?;
    let map = std::str::from_utf8(&payload[..space]).map_err(|_| InvalidRequest)?;
    let key = trim_ascii_end(&payload[space + 1..]);
    Ok(Request { map, key })
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// A socketmap answer before rendering.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Found; the data is never empty (a bare `OK` reads as "not found" in older Postfix).
    Ok(String),
    /// Not found.
    NotFound,
    /// Temporary failure: Postfix defers the mail and retries.
    Temp(String),
    /// Permanent (configuration) failure: Postfix answers 4xx and logs a config error.
    Perm(String),
}

impl Reply {
    /// The status word, also used as a metric label source.
    pub fn status_word(&self) -> &'static str {
        match self {
            Self::Ok(_) => "OK",
            Self::NotFound => "NOTFOUND",
            Self::Temp(_) => "TEMP",
            Self::Perm(_) => "PERM",
        }
    }

    /// Renders the payload (no framing): the status alone when there is no data,
    /// else status, one space, data.
    ///
    /// A payload over [`MAX_REPLY_LEN`] is replaced by `TEMP Reply too large`:
    /// deferring is recoverable, a truncated or oversized reply is not.
    pub fn render(&self) -> Bytes {
        let (word, data) = match self {
            Self::Ok(d) => ("OK", d.as_str()),
            Self::NotFound => ("NOTFOUND", ""),
            Self::Temp(r) => ("TEMP", r.as_str()),
            Self::Perm(r) => ("PERM", r.as_str()),
        };
        if data.is_empty() {
            return Bytes::from_static(word.as_bytes());
        }
        if word.len() + 1 + data.len() > MAX_REPLY_LEN {
            return Bytes::from(format!("TEMP {REPLY_TOO_LARGE}"));
        }
        let mut out = String::with_capacity(word.len() + 1 + data.len());
        out.push_str(word);
        out.push(' ');
        out.push_str(data);
        Bytes::from(out)
    }

    /// Whether [`Reply::render`] would replace this reply because it is too long.
    pub fn is_oversized(&self) -> bool {
        let data_len = match self {
            Self::NotFound => 0,
            Self::Ok(d) | Self::Temp(d) | Self::Perm(d) => d.len(),
        };
        data_len > 0 && self.status_word().len() + 1 + data_len > MAX_REPLY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_name_and_key() {
        let r = parse_request(b"alias user@example.org").unwrap();
        assert_eq!(r.map, "alias");
        assert_eq!(r.key, b"user@example.org");
    }

    #[test]
    fn key_keeps_inner_spaces_and_second_leading_space() {
        let r = parse_request(b"alias  a b").unwrap();
        assert_eq!(r.key, b" a b");
    }

    #[test]
    fn surrounding_white_space_is_trimmed() {
        let r = parse_request(b" \tdomain example.org \r\n").unwrap();
        assert_eq!((r.map, r.key), ("domain", &b"example.org"[..]));
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for bad in [
            &b""[..],
            b"   ",
            b"invalidrequest",
            b"alias\tkey",
            b"\xff\xfe x",
        ] {
            assert_eq!(parse_request(bad), Err(InvalidRequest), "{bad:?}");
        }
    }

    #[test]
    fn empty_key_is_a_request_for_the_empty_key() {
        let r = parse_request(b"senders ").unwrap();
        assert_eq!((r.map, r.key), ("senders", &b""[..]));
    }

    #[test]
    fn renders_upstream_strings() {
        assert_eq!(&Reply::Ok("1".into()).render()[..], b"OK 1");
        assert_eq!(&Reply::NotFound.render()[..], b"NOTFOUND");
        assert_eq!(
            &Reply::Temp("Error fetching aliases".into()).render()[..],
            b"TEMP Error fetching aliases"
        );
        assert_eq!(
            &Reply::Perm(UNKNOWN_MAP_NAME.into()).render()[..],
            b"PERM Unknown map name"
        );
    }

    #[test]
    fn reply_at_the_limit_is_sent_and_one_byte_more_is_not() {
        let fits = Reply::Ok("a".repeat(MAX_REPLY_LEN - 3));
        assert_eq!(fits.render().len(), MAX_REPLY_LEN);
        assert!(!fits.is_oversized());
        let too_long = Reply::Ok("a".repeat(MAX_REPLY_LEN - 2));
        assert!(too_long.is_oversized());
        assert_eq!(&too_long.render()[..], b"TEMP Reply too large");
    }

    proptest! {
        #[test]
        fn parse_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&payload);
        }

        #[test]
        fn rendered_replies_fit_postfix(data in "[a-z@.,]{0,40}", pad in 0usize..3) {
            let reply = Reply::Ok(data.repeat(pad * 1000));
            prop_assert!(reply.render().len() <= MAX_REPLY_LEN);
        }

        #[test]
        fn name_and_key_round_trip(map in "[a-z]{1,10}", key in "[!-~]{0,30}") {
            let payload = format!("{map} {key}");
            let r = parse_request(payload.as_bytes()).unwrap();
            prop_assert_eq!(r.map, map.as_str());
            prop_assert_eq!(r.key, key.as_bytes());
        }
    }
}
