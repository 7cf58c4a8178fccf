//! Postfix SMTP access policy delegation (`SMTPD_POLICY_README`): `name=value`
//! lines ended by an empty line; the reply is `action=...` and an empty line.
//!
//! The decoder is bounded: a line longer than the limit or a request with too many
//! attributes is an error, and the server then closes the connection without a
//! reply, as the protocol asks of a server in trouble.

use bytes::{Buf, BytesMut};

/// Postfix's own limit on a name or value is 8192 bytes; a line holds both.
pub const DEFAULT_MAX_LINE: usize = 2 * 8192 + 2;
/// Postfix sends about 35 attributes; anything far beyond is not Postfix.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 256;
/// Postfix's own requests are a few KiB; a request is never allowed more, so a
/// connection can never make the adapter hold more than this.
pub const DEFAULT_MAX_REQUEST: usize = 64 * 1024;

/// Why a request stream is not a policy request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line exceeds the limit.
    #[error("request line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// One request exceeds the byte limit.
    #[error("request longer than {max} bytes")]
    RequestTooLong {
        /// The limit.
        max: usize,
    },
    /// Too many lines in one request.
    #[error("more than {max} attributes in one request")]
    TooManyAttributes {
        /// The limit.
        max: usize,
    },
}

/// One policy request: its attributes (a later duplicate replaces an earlier one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    attributes: Vec<(String, String)>,
}

impl PolicyRequest {
    /// The value of attribute `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `""` when absent.
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Number of attributes received.
    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    /// Whether no attribute was received.
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}

/// An incremental decoder; one per connection (it keeps the request being read).
#[derive(Debug)]
pub struct PolicyDecoder {
    max_line: usize,
    max_attributes: usize,
    max_request: usize,
    current: PolicyRequest,
    lines: usize,
    /// Bytes of the request being read, its complete lines so far.
    bytes: usize,
}

impl Default for PolicyDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE, DEFAULT_MAX_ATTRIBUTES)
    }
}

impl PolicyDecoder {
    /// A decoder with the given limits on a line and on attributes per request,
    /// and [`DEFAULT_MAX_REQUEST`] bytes per request.
    pub fn new(max_line: usize, max_attributes: usize) -> Self {
        Self {
            max_line,
            max_attributes,
            max_request: DEFAULT_MAX_REQUEST,
            current: PolicyRequest::default(),
            lines: 0,
            bytes: 0,
        }
    }

    /// Sets the most bytes one request may have, its lines and line ends together.
    #[must_use]
    pub fn with_max_request(mut self, bytes: usize) -> Self {
        self.max_request = bytes;
        self
    }

    /// Whether part of a request has been read (for choosing the read timeout).
    pub fn in_request(&self, buf: &BytesMut) -> bool {
        self.lines > 0 || !buf.is_empty()
    }

    /// Consumes complete lines from `buf`; returns a request once its empty line
    /// arrives.
    ///
    /// # Errors
    /// [`PolicyError`] when a line or the request exceeds the limits.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<PolicyRequest>, PolicyError> {
        loop {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > self.max_line {
                    return Err(PolicyError::LineTooLong { max: self.max_line });
                }
                // Without a line end, all of `buf` belongs to this request.
                if self.bytes + buf.len() > self.max_request {
                    return Err(PolicyError::RequestTooLong {
                        max: self.max_request,
                    });
                }
                return Ok(None);
            };
            if end > self.max_line {
                return Err(PolicyError::LineTooLong { max: self.max_line });
            }
            self.bytes += end + 1;
            if self.bytes > self.max_request {
                return Err(PolicyError::RequestTooLong {
                    max: self.max_request,
                });
            }
            let line = buf.split_to(end);
            buf.advance(1);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let text = String::from_utf8_lossy(line);
            let text = text.trim();
            if text.is_empty() {
                if self.lines == 0 {
                    // A stray empty line between requests carries nothing: skip it.
                    self.bytes = 0;
                    continue;
                }
                self.lines = 0;
                self.bytes = 0;
                return Ok(Some(std::mem::take(&mut self.current)));
            }
            self.lines += 1;
            if self.lines > self.max_attributes {
                return Err(PolicyError::TooManyAttributes {
                    max: self.max_attributes,
                });
            }
            // Lines without `=` are ignored, as upstream and Postfix's own servers do.
            if let Some((name, value)) = text.split_once('=') {
                self.current
                    .attributes
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
}

/// A policy action as sent to Postfix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No opinion: the next restriction decides.
    Dunno,
    /// Permanent refusal (5xx) with a text.
    Reject(String),
    /// Temporary refusal (4xx) with a text.
    Defer(String),
}

