#![allow(dead_code)] // each fuzz target uses one of these checks
//! The properties the fuzz targets check, shared with `tests/fuzz_regressions.rs` so
//! every corpus entry and every past finding is re-checked by `cargo test`.
//!
//! Each function takes arbitrary bytes and panics when the code under test breaks
//! one of its promises: no panic, bounded buffering, the same result whether bytes
//! arrive at once or split across reads, and replies that cannot break the line or
//! frame structure Postfix expects.

use bytes::{Bytes, BytesMut};
use userli_postfix_adapter::normalize::Normalizer;
use userli_postfix_adapter::protocol::dovecot::{
    ClientLine, LineDecoder, LineTooLong, MAX_LINE, cont_line, decode_base64, fail_line,
    login_credentials, ok_line, parse_client_line, parse_handshake, parse_plain,
};
use userli_postfix_adapter::protocol::netstring::{self, NetstringDecoder, NetstringError};
use userli_postfix_adapter::protocol::policy::{
    Action, DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_LINE, PolicyDecoder, PolicyError, PolicyRequest,
};
use userli_postfix_adapter::protocol::socketmap::{MAX_REPLY_LEN, Reply, parse_request};

/// The netstring decoder: first byte = maximum length (0..=62, or 63 for the
/// adapter's default of 10000) and read size (1..=4 bytes), the rest is the stream.
pub(crate) fn netstring(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let max_len = match control & 0x3f {
        0x3f => 10_000,
        small => usize::from(small),
    };
    let decoder = NetstringDecoder::new(max_len);
    let read_size = usize::from(control >> 6) + 1;
    let whole = decode_netstrings(&decoder, input, input.len().max(1));
    let split = decode_netstrings(&decoder, input, read_size);
    assert_eq!(whole, split, "split reads decode differently");
    for frame in &whole.0 {
        assert!(frame.len() <= decoder.max_len());
        let mut again = BytesMut::from(&netstring::encode(frame)[..]);
        assert_eq!(decoder.decode(&mut again), Ok(Some(frame.clone())));
        assert!(again.is_empty());
    }
}

/// Frames decoded from `input` fed `read_size` bytes at a time, and how the stream
/// ended: an error, or the number of bytes left waiting for more.
fn decode_netstrings(
    decoder: &NetstringDecoder,
    input: &[u8],
    read_size: usize,
) -> (Vec<Bytes>, Result<usize, NetstringError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in input.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        // An incomplete frame never needs more than one maximal frame of buffer.
        assert!(buf.len() < decoder.max_frame_len());
    }
    (frames, Ok(buf.len()))
}

/// The socketmap request parser, key normalisation and reply rendering.
pub(crate) fn socketmap_request(data: &[u8]) {
    if let Ok(request) = parse_request(data) {
        assert!(!request.map.contains(' '));
        assert!(!request.map.starts_with(|c: char| c.is_ascii_whitespace()));
        assert!(!request.key.last().is_some_and(u8::is_ascii_whitespace));
        for delimiters in ["", "+", "+-"] {
            let normalizer = Normalizer::new(delimiters);
            if let Ok(key) = normalizer.address(request.key) {
                let address = key.full();
                let again = normalizer
                    .address(address.as_str().as_bytes())
                    .expect("a normalised address normalises again");
                assert_eq!(&again, &key, "normalisation is not idempotent");
                assert!(!address.local_part().is_empty() && !address.domain().is_empty());
                if let Some(stripped) = key.without_extension() {
                    assert!(stripped.as_str().len() < address.as_str().len());
                    assert_eq!(stripped.domain(), address.domain());
                }
            }
            if let Some(domain) = normalizer.domain(request.key) {
                assert_eq!(normalizer.domain(domain.as_bytes()), Some(domain));
            }
        }
    }
    let text = String::from_utf8_lossy(data).into_owned();
    for reply in [
        Reply::Ok(text.clone()),
        Reply::Temp(text.clone()),
        Reply::Perm(text),
    ] {
        let rendered = reply.render();
        assert!(
            rendered.len() <= MAX_REPLY_LEN,
            "reply over Postfix's limit"
        );
        assert_eq!(
            reply.is_oversized(),
            rendered.as_ref() == b"TEMP Reply too large"
        );
        let mut framed = BytesMut::from(&netstring::encode(&rendered)[..]);
        let decoder = NetstringDecoder::new(MAX_REPLY_LEN);
        assert_eq!(decoder.decode(&mut framed), Ok(Some(rendered)));
    }
}

