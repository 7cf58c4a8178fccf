//! Strict, bounded netstring framing (`<len>:<bytes>,`) as Postfix's socketmap
//! client speaks it.
//!
//! The decoder never trusts a declared length: it rejects a length above the
//! configured maximum while the digits are still arriving, before a single payload
//! byte is buffered, so a client announcing 999999999 bytes costs nothing.

use bytes::{Bytes, BytesMut};

/// Why bytes are not a valid netstring. Any of these leaves the stream in an
/// unknown state, so the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    /// The length prefix starts with something other than a digit.
    #[error("length does not start with a digit")]
    NotADigit,
    /// The length has a leading zero (only `0:` itself may start with `0`).
    #[error("non-zero length has a leading zero")]
    LeadingZero,
    /// The declared length is above the configured maximum.
    #[error("declared length exceeds the maximum of {max} bytes")]
    TooLong {
        /// The configured maximum payload size.
        max: usize,
    },
    /// The digits are not followed by `:`.
    #[error("':' not found after the length")]
    MissingColon,
    /// The payload is not followed by `,`.
    #[error("',' not found after the payload")]
    MissingComma,
}

/// Decodes netstrings whose payload is at most `max_len` bytes.
#[derive(Debug, Clone, Copy)]
pub struct NetstringDecoder {
    max_len: usize,
}

impl NetstringDecoder {
    /// A decoder accepting payloads of up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }

    /// The largest payload this decoder accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The most bytes a caller ever needs to buffer for one frame: the prefix,
    /// the payload and the comma.
    pub fn max_frame_len(&self) -> usize {
        digits(self.max_len) + 1 + self.max_len + 1
    }

    /// Takes one complete netstring from the front of `buf` and returns its payload.
    ///
    /// Returns `Ok(None)` while the frame is incomplete (read more and call again);
    /// `buf` is left untouched in that case.
    ///
    /// # Errors
    /// [`NetstringError`] as soon as the bytes seen so far cannot start a valid
    /// frame of at most `max_len` bytes.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, NetstringError> {
        let mut len: usize = 0;
        let mut digits = 0;
        for &byte in buf.iter() {
            if !byte.is_ascii_digit() {
                break;
            }
            if digits == 1 && len == 0 {
                return Err(NetstringError::LeadingZero);
            }
            len = len
                .checked_mul(10)
                .and_then(|l| l.checked_add(usize::from(byte - b'0')))
                .filter(|&l| l <= self.max_len)
                .ok_or(NetstringError::TooLong { max: self.max_len })?;
            digits += 1;
        }
        if digits == buf.len() {
            return Ok(None);
        }
        if digits == 0 {
            return Err(NetstringError::NotADigit);
        }
        if buf[digits] != b':' {
            return Err(NetstringError::MissingColon);
        }
        let total = digits + 1 + len + 1;
        if buf.len() < total {
            return Ok(None);
        }
        if buf[total - 1] != b',' {
            return Err(NetstringError::MissingComma);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.truncate(total - 1);
        Ok(Some(frame.slice(digits + 1..)))
    }
}

/// Appends `payload` framed as a netstring to `out`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(digits(payload.len()) + payload.len() + 2);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

