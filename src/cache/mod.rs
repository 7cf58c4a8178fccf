//! An in-process answer cache with request coalescing, negative caching and
//! stale-on-error, independent of what is cached (socketmap answers now, quota
//! answers for the policy server later).
//!
//! Every [`AnswerCache::get`] returns within its deadline with, in order of
//! preference: a fresh entry, the backend's answer, an expired entry that is still
//! within the stale window (only when the backend failed or was too slow), or the
//! error. Backend calls run in their own task, so a caller that gives up (deadline,
//! disconnected client) never cancels the call others are waiting for, and the
//! answer still lands in the cache.

mod backend;
pub(crate) mod persist;

pub(crate) use backend::CachedBackend;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postfix_adapter_backend::BackendError;
use prometheus::IntCounterVec;
use tokio::sync::watch;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheSettings {
    /// How long a positive answer is fresh; zero disables storing answers at all.
    pub positive_ttl: Duration,
    /// How long a negative answer (not found) is fresh; zero: never stored.
    pub negative_ttl: Duration,
    /// How long past freshness a found answer may still be served when the
    /// backend fails.
    pub stale_ttl: Duration,
    /// The same for a not-found answer: shorter, because a stale "no" for an
    /// address created since is a bounce, where a stale "yes" for one deleted
    /// since is a message accepted for a mailbox that no longer reads it.
    pub negative_stale_ttl: Duration,
    /// Most entries kept; the least useful are evicted beyond it.
    pub max_entries: u64,
    /// Most bytes the entries may hold (keys, answers and bookkeeping); the
    /// least useful are evicted beyond it.
    pub max_bytes: u64,
    /// How long a caller waits for an answer.
    pub deadline: Duration,
    /// How long a backend call may run in the background, past the callers' deadline,
    /// to fill the cache for the next lookup.
    pub call_timeout: Duration,
}

impl CacheSettings {
    /// Whether answers are stored at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.positive_ttl.is_zero() && self.max_entries > 0 && self.max_bytes > 0
    }

    /// The weight of one entry for moka's weighted capacity of `max_bytes`: its
    /// bytes, but at least `max_bytes / max_entries`, so that the byte limit also
    /// keeps the entry limit.
    fn weight(&self, bytes: usize) -> u32 {
        let floor = self.max_bytes.div_ceil(self.max_entries.max(1));
        u32::try_from((bytes as u64).max(floor)).unwrap_or(u32::MAX)
    }
}

/// What one cache entry costs beyond the heap bytes of its key and answer: moka's
/// per-entry bookkeeping (hash table slot, access and write order nodes, expiry
/// timer, reference counts) and allocator slack, as measured with `memory_attacks
/// cache-100k`: about 450 bytes of RSS per entry of an ordinary address, less the
/// key's bytes and the entry's inline size.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 350;

/// The heap bytes a key or an answer holds, for sizing the cache in bytes.
pub(crate) trait HeapBytes {
    /// Bytes held on the heap (not counting the value's own inline size).
    fn heap_bytes(&self) -> usize;
}

impl HeapBytes for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl HeapBytes for bool {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl HeapBytes for Vec<String> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<String>()
            + self.iter().map(String::capacity).sum::<usize>()
    }
}

tokio::task_local! {
    static SOURCE: std::cell::Cell<&'static str>;
}

/// Where the answer of a request came from, for its debug log line: the cache
/// notes it in the task making the request.
#[derive(Debug)]
pub(crate) struct AnswerSource;

impl AnswerSource {
    /// Runs `request` and returns its result with the source of its (last)
    /// answer: `cache`, `backend`, `stale`, or `none` if nothing was asked.
    pub(crate) async fn track<T>(request: impl Future<Output = T>) -> (T, &'static str) {
        SOURCE
            .scope(std::cell::Cell::new("none"), async {
                let value = request.await;
                (value, SOURCE.with(std::cell::Cell::get))
            })
            .await
    }