/// The policy request decoder: first byte = read size (1..=16 bytes) and limits
/// (high bit: the adapter's defaults, else small ones that are easy to reach), the
/// rest is the stream.
pub(crate) fn policy_request(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(control & 0x0f) + 1;
    let limits = if control & 0x80 == 0 {
        (64, 8)
    } else {
        (DEFAULT_MAX_LINE, DEFAULT_MAX_ATTRIBUTES)
    };
    let whole = decode_policy(input, input.len().max(1), limits);
    let split = decode_policy(input, read_size, limits);
    assert_eq!(whole, split, "split reads decode differently");
    for request in &whole.0 {
        assert!(request.len() <= limits.1);
    }
    // A reply built from any text is exactly one attribute line and the empty line.
    let text = String::from_utf8_lossy(input).into_owned();
    for action in [Action::Reject(text.clone()), Action::Defer(text)] {
        let reply = action.render();
        assert!(reply.ends_with(b"\n\n"));
        assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 2);
        assert!(!reply.contains(&0) && !reply.contains(&b'\r'));
    }
}

fn decode_policy(
    input: &[u8],
    read_size: usize,
    (max_line, max_attributes): (usize, usize),
) -> (Vec<PolicyRequest>, Result<usize, PolicyError>) {
    let mut decoder = PolicyDecoder::new(max_line, max_attributes);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for read in input.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(e) => return (requests, Err(e)),
            }
        }
        assert!(
            buf.len() <= max_line,
            "a partial line beyond the limit is kept"
        );
    }
    (requests, Ok(buf.len()))
}

/// The Dovecot auth line framing (split reads decode alike, never more than one
/// maximal line buffered), the line parsers, and the replies built from
/// client-controlled fields.
pub(crate) fn dovecot_line(data: &[u8]) {
    if let Some((&control, input)) = data.split_first() {
        let read_size = usize::from(control) + 1;
        let whole = decode_lines(input, input.len().max(1));
        let split = decode_lines(input, read_size);
        assert_eq!(whole, split, "split reads decode differently");
        for line in &whole.0 {
            assert!(!line.contains('\n'));
        }
    }
    let line = String::from_utf8_lossy(data);
    let _ = parse_handshake(&line);
    let (id, response) = match parse_client_line(&line) {
        ClientLine::Auth(request) => (request.id, request.initial_response),
        ClientLine::Cont { id, data } => (id, Some(data)),
        ClientLine::InvalidAuth | ClientLine::Other => (line.to_string(), None),
    };
    assert_one_line(&ok_line(&id, &line), 3);
    assert_one_line(&fail_line(&id, Some(&line), &line), 4);
    assert_one_line(&fail_line(&id, None, &line), 3);
    assert_one_line(&cont_line(&id, data), 3);
    if let Some(response) = response
        && let Ok(payload) = decode_base64(&response, "resp=")
    {
        check_plain(&payload);
    }
    check_plain(data);
    // AUTH LOGIN's two answers, from any two halves of the input.
    let middle = line
        .char_indices()
        .map(|(i, _)| i)
        .nth(line.chars().count() / 2)
        .unwrap_or(line.len());
    let (user, password) = line.split_at(middle);
    if let Ok((login, password)) = login_credentials(user, password) {
        assert!(!login.is_empty() && !password.is_empty());
    }
}

fn decode_lines(input: &[u8], read_size: usize) -> (Vec<String>, Result<usize, LineTooLong>) {
    let mut decoder = LineDecoder;
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    for read in input.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(e) => return (lines, Err(e)),
            }
        }
        assert!(
            buf.len() <= MAX_LINE,
            "a partial line beyond the limit is kept"
        );
    }
    (lines, Ok(buf.len()))
}

fn check_plain(payload: &[u8]) {
    if let Ok((login, password)) = parse_plain(payload) {
        assert!(!login.is_empty() && !password.is_empty());
        assert!(!login.contains('\0'));
        assert!(login.len() + password.len() < payload.len());
    }
}

fn assert_one_line(reply: &str, fields: usize) {
    assert!(reply.ends_with('\n'));
    assert_eq!(
        reply.matches('\n').count(),
        1,
        "reply spans lines: {reply:?}"
    );
    assert!(!reply.contains('\r') && !reply.contains('\0'));
    assert_eq!(reply.trim_end_matches('\n').split('\t').count(), fields);
}