/// `payload` framed as a netstring, in one buffer so it goes out in one write.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(payload, &mut out);
    out
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: NetstringDecoder, input: &[u8]) -> Result<Vec<Bytes>, NetstringError> {
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn decodes_postfix_requests() {
        let frames = decode_all(
            NetstringDecoder::new(100),
            b"18:domain example.com,23:alias alias@example.org,",
        )
        .unwrap();
        assert_eq!(
            frames,
            vec![&b"domain example.com"[..], &b"alias alias@example.org"[..]]
        );
    }

    #[test]
    fn empty_netstring_is_valid() {
        assert_eq!(
            decode_all(NetstringDecoder::new(10), b"0:,").unwrap(),
            vec![Bytes::new()]
        );
    }

    #[test]
    fn payload_may_contain_delimiters() {
        assert_eq!(
            decode_all(NetstringDecoder::new(100), b"9:a:b,c,d:e,").unwrap(),
            vec![&b"a:b,c,d:e"[..]]
        );
    }

    #[test]
    fn incomplete_input_is_not_an_error_and_is_kept() {
        let decoder = NetstringDecoder::new(100);
        for partial in [&b""[..], b"1", b"12", b"12:", b"12:domain", b"4:abcd"] {
            let mut buf = BytesMut::from(partial);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "{partial:?}");
            assert_eq!(&buf[..], partial);
        }
    }

    #[test]
    fn rejects_malformed_prefixes() {
        let decoder = NetstringDecoder::new(100);
        let cases: [(&[u8], NetstringError); 7] = [
            (b"x:", NetstringError::NotADigit),
            (b":", NetstringError::NotADigit),
            (b"-1:", NetstringError::NotADigit),
            (b"01:a,", NetstringError::LeadingZero),
            (b"00", NetstringError::LeadingZero),
            (b"3a", NetstringError::MissingColon),
            (b"3:abc;", NetstringError::MissingComma),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_all(decoder, input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn trailing_newline_after_a_frame_is_a_framing_error() {
        let mut buf = BytesMut::from(&b"1:a,\n"[..]);
        let decoder = NetstringDecoder::new(10);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), &b"a"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(NetstringError::NotADigit));
    }

    #[test]
    fn oversized_length_is_rejected_before_any_payload() {
        let decoder = NetstringDecoder::new(10_000);
        assert_eq!(
            decode_all(decoder, b"999999999"),
            Err(NetstringError::TooLong { max: 10_000 })
        );
        assert_eq!(
            decode_all(decoder, b"10001"),
            Err(NetstringError::TooLong { max: 10_000 })
        );
        assert_eq!(decode_all(decoder, b"10000:"), Ok(vec![]));
        // An absurd number of digits must not overflow.
        assert_eq!(
            decode_all(NetstringDecoder::new(usize::MAX), &[b'9'; 64]),
            Err(NetstringError::TooLong { max: usize::MAX })
        );
    }

    #[test]
    fn max_frame_len_covers_the_largest_frame() {
        let decoder = NetstringDecoder::new(10_000);
        let frame = encode(&[b'x'; 10_000]);
        assert_eq!(frame.len(), decoder.max_frame_len());
    }

    #[test]
    fn encodes_byte_lengths() {
        assert_eq!(encode(b"OK 1"), b"4:OK 1,");
        assert_eq!(encode(b""), b"0:,");
        assert_eq!(encode("OK ü".as_bytes()), "5:OK ü,".as_bytes());
    }

    proptest! {
        #[test]
        fn any_split_of_the_input_gives_the_same_frames(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let decoder = NetstringDecoder::new(300);
            let mut wire = Vec::new();
            for p in &payloads {
                encode_into(p, &mut wire);
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cut_points.push(wire.len());
            cut_points.sort_unstable();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut start = 0;
            for cut in cut_points {
                buf.extend_from_slice(&wire[start..cut]);
                start = cut;
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame.to_vec());
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(frames, payloads);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(input in prop::collection::vec(any::<u8>(), 0..2000)) {
            let decoder = NetstringDecoder::new(100);
            let mut buf = BytesMut::from(&input[..]);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= 100),
                    Ok(None) => {
                        // Incomplete is only possible while the buffer could still be a valid frame.
                        prop_assert!(buf.len() <= decoder.max_frame_len());
                        break;
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn declared_lengths_above_the_maximum_fail_on_the_prefix_alone(len in 101usize..1_000_000_000) {
            let mut buf = BytesMut::from(format!("{len}:").as_bytes());
            prop_assert_eq!(NetstringDecoder::new(100).decode(&mut buf), Err(NetstringError::TooLong { max: 100 }));
        }
    }
}
