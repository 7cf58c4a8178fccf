//! The Dovecot authentication protocol as Postfix speaks it (`xsasl_dovecot_server.c`):
//! TAB-separated lines, a server handshake, then `AUTH`/`CONT` requests answered by
//! `OK`, `CONT` or `FAIL`.
//!
//! Everything here is pure: line splitting, request parsing, SASL payload decoding
//! and reply rendering. Values copied into a reply are sanitised so a user name or
//! reason can never end a line or add a field.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BytesMut};

/// Dovecot's maximum line length, which Postfix respects.
pub const MAX_LINE: usize = 16384;

/// A line longer than [`MAX_LINE`]: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line too long")]
pub struct LineTooLong;

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (`\n` ends a line,
/// a `\r` before it is dropped; bytes that are not UTF-8 become U+FFFD).
#[derive(Debug, Clone, Copy, Default)]
pub struct LineDecoder;

impl LineDecoder {
    /// Takes one complete line off the front of `buf`; `Ok(None)` while it is
    /// incomplete.
    ///
    /// # Errors
    /// [`LineTooLong`] as soon as the line in `buf` exceeds [`MAX_LINE`], complete
    /// or not, so at most one maximal line is ever buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, LineTooLong> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_LINE {
                Err(LineTooLong)
            } else {
                Ok(None)
            };
        };
        if end > MAX_LINE {
            return Err(LineTooLong);
        }
        let line = buf.split_to(end);
        buf.advance(1);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        Ok(Some(String::from_utf8_lossy(line).into_owned()))
    }
}

/// The server handshake. `MECH` lines come before `SPID`: Postfix 3.0+ takes a
/// `SPID` without an earlier `MECH` for the wrong (master) socket and gives up.
pub fn server_handshake(pid: u32, cuid: u64, cookie: &str) -> String {
    format!(
        "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t{pid}\nCUID\t{cuid}\nCOOKIE\t{cookie}\nDONE\n"
    )
}

/// A client line during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeLine {
    /// `VERSION major minor`.
    Version(u32),
    /// `CPID pid`.
    Cpid,
    /// Anything else (ignored).
    Other,
}

/// Why a client line is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `VERSION` without two numbers.
    #[error("invalid VERSION line")]
    InvalidVersion,
    /// A major version other than 1.
    #[error("unsupported major version {0}")]
    UnsupportedVersion(u32),
}

/// Parses a handshake line.
///
/// # Errors
/// [`ProtocolError`] for a malformed or unsupported `VERSION`.
pub fn parse_handshake(line: &str) -> Result<HandshakeLine, ProtocolError> {
    let mut fields = line.split('\t');
    match fields.next() {
        Some("VERSION") => {
            let major = fields
                .next()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or(ProtocolError::InvalidVersion)?;
            fields
                .next()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or(ProtocolError::InvalidVersion)?;
            if major != 1 {
                return Err(ProtocolError::UnsupportedVersion(major));
            }
            Ok(HandshakeLine::Version(major))
        }
        Some("CPID") => Ok(HandshakeLine::Cpid),
        _ => Ok(HandshakeLine::Other),
    }
}

/// The mechanisms we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto `LOGIN` mechanism.
    Login,
}

impl Mechanism {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

/// A client request line after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientLine {
    /// `AUTH id mech params...`.
    Auth(AuthRequest),
    /// `CONT id data`.
    Cont {
        /// Request id.
        id: String,
        /// Base64 response (may be empty).
        data: String,
    },
    /// An `AUTH` with fewer than three fields.
    InvalidAuth,
    /// Anything else; ignored.
    Other,
}

/// An `AUTH` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The request id to echo.
    pub id: String,
    /// The mechanism, or `None` for one we do not offer.
    pub mechanism: Option<Mechanism>,
    /// The initial response (`resp=`), still base64.
    pub initial_response: Option<String>,
    /// The SMTP client's address (`rip=`), for brute-force counters.
    pub remote_ip: Option<String>,
}

