//! The contract between the userli-postfix-adapter engine and a user directory.
//!
//! A backend answers the four questions Postfix asks through socketmap lookups:
//! which addresses an alias expands to, whether a domain or mailbox exists, and
//! which logins may send as an address. The engine owns everything around it:
//! the wire protocols, address normalisation, deadlines, metrics and caching.
//! A backend only has to answer honestly, and to say so when it cannot.
//!
//! # Layout
//! - [`LookupBackend`]: the trait a backend implements (re-exported [`async_trait`](macro@async_trait) included,
//!   so a custom backend needs only this crate).
//! - [`Address`]: a normalised mailbox address as the engine hands it to a backend.
//! - [`BackendError`]: "I could not answer", which the engine turns into a *temporary*
//!   answer for Postfix (`TEMP`), never into "not found".
//! - `testkit` (feature): conformance checks against userli's `basic` fixture data set.
//!
//! # Rules for implementors
//! - "Not found" is a value (`Ok(false)`, `Ok(vec![])`), never an error.
//! - Any doubt is an error: a timeout, an unexpected status or body must be a
//!   [`BackendError`], because a wrong "not found" bounces mail while an error only
//!   delays it.
//! - Keys arrive already normalised (see [`Address`]); a backend applies only the
//!   validation rules of its own data model.

pub use async_trait::async_trait;

mod address;
mod error;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use address::{Address, AddressError};
pub use error::{BackendError, BoxError};

use std::sync::Arc;

/// The reason of a failed login when there is nothing more to say: userli's own
/// words for an unknown user, a deleted one and a wrong password alike, so the
/// answer never tells which it was. Backends use it for all three.
pub const AUTH_FAILED: &str = "authentication failed";

/// The longest password worth verifying (userli's, that is Symfony's, limit). A
/// longer one fails without being hashed or sent anywhere: hashing is the most
/// expensive thing a client can ask for, and SHA-crypt's cost grows with the
/// square of the password's length.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The verdict on a login and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password is right and the login may authenticate.
    Success,
    /// The login may not authenticate: wrong password, unknown or disabled user.
    /// `reason` is shown to the SMTP client (for example userli's
    /// `user disabled due to spam role`); it must not reveal whether the user exists
    /// beyond what the directory itself says.
    Failure {
        /// Text for the SMTP client.
        reason: String,
    },
}

/// Sending limits of one login, userli's `smtp_quota` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SmtpQuota {
    /// Messages per rolling hour; `0` means no limit.
    pub per_hour: u32,
    /// Messages per rolling day; `0` means no limit.
    pub per_day: u32,
}

impl SmtpQuota {
    /// Whether neither window is limited.
    pub fn is_unlimited(&self) -> bool {
        self.per_hour == 0 && self.per_day == 0
    }
}

/// A user directory the adapter can answer Postfix lookups from.
///
/// Implementations must be cheap to call concurrently: the engine calls them from
/// many connections at once and applies its own deadline around every call, so a
/// backend need not enforce one itself (dropping the future cancels the call).
#[async_trait]
pub trait LookupBackend: Send + Sync + 'static {
    /// Destinations of the alias `address`, in the backend's order.
    ///
    /// An empty list means "`address` is not an alias".
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError>;

    /// Whether mail for `domain` is handled here (a `virtual_mailbox_domains` member).
    ///
    /// `domain` is lower-case, trimmed and non-empty; it may still be something that
    /// is no domain at all (Postfix passes through what it gets).
    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError>;

    /// Whether `address` is an existing (not deleted) mailbox.
    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError>;

    /// The SASL logins allowed to use `address` as envelope sender
    /// (`smtpd_sender_login_maps`). An empty list means "nobody".
    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError>;

    /// The sending limits of the SASL login `login` (the policy server's quotas).
    ///
    /// `Ok(None)`: no such login, so no limit. The default says that for everyone,
    /// which suits backends without quotas.
    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        let _ = login;
        Ok(None)
    }

    /// Checks `password` for the SASL login `login` (SMTP AUTH through the Dovecot
    /// protocol). The password is passed byte-exact, as the client sent it.
    ///
    /// A wrong password is `Ok(AuthOutcome::Failure)`; only "could not check" is an
    /// error (the engine then drops the auth connection so Postfix answers 454, a
    /// temporary failure, instead of 535). The default cannot check anything.
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        let _ = (login, password);
        Err(BackendError::Other(
            "this backend does not support authentication".into(),
        ))
    }

    /// Whether the backend can answer right now; drives the `/ready` endpoint.
    ///
    /// The default says "always ready", which suits backends without remote parts.
    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Re-reads the backend's data or settings (the engine calls this on SIGHUP).
    ///
    /// On error the backend must keep serving its previous data. The default does
    /// nothing.
    async fn reload(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// A short name for logs and metrics, such as `userli` or `fixture`.
    fn name(&self) -> &str {
        "custom"
    }
}

#[async_trait]
impl<T: LookupBackend + ?Sized> LookupBackend for Arc<T> {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        (**self).aliases(address).await
    }
    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        (**self).domain_exists(domain).await
    }
    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        (**self).mailbox_exists(address).await
    }
    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        (**self).senders(address).await
    }
    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        (**self).smtp_quota(login).await
    }
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        (**self).authenticate(login, password).await
    }
    async fn health(&self) -> Result<(), BackendError> {
        (**self).health().await
    }
    async fn reload(&self) -> Result<(), BackendError> {
        (**self).reload().await
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}
