//! Turning the keys Postfix sends into the addresses and domains a backend sees,
//! and SASL logins into one canonical account name.
//!
//! Lookup keys are lower-cased and trimmed of invisible characters at both ends, as
//! upstream does. Address extensions follow Postfix's own rule for its tables
//! (`mail_addr_find.c`): the address *as given* is looked up first, and only when
//! that is not found the address without its extension. [`Normalizer::address`]
//! therefore returns both forms ([`AddressKey`]); the lookup path decides which
//! one answers. The recipient delimiter works like Postfix's `recipient_delimiter`:
//! *each character* of the setting is a delimiter and the local part is cut at the
//! first of them (upstream treated a multi-character setting as one literal
//! substring, and only ever looked up the stripped form, so `first-last@` was read
//! as `first@`).
//!
//! Domains in a non-ASCII (IDN) spelling are converted to their ASCII form
//! (UTS-46, `xn--` labels), so `exämple.org` and `xn--exmple-cua.org` are one
//! domain; keys with invisible characters inside (soft hyphen, zero-width
//! characters, bidirectional controls) are no addresses at all.
//!
//! SASL logins and quota identities are account names, never addresses with an
//! extension: [`login`] never strips, and makes every spelling of one account the
//! same string (ASCII local part, ASCII domain) so that failure counters and quota
//! buckets cannot be dodged by re-spelling a login.

use std::borrow::Cow;

use postfix_adapter_backend::Address;

/// Local parts Postfix never splits at a delimiter (`split_addr.c`): mail for them
/// must reach exactly that mailbox.
const NEVER_SPLIT: [&str; 3] = ["postmaster", "mailer-daemon", "double-bounce"];

/// The longest local part of a valid address (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// The longest domain of a valid address (RFC 5321 section 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;

/// The longest key worth normalising: a valid address in its longest spelling
/// (every character four UTF-8 bytes, as before IDNA conversion). Longer keys are
/// refused before any work is done on them.
const MAX_KEY_BYTES: usize = 4 * (MAX_LOCAL_PART + 1 + MAX_DOMAIN);

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
    /// Nothing before the `@`, or nothing after it.
    #[error("key has an empty local part or domain")]
    EmptyPart,
    /// White space or control characters inside the address.
    #[error("key contains white space or control characters")]
    InvalidCharacter,
    /// Invisible characters (soft hyphen, zero-width, bidirectional controls)
    /// inside the address.
    #[error("key contains invisible characters")]
    InvisibleCharacter,
    /// A non-ASCII domain that has no valid ASCII (IDNA) form.
    #[error("key's domain is not a valid internationalised domain name")]
    InvalidDomain,
    /// Longer than any valid address (64-octet local part, 255-octet domain):
    /// no mailbox can have it, and it is never sent to a backend or cached.
    #[error("key is longer than any valid address")]
    TooLong,
}

/// Why a SASL login or quota identity cannot be made canonical; refused without
/// asking the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Not of the form `local@domain` with exactly one `@` and both parts non-empty.
    #[error("login is not of the form local@domain")]
    NotAnAddress,
    /// The local part has characters other than printable ASCII.
    #[error("login's local part is not printable ASCII")]
    LocalPartNotAscii,
    /// Invisible characters (soft hyphen, zero-width, bidirectional controls) or
    /// control characters inside the login.
    #[error("login contains invisible or control characters")]
    InvisibleCharacter,
    /// The domain has no valid ASCII (IDNA) form.
    #[error("login's domain is not a valid domain name")]
    InvalidDomain,
    /// Longer than any valid address (64-octet local part, 255-octet domain).
    #[error("login is longer than any valid address")]
    TooLong,
}

/// The forms of an address key, in the order Postfix would look them up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressKey {
    full: Address,
    stripped: Option<Address>,
}

impl AddressKey {
    /// The address as given (normalised, extension kept): always asked first.
    pub fn full(&self) -> &Address {
        &self.full
    }

    /// The address without its extension, when it has one; asked only when the
    /// full address is not found.
    pub fn without_extension(&self) -> Option<&Address> {
        self.stripped.as_ref()
    }
}

/// Normalises lookup keys; built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    delimiters: Vec<char>,
}

impl Normalizer {
    /// A normaliser that knows extensions by any character of `recipient_delimiter`
    /// (empty: addresses have no extensions).
    pub fn new(recipient_delimiter: &str) -> Self {
        let mut delimiters: Vec<char> = recipient_delimiter.chars().collect();
        delimiters.sort_unstable();
        delimiters.dedup();
        Self { delimiters }
    }

    /// The configured delimiter characters.
    pub fn delimiters(&self) -> &[char] {
        &self.delimiters
    }

