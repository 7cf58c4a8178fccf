//! Verified logins, kept so SMTP AUTH survives a backend outage, as Dovecot's auth
//! cache does (`auth_cache_ttl`: past the TTL a cached record is used only when
//! the password database fails).
//!
//! After a successful check the cache keeps a *verifier* of the password, never
//! the password: in memory a keyed hash (HMAC-SHA256 with a key drawn at start and
//! never stored, so a memory dump does not let anyone test guesses offline
//! without the key too); when the operator keeps logins across restarts
//! (`SASL_CACHE_PERSIST`), also an argon2id hash no weaker than userli's own,
//! computed off the request path and written by [`file`].
//!
//! What it answers:
//! - within `SASL_CACHE_TTL` of the last check userli passed, the same password
//!   succeeds without asking userli ([`LoginCache::answers_fresh`]);
//! - up to `SASL_CACHE_STALE_TTL` beyond, only when userli fails or misses its
//!   deadline ([`LoginCache::answer_in_outage`]): the same password succeeds,
//!   any other is an outage (Postfix: 454), never a success and never a `FAIL`;
//! - a failed check against userli forgets the login at once
//!   ([`LoginCache::forget`]), a successful one renews it. Refusals (wrong password,
//!   spam lock, required password change) are never stored.

pub(crate) mod file;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The login cache's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginCacheSettings {
    /// `SASL_CACHE_TTL`: how long after a check userli passed the same password
    /// is accepted without asking userli (0: always ask).
    pub ttl: Duration,
    /// `SASL_CACHE_STALE_TTL`: how long beyond that it is accepted when userli
    /// fails.
    pub stale_ttl: Duration,
    /// `SASL_CACHE_MAX_BYTES`: the most the verifiers may take in memory.
    pub max_bytes: u64,
    /// `SASL_CACHE_PERSIST`: whether argon2id verifiers are kept on disk.
    pub persist: bool,
}

impl LoginCacheSettings {
    /// No login cache: every login asks the backend.
    #[cfg(test)]
    pub(crate) const OFF: Self = Self {
        ttl: Duration::ZERO,
        stale_ttl: Duration::ZERO,
        max_bytes: 0,
        persist: false,
    };

    /// Whether anything is kept at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.window().is_zero() && self.max_bytes > 0
    }

    /// How long after a check userli passed a verifier is kept at all.
    pub(crate) fn window(&self) -> Duration {
        self.ttl.saturating_add(self.stale_ttl)
    }
}

/// The argon2id cost of the verifiers on disk: Symfony's `sodium` hasher, which
/// userli uses, hashes with at least 64 MiB and 4 passes (`max(4, OPSLIMIT_INTERACTIVE)`,
/// `max(64 MiB, MEMLIMIT_INTERACTIVE)`); ours are no cheaper to attack.
pub(crate) const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Passes over the memory.
pub(crate) const ARGON2_PASSES: u32 = 4;
/// Lanes.
pub(crate) const ARGON2_LANES: u32 = 1;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// How long an outage answer may wait for a free argon2id slot and the hash.
const OUTAGE_VERIFY_BUDGET: Duration = Duration::from_secs(2);
/// What an entry costs beyond its login's bytes (moka's bookkeeping, the
/// verifiers, the `Arc`).
const ENTRY_OVERHEAD_BYTES: usize = 300;

/// An argon2id hash of a password, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredHash {
    /// The random salt.
    pub salt: [u8; SALT_LEN],
    /// The hash.
    pub hash: [u8; HASH_LEN],
}

/// The argon2id cost a [`StoredHash`] was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Argon2Cost {
    /// Memory in KiB.
    pub m: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Cost {
    /// The cost new verifiers are made with.
    pub(crate) const CURRENT: Self = Self {
        m: ARGON2_MEMORY_KIB,
        t: ARGON2_PASSES,
        p: ARGON2_LANES,
    };

    fn hasher(self) -> Result<argon2::Argon2<'static>, argon2::Error> {
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(self.m, self.t, self.p, Some(HASH_LEN))?,
        ))
    }

    /// Hashes `password` with `salt`; memory- and CPU-heavy (tens to hundreds of
    /// milliseconds): call it off the runtime.
    fn hash(self, password: &[u8], salt: &[u8]) -> Option<[u8; HASH_LEN]> {
        let mut out = [0u8; HASH_LEN];
        self.hasher()
            .and_then(|h| h.hash_password_into(password, salt, &mut out))
            .ok()?;
        Some(out)
    }
}

/// One verified login.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// HMAC of login and password with the process key; `None` for one loaded
    /// from disk until a login proves its password against [`Self::stored`].
    keyed: Option<[u8; HASH_LEN]>,
    /// The argon2id verifier, when persisting and computed.
    stored: Option<StoredHash>,
    /// When userli last passed this password.
    verified: Instant,
    /// Loaded from disk: used only when userli fails, like loaded lookup answers.
    stale_only: bool,
    /// An argon2id hash for this verifier is being computed.
    hashing: AtomicBool,
}