    fn note(source: &'static str) {
        let _ = SOURCE.try_with(|s| s.set(source));
    }
}

/// A value the cache can hold.
pub(crate) trait Cacheable: HeapBytes + Clone + Send + Sync + 'static {
    /// Whether this is a "not found" answer (cached with the negative TTL).
    fn is_negative(&self) -> bool;
}

impl Cacheable for bool {
    fn is_negative(&self) -> bool {
        !*self
    }
}

impl Cacheable for Vec<String> {
    fn is_negative(&self) -> bool {
        self.iter().all(String::is_empty)
    }
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    stored: Instant,
    /// How old the answer already was when it was stored: zero for an answer
    /// from the backend, its age for one loaded from a snapshot (at least the
    /// TTL, so a loaded answer is never fresh: served only when the backend
    /// fails, like an expired one).
    loaded_age: Duration,
}

impl<V> Entry<V> {
    fn age(&self) -> Duration {
        self.stored.elapsed() + self.loaded_age
    }
}

/// moka expiry: an entry lives for its freshness plus the stale window, so it is
/// still there to be served when the backend fails.
struct EntryExpiry {
    positive: Duration,
    negative: Duration,
}

impl EntryExpiry {
    fn lifetime<V: Cacheable>(&self, entry: &Entry<V>) -> Duration {
        if entry.value.is_negative() {
            self.negative
        } else {
            self.positive
        }
    }
}

impl<K, V: Cacheable> moka::Expiry<K, Entry<V>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Entry<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value).saturating_sub(value.loaded_age))
    }

    // A refreshed answer starts a new lifetime; moka's default would keep the old one.
    fn expire_after_update(
        &self,
        _key: &K,
        value: &Entry<V>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value).saturating_sub(value.loaded_age))
    }
}

/// A backend failure as shared between coalesced waiters (errors are not `Clone`).
type SharedResult<V> = Result<V, Arc<BackendError>>;

/// Cache outcomes, the `result` label of `lookup_cache_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    NegativeHit,
    Miss,
    Coalesced,
    Stale,
    Error,
}

impl Outcome {
    const ALL: [Self; 6] = [
        Self::Hit,
        Self::NegativeHit,
        Self::Miss,
        Self::Coalesced,
        Self::Stale,
        Self::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::NegativeHit => "negative_hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Stale => "stale",
            Self::Error => "error",
        }
    }
}

/// The outcome counters of each handler, resolved once: looking labels up on every
/// request costs more than the cache hit itself.
struct OutcomeCounters {
    vec: IntCounterVec,
    resolved: std::sync::RwLock<Vec<(&'static str, HandlerCounters)>>,
}

/// One counter per [`Outcome`], in [`Outcome::ALL`] order.
type HandlerCounters = Arc<[prometheus::IntCounter; 6]>;

impl OutcomeCounters {
    fn for_handler(&self, handler: &'static str) -> HandlerCounters {
        {
            let resolved = self.resolved.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, counters)) = resolved.iter().find(|(h, _)| *h == handler) {
                return counters.clone();
            }
        }
        let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, counters)) = resolved.iter().find(|(h, _)| *h == handler) {
            return counters.clone();
        }
        let counters: Arc<[prometheus::IntCounter; 6]> =
            Arc::new(Outcome::ALL.map(|o| self.vec.with_label_values(&[handler, o.label()])));
        resolved.push((handler, counters.clone()));
        counters
    }

    fn inc(&self, handler: &'static str, outcome: Outcome) {
        self.for_handler(handler)[outcome as usize].inc();
    }
}

/// The cache for one kind of answer `V` under keys `K`.
pub(crate) struct AnswerCache<K, V> {
    entries: Option<moka::sync::Cache<K, Entry<V>>>,
    inflight: Mutex<Inflight<K, V>>,
    settings: CacheSettings,
    counters: OutcomeCounters,
}

