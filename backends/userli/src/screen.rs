//! Keys userli can never hold, answered "not found" without an HTTP call.
//!
//! Every rule here must be *provably* a miss in userli: a wrong "not found" bounces
//! mail, while letting a hopeless key through only costs one request. So the rules
//! are deliberately looser than userli's own validation wherever there is doubt.

use postfix_adapter_backend::Address;

/// Whether `local` may be the local part of an address stored in userli.
///
/// userli validates local parts as `[a-z0-9\-_.]*` (`userli-api.md` §4.2), so
/// anything else can never match a row. The check is looser on purpose:
/// - ASCII upper-case is allowed because production userli compares with a
///   case-insensitive collation (`utf8mb4_unicode_ci`, §4.7), so `User@` can match
///   `user@` if the engine was configured not to lower-case.
/// - `+` is allowed because data created before userli's validation, or imported
///   from elsewhere, may carry it, and upstream's refusal of `+` was listed as a
///   lock-out bug (`upstream-behaviour.md` §14.35).
///
/// Rejecting the rest keeps path-significant characters (`/`, `%`, `?`, `#`) and
/// SRS/quoted forms away from userli, which would answer 404 to an encoded `/`
/// and so turn a plain miss into a temporary error.
pub(crate) fn local_part_ok(local: &str) -> bool {
    !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// Whether `domain` may be the name of a domain stored in userli.
pub(crate) fn domain_ok(domain: &str) -> bool {
    // An empty key would produce the route `.../domain/`, which userli answers with
    // a routing 404 (an error), not with `false`.
    if domain.is_empty() {
        return false;
    }
    // `/` and `\` can never be in a domain name and userli cannot route an encoded
    // `/` (404); `%` would be URL-decoded again by userli before matching, so `%40`
    // would silently become `@`; `?` and `#` would start a query or fragment if
    // anything ever built the URL by string formatting; `@` means the key is an
    // address, not a domain, and no domain row can contain one.
    if domain.chars().any(|c| {
        matches!(c, '/' | '\\' | '?' | '#' | '%' | '@') || c.is_whitespace() || c.is_control()
    }) {
        return false;
    }
    // Empty labels (`..`, a leading or trailing dot) are no valid domain name. This
    // also rules out the keys `.` and `..`, which the URL library would drop as
    // dot-segments, silently turning the request into a different route.
    !domain.split('.').any(str::is_empty)
}

/// Whether `address` could be an address userli holds (alias source, mailbox or
/// sender); see [`local_part_ok`] and [`domain_ok`] for the reasons.
pub(crate) fn address_ok(address: &Address) -> bool {
    local_part_ok(address.local_part()) && domain_ok(address.domain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts() {
        for ok in [
            "user",
            "user2",
            "first.last",
            "a-b_c",
            "user+tag",
            "User",
            "0",
        ] {
            assert!(local_part_ok(ok), "{ok} should pass");
        }
        for bad in [
            "",
            "us/er",
            "us%2fer",
            "us?er",
            "us#er",
            "us er",
            "üser",
            "\"a@b\"",
            "srs0=h=t=d=u",
            "a'b",
            "a\\b",
            "a\u{200b}b",
        ] {
            assert!(!local_part_ok(bad), "{bad:?} should be screened");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "example.org",
            "example.com",
            "bücher.example",
            "xn--bcher-kva.example",
            "localhost",
            "*",
        ] {
            assert!(domain_ok(ok), "{ok} should pass");
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".example.org",
            "example.org.",
            "exa/mple.org",
            "exa\\mple.org",
            "a?b",
            "a#b",
            "a%2fb",
            "user@example.org",
            "a b",
            "a\tb",
            "a\u{0}b",
            "a\u{7f}b",
        ] {
            assert!(!domain_ok(bad), "{bad:?} should be screened");
        }
    }

    #[test]
    fn addresses() {
        let ok = Address::parse("user+tag@example.org").unwrap();
        assert!(address_ok(&ok));
        for bad in [
            "us/er@example.org",
            "user@exa/mple.org",
            "user@example..org",
            "\"a@b\"@example.org",
        ] {
            let a = Address::parse(bad).unwrap();
            assert!(!address_ok(&a), "{bad} should be screened");
        }
    }
}
