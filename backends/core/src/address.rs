use std::fmt;

/// A mailbox address as the engine hands it to a backend: `local@domain`.
///
/// The engine has already lower-cased it, trimmed invisible characters from both
/// ends and put an internationalised domain into its ASCII form. With a recipient
/// delimiter, the engine asks for the address as given first and for the address
/// without its extension only when that is not found (Postfix's order): a backend
/// answers for exactly the address it gets and never strips anything itself. What
/// [`Address::parse`]
/// guarantees on top: exactly the last `@` separates a non-empty local part from a
/// non-empty domain, and there is no white space or control character anywhere.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    full: String,
    at: usize,
}

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The string has no `@`.
    #[error("no @ in address")]
    MissingAt,
    /// Nothing before the `@`.
    #[error("empty local part")]
    EmptyLocalPart,
    /// Nothing after the `@`.
    #[error("empty domain")]
    EmptyDomain,
    /// White space or a control character inside the address.
    #[error("white space or control character in address")]
    InvalidCharacter,
}

impl Address {
    /// Checks the shape of `s` and wraps it; does not normalise.
    ///
    /// # Errors
    /// [`AddressError`] when `s` has no `@`, an empty local part or domain, or
    /// white space or control characters.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::InvalidCharacter);
        }
        let at = s.rfind('@').ok_or(AddressError::MissingAt)?;
        if at == 0 {
            return Err(AddressError::EmptyLocalPart);
        }
        if at + 1 == s.len() {
            return Err(AddressError::EmptyDomain);
        }
        Ok(Self {
            full: s.to_owned(),
            at,
        })
    }

    /// The whole address, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part before the last `@`.
    pub fn local_part(&self) -> &str {
        &self.full[..self.at]
    }

    /// The part after the last `@`.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_last_at() {
        let a = Address::parse("\"a@b\"@example.org").unwrap();
        assert_eq!(a.local_part(), "\"a@b\"");
        assert_eq!(a.domain(), "example.org");
        assert_eq!(a.as_str(), "\"a@b\"@example.org");
    }

    #[test]
    fn rejects_shapes_that_are_no_mailbox() {
        assert_eq!(Address::parse("example.org"), Err(AddressError::MissingAt));
        assert_eq!(
            Address::parse("@example.org"),
            Err(AddressError::EmptyLocalPart)
        );
        assert_eq!(Address::parse("user@"), Err(AddressError::EmptyDomain));
        assert_eq!(Address::parse(""), Err(AddressError::MissingAt));
        assert_eq!(Address::parse("a b@x"), Err(AddressError::InvalidCharacter));
        assert_eq!(Address::parse("a@x\n"), Err(AddressError::InvalidCharacter));
    }
}
