//! [`StubBackend`]: a backend built in code, for tests of what sits on top of a
//! backend (caches, servers, policies), with errors, delays and hangs on demand.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{AUTH_FAILED, Address, AuthOutcome, BackendError, LookupBackend, SmtpQuota};

/// What goes wrong when a question names a key (see [`StubBackend::fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An immediate [`BackendError::Unavailable`] (connection refused).
    Unavailable,
    /// An immediate [`BackendError::Timeout`].
    Timeout,
    /// An immediate [`BackendError::InvalidResponse`].
    InvalidResponse,
    /// An immediate [`BackendError::Other`] with this text.
    Other(String),
    /// The answer, after this long.
    Delay(Duration),
    /// No answer, ever (the caller's deadline must end it).
    Hang,
    /// No answer until [`StubBackend::release`] is called; then the answer.
    Held,
}

/// A backend answering from tables set up in code. Every call is recorded as
/// `"question key"` (`"mailbox user@example.org"`, `"auth user@example.org"`, …;
/// a health check as `"health"`).
///
/// ```
/// # use postfix_adapter_backend::testkit::{Fault, StubBackend};
/// let backend = StubBackend::new()
///     .domain("example.org")
///     .mailbox("user@example.org")
///     .alias("alias@example.org", &["user@example.org"])
///     .login("user@example.org", "secret")
///     .fault("down@example.org", Fault::Unavailable);
/// ```
#[derive(Debug)]
pub struct StubBackend {
    domains: HashSet<String>,
    mailboxes: HashSet<String>,
    aliases: HashMap<String, Vec<String>>,
    senders: HashMap<String, Vec<String>>,
    quotas: HashMap<String, SmtpQuota>,
    logins: HashMap<String, Login>,
    /// By key, and by question (`None`: every question).
    faults: HashMap<(Option<String>, String), Fault>,
    health: Option<Fault>,
    /// A fault for every call (health checks included) while set: an outage.
    outage: Mutex<Option<Fault>>,
    calls: Mutex<Vec<String>>,
    released: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
enum Login {
    Password(Vec<u8>),
    Refused(String),
}

impl Default for StubBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl StubBackend {
    /// A backend that knows nothing: every answer is "not found".
    pub fn new() -> Self {
        Self {
            domains: HashSet::new(),
            mailboxes: HashSet::new(),
            aliases: HashMap::new(),
            senders: HashMap::new(),
            quotas: HashMap::new(),
            logins: HashMap::new(),
            faults: HashMap::new(),
            health: None,
            outage: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
            released: watch::Sender::new(false),
        }
    }

    /// `domain` is hosted.
    #[must_use]
    pub fn domain(mut self, domain: &str) -> Self {
        self.domains.insert(domain.to_owned());
        self
    }

    /// `address` is a mailbox, and (unless set otherwise) may be sent as by itself.
    #[must_use]
    pub fn mailbox(mut self, address: &str) -> Self {
        self.mailboxes.insert(address.to_owned());
        self.senders
            .entry(address.to_owned())
            .or_insert_with(|| vec![address.to_owned()]);
        self
    }

    /// `source` is an alias for `destinations` (in this order; entries are passed on
    /// as they are, empty or odd ones included).
    #[must_use]
    pub fn alias(mut self, source: &str, destinations: &[&str]) -> Self {
        self.aliases.insert(
            source.to_owned(),
            destinations.iter().map(|d| (*d).to_owned()).collect(),
        );
        self
    }

    /// The logins that may send as `address` (replacing any set before).
    #[must_use]
    pub fn senders_of(mut self, address: &str, logins: &[&str]) -> Self {
        self.senders.insert(
            address.to_owned(),
            logins.iter().map(|l| (*l).to_owned()).collect(),
        );
        self
    }

    /// The sending limits of `login`.
    #[must_use]
    pub fn quota(mut self, login: &str, quota: SmtpQuota) -> Self {
        self.quotas.insert(login.to_owned(), quota);
        self
    }

    /// `login` authenticates with `password` (any other password:
    /// [`AUTH_FAILED`]).
    #[must_use]
    pub fn login(mut self, login: &str, password: impl AsRef<[u8]>) -> Self {
        self.logins.insert(
            login.to_owned(),
            Login::Password(password.as_ref().to_vec()),
        );
        self
    }

    /// `login` is refused whatever the password, with `reason` (a disabled user).
    #[must_use]
    pub fn refused(mut self, login: &str, reason: &str) -> Self {
        self.logins
            .insert(login.to_owned(), Login::Refused(reason.to_owned()));
        self
    }

    /// Every question naming `key` (an address, or a domain) goes wrong this way.
    #[must_use]
    pub fn fault(mut self, key: &str, fault: Fault) -> Self {
        self.faults.insert((None, key.to_owned()), fault);
        self
    }

    /// Only the `question` (`alias`, `domain`, `mailbox`, `senders`, `smtp_quota`,
    /// `auth`) naming `key` goes wrong this way; it wins over [`fault`](Self::fault).
    #[must_use]
    pub fn fault_on(mut self, question: &str, key: &str, fault: Fault) -> Self {
        self.faults
            .insert((Some(question.to_owned()), key.to_owned()), fault);
        self
    }

    /// The health check goes wrong this way.
    #[must_use]
    pub fn unhealthy(mut self, fault: Fault) -> Self {
        self.health = Some(fault);
        self
    }

    /// From now on every call (health checks included) goes wrong this way, until
    /// [`end_outage`](Self::end_outage): a backend going down under a running
    /// server, for testing what is served from caches meanwhile.
    pub fn start_outage(&self, fault: Fault) {
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
    }

