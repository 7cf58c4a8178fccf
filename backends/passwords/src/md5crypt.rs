//! MD5-crypt (`$1$salt$hash`, FreeBSD's and glibc's `crypt(3)` with MD5), which
//! PostfixAdmin wrote by default for years (`md5crypt`, Dovecot's `{MD5-CRYPT}`).
//! A weak scheme (1000 MD5 rounds): verified so that such accounts keep working
//! until they are rehashed, never offered for new hashes.

use md5::{Digest, Md5};

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const MAGIC: &[u8] = b"$1$";

/// `$1$salt$hash` split into salt and hash, when well formed: a salt of at most 8
/// characters without `$`, and 22 characters of crypt's base 64.
pub(crate) fn parts(hash: &str) -> Option<(&str, &str)> {
    let rest = hash.strip_prefix("$1$")?;
    let (salt, digest) = rest.split_once('$')?;
    let crypt64 = |s: &str| s.bytes().all(|b| ITOA64.contains(&b));
    (salt.len() <= 8 && !salt.is_empty() && digest.len() == 22 && crypt64(digest))
        .then_some((salt, digest))
}

/// The MD5-crypt digest of `password` with `salt`, in crypt's base 64 (22 characters).
fn digest(password: &[u8], salt: &[u8]) -> String {
    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();

    let mut context = Md5::new();
    context.update(password);
    context.update(MAGIC);
    context.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        context.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits != 0 {
        if bits & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut round = context.finalize();
    for i in 0..1000 {
        let mut context = Md5::new();
        if i & 1 == 1 {
            context.update(password);
        } else {
            context.update(round);
        }
        if i % 3 != 0 {
            context.update(salt);
        }
        if i % 7 != 0 {
            context.update(password);
        }
        if i & 1 == 1 {
            context.update(round);
        } else {
            context.update(password);
        }
        round = context.finalize();
    }
    let mut out = String::with_capacity(22);
    let mut put = |value: u32, chars: usize| {
        let mut value = value;
        for _ in 0..chars {
            out.push(ITOA64[(value & 0x3f) as usize] as char);
            value >>= 6;
        }
    };
    let b = |i: usize| u32::from(round[i]);
    for (a, c, d) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((b(a) << 16) | (b(c) << 8) | b(d), 4);
    }
    put(b(11), 2);
    out
}

/// Whether `password` matches the well-formed MD5-crypt `hash`; the comparison
/// takes as long whatever the answer.
pub(crate) fn verify(hash: &str, password: &[u8]) -> Option<bool> {
    let (salt, expected) = parts(hash)?;
    let computed = digest(password, salt.as_bytes());
    let differ = computed
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Some(differ == 0 && computed.len() == expected.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -1 -salt …` (OpenSSL's implementation of the same scheme).
    #[test]
    fn openssl_vectors_verify() {
        for (hash, password) in [
            ("$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/", &b"password"[..]),
            ("$1$ab$zRhLhQlF.oQpGoCIApPRg1", b"Hello world!"),
            ("$1$longsalt$k/mBLyLQHWN.TiK5hxzmP.", b"x"),
        ] {
            assert_eq!(verify(hash, password), Some(true), "{hash}");
            assert_eq!(verify(hash, b"wrong"), Some(false), "{hash}");
        }
        for malformed in [
            "$1$$abc",
            "$1$salt$short",
            "$1$toolongsalt$qjXMvbEw8oaL.CzflDtaK/",
            "$1$s$qjXMvbEw8oaL.Czfl*taK/",
        ] {
            assert_eq!(verify(malformed, b"password"), None, "{malformed}");
        }
    }
}