impl Action {
    /// The metric label, as upstream (`dunno`, `reject`; `defer` is new).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Dunno => "dunno",
            Self::Reject(_) => "reject",
            Self::Defer(_) => "defer",
        }
    }

    /// `action=...` and the empty line, in one buffer. Line breaks and NULs in the
    /// text become spaces: they would end the reply early and desynchronise Postfix.
    pub fn render(&self) -> Vec<u8> {
        let (word, text) = match self {
            Self::Dunno => ("DUNNO", ""),
            Self::Reject(t) => ("REJECT", t.as_str()),
            Self::Defer(t) => ("DEFER", t.as_str()),
        };
        let mut out = String::with_capacity(16 + text.len());
        out.push_str("action=");
        out.push_str(word);
        if !text.is_empty() {
            out.push(' ');
            out.extend(text.chars().map(|c| {
                if matches!(c, '\r' | '\n' | '\0') {
                    ' '
                } else {
                    c
                }
            }));
        }
        out.push_str("\n\n");
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POSTFIX_REQUEST: &str = "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\nclient_address=192.0.2.1\nclient_name=mail.example.com\nreverse_client_name=mail.example.com\nhelo_name=mail.example.com\nsender=user@example.org\nrecipient=\nrecipient_count=3\nqueue_id=8045F2AB23\ninstance=123.456.7\nsize=12345\netrn_domain=\nstress=\nsasl_method=plain\nsasl_username=user@example.org\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n\n";

    fn decode_all(input: &[u8]) -> Result<Vec<PolicyRequest>, PolicyError> {
        let mut d = PolicyDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = d.decode(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn parses_every_attribute_postfix_sends() {
        let reqs = decode_all(POSTFIX_REQUEST.as_bytes()).unwrap();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.value("protocol_state"), "END-OF-MESSAGE");
        assert_eq!(r.value("sasl_username"), "user@example.org");
        assert_eq!(r.value("recipient_count"), "3");
        assert_eq!(r.value("recipient"), "");
        assert_eq!(r.get("nonexistent"), None);
        assert_eq!(r.len(), 24);
    }

    #[test]
    fn malformed_lines_duplicates_and_crlf() {
        let reqs = decode_all(b"garbage line\r\nsender = a@x \r\nsender=b@x\n\n").unwrap();
        assert_eq!(
            reqs[0].value("sender"),
            "b@x",
            "later duplicate wins, trimmed"
        );
        assert_eq!(reqs[0].len(), 2);
    }

    #[test]
    fn several_requests_and_stray_empty_lines() {
        let reqs = decode_all(b"\n\na=1\n\nb=2\n\n").unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].value("b"), "2");
    }

    #[test]
    fn limits() {
        let mut d = PolicyDecoder::new(16, 3);
        let mut buf = BytesMut::from(&b"a_very_long_line_without_end"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(PolicyError::LineTooLong { max: 16 })
        );
        let mut d = PolicyDecoder::new(16, 3);
        let mut buf = BytesMut::from(&b"a=1\nb=2\nc=3\nd=4\n\n"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(PolicyError::TooManyAttributes { max: 3 })
        );
    }

    #[test]
    fn a_request_is_bounded_in_bytes_not_only_in_lines() {
        // 12 bytes a line: four lines and the empty line are 49 bytes.
        let request = &b"aaaaaaaaa=1\nbbbbbbbbb=2\nccccccccc=3\nddddddddd=4\n\n"[..];
        let mut d = PolicyDecoder::new(100, 100).with_max_request(49);
        let mut buf = BytesMut::from(request);
        buf.extend_from_slice(request);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().len(), 4);
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap().len(),
            4,
            "counted per request"
        );
        let mut d = PolicyDecoder::new(100, 100).with_max_request(48);
        let mut buf = BytesMut::from(request);
        assert_eq!(
            d.decode(&mut buf),
            Err(PolicyError::RequestTooLong { max: 48 })
        );
        // An unfinished line counts too: the client need not send a line end.
        let mut d = PolicyDecoder::new(100, 100).with_max_request(30);
        let mut buf = BytesMut::from(&b"aaaaaaaaa=1\nbbbbbbbbb=2\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"ccccccc");
        assert_eq!(
            d.decode(&mut buf),
            Err(PolicyError::RequestTooLong { max: 30 })
        );
        assert_eq!(DEFAULT_MAX_REQUEST, 65_536);
        assert_eq!(PolicyDecoder::default().max_request, DEFAULT_MAX_REQUEST);
    }

    #[test]
    fn replies() {
        assert_eq!(Action::Dunno.render(), b"action=DUNNO\n\n");
        assert_eq!(
            Action::Reject("Rate limit exceeded, please try again later".into()).render(),
            b"action=REJECT Rate limit exceeded, please try again later\n\n"
        );
        assert_eq!(
            Action::Defer("a\nb\r\0c".into()).render(),
            b"action=DEFER a b  c\n\n"
        );
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_requests(cuts in proptest::collection::vec(0usize..POSTFIX_REQUEST.len(), 0..10)) {
            let whole = decode_all(POSTFIX_REQUEST.as_bytes()).unwrap();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut d = PolicyDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([POSTFIX_REQUEST.len()]) {
                buf.extend_from_slice(&POSTFIX_REQUEST.as_bytes()[last..cut]);
                last = cut;
                while let Some(r) = d.decode(&mut buf).unwrap() {
                    got.push(r);
                }
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&input);
        }
    }
}
