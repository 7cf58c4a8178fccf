//! Turning the keys Postfix sends into the addresses and domains a backend sees.
//!
//! Upstream lower-cases, trims invisible characters at both ends and strips an
//! address extension. We do the same, with one correction: the recipient delimiter
//! works like Postfix's `recipient_delimiter`, where *each character* of the setting
//! is a delimiter and the local part is cut at the first of them (upstream treated a
//! multi-character setting as one literal substring).

use postfix_adapter_backend::Address;

/// Local parts Postfix never splits at a delimiter (`split_addr.c`): mail for them
/// must reach exactly that mailbox.
const NEVER_SPLIT: [&str; 3] = ["postmaster", "mailer-daemon", "double-bounce"];

/// Why a key cannot be an address; every case is answered `NOTFOUND` without a
/// backend call, because the key cannot name a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is not UTF-8.
    #[error("key is not UTF-8")]
    NotUtf8,
    /// No `@`: a bare domain (Postfix probes the alias map with those) or local part.
    #[error("key has no @")]
    NoAt,
    /// Nothing before the `@` (after stripping an extension), or nothing after it.
    #[error("key has an empty local part or domain")]
    EmptyPart,
    /// White space or control characters inside the address.
    #[error("key contains white space or control characters")]
    InvalidCharacter,
}

/// Normalises lookup keys; built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    delimiters: Vec<char>,
}

impl Normalizer {
    /// A normaliser that strips extensions at any character of `recipient_delimiter`
    /// (empty: never strip).
    pub fn new(recipient_delimiter: &str) -> Self {
        let mut delimiters: Vec<char> = recipient_delimiter.chars().collect();
        delimiters.dedup();
        Self { delimiters }
    }

    /// The configured delimiter characters.
    pub fn delimiters(&self) -> &[char] {
        &self.delimiters
    }

    /// Normalises an address key: lower-case, trimmed, extension stripped.
    ///
    /// # Errors
    /// [`KeyError`] when the result cannot be a `local@domain` address.
    pub fn address(&self, key: &[u8]) -> Result<Address, KeyError> {
        let key = std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)?;
        let lowered = key.trim_matches(is_invisible).to_lowercase();
        let trimmed = lowered.trim_matches(is_invisible);
        let at = trimmed.rfind('@').ok_or(KeyError::NoAt)?;
        let (local, domain) = (&trimmed[..at], &trimmed[at + 1..]);
        let local = self.strip_extension(local);
        if local.is_empty() || domain.is_empty() {
            return Err(KeyError::EmptyPart);
        }
        let mut full = String::with_capacity(local.len() + 1 + domain.len());
        full.push_str(local);
        full.push('@');
        full.push_str(domain);
        Address::parse(&full).map_err(|_| KeyError::InvalidCharacter)
    }

    /// Normalises a domain key: trimmed and lower-cased; `None` when nothing is left
    /// or the key is not UTF-8.
    pub fn domain(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let domain = key.trim_matches(is_invisible).to_lowercase();
        let domain = domain.trim_matches(is_invisible);
        (!domain.is_empty()).then(|| domain.to_owned())
    }

    /// Cuts `local` at the first delimiter character, as Postfix's `split_addr` does:
    /// special local parts stay whole, and with `-` as a delimiter so do the
    /// mailing-list conventions `owner-*` and `*-request`.
    fn strip_extension<'a>(&self, local: &'a str) -> &'a str {
        if self.delimiters.is_empty() || NEVER_SPLIT.contains(&local) {
            return local;
        }
        if self.delimiters.contains(&'-')
            && (local.starts_with("owner-") || local.ends_with("-request"))
        {
            return local;
        }
        match local.find(|c| self.delimiters.contains(&c)) {
            Some(i) => &local[..i],
            None => local,
        }
    }
}

