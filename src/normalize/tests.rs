use super::*;
use proptest::prelude::*;

/// The address a backend is finally asked for when the full one is not found:
/// the extension-stripped form if there is one, else the full address.
fn norm(delim: &str, key: &str) -> Result<String, KeyError> {
    Normalizer::new(delim).address(key.as_bytes()).map(|a| {
        a.without_extension()
            .unwrap_or(a.full())
            .as_str()
            .to_owned()
    })
}

fn full(delim: &str, key: &str) -> Result<String, KeyError> {
    Normalizer::new(delim)
        .address(key.as_bytes())
        .map(|a| a.full().as_str().to_owned())
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
        // Nothing is left before the delimiter: only the address as given exists.
        ("+tag@example.org", "+", Ok("+tag@example.org")),
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
fn the_address_as_given_comes_first() {
    let key = Normalizer::new("+-")
        .address(b"First-Last@Example.org")
        .unwrap();
    assert_eq!(key.full().as_str(), "first-last@example.org");
    assert_eq!(
        key.without_extension().map(Address::as_str),
        Some("first@example.org")
    );
    let plain = Normalizer::new("+-").address(b"user@example.org").unwrap();
    assert_eq!(plain.full().as_str(), "user@example.org");
    assert_eq!(plain.without_extension(), None, "no second lookup");
    let no_delimiter = Normalizer::new("").address(b"a+b@example.org").unwrap();
    assert_eq!(no_delimiter.without_extension(), None);
}

#[test]
fn each_delimiter_character_is_a_delimiter() {
    assert_eq!(norm("+-", "user-tag@x.org").unwrap(), "user@x.org");
    assert_eq!(norm("+-", "user+tag@x.org").unwrap(), "user@x.org");
    assert_eq!(norm("+-", "a-b+c@x.org").unwrap(), "a@x.org");
    assert_eq!(full("+-", "a-b+c@x.org").unwrap(), "a-b+c@x.org");
}

#[test]
fn special_local_parts_are_never_split() {
    for key in [
        "mailer-daemon@x.org",
        "double-bounce@x.org",
        "owner-list@x.org",
        "list-request@x.org",
    ] {
        let k = Normalizer::new("-").address(key.as_bytes()).unwrap();
        assert_eq!(k.full().as_str(), key);
        assert_eq!(k.without_extension(), None, "{key}");
    }
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
fn keys_longer_than_any_valid_address_are_no_address() {
    let n = Normalizer::new("+");
    let local64 = "a".repeat(64);
    let domain255 = format!("{}.org", "d".repeat(251));
    assert!(
        n.address(format!("{local64}@{domain255}").as_bytes())
            .is_ok()
    );
    assert_eq!(
        n.address(format!("{local64}b@example.org").as_bytes()),
        Err(KeyError::TooLong)
    );
    assert_eq!(
        n.address(format!("user@{}.org", "d".repeat(252)).as_bytes()),
        Err(KeyError::TooLong)
    );
    // An extension does not make a long local part valid.
    assert_eq!(
        n.address(format!("user+{}@example.org", "t".repeat(60)).as_bytes()),
        Err(KeyError::TooLong)
    );
    // Refused before any work: 16 KB of anything.
    assert_eq!(n.address(&[b'A'; 16_000]), Err(KeyError::TooLong));
    assert!(n.domain(domain255.as_bytes()).is_some());
    assert_eq!(
        n.domain(format!("{}.org", "d".repeat(252)).as_bytes()),
        None
    );
    assert_eq!(n.domain(&[b'a'; 16_000]), None);
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

#[test]
fn idn_domains_are_looked_up_in_ascii_form() {
    let n = Normalizer::new("");
    assert_eq!(
        n.domain("Exämple.org".as_bytes()).as_deref(),
        Some("xn--exmple-cua.org")
    );
    assert_eq!(
        n.domain(b"xn--exmple-cua.org").as_deref(),
        Some("xn--exmple-cua.org")
    );
    assert_eq!(
        full("", "User@Exämple.org").unwrap(),
        "user@xn--exmple-cua.org"
    );
    // The local part is the backend's business (SMTPUTF8 mailboxes exist).
    assert_eq!(full("", "jösé@example.org").unwrap(), "jösé@example.org");
}

#[test]
fn invisible_characters_inside_a_key_make_it_no_address() {
    for key in [
        "user@exa\u{ad}mple.org",
        "us\u{200b}er@example.org",
        "user@example\u{2060}.org",
        "\u{202e}user@example.org",
    ] {
        assert_eq!(
            full("", key),
            Err(KeyError::InvisibleCharacter),
            "{}",
            key.escape_unicode()
        );
    }
    assert_eq!(
        Normalizer::new("").domain("exa\u{ad}mple.org".as_bytes()),
        None
    );
}

#[test]
fn logins_are_canonical_account_names() {
    let ok = |raw: &str| login(raw).map(|a| a.as_str().to_owned());
    assert_eq!(ok(" User@Example.ORG "), Ok("user@example.org".into()));
    // Account names are never extension-stripped.
    assert_eq!(
        ok("first-last@example.org"),
        Ok("first-last@example.org".into())
    );
    assert_eq!(
        ok("user+tag@example.org"),
        Ok("user+tag@example.org".into())
    );
    // One account, one spelling.
    assert_eq!(ok("user@exämple.org"), Ok("user@xn--exmple-cua.org".into()));
    assert_eq!(ok("user@EXÄMPLE.org"), ok("user@xn--exmple-cua.org"));
    // UTS-46 would quietly drop a soft hyphen; we refuse it instead.
    assert_eq!(
        ok("user@exa\u{ad}mple.org"),
        Err(LoginError::InvisibleCharacter)
    );
    assert_eq!(
        ok("us\u{200b}er@example.org"),
        Err(LoginError::InvisibleCharacter)
    );
    assert_eq!(
        ok("us\ner@example.org"),
        Err(LoginError::InvisibleCharacter)
    );
    assert_eq!(ok("jösé@example.org"), Err(LoginError::LocalPartNotAscii));
    // The Kelvin sign lower-cases to an ASCII k: a look-alike, refused as typed.
    assert_eq!(
        ok("\u{212a}ate@example.org"),
        Err(LoginError::LocalPartNotAscii)
    );
    // A root-anchored domain is the same account.
    assert_eq!(ok("user@example.org."), Ok("user@example.org".into()));
    assert_eq!(ok("user@."), Err(LoginError::InvalidDomain));
    assert_eq!(ok("user"), Err(LoginError::NotAnAddress));
    assert_eq!(ok("a@b@example.org"), Err(LoginError::NotAnAddress));
    assert_eq!(ok("@example.org"), Err(LoginError::NotAnAddress));
    assert_eq!(ok("user@exa mple.org"), Err(LoginError::InvisibleCharacter));
    assert_eq!(ok("user@exa/mple.org"), Err(LoginError::InvalidDomain));
    assert_eq!(ok("user@xn--zz.org"), Err(LoginError::InvalidDomain));
    assert_eq!(
        ok(&format!("{}@example.org", "a".repeat(65))),
        Err(LoginError::TooLong)
    );
    assert_eq!(
        ok(&format!("user@{}.org", "a".repeat(300))),
        Err(LoginError::TooLong)
    );
    assert_eq!(ok(&"a".repeat(1 << 20)), Err(LoginError::TooLong));
}

proptest! {
    #[test]
    fn normalising_is_idempotent(key in "\\PC{0,40}", delim in "[+\\-]{0,2}") {
        let n = Normalizer::new(&delim);
        if let Ok(a) = n.address(key.as_bytes()) {
            let again = n.address(a.full().as_str().as_bytes()).expect("normal form stays valid");
            prop_assert_eq!(&again, &a);
            if let Some(stripped) = a.without_extension() {
                let again = n.address(stripped.as_str().as_bytes()).expect("stripped form stays valid");
                prop_assert_eq!(again.full(), stripped);
            }
        }
    }

    #[test]
    fn canonical_logins_are_fixed_points(key in "\\PC{0,40}") {
        if let Ok(a) = login(&key) {
            prop_assert!(a.as_str().is_ascii());
            prop_assert_eq!(login(a.as_str()), Ok(a.clone()));
        }
    }

    #[test]
    fn never_panics_on_bytes(key in proptest::collection::vec(any::<u8>(), 0..64)) {
        let n = Normalizer::new("+");
        let _ = n.address(&key);
        let _ = n.domain(&key);
        let _ = login(&String::from_utf8_lossy(&key));
    }
}
