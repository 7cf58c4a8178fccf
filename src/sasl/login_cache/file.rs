//! The login cache on disk (`SASL_CACHE_PERSIST=true`): the argon2id verifiers in
//! `STATE_DIRECTORY/sasl-login-cache.json`, written like the other state files
//! (durably, mode 0600, a damaged one set aside), loaded at start as stale-only
//! verifiers. It is a second copy of password hashes on the mail host: off by
//! default, and removed at start when the operator turns it off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use tokio_util::sync::CancellationToken;

use super::{Argon2Cost, LoginCache, PersistedLogin, StoredHash};
use crate::metrics::Metrics;

/// The file's name in the state directory.
pub(crate) const LOGIN_CACHE_FILE: &str = "sasl-login-cache.json";

/// How often the file is written while serving (only when something changed).
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(60);

const FILE_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct FileContents {
    version: u32,
    argon2id: Argon2Cost,
    entries: Vec<FileEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileEntry {
    login: String,
    salt: String,
    hash: String,
    /// Seconds since userli passed the password, when the file was written.
    age: f64,
}

/// The login cache and its file.
#[derive(Debug)]
pub(crate) struct LoginCacheFile {
    cache: Arc<LoginCache>,
    path: PathBuf,
    /// One save at a time (the periodic one, SIGHUP's, shutdown's): they share
    /// the temporary file, and a save that read the cache before a SIGHUP must
    /// not land after the one that wrote it emptied.
    saving: tokio::sync::Mutex<()>,
}

impl LoginCacheFile {
    /// Loads the file in `state_dir` (if any) into `cache` and returns the handle
    /// that saves it; `None` (with a warning) when the directory cannot be used,
    /// and then the verifiers stay in memory only.
    pub(crate) fn open(
        state_dir: &Path,
        cache: Arc<LoginCache>,
        metrics: &Metrics,
    ) -> Option<Self> {
        if let Err(e) = std::fs::create_dir_all(state_dir) {
            tracing::warn!(directory = %state_dir.display(), error = %e, "login cache kept in memory only: the state directory cannot be created (SASL_CACHE_PERSIST)");
            return None;
        }
        let probe = state_dir.join(".sasl-login-cache-write-test");
        if let Err(e) = crate::state_file::write_private(&probe, b"") {
            tracing::warn!(directory = %state_dir.display(), error = %e, "login cache kept in memory only: the state directory cannot be written (SASL_CACHE_PERSIST)");
            return None;
        }
        let _ = std::fs::remove_file(&probe);
        let path = state_dir.join(LOGIN_CACHE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let since_written = crate::state_file::time_since_written(&path);
                match parse(&bytes, since_written) {
                    Ok(Some(verifiers)) => {
                        let loaded = cache.import(verifiers);
                        tracing::info!(file = %path.display(), loaded, "login cache loaded (used only when the backend fails)");
                    }
                    Ok(None) => {
                        tracing::info!(file = %path.display(), "login cache file made with another argon2id cost: not loaded")
                    }
                    Err(why) => {
                        let aside = crate::state_file::set_aside(&path, SystemTime::now());
                        metrics.state_file_damaged("sasl-login-cache");
                        tracing::error!(
                            file = %path.display(),
                            moved_to = %aside.as_ref().map_or_else(|e| format!("(not moved: {e})"), |p| p.display().to_string()),
                            error = %why,
                            "login cache file is damaged: moved aside, starting with an empty login cache"
                        );
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "login cache file cannot be read; starting with an empty login cache");
            }
        }
        Some(Self {
            cache,
            path,
            saving: tokio::sync::Mutex::new(()),
        })
    }

    /// Removes the files left from when `SASL_CACHE_PERSIST` was on (the file, a
    /// temporary one, damaged copies set aside): turning it off must not leave
    /// password hashes behind.
    pub(crate) fn remove_leftover(state_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(state_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|n| n.starts_with(LOGIN_CACHE_FILE))
            {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "SASL_CACHE_PERSIST is off: removed a login cache file")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "SASL_CACHE_PERSIST is off but a login cache file cannot be removed")
                }
            }
        }
    }

    /// Writes the file now if anything changed since the last write.
    pub(crate) async fn save(&self) {
        let _one_at_a_time = self.saving.lock().await;
        if !self.cache.take_dirty() {
            return;
        }
        let cache = self.cache.clone();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::state_file::write_private(&path, &serialize(&cache))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Try again at the next save.
                self.cache.mark_dirty();
                tracing::warn!(file = %self.path.display(), error = %e, "login cache file not written");
            }
            Err(e) => tracing::warn!(error = %e, "login cache file writer failed"),
        }
    }

    /// The save at shutdown: after the hashes in progress (at most 5 s).
    pub(crate) async fn save_at_shutdown(&self) {
        self.cache.settle(Duration::from_secs(5)).await;
        self.save().await;
    }

    /// Saves every [`SAVE_INTERVAL`] until `stop`.
    pub(crate) async fn save_periodically(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SAVE_INTERVAL) => self.save().await,
            }
        }
    }
}

fn serialize(cache: &LoginCache) -> Vec<u8> {
    let entries = cache
        .export()
        .into_iter()
        .map(|(login, stored, age)| FileEntry {
            login,
            salt: B64.encode(stored.salt),
            hash: B64.encode(stored.hash),
            age: age.as_secs_f64(),
        })
        .collect();
    let contents = FileContents {
        version: FILE_VERSION,
        argon2id: Argon2Cost::CURRENT,
        entries,
    };
    serde_json::to_vec(&contents).unwrap_or_default()
}

/// The verifiers in a file written `since_written` ago; `None` when they were made
/// with another cost (they could not be checked); an error for a damaged file.
fn parse(bytes: &[u8], since_written: Duration) -> Result<Option<Vec<PersistedLogin>>, String> {
    let contents: FileContents = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if contents.version != FILE_VERSION {
        return Err(format!("unknown version {}", contents.version));
    }
    if contents.argon2id != Argon2Cost::CURRENT {
        return Ok(None);
    }
    let decode = |text: &str, what: &str, index: usize| -> Result<Vec<u8>, String> {
        // The entry's number, not its login: logs carry no addresses above debug.
        B64.decode(text)
            .map_err(|e| format!("entry {index}: {what}: {e}"))
    };
    let mut verifiers = Vec::with_capacity(contents.entries.len());
    for (index, entry) in contents.entries.into_iter().enumerate() {
        let salt = decode(&entry.salt, "salt", index)?;
        let hash = decode(&entry.hash, "hash", index)?;
        let (Ok(salt), Ok(hash)) = (salt.try_into(), hash.try_into()) else {
            return Err(format!("entry {index}: wrong salt or hash length"));
        };
        // A negative, NaN or absurd age, or one that overflows with the time
        // since writing, is no verifier to keep.
        let Some(age) = Duration::try_from_secs_f64(entry.age)
            .ok()
            .and_then(|a| a.checked_add(since_written))
        else {
            continue;
        };
        if crate::normalize::login(&entry.login).is_err() {
            continue;
        }
        verifiers.push((entry.login, StoredHash { salt, hash }, age));
    }
    Ok(Some(verifiers))
}