    /// Normalises an address key: lower-case, trimmed, IDN domain in ASCII form;
    /// with the extension-stripped form when the local part has an extension.
    ///
    /// # Errors
    /// [`KeyError`] when the key cannot be a `local@domain` address.
    pub fn address(&self, key: &[u8]) -> Result<AddressKey, KeyError> {
        // Bound the work before lower-casing: anything this long is no address.
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong);
        }
        let key = std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)?;
        let lowered = key.trim_matches(is_trimmed).to_lowercase();
        let trimmed = lowered.trim_matches(is_trimmed);
        if trimmed.chars().any(is_invisible) {
            return Err(KeyError::InvisibleCharacter);
        }
        let at = trimmed.rfind('@').ok_or(KeyError::NoAt)?;
        let (local, domain) = (&trimmed[..at], &trimmed[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(KeyError::EmptyPart);
        }
        let domain = lookup_domain(domain).ok_or(KeyError::InvalidDomain)?;
        if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
            return Err(KeyError::TooLong);
        }
        let full = join(local, &domain)?;
        let stripped = match self.strip_extension(local) {
            stripped if stripped.is_empty() || stripped.len() == local.len() => None,
            stripped => Some(join(stripped, &domain)?),
        };
        Ok(AddressKey { full, stripped })
    }

    /// Normalises a domain key: trimmed, lower-cased, IDN in ASCII form; `None` when
    /// nothing is left, the key is not UTF-8, or it cannot be a domain.
    pub fn domain(&self, key: &[u8]) -> Option<String> {
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        let key = std::str::from_utf8(key).ok()?;
        let domain = key.trim_matches(is_trimmed).to_lowercase();
        let domain = domain.trim_matches(is_trimmed);
        if domain.is_empty() || domain.chars().any(is_invisible) {
            return None;
        }
        lookup_domain(domain)
            .filter(|d| d.len() <= MAX_DOMAIN)
            .map(Cow::into_owned)
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

fn join(local: &str, domain: &str) -> Result<Address, KeyError> {
    let mut full = String::with_capacity(local.len() + 1 + domain.len());
    full.push_str(local);
    full.push('@');
    full.push_str(domain);
    Address::parse(&full).map_err(|_| KeyError::InvalidCharacter)
}

/// A lookup key's domain: ASCII domains stay as they are (upstream never validated
/// them, and backends may hold odd names); others get their IDNA ASCII form.
fn lookup_domain(domain: &str) -> Option<Cow<'_, str>> {
    if domain.is_ascii() {
        return Some(Cow::Borrowed(domain));
    }
    idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::URL).ok()
}

/// The canonical form of a SASL login or quota identity: trimmed and lower-cased
/// as lookup keys are, never extension-stripped, the local part printable ASCII
/// (as userli allows), the domain in its ASCII (IDNA, UTS-46) form, no invisible
/// characters anywhere, no longer than a valid address.
///
/// Two spellings of one account (`User@Exämple.org`, `user@xn--exmple-cua.org`)
/// give the same string; a spelling that only *looks* like an account
/// (`user@exa<soft hyphen>mple.org`, which UTS-46 would silently map to
/// `example.org`) is refused.
///
/// # Errors
/// [`LoginError`] when the login cannot be made canonical.
pub fn login(raw: &str) -> Result<Address, LoginError> {
    // Bound the work before lower-casing: anything this long is no address.
    if raw.len() > MAX_KEY_BYTES {
        return Err(LoginError::TooLong);
    }
    // The local part must be ASCII as typed: Unicode lower-casing would turn look-
    // alikes such as the Kelvin sign (U+212A) into ASCII letters.
    let raw = raw.trim_matches(is_trimmed);
    if raw
        .chars()
        .any(|c| is_invisible(c) || c.is_control() || c.is_whitespace())
    {
        return Err(LoginError::InvisibleCharacter);
    }
    if raw
        .rsplit_once('@')
        .is_some_and(|(local, _)| !local.is_ascii())
    {
        return Err(LoginError::LocalPartNotAscii);
    }
    let lowered = raw.to_lowercase();
    let trimmed = lowered.trim_matches(is_trimmed);
    let (local, domain) = trimmed.split_once('@').ok_or(LoginError::NotAnAddress)?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(LoginError::NotAnAddress);
    }
    if !local.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LoginError::LocalPartNotAscii);
    }
    let domain = idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| LoginError::InvalidDomain)?;
    // One account, one spelling: the root-anchored `example.org.` is `example.org`.
    let domain = domain.strip_suffix('.').unwrap_or(&domain);
    if domain.is_empty() || domain.starts_with('.') || domain.contains("..") {
        return Err(LoginError::InvalidDomain);
    }
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return Err(LoginError::TooLong);
    }
    Address::parse(&format!("{local}@{domain}")).map_err(|_| LoginError::NotAnAddress)
}

/// Characters upstream trims at both ends: Unicode white space, C0 controls and
/// space, DEL, zero-width space/joiners and the byte-order mark.
fn is_trimmed(c: char) -> bool {
    c.is_whitespace()
        || c <= '\u{20}'
        || c == '\u{7f}'
        || matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{feff}')
}

/// Unicode's default-ignorable code points (`DerivedCoreProperties.txt`): characters
/// that render as nothing, so two keys differing only in them look identical to a
/// human and may compare equal in a database collation, while being different
/// strings to us.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{034F}'
        | '\u{061C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests;