/// The backend calls in progress, and which [`AnswerCache::clear`] they belong to.
///
/// A call that started before a clear (a reload) must neither store its answer
/// nor be joined by lookups made after it: both would serve pre-reload data.
struct Inflight<K, V> {
    generation: u64,
    calls: HashMap<K, watch::Receiver<Option<SharedResult<V>>>>,
}

impl<K, V> std::fmt::Debug for AnswerCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<K, V> AnswerCache<K, V>
where
    K: HeapBytes + Hash + Eq + Clone + Send + Sync + 'static,
    V: Cacheable,
{
    /// A cache counting its outcomes on `counter` (labels `handler`, `result`).
    pub(crate) fn new(settings: CacheSettings, counter: IntCounterVec) -> Self {
        let entries = settings.enabled().then(|| {
            let negative = if settings.negative_ttl.is_zero() {
                Duration::ZERO
            } else {
                settings.negative_ttl + settings.negative_stale_ttl
            };
            moka::sync::Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |key: &K, entry: &Entry<V>| {
                    settings.weight(
                        ENTRY_OVERHEAD_BYTES
                            + std::mem::size_of::<(K, Entry<V>)>()
                            + key.heap_bytes()
                            + entry.value.heap_bytes(),
                    )
                })
                .expire_after(EntryExpiry {
                    positive: settings.positive_ttl + settings.stale_ttl,
                    negative,
                })
                .build()
        });
        Self {
            entries,
            inflight: Mutex::new(Inflight {
                generation: 0,
                calls: HashMap::new(),
            }),
            settings,
            counters: OutcomeCounters {
                vec: counter,
                resolved: std::sync::RwLock::new(Vec::new()),
            },
        }
    }

    /// Number of stored entries (approximate, for metrics and tests).
    #[cfg(test)]
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }

    /// The weight of the stored entries: their bytes as the cache counts them.
    #[cfg(test)]
    pub(crate) fn weighted_bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.weighted_size()
        })
    }

    /// Every stored answer with its age (for a snapshot); expired ones are gone.
    pub(crate) fn export(&self) -> Vec<(K, V, Duration)> {
        self.entries.as_ref().map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .map(|(key, entry)| ((*key).clone(), entry.value.clone(), entry.age()))
                .collect()
        })
    }

    /// Stores answers from a snapshot as stale-only: each is at least its TTL old,
    /// so it is served only when the backend fails or misses the deadline, never
    /// instead of asking a healthy backend. Answers already past the stale window,
    /// and keys the cache already holds, are skipped. Returns how many were stored.
    pub(crate) fn import(&self, answers: impl IntoIterator<Item = (K, V, Duration)>) -> usize {
        let Some(entries) = &self.entries else {
            return 0;
        };
        let mut stored = 0;
        for (key, value, age) in answers {
            let ttl = self.ttl_of(&value);
            if ttl.is_zero() || age >= ttl + self.stale_ttl_of(&value) || entries.contains_key(&key)
            {
                continue;
            }
            entries.insert(
                key,
                Entry {
                    value,
                    stored: Instant::now(),
                    loaded_age: age.max(ttl),
                },
            );
            stored += 1;
        }
        stored
    }

    /// Drops every stored entry (after a backend reload, for example).
    pub(crate) fn clear(&self) {
        // Under the in-flight lock, so no call started earlier can store its answer
        // after the entries are gone.
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.generation += 1;
        inflight.calls.clear();
        if let Some(e) = &self.entries {
            e.invalidate_all();
        }
    }

    fn count(&self, handler: &'static str, outcome: Outcome) {
        self.counters.inc(handler, outcome);
    }

    /// How long past its TTL `value` may be served stale.
    fn stale_ttl_of(&self, value: &V) -> Duration {
        if value.is_negative() {
            self.settings.negative_stale_ttl
        } else {
            self.settings.stale_ttl
        }
    }

    fn ttl_of(&self, value: &V) -> Duration {
        if value.is_negative() {
            self.settings.negative_ttl
        } else {
            self.settings.positive_ttl
        }
    }

    /// The answer for `key`: cached, fetched with `fetch` (at most one call per key
    /// at a time), stale, or the error; always within the deadline.
    ///
    /// # Errors
    /// The backend's error, or [`BackendError::Timeout`] at the deadline, when no
    /// usable entry exists.
    pub(crate) async fn get<F, Fut>(
        self: &Arc<Self>,
        handler: &'static str,
        key: K,
        fetch: F,
    ) -> Result<V, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, BackendError>> + Send + 'static,
    {
        let started = tokio::time::Instant::now();
        let cached = self.entries.as_ref().and_then(|e| e.get(&key));
        if let Some(entry) = &cached
            && entry.age() < self.ttl_of(&entry.value)
        {
            let result = if entry.value.is_negative() {
                Outcome::NegativeHit
            } else {
                Outcome::Hit
            };
            self.count(handler, result);
            AnswerSource::note("cache");
            return Ok(entry.value.clone());
        }

        AnswerSource::note("backend");
        let mut receiver = self.join_or_start(handler, key, fetch);
        let waited = tokio::time::timeout_at(
            started + self.settings.deadline,
            receiver.wait_for(Option::is_some),
        )
        .await;
        let failure = match waited {
            Ok(Ok(result)) => match result.as_ref().map(Clone::clone) {
                Some(Ok(value)) => return Ok(value),
                Some(Err(e)) => clone_error(&e),
                None => BackendError::Other("backend call ended without an answer".into()),
            },
            Ok(Err(_closed)) => BackendError::Other("backend call ended without an answer".into()),
            Err(_elapsed) => BackendError::Timeout,
        };
        if let Some(entry) = cached {
            let age = entry.age();
            if age < self.ttl_of(&entry.value) + self.stale_ttl_of(&entry.value) {
                self.count(handler, Outcome::Stale);
                AnswerSource::note("stale");
                return Ok(entry.value);
            }
        }
        self.count(handler, Outcome::Error);
        Err(failure)
    }

    /// Subscribes to the running call for `key`, or starts one.
    fn join_or_start<F, Fut>(
        self: &Arc<Self>,
        handler: &'static str,
        key: K,
        fetch: F,
    ) -> watch::Receiver<Option<SharedResult<V>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, BackendError>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(receiver) = inflight.calls.get(&key) {
            self.count(handler, Outcome::Coalesced);
            return receiver.clone();
        }
        self.count(handler, Outcome::Miss);
        let (sender, receiver) = watch::channel(None);
        inflight.calls.insert(key.clone(), receiver.clone());
        let generation = inflight.generation;
        drop(inflight);

        let call = fetch();
        let cache = Arc::clone(self);
        let call_timeout = self.settings.call_timeout;
        tokio::spawn(async move {
            let result = tokio::time::timeout(call_timeout, call)
                .await
                .unwrap_or(Err(BackendError::Timeout));
            {
                let mut inflight = cache.inflight.lock().unwrap_or_else(|p| p.into_inner());
                if inflight.generation == generation {
                    if let (Ok(value), Some(entries)) = (&result, &cache.entries)
                        && !cache.ttl_of(value).is_zero()
                    {
                        entries.insert(
                            key.clone(),
                            Entry {
                                value: value.clone(),
                                stored: Instant::now(),
                                loaded_age: Duration::ZERO,
                            },
                        );
                    }
                    // Within one generation the entry for `key` is this call's.
                    inflight.calls.remove(&key);
                }
            }
            let _ = sender.send(Some(result.map_err(Arc::new)));
        });
        receiver
    }
}

/// A copy of a shared error for one waiter, keeping its kind for metrics.
fn clone_error(e: &BackendError) -> BackendError {
    match e {
        BackendError::Timeout => BackendError::Timeout,
        BackendError::InvalidResponse(m) => BackendError::InvalidResponse(m.clone()),
        BackendError::Unauthorized(m) => BackendError::Unauthorized(m.clone()),
        BackendError::Unavailable(source) => BackendError::Unavailable(source.to_string().into()),
        other => BackendError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