impl Verifier {
    fn new(keyed: Option<[u8; HASH_LEN]>, stored: Option<StoredHash>, verified: Instant) -> Self {
        Self {
            keyed,
            stored,
            verified,
            stale_only: false,
            hashing: AtomicBool::new(false),
        }
    }
}

/// A verifier as it goes to and comes from disk: the login, its argon2id hash,
/// and how long ago userli passed the password.
pub(crate) type PersistedLogin = (String, StoredHash, Duration);

/// What the cache says about a login while userli cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutageAnswer {
    /// The password is the one userli last passed, within the stale window.
    Verified,
    /// The login is known and the password is not the one userli passed.
    Refuted,
    /// Nothing known (or the verifier could not be checked in time).
    Unknown,
}

/// Verified logins, bounded in bytes; shared by every SASL connection.
pub(crate) struct LoginCache {
    settings: LoginCacheSettings,
    key: hmac::Key,
    entries: moka::sync::Cache<String, Arc<Verifier>>,
    /// Slots for checking passwords against argon2id verifiers during an outage
    /// (each takes [`ARGON2_MEMORY_KIB`]).
    outage_slots: Arc<Semaphore>,
    /// The one slot for hashing verifiers to keep on disk: background work that
    /// must never take the outage checks' slots.
    hashing_slot: Arc<Semaphore>,
    /// The SMTP clients with an outage check in flight: one at a time each, so one
    /// client cannot hold every slot.
    checking_clients: std::sync::Mutex<std::collections::HashSet<Option<IpAddr>>>,
    /// Bumped by [`Self::clear`]: work started before it must not bring back
    /// what it dropped.
    generation: AtomicU64,
    /// How long the last argon2id check during an outage took, in nanoseconds.
    last_check_nanos: AtomicU64,
    /// Changed since the file was last written.
    dirty: AtomicBool,
    random: SystemRandom,
}

impl std::fmt::Debug for LoginCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Whether `current` is still the verifier `expected`, of generation `generation`.
fn unchanged(current: Option<&Arc<Verifier>>, expected: &Arc<Verifier>) -> bool {
    current.is_some_and(|c| Arc::ptr_eq(c, expected))
}