    /// Ends [`start_outage`](Self::start_outage): calls answer from the tables again.
    pub fn end_outage(&self) {
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn outage(&self) -> Option<Fault> {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets every call held by [`Fault::Held`] (now or later) answer.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// The calls so far, in order, and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many calls were made since the last [`take_calls`](Self::take_calls).
    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Records the call and applies the fault set for `key`, if any.
    async fn enter(&self, question: &str, key: &str) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{question} {key}"));
        if let Some(outage) = self.outage() {
            return self.apply(&outage).await;
        }
        let fault = self
            .faults
            .get(&(Some(question.to_owned()), key.to_owned()))
            .or_else(|| self.faults.get(&(None, key.to_owned())));
        match fault {
            None => Ok(()),
            Some(fault) => self.apply(fault).await,
        }
    }

    async fn apply(&self, fault: &Fault) -> Result<(), BackendError> {
        match fault {
            Fault::Unavailable => Err(BackendError::unavailable("stub: connection refused")),
            Fault::Timeout => Err(BackendError::Timeout),
            Fault::InvalidResponse => Err(BackendError::InvalidResponse("stub: bad body".into())),
            Fault::Other(text) => Err(BackendError::Other(text.clone())),
            Fault::Delay(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
            Fault::Hang => std::future::pending().await,
            Fault::Held => {
                let mut released = self.released.subscribe();
                let _ = released.wait_for(|r| *r).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl LookupBackend for StubBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.enter("alias", address.as_str()).await?;
        Ok(self
            .aliases
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.enter("domain", domain).await?;
        Ok(self.domains.contains(domain))
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.enter("mailbox", address.as_str()).await?;
        Ok(self.mailboxes.contains(address.as_str()))
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.enter("senders", address.as_str()).await?;
        Ok(self
            .senders
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        self.enter("smtp_quota", login.as_str()).await?;
        Ok(self.quotas.get(login.as_str()).copied())
    }

    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<AuthOutcome, BackendError> {
        self.enter("auth", login.as_str()).await?;
        let failure = |reason: &str| AuthOutcome::Failure {
            reason: reason.to_owned(),
        };
        Ok(match self.logins.get(login.as_str()) {
            Some(Login::Password(right)) if right == password => AuthOutcome::Success,
            Some(Login::Refused(reason)) => failure(reason),
            _ => failure(AUTH_FAILED),
        })
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push("health".to_owned());
        if let Some(outage) = self.outage() {
            return self.apply(&outage).await;
        }
        match &self.health {
            None => Ok(()),
            Some(fault) => self.apply(fault).await,
        }
    }

    fn name(&self) -> &str {
        "stub"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_faults_and_calls() {
        let b = StubBackend::new()
            .domain("example.org")
            .mailbox("user@example.org")
            .alias("alias@example.org", &["user@example.org", ""])
            .quota(
                "user@example.org",
                SmtpQuota {
                    per_hour: 2,
                    per_day: 0,
                },
            )
            .login("user@example.org", "pw")
            .refused("spam@example.org", "disabled")
            .fault("down@example.org", Fault::Unavailable)
            .fault("slow@example.org", Fault::Delay(Duration::from_secs(2)))
            .fault("held@example.org", Fault::Held)
            .fault_on("alias", "user@example.org", Fault::Other("boom".into()));
        assert!(b.domain_exists("example.org").await.unwrap());
        assert!(!b.domain_exists("example.net").await.unwrap());
        assert!(b.mailbox_exists(&addr("user@example.org")).await.unwrap());
        assert_eq!(
            b.senders(&addr("user@example.org")).await.unwrap(),
            ["user@example.org"]
        );
        assert_eq!(
            b.aliases(&addr("alias@example.org")).await.unwrap(),
            ["user@example.org", ""]
        );
        assert_eq!(
            b.smtp_quota(&addr("user@example.org")).await.unwrap(),
            Some(SmtpQuota {
                per_hour: 2,
                per_day: 0
            })
        );
        assert_eq!(
            b.authenticate(&addr("user@example.org"), b"pw")
                .await
                .unwrap(),
            AuthOutcome::Success
        );
        assert_eq!(
            b.authenticate(&addr("user@example.org"), b"no")
                .await
                .unwrap(),
            AuthOutcome::Failure {
                reason: AUTH_FAILED.into()
            }
        );
        assert_eq!(
            b.authenticate(&addr("spam@example.org"), b"pw")
                .await
                .unwrap(),
            AuthOutcome::Failure {
                reason: "disabled".into()
            }
        );
        assert!(matches!(
            b.mailbox_exists(&addr("down@example.org")).await,
            Err(BackendError::Unavailable(_))
        ));
        let started = tokio::time::Instant::now();
        assert!(!b.mailbox_exists(&addr("slow@example.org")).await.unwrap());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let held_address = addr("held@example.org");
        let held = b.mailbox_exists(&held_address);
        let (answer, ()) = tokio::join!(held, async { b.release() });
        assert!(!answer.unwrap());
        assert!(matches!(
            b.aliases(&addr("user@example.org")).await,
            Err(BackendError::Other(t)) if t == "boom"
        ));
        assert!(
            b.mailbox_exists(&addr("user@example.org")).await.unwrap(),
            "only the alias question fails"
        );
        assert_eq!(b.call_count(), 14);
        assert_eq!(b.take_calls()[0], "domain example.org");
        assert_eq!(b.call_count(), 0);
    }
}
