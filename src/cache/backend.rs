//! [`CachedBackend`]: the answer cache as a decorator around any [`LookupBackend`],
//! so every backend, custom ones included, gets caching, coalescing, stale-on-error
//! and the deadline for free.

use std::sync::Arc;

use postfix_adapter_backend::{Address, BackendError, LookupBackend, SmtpQuota, async_trait};

use super::{AnswerCache, CacheSettings, Cacheable, HeapBytes};

/// One cached answer: a flag (`domain`, `mailbox`) or a list (`alias`, `senders`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Flag(bool),
    List(Vec<String>),
    Quota(Option<SmtpQuota>),
}

impl Cacheable for Answer {
    fn is_negative(&self) -> bool {
        match self {
            Self::Flag(f) => f.is_negative(),
            Self::List(l) => l.is_negative(),
            // "No such login" is as cacheable as any other not-found answer.
            Self::Quota(q) => q.is_none(),
        }
    }
}

impl HeapBytes for Answer {
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Flag(_) | Self::Quota(_) => 0,
            Self::List(l) => l.heap_bytes(),
        }
    }
}

impl HeapBytes for (Question, String) {
    fn heap_bytes(&self) -> usize {
        self.1.heap_bytes()
    }
}

/// Which question a key belongs to; part of the cache key so maps stay apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Question {
    Aliases,
    Domain,
    Mailbox,
    Senders,
    Quota,
}

/// A [`LookupBackend`] answering from a cache in front of another backend.
pub(crate) struct CachedBackend {
    inner: Arc<dyn LookupBackend>,
    cache: Arc<AnswerCache<(Question, String), Answer>>,
}

impl std::fmt::Debug for CachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedBackend")
            .field("inner", &self.inner.name())
            .field("cache", &self.cache)
            .finish()
    }
}

impl CachedBackend {
    /// Wraps `inner`; outcomes are counted on `counter` (`lookup_cache_total`).
    pub(crate) fn new(
        inner: Arc<dyn LookupBackend>,
        settings: CacheSettings,
        counter: prometheus::IntCounterVec,
    ) -> Self {
        Self {
            inner,
            cache: Arc::new(AnswerCache::new(settings, counter)),
        }
    }

    async fn flag(
        &self,
        handler: &'static str,
        question: Question,
        key: String,
    ) -> Result<bool, BackendError> {
        let inner = Arc::clone(&self.inner);
        let fetch_key = key.clone();
        let answer = self
            .cache
            .get(handler, (question, key), move || async move {
                let found = match question {
                    Question::Domain => inner.domain_exists(&fetch_key).await?,
                    _ => inner.mailbox_exists(&parse(&fetch_key)?).await?,
                };
                Ok(Answer::Flag(found))
            })
            .await?;
        match answer {
            Answer::Flag(f) => Ok(f),
            _ => Err(BackendError::Other(
                "cache holds another answer type".into(),
            )),
        }
    }

    async fn list(
        &self,
        handler: &'static str,
        question: Question,
        address: &Address,
    ) -> Result<Vec<String>, BackendError> {
        let inner = Arc::clone(&self.inner);
        let fetch_address = address.clone();
        let answer = self
            .cache
            .get(
                handler,
                (question, address.as_str().to_owned()),
                move || async move {
                    let list = match question {
                        Question::Aliases => inner.aliases(&fetch_address).await?,
                        _ => inner.senders(&fetch_address).await?,
                    };
                    Ok(Answer::List(list))
                },
            )
            .await?;
        match answer {
            Answer::List(l) => Ok(l),
            _ => Err(BackendError::Other(
                "cache holds another answer type".into(),
            )),
        }
    }
}

fn parse(address: &str) -> Result<Address, BackendError> {
    Address::parse(address).map_err(|e| BackendError::Other(e.to_string()))
}