/// Characters upstream trims at both ends: Unicode white space, C0 controls and
/// space, DEL, zero-width space/joiners and the byte-order mark.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c <= '\u{20}'
        || c == '\u{7f}'
        || matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(delim: &str, key: &str) -> Result<String, KeyError> {
        Normalizer::new(delim)
            .address(key.as_bytes())
            .map(|a| a.as_str().to_owned())
    }

    #[test]
    fn upstream_cases() {
        let cases = [
            ("User@Example.COM", "", Ok("user@example.com")),
            ("  user@example.org\t\n", "", Ok("user@example.org")),
            ("\u{7f}user@example.org\u{7f}", "", Ok("user@example.org")),
            (
                "\u{200b}\u{200c}\u{200d}\u{feff}user@example.org\u{feff}",
                "",
                Ok("user@example.org"),
            ),
            ("user+tag@example.org", "+", Ok("user@example.org")),
            ("user+a+b@example.org", "+", Ok("user@example.org")),
            ("user+@example.org", "+", Ok("user@example.org")),
            ("+tag@example.org", "+", Err(KeyError::EmptyPart)),
            ("user-tag@example.org", "-", Ok("user@example.org")),
            ("first.last@example.org", "", Ok("first.last@example.org")),
            ("user", "", Err(KeyError::NoAt)),
            ("example.org", "", Err(KeyError::NoAt)),
            ("@example.org", "", Err(KeyError::EmptyPart)),
            ("user@", "", Err(KeyError::EmptyPart)),
            ("", "", Err(KeyError::NoAt)),
            ("us er@example.org", "", Err(KeyError::InvalidCharacter)),
        ];
        for (key, delim, want) in cases {
            assert_eq!(
                norm(delim, key),
                want.map(str::to_owned),
                "{key:?} with {delim:?}"
            );
        }
    }

    #[test]
    fn each_delimiter_character_is_a_delimiter() {
        assert_eq!(norm("+-", "user-tag@x.org").unwrap(), "user@x.org");
        assert_eq!(norm("+-", "user+tag@x.org").unwrap(), "user@x.org");
        assert_eq!(norm("+-", "a-b+c@x.org").unwrap(), "a@x.org");
    }

    #[test]
    fn special_local_parts_are_never_split() {
        assert_eq!(
            norm("-", "mailer-daemon@x.org").unwrap(),
            "mailer-daemon@x.org"
        );
        assert_eq!(
            norm("-", "double-bounce@x.org").unwrap(),
            "double-bounce@x.org"
        );
        assert_eq!(norm("-", "owner-list@x.org").unwrap(), "owner-list@x.org");
        assert_eq!(
            norm("-", "list-request@x.org").unwrap(),
            "list-request@x.org"
        );
        assert_eq!(norm("+", "owner-list+x@x.org").unwrap(), "owner-list@x.org");
    }

    #[test]
    fn last_at_separates_the_domain() {
        assert_eq!(norm("", "\"a@b\"@x.org").unwrap(), "\"a@b\"@x.org");
    }

    #[test]
    fn non_utf8_is_rejected() {
        assert_eq!(
            Normalizer::new("").address(b"\xffuser@x.org"),
            Err(KeyError::NotUtf8)
        );
        assert_eq!(Normalizer::new("").domain(b"\xff"), None);
    }

    #[test]
    fn domains_are_trimmed_and_lowered() {
        let n = Normalizer::new("");
        assert_eq!(
            n.domain(b" Example.ORG\r\n").as_deref(),
            Some("example.org")
        );
        assert_eq!(n.domain(b" \t"), None);
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent(key in "\\PC{0,40}", delim in "[+\\-]{0,2}") {
            let n = Normalizer::new(&delim);
            if let Ok(a) = n.address(key.as_bytes()) {
                let again = n.address(a.as_str().as_bytes()).expect("normal form stays valid");
                prop_assert_eq!(again.as_str(), a.as_str());
            }
        }

        #[test]
        fn never_panics_on_bytes(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = Normalizer::new("+");
            let _ = n.address(&key);
            let _ = n.domain(&key);
        }
    }
}