impl LoginCache {
    /// An empty cache with a fresh key.
    pub(crate) fn new(settings: LoginCacheSettings) -> Self {
        let random = SystemRandom::new();
        // Only fails if the OS has no randomness, where nothing else is safe either.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &random)
            .expect("the operating system's random number generator works");
        let slots = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Self {
            settings,
            key,
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(|login: &String, _: &Arc<Verifier>| {
                    u32::try_from(login.capacity() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
                })
                // Full: the login not seen longest goes, never a new one.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(settings.window().max(Duration::from_millis(1)))
                .build(),
            outage_slots: Arc::new(Semaphore::new(slots)),
            hashing_slot: Arc::new(Semaphore::new(1)),
            checking_clients: std::sync::Mutex::default(),
            generation: AtomicU64::new(0),
            last_check_nanos: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            random,
        }
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &LoginCacheSettings {
        &self.settings
    }

    fn keyed_hash(&self, login: &str, password: &[u8]) -> [u8; HASH_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(login.as_bytes());
        // The login cannot hold a NUL: login and password cannot run into each other.
        context.update(&[0]);
        context.update(password);
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    fn matches_keyed(&self, verifier: &Verifier, login: &str, password: &[u8]) -> Option<bool> {
        let keyed = verifier.keyed.as_ref()?;
        Some(bool::from(keyed.ct_eq(&self.keyed_hash(login, password))))
    }

    /// Replaces `expected` with what `upgrade` makes of it, atomically, unless it
    /// was replaced, forgotten or cleared meanwhile.
    fn upgrade(
        &self,
        login: &str,
        expected: &Arc<Verifier>,
        generation: u64,
        upgrade: impl FnOnce(&Verifier) -> Verifier,
    ) {
        let _ = self
            .entries
            .entry(login.to_owned())
            .and_compute_with(|current| {
                if unchanged(current.as_ref().map(moka::Entry::value), expected)
                    && self.generation.load(Ordering::SeqCst) == generation
                {
                    moka::ops::compute::Op::Put(Arc::new(upgrade(expected)))
                } else {
                    moka::ops::compute::Op::Nop
                }
            });
    }

    /// Whether `password` is the one userli passed for `login` within the TTL: then
    /// the login succeeds without asking userli. The matching verifier, for
    /// [`Self::keep_on_disk`].
    pub(crate) fn answers_fresh(&self, login: &str, password: &[u8]) -> Option<Arc<Verifier>> {
        let verifier = self.entries.get(login)?;
        (!verifier.stale_only
            && verifier.verified.elapsed() < self.settings.ttl
            && self.matches_keyed(&verifier, login, password) == Some(true))
        .then_some(verifier)
    }

    /// Userli passed `password` for `login`: keep (or renew) its verifier. The same
    /// password keeps its argon2id hash (no new hashing); another replaces it.
    pub(crate) fn remember(self: &Arc<Self>, login: &str, password: &[u8]) {
        let keyed = self.keyed_hash(login, password);
        let now = Instant::now();
        let result = self
            .entries
            .entry(login.to_owned())
            .and_compute_with(|current| {
                let stored = current
                    .as_ref()
                    .map(moka::Entry::value)
                    .filter(|v| v.keyed.is_some_and(|k| bool::from(k.ct_eq(&keyed))))
                    .and_then(|v| v.stored.clone());
                moka::ops::compute::Op::Put(Arc::new(Verifier::new(Some(keyed), stored, now)))
            });
        self.dirty.store(true, Ordering::Relaxed);
        if let moka::ops::compute::CompResult::Inserted(entry)
        | moka::ops::compute::CompResult::ReplacedWith(entry) = result
        {
            self.keep_on_disk(login, password, entry.value());
        }
    }

    /// When logins are kept on disk and `verifier` (the one just checked for
    /// `login` with `password`) has no argon2id hash yet, computes one in the
    /// background if the hashing slot is free (otherwise at a later login: the
    /// request never waits for it).
    pub(crate) fn keep_on_disk(
        self: &Arc<Self>,
        login: &str,
        password: &[u8],
        verifier: &Arc<Verifier>,
    ) {
        if !self.settings.persist || verifier.stored.is_some() {
            return;
        }
        let Ok(slot) = self.hashing_slot.clone().try_acquire_owned() else {
            return;
        };
        if verifier.hashing.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut salt = [0u8; SALT_LEN];
        if self.random.fill(&mut salt).is_err() {
            verifier.hashing.store(false, Ordering::SeqCst);
            return;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let cache = Arc::clone(self);
        let login = login.to_owned();
        let verifier = Arc::clone(verifier);
        let password = zeroizing(password);
        tokio::task::spawn_blocking(move || {
            if let Some(hash) = Argon2Cost::CURRENT.hash(&password.0, &salt) {
                // Only onto the verifier it was made for: a newer check, a
                // refusal or a SIGHUP since leaves the entry alone.
                cache.upgrade(&login, &verifier, generation, |v| Verifier {
                    stored: Some(StoredHash { salt, hash }),
                    stale_only: v.stale_only,
                    ..Verifier::new(v.keyed, None, v.verified)
                });
                cache.dirty.store(true, Ordering::Relaxed);
            }
            verifier.hashing.store(false, Ordering::SeqCst);
            // Released last, so that waiting for the slot waits for the entry.
            drop(slot);
        });
    }

    /// Userli refused `password` for `login` (a wrong password, a locked
    /// account): if it is the password the cache holds, the cache must not
    /// answer for it any more. Another password refused says nothing about the
    /// cached one, so it stays: otherwise anyone could erase anyone's outage
    /// protection with one wrong password (or one the backend refuses without
    /// asking the directory, as userli's does with an over-long one while the
    /// directory is down). A verifier loaded from disk, which only an argon2id
    /// hash could compare, goes on any refusal of a password that reached the
    /// directory (`screened`).
    pub(crate) fn forget_if_refused(&self, login: &str, password: &[u8], screened: bool) -> bool {
        let keyed = self.keyed_hash(login, password);
        let result = self
            .entries
            .entry(login.to_owned())
            .and_compute_with(|current| match current.as_ref().map(moka::Entry::value) {
                Some(v) if v.keyed.is_some_and(|k| bool::from(k.ct_eq(&keyed))) => {
                    moka::ops::compute::Op::Remove
                }
                Some(v) if v.keyed.is_none() && screened => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
        let removed = matches!(result, moka::ops::compute::CompResult::Removed(_));
        if removed {
            self.dirty.store(true, Ordering::Relaxed);
        }
        removed
    }

    /// Drops every verifier (SIGHUP).
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The answer while userli cannot: whether `password` is the one userli last
    /// passed for `login` within the TTL and the stale window. `client` (the SMTP
    /// client's network) may have one argon2id check in flight at a time.
    pub(crate) async fn answer_in_outage(
        self: &Arc<Self>,
        login: &str,
        password: &[u8],
        client: Option<IpAddr>,
    ) -> OutageAnswer {
        let Some(verifier) = self
            .entries
            .get(login)
            .filter(|v| v.verified.elapsed() < self.settings.window())
        else {
            self.take_as_long_as_a_check().await;
            return OutageAnswer::Unknown;
        };
        if let Some(matches) = self.matches_keyed(&verifier, login, password) {
            return if matches {
                OutageAnswer::Verified
            } else {
                OutageAnswer::Refuted
            };
        }
        let Some(stored) = verifier.stored.clone() else {
            return OutageAnswer::Unknown;
        };
        let Some(_turn) = ClientTurn::take(&self.checking_clients, client) else {
            return OutageAnswer::Unknown;
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let verified = tokio::time::timeout(OUTAGE_VERIFY_BUDGET, async {
            let slot = self.outage_slots.clone().acquire_owned().await.ok()?;
            let password = zeroizing(password);
            let cache = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let hash = Argon2Cost::CURRENT.hash(&password.0, &stored.salt);
                drop(slot);
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                cache.last_check_nanos.store(took, Ordering::Relaxed);
                hash.map(|h| bool::from(h.ct_eq(&stored.hash)))
            })
            .await
            .ok()
            .flatten()
        })
        .await
        .ok()
        .flatten();
        match verified {
            Some(true) => {
                // Proven once: later logins need only the keyed hash.
                let keyed = self.keyed_hash(login, password);
                self.upgrade(login, &verifier, generation, |v| Verifier {
                    stale_only: v.stale_only,
                    ..Verifier::new(Some(keyed), v.stored.clone(), v.verified)
                });
                OutageAnswer::Verified
            }
            Some(false) => OutageAnswer::Refuted,
            None => OutageAnswer::Unknown,
        }
    }

    /// With logins kept on disk, an unknown login waits as long as the last
    /// argon2id check took: otherwise how long an outage answer takes would tell
    /// which logins were active in the last day (their check costs a hash).
    async fn take_as_long_as_a_check(&self) {
        if !self.settings.persist {
            return;
        }
        let nanos = self.last_check_nanos.load(Ordering::Relaxed);
        if nanos > 0 {
            tokio::time::sleep(Duration::from_nanos(nanos).min(OUTAGE_VERIFY_BUDGET)).await;
        }
    }

    /// How many logins are held, and their bytes as the cache weighs them. Runs
    /// the cache's upkeep first: call it when something changed, not per request.
    pub(crate) fn exact_size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Waits, at most `limit`, for the argon2id hash being computed, so that a
    /// save at shutdown keeps the logins of the last moments too.
    pub(crate) async fn settle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.hashing_slot.acquire()).await;
    }

    /// Marks the cache changed (a write that failed is tried again).
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether anything changed since the last [`Self::take_dirty`].
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// The verifiers that can go to disk: login, argon2id hash, time since userli
    /// passed it.
    pub(crate) fn export(&self) -> Vec<PersistedLogin> {
        self.entries
            .iter()
            .filter_map(|(login, v)| {
                let stored = v.stored.clone()?;
                Some((login.as_ref().clone(), stored, v.verified.elapsed()))
            })
            .collect()
    }

    /// Loads verifiers from disk as stale-only ones (used only when userli fails);
    /// those already past the stale window are skipped. How many were loaded.
    pub(crate) fn import(&self, verifiers: impl IntoIterator<Item = PersistedLogin>) -> usize {
        let now = Instant::now();
        let window = self.settings.window();
        let mut loaded = 0;
        for (login, stored, age) in verifiers {
            if age >= window || self.entries.contains_key(&login) {
                continue;
            }
            let Some(verified) = now.checked_sub(age) else {
                continue;
            };
            self.entries.insert(
                login,
                Arc::new(Verifier {
                    stale_only: true,
                    ..Verifier::new(None, Some(stored), verified)
                }),
            );
            loaded += 1;
        }
        loaded
    }
}

/// An SMTP client's turn at an argon2id check during an outage; ends on drop.
struct ClientTurn<'a> {
    clients: &'a std::sync::Mutex<std::collections::HashSet<Option<IpAddr>>>,
    client: Option<IpAddr>,
}

impl<'a> ClientTurn<'a> {
    /// The turn of `client`, unless it has one already.
    fn take(
        clients: &'a std::sync::Mutex<std::collections::HashSet<Option<IpAddr>>>,
        client: Option<IpAddr>,
    ) -> Option<Self> {
        let fresh = clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(client);
        fresh.then_some(Self { clients, client })
    }
}

impl Drop for ClientTurn<'_> {
    fn drop(&mut self) {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.client);
    }
}

/// A copy of a password that is overwritten when dropped, for the hashing threads.
struct Zeroizing(Vec<u8>);

fn zeroizing(password: &[u8]) -> Zeroizing {
    Zeroizing(password.to_vec())
}

impl Drop for Zeroizing {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the writes from being optimised away as writes to memory freed
        // next (`write_volatile` would need `unsafe`, which the workspace forbids).
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests;