/// Parses a request line.
pub fn parse_client_line(line: &str) -> ClientLine {
    let fields: Vec<&str> = line.split('\t').collect();
    match fields[0] {
        "AUTH" if fields.len() >= 3 => {
            let mechanism = match fields[2].to_ascii_uppercase().as_str() {
                "PLAIN" => Some(Mechanism::Plain),
                "LOGIN" => Some(Mechanism::Login),
                _ => None,
            };
            let param = |name: &str| {
                fields[3..]
                    .iter()
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            ClientLine::Auth(AuthRequest {
                id: fields[1].to_owned(),
                mechanism,
                initial_response: param("resp="),
                remote_ip: param("rip=").filter(|ip| !ip.is_empty()),
            })
        }
        "AUTH" => ClientLine::InvalidAuth,
        "CONT" if fields.len() >= 2 => ClientLine::Cont {
            id: fields[1].to_owned(),
            data: fields.get(2).copied().unwrap_or("").to_owned(),
        },
        _ => ClientLine::Other,
    }
}

/// Why SASL client data is unusable; the text goes into `FAIL reason=`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not base64; the text names what was sent, as upstream words it
    /// (`resp=`, `LOGIN username`, `LOGIN password`).
    #[error("invalid base64 in {0}")]
    Base64(&'static str),
    /// The PLAIN payload is not `authzid NUL authcid NUL password`.
    #[error("invalid PLAIN payload format")]
    PlainFormat,
    /// An empty login or password.
    #[error("empty username or password")]
    Empty,
    /// A PLAIN authorization identity other than the login (impersonation).
    #[error("authorization identity differs from the login")]
    Authzid,
    /// A login name that is not UTF-8.
    #[error("username is not valid UTF-8")]
    LoginNotUtf8,
}

/// Decodes standard base64 (strict padding) of the `what` the client sent.
///
/// # Errors
/// [`SaslError::Base64`] naming `what`.
pub fn decode_base64(data: &str, what: &'static str) -> Result<Vec<u8>, SaslError> {
    STANDARD
        .decode(data.trim())
        .map_err(|_| SaslError::Base64(what))
}

/// Login and password from the two base64 answers of `AUTH LOGIN`.
///
/// # Errors
/// [`SaslError`] for bad base64, an empty field or a login that is not UTF-8.
pub fn login_credentials(user: &str, password: &str) -> Result<(String, Vec<u8>), SaslError> {
    let user = decode_base64(user, "LOGIN username")?;
    let password = decode_base64(password, "LOGIN password")?;
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Empty);
    }
    let user = String::from_utf8(user).map_err(|_| SaslError::LoginNotUtf8)?;
    Ok((user, password))
}

/// Login and password from a decoded PLAIN payload. The password stays bytes: it
/// is passed on exactly as the client sent it.
///
/// # Errors
/// [`SaslError`] for a malformed payload, empty fields or a foreign authzid.
pub fn parse_plain(payload: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let mut parts = payload.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::PlainFormat);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Empty);
    }
    let login = String::from_utf8(authcid.to_vec()).map_err(|_| SaslError::LoginNotUtf8)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::Authzid);
    }
    Ok((login, password.to_vec()))
}

/// Replaces TAB, CR, LF and NUL, which would break the line protocol.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if matches!(c, '\t' | '\r' | '\n' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `OK id user=login`.
pub fn ok_line(id: &str, login: &str) -> String {
    format!("OK\t{}\tuser={}\n", sanitize(id), sanitize(login))
}

/// `CONT id challenge`; the TAB after the id is there even for an empty challenge,
/// or Postfix fails the exchange.
pub fn cont_line(id: &str, challenge: &[u8]) -> String {
    format!("CONT\t{}\t{}\n", sanitize(id), STANDARD.encode(challenge))
}