#[async_trait]
impl LookupBackend for CachedBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list("alias", Question::Aliases, address).await
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.flag("domain", Question::Domain, domain.to_owned())
            .await
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.flag("mailbox", Question::Mailbox, address.as_str().to_owned())
            .await
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.list("senders", Question::Senders, address).await
    }

    async fn smtp_quota(&self, login: &Address) -> Result<Option<SmtpQuota>, BackendError> {
        let inner = Arc::clone(&self.inner);
        let fetch_login = login.clone();
        let answer = self
            .cache
            .get(
                "smtp_quota",
                (Question::Quota, login.as_str().to_owned()),
                move || async move { Ok(Answer::Quota(inner.smtp_quota(&fetch_login).await?)) },
            )
            .await?;
        match answer {
            Answer::Quota(q) => Ok(q),
            _ => Err(BackendError::Other(
                "cache holds another answer type".into(),
            )),
        }
    }

    /// Never cached: a password check must always ask the directory.
    async fn authenticate(
        &self,
        login: &Address,
        password: &[u8],
    ) -> Result<postfix_adapter_backend::AuthOutcome, BackendError> {
        self.inner.authenticate(login, password).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.inner.health().await
    }

    /// Reloads the backend and forgets cached answers, so an operator who fixed
    /// the data sees the fix at once.
    async fn reload(&self) -> Result<(), BackendError> {
        self.inner.reload().await?;
        self.cache.clear();
        Ok(())
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// The snapshot file's format: the socketmap answers with their ages. Quota
/// answers are not kept: they only matter while the backend answers anyway.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    version: u32,
    entries: Vec<SnapshotEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotEntry {
    /// `alias`, `domain`, `mailbox` or `senders`.
    q: String,
    /// The key as the backend was asked.
    k: String,
    /// `true`/`false` or the list.
    a: SnapshotAnswer,
    /// Seconds since the backend gave the answer.
    age: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum SnapshotAnswer {
    Flag(bool),
    List(Vec<String>),
}

const SNAPSHOT_VERSION: u32 = 1;

impl Question {
    fn snapshot_name(self) -> Option<&'static str> {
        match self {
            Self::Aliases => Some("alias"),
            Self::Domain => Some("domain"),
            Self::Mailbox => Some("mailbox"),
            Self::Senders => Some("senders"),
            Self::Quota => None,
        }
    }

    fn from_snapshot_name(name: &str) -> Option<Self> {
        match name {
            "alias" => Some(Self::Aliases),
            "domain" => Some(Self::Domain),
            "mailbox" => Some(Self::Mailbox),
            "senders" => Some(Self::Senders),
            _ => None,
        }
    }
}

impl CachedBackend {
    /// The cached socketmap answers and their ages, as the snapshot file's bytes.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        let entries = self
            .cache
            .export()
            .into_iter()
            .filter_map(|((question, key), answer, age)| {
                let a = match answer {
                    Answer::Flag(f) => SnapshotAnswer::Flag(f),
                    Answer::List(l) => SnapshotAnswer::List(l),
                    Answer::Quota(_) => return None,
                };
                Some(SnapshotEntry {
                    q: question.snapshot_name()?.to_owned(),
                    k: key,
                    a,
                    age: age.as_secs_f64(),
                })
            })
            .collect();
        serde_json::to_vec(&SnapshotFile {
            version: SNAPSHOT_VERSION,
            entries,
        })
        .unwrap_or_default()
    }

    /// Loads a snapshot written by [`Self::snapshot`] (`age` more seconds having
    /// passed since it was written) as stale-only answers; how many were loaded.
    ///
    /// # Errors
    /// Why the bytes are not a snapshot (damaged, another version).
    pub(crate) fn restore(
        &self,
        bytes: &[u8],
        since_written: std::time::Duration,
    ) -> Result<usize, String> {
        let file: SnapshotFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.version != SNAPSHOT_VERSION {
            return Err(format!("unknown version {}", file.version));
        }
        let answers = file.entries.into_iter().filter_map(|e| {
            let question = Question::from_snapshot_name(&e.q)?;
            let answer = match (question, e.a) {
                (Question::Domain | Question::Mailbox, SnapshotAnswer::Flag(f)) => Answer::Flag(f),
                (Question::Aliases | Question::Senders, SnapshotAnswer::List(l)) => Answer::List(l),
                _ => return None,
            };
            // A negative, NaN or absurd age is no answer to keep.
            let age = std::time::Duration::try_from_secs_f64(e.age)
                .ok()?
                .checked_add(since_written)?;
            Some(((question, e.k), answer, age))
        });
        Ok(self.cache.import(answers))
    }
}
