//! Password hashes as directories store them, checked when loaded and verified on
//! login, for the backends that verify passwords themselves (fixture, SQL):
//! argon2 (PHC strings), SHA-crypt (`$6$`, `$5$`), bcrypt (`$2y$` ...) and the
//! weak MD5-crypt (`$1$`) of older PostfixAdmin installations, each
//! also with Dovecot's scheme prefix (`{ARGON2ID}`, `{SHA512-CRYPT}`,
//! `{BLF-CRYPT}` ...), as PostfixAdmin writes them. Verification is CPU- and
//! memory-heavy: [`Verifier`] runs it on a few dedicated threads that reuse their
//! argon2 memory, never on the async workers.
//!
//! Nothing here ever puts a password or a hash into a message.

mod hash;
mod md5crypt;
mod verifier;

pub use hash::{
    MAX_ARGON2_LANES, MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PASSES, MAX_BCRYPT_COST,
    MAX_SHA_CRYPT_ROUNDS, SUPPORTED, Scheme, check, verify,
};
pub use verifier::{Verifier, VerifyFailed};
