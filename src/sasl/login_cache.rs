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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        !(self.ttl + self.stale_ttl).is_zero() && self.max_bytes > 0
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
struct Verifier {
    /// HMAC of login and password with the process key; `None` for one loaded
    /// from disk until a login proves its password against [`Self::stored`].
    keyed: Option<[u8; HASH_LEN]>,
    /// The argon2id verifier, when persisting and computed.
    stored: Option<StoredHash>,
    /// When userli last passed this password.
    verified: Instant,
    /// Loaded from disk: used only when userli fails, like loaded lookup answers.
    stale_only: bool,
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
    /// Slots for argon2id work (each takes [`ARGON2_MEMORY_KIB`]).
    argon2_slots: Arc<Semaphore>,
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
                .time_to_live((settings.ttl + settings.stale_ttl).max(Duration::from_millis(1)))
                .build(),
            argon2_slots: Arc::new(Semaphore::new(slots)),
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

    /// Whether `password` is the one userli passed for `login` within the TTL: then
    /// the login succeeds without asking userli.
    pub(crate) fn answers_fresh(&self, login: &str, password: &[u8]) -> bool {
        let Some(verifier) = self.entries.get(login) else {
            return false;
        };
        !verifier.stale_only
            && verifier.verified.elapsed() < self.settings.ttl
            && self.matches_keyed(&verifier, login, password) == Some(true)
    }

    /// Userli passed `password` for `login`: keep (or renew) its verifier.
    pub(crate) fn remember(self: &Arc<Self>, login: &str, password: &[u8]) {
        let verifier = Verifier {
            keyed: Some(self.keyed_hash(login, password)),
            stored: None,
            verified: Instant::now(),
            stale_only: false,
        };
        self.entries.insert(login.to_owned(), Arc::new(verifier));
        self.dirty.store(true, Ordering::Relaxed);
        self.keep_on_disk(login, password);
    }

    /// When logins are kept on disk and `login`'s verifier has no argon2id hash
    /// yet, computes one in the background, if a slot is free (otherwise at a
    /// later login: the request never waits for it).
    pub(crate) fn keep_on_disk(self: &Arc<Self>, login: &str, password: &[u8]) {
        if !self.settings.persist {
            return;
        }
        let Some(verifier) = self.entries.get(login) else {
            return;
        };
        if verifier.stored.is_some() {
            return;
        }
        let Ok(slot) = self.argon2_slots.clone().try_acquire_owned() else {
            return;
        };
        let mut salt = [0u8; SALT_LEN];
        if self.random.fill(&mut salt).is_err() {
            return;
        }
        let cache = Arc::clone(self);
        let login = login.to_owned();
        let password = zeroizing(password);
        tokio::task::spawn_blocking(move || {
            let hash = Argon2Cost::CURRENT.hash(&password.0, &salt);
            drop(slot);
            let Some(hash) = hash else { return };
            // Only onto the verifier it was made for: a newer check replaced it.
            if let Some(current) = cache.entries.get(&login)
                && Arc::ptr_eq(&current, &verifier)
            {
                let upgraded = Verifier {
                    keyed: current.keyed,
                    stored: Some(StoredHash { salt, hash }),
                    verified: current.verified,
                    stale_only: current.stale_only,
                };
                cache.entries.insert(login, Arc::new(upgraded));
                cache.dirty.store(true, Ordering::Relaxed);
            }
        });
    }

    /// Userli refused `login` (a wrong password, a locked account): the cache must
    /// not answer for it any more.
    pub(crate) fn forget(&self, login: &str) {
        if self.entries.remove(login).is_some() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Drops every verifier (SIGHUP).
    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The answer while userli cannot: whether `password` is the one userli last
    /// passed for `login` within the TTL and the stale window.
    pub(crate) async fn answer_in_outage(
        self: &Arc<Self>,
        login: &str,
        password: &[u8],
    ) -> OutageAnswer {
        let Some(verifier) = self.entries.get(login) else {
            return OutageAnswer::Unknown;
        };
        if verifier.verified.elapsed() >= self.settings.ttl + self.settings.stale_ttl {
            return OutageAnswer::Unknown;
        }
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
        let verified = tokio::time::timeout(OUTAGE_VERIFY_BUDGET, async {
            let slot = self.argon2_slots.clone().acquire_owned().await.ok()?;
            let password = zeroizing(password);
            tokio::task::spawn_blocking(move || {
                let hash = Argon2Cost::CURRENT.hash(&password.0, &stored.salt);
                drop(slot);
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
                if let Some(current) = self.entries.get(login)
                    && Arc::ptr_eq(&current, &verifier)
                {
                    let upgraded = Verifier {
                        keyed: Some(self.keyed_hash(login, password)),
                        stored: current.stored.clone(),
                        verified: current.verified,
                        stale_only: current.stale_only,
                    };
                    self.entries.insert(login.to_owned(), Arc::new(upgraded));
                }
                OutageAnswer::Verified
            }
            Some(false) => OutageAnswer::Refuted,
            None => OutageAnswer::Unknown,
        }
    }

    /// How many logins are held, and their bytes as the cache weighs them.
    pub(crate) fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
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
        let window = self.settings.ttl + self.settings.stale_ttl;
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
                    keyed: None,
                    stored: Some(stored),
                    verified,
                    stale_only: true,
                }),
            );
            loaded += 1;
        }
        loaded
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