/// `FAIL id [user=login] reason=text`.
pub fn fail_line(id: &str, login: Option<&str>, reason: &str) -> String {
    match login {
        Some(user) => format!(
            "FAIL\t{}\tuser={}\treason={}\n",
            sanitize(id),
            sanitize(user),
            sanitize(reason)
        ),
        None => format!("FAIL\t{}\treason={}\n", sanitize(id), sanitize(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn handshake_puts_mech_before_spid() {
        let h = server_handshake(42, 7, "0123456789abcdef0123456789abcdef");
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "VERSION\t1\t2");
        assert_eq!(lines[1], "MECH\tPLAIN\tplaintext");
        assert_eq!(lines[2], "MECH\tLOGIN\tplaintext");
        assert_eq!(lines[3], "SPID\t42");
        assert_eq!(lines[4], "CUID\t7");
        assert!(lines[5].starts_with("COOKIE\t"));
        assert_eq!(lines[6], "DONE");
    }

    #[test]
    fn client_handshake() {
        assert_eq!(
            parse_handshake("VERSION\t1\t0"),
            Ok(HandshakeLine::Version(1))
        );
        assert_eq!(parse_handshake("CPID\t123"), Ok(HandshakeLine::Cpid));
        assert_eq!(
            parse_handshake("VERSION\t2\t0"),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        assert_eq!(
            parse_handshake("VERSION\t1"),
            Err(ProtocolError::InvalidVersion)
        );
        assert_eq!(parse_handshake("HELLO"), Ok(HandshakeLine::Other));
    }

    #[test]
    fn auth_lines_as_postfix_sends_them() {
        let line = "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7\tsecured\tresp=AHVzZXIAcGFzcw==";
        let ClientLine::Auth(a) = parse_client_line(line) else {
            panic!()
        };
        assert_eq!(a.id, "1");
        assert_eq!(a.mechanism, Some(Mechanism::Plain));
        assert_eq!(a.initial_response.as_deref(), Some("AHVzZXIAcGFzcw=="));
        assert_eq!(a.remote_ip.as_deref(), Some("192.0.2.7"));

        let ClientLine::Auth(a) = parse_client_line("AUTH\t2\tlogin\tservice=smtp") else {
            panic!()
        };
        assert_eq!(
            (a.mechanism, a.initial_response),
            (Some(Mechanism::Login), None)
        );
        let ClientLine::Auth(a) = parse_client_line("AUTH\t3\tCRAM-MD5\tservice=smtp") else {
            panic!()
        };
        assert_eq!(a.mechanism, None);
        assert_eq!(parse_client_line("AUTH\t1"), ClientLine::InvalidAuth);
        assert_eq!(
            parse_client_line("CONT\t1\tdXNlcg=="),
            ClientLine::Cont {
                id: "1".into(),
                data: "dXNlcg==".into()
            }
        );
        assert_eq!(parse_client_line(""), ClientLine::Other);
    }

    #[test]
    fn plain_payloads() {
        assert_eq!(
            parse_plain(b"\0user@example.org\0pa\0ss"),
            Ok(("user@example.org".into(), b"pa\0ss".to_vec()))
        );
        assert_eq!(
            parse_plain(b"user@example.org\0user@example.org\0pw"),
            Ok(("user@example.org".into(), b"pw".to_vec()))
        );
        assert_eq!(parse_plain(b"admin\0user\0pw"), Err(SaslError::Authzid));
        assert_eq!(parse_plain(b"\0user"), Err(SaslError::PlainFormat));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Empty));
        assert_eq!(parse_plain(b"\0user\0"), Err(SaslError::Empty));
        assert_eq!(
            decode_base64("not base64!", "resp="),
            Err(SaslError::Base64("resp="))
        );
        assert_eq!(
            SaslError::Base64("resp=").to_string(),
            "invalid base64 in resp=",
            "upstream's words"
        );
        assert_eq!(
            decode_base64("AHVzZXIAcGFzcw==", "resp="),
            Ok(b"\0user\0pass".to_vec())
        );
    }

    #[test]
    fn replies_cannot_break_lines() {
        assert_eq!(
            ok_line("1", "user@example.org"),
            "OK\t1\tuser=user@example.org\n"
        );
        assert_eq!(cont_line("5", b""), "CONT\t5\t\n");
        assert_eq!(cont_line("5", b"Username:"), "CONT\t5\tVXNlcm5hbWU6\n");
        assert_eq!(
            fail_line("1", Some("u\tx"), "bad\tcreds\nfor user"),
            "FAIL\t1\tuser=u x\treason=bad creds for user\n"
        );
        assert!(!fail_line("1", None, "x").contains("temp"));
    }

    proptest! {
        #[test]
        fn rendered_replies_are_one_line(id in "\\PC{0,10}", user in "\\PC{0,20}", reason in "[\\s\\S]{0,30}") {
            for line in [ok_line(&id, &user), fail_line(&id, Some(&user), &reason)] {
                prop_assert_eq!(line.matches('\n').count(), 1);
                prop_assert!(line.ends_with('\n'));
            }
        }

        #[test]
        fn parsers_never_panic(line in "\\PC{0,80}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_client_line(&line);
            let _ = parse_handshake(&line);
            let _ = parse_plain(&bytes);
        }

        #[test]
        fn any_split_gives_the_same_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'\t'), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..10),
        ) {
            let whole = decode_lines(&[&input]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                pieces.push(&input[last..cut]);
                last = cut;
            }
            prop_assert_eq!(decode_lines(&pieces), whole);
        }
    }

    /// Every line decoded from `pieces` arriving one after another, the error if
    /// any, and what is left buffered.
    fn decode_lines(pieces: &[&[u8]]) -> (Vec<String>, Option<LineTooLong>, usize) {
        let mut d = LineDecoder;
        let mut buf = BytesMut::new();
        let mut lines = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(line)) => lines.push(line),
                    Ok(None) => break,
                    Err(e) => return (lines, Some(e), buf.len()),
                }
            }
        }
        (lines, None, buf.len())
    }

    #[test]
    fn lines_are_split_bounded_and_lossy() {
        let (lines, err, left) = decode_lines(&[b"VERSION\t1\t0\r\nCPID\t7\n\xffx\npart"]);
        assert_eq!(lines, ["VERSION\t1\t0", "CPID\t7", "\u{fffd}x"]);
        assert_eq!((err, left), (None, 4));
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(
            decode_lines(&[&long]).1,
            Some(LineTooLong),
            "incomplete, already too long"
        );
        let mut exact = vec![b'a'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(
            decode_lines(&[&exact]).0.len(),
            1,
            "MAX_LINE itself is fine"
        );
    }

    #[test]
    fn login_answers_decode() {
        let b64 = |s: &[u8]| STANDARD.encode(s);
        assert_eq!(
            login_credentials(&b64(b"user@x"), &b64(b"pw\0x")),
            Ok(("user@x".to_owned(), b"pw\0x".to_vec()))
        );
        assert_eq!(
            login_credentials(&b64(b""), &b64(b"pw")),
            Err(SaslError::Empty)
        );
        assert_eq!(
            login_credentials("!", &b64(b"pw")),
            Err(SaslError::Base64("LOGIN username"))
        );
        assert_eq!(
            login_credentials(&b64(b"u"), "!"),
            Err(SaslError::Base64("LOGIN password"))
        );
        assert_eq!(
            login_credentials(&b64(b"\xff"), &b64(b"pw")),
            Err(SaslError::LoginNotUtf8)
        );
    }
}
