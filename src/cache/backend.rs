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
