//! Where the sending windows live: embedded in the process (persisted to a file so
//! restarts do not reset quotas), or in Redis for several adapter instances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postfix_adapter_backend::{SmtpQuota, async_trait};
use serde::{Deserialize, Serialize};

use super::window::{Verdict, Windows};

/// A store failure; the policy server then fails open (or closed, by option).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not ours or is damaged.
    #[error("state file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A remote store (Redis) failed.
    #[error("{0}")]
    Remote(String),
    /// The store answered, but refused this one request (an error about its data,
    /// not about the store): not a sign that the store is down.
    #[error("{0}")]
    Rejected(String),
}

/// Minutes since the Unix epoch.
pub fn minute_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Sliding-window counters shared by every policy check.
#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Records `weight` for `identity` at `now` and judges the counts against
    /// `limits`, atomically.
    async fn check(
        &self,
        identity: &str,
        limits: SmtpQuota,
        weight: u64,
        now: SystemTime,
    ) -> Result<Verdict, StoreError>;

    /// Saves state that is only in memory (on shutdown and periodically).
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A short name for logs and metrics: `embedded` or `redis`.
    fn name(&self) -> &'static str;
}

/// The state file's format; versioned so a future format can be told apart.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    senders: HashMap<String, Windows>,
}

const SNAPSHOT_VERSION: u32 = 1;
/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "policy-windows.json";

/// Windows in memory, saved to a file in the state directory.
///
/// A crash loses at most the checks since the last save (every few seconds); a
/// clean shutdown loses nothing. Senders whose windows have emptied are dropped at
/// each save, so the file stays as small as the set of recently active senders.
#[derive(Debug)]
pub struct EmbeddedStore {
    senders: Mutex<HashMap<String, Windows>>,
    path: Option<PathBuf>,
    dirty: AtomicBool,
    set_aside: Option<PathBuf>,
}

/// The windows in a state file, or why it cannot be read as such.
fn parse_snapshot(bytes: &[u8]) -> Result<HashMap<String, Windows>, String> {
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if snapshot.version != SNAPSHOT_VERSION {
        return Err(format!("unknown version {}", snapshot.version));
    }
    Ok(snapshot.senders)
}

impl EmbeddedStore {
    /// A store that is never saved (tests, embedding).
    pub fn in_memory() -> Self {
        Self {
            senders: Mutex::new(HashMap::new()),
            path: None,
            dirty: AtomicBool::new(false),
            set_aside: None,
        }
    }

    /// Opens the store in `state_dir`, creating the directory and loading the
    /// windows saved by the previous run. A file that cannot be read as windows
    /// (empty, truncated, garbage, another version) is moved aside
    /// (`policy-windows.json.corrupt-<unix seconds>`), logged at error, and the
    /// windows start empty: a damaged quota file must not take lookups and logins
    /// down with it. [`EmbeddedStore::set_aside`] tells whether that happened.
    ///
    /// # Errors
    /// [`StoreError`] when the directory cannot be created or written, or the
    /// file cannot be read or moved aside.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(STATE_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut set_aside = None;
        let senders = match std::fs::read(&path) {
            Ok(bytes) => match parse_snapshot(&bytes) {
                Ok(senders) => senders,
                Err(why) => {
                    let aside =
                        crate::state_file::set_aside(&path, SystemTime::now()).map_err(io)?;
                    tracing::error!(
                        file = %path.display(),
                        moved_to = %aside.display(),
                        error = %why,
                        "quota state file is damaged: moved aside, starting with empty windows (sending counts of the last day are lost)"
                    );
                    set_aside = Some(aside);
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(io(e)),
        };
        // Prove the directory is writable now, not at the first save.
        let probe = state_dir.join(".write-test");
        std::fs::write(&probe, b"").map_err(io)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self {
            senders: Mutex::new(senders),
            path: Some(path),
            dirty: AtomicBool::new(false),
            set_aside,
        })
    }

    /// Where a damaged state file found at open was moved, if one was.
    pub fn set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
    }

    /// The hour and day counts of `identity` at `now`, without recording.
    pub fn counts(&self, identity: &str, now: SystemTime) -> (u64, u64) {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders
            .get(identity)
            .map_or((0, 0), |w| w.counts(minute_of(now)))
    }

    fn snapshot_bytes(&self, now: SystemTime) -> Vec<u8> {
        let now_minute = minute_of(now);
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.retain(|_, w| {
            w.expire(now_minute);
            !w.is_empty()
        });
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            senders: senders.clone(),
        };
        drop(senders);
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }
}

#[async_trait]
impl QuotaStore for EmbeddedStore {
    async fn check(
        &self,
        identity: &str,
        limits: SmtpQuota,
        weight: u64,
        now: SystemTime,
    ) -> Result<Verdict, StoreError> {
        let minute = minute_of(now);
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let windows = senders.entry(identity.to_owned()).or_default();
        let (hour, day) = windows.record(minute, weight);
        drop(senders);
        self.dirty.store(true, Ordering::Release);
        Ok(Verdict::judge(limits, hour, day))
    }

    /// Writes the windows durably (temporary file, fsync, rename, fsync of the
    /// directory), so neither a crash nor a power cut leaves a damaged file.
    async fn flush(&self) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let bytes = self.snapshot_bytes(SystemTime::now());
        let result = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let io = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            crate::state_file::write_durably(&path, &bytes).map_err(io)
        })
        .await
        .map_err(|e| StoreError::Remote(format!("state writer failed: {e}")))?;
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quota(per_hour: u32) -> SmtpQuota {
        SmtpQuota {
            per_hour,
            per_day: 0,
        }
    }

    #[tokio::test]
    async fn windows_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for _ in 0..2 {
            assert!(store.check("a@x", quota(2), 1, now).await.unwrap().allowed);
        }
        store.flush().await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path()).unwrap();
        let v = store.check("a@x", quota(2), 1, now).await.unwrap();
        assert!(
            !v.allowed,
            "the third message after a restart is over the limit"
        );
        assert_eq!((v.hour, v.day), (3, 3));
    }

    #[tokio::test]
    async fn expired_senders_are_dropped_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
        store.check("old@x", quota(1), 1, long_ago).await.unwrap();
        store
            .check("new@x", quota(1), 1, SystemTime::now())
            .await
            .unwrap();
        store.flush().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("new@x") && !text.contains("old@x"), "{text}");
    }

    #[tokio::test]
    async fn a_damaged_file_is_set_aside_and_the_windows_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        // A good file, to damage in three ways.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let now = SystemTime::now();
        store.check("a@x", quota(10), 3, now).await.unwrap();
        store.flush().await.unwrap();
        let good = std::fs::read(&path).unwrap();
        for (what, damaged) in [
            ("empty", Vec::new()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("garbage", b"\x00\xffnot json at all".to_vec()),
            (
                "another version",
                br#"{"version":99,"senders":{}}"#.to_vec(),
            ),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(store.counts("a@x", now), (0, 0), "{what}");
            let aside = store.set_aside().expect("moved aside").to_owned();
            assert!(
                aside
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("policy-windows.json.corrupt-"),
                "{what}: {}",
                aside.display()
            );
            assert_eq!(
                std::fs::read(&aside).unwrap(),
                damaged,
                "{what}: kept as it was"
            );
            assert!(!path.exists(), "{what}");
            std::fs::remove_file(&aside).unwrap();
            // The store works and saves again.
            store.check("b@x", quota(10), 1, now).await.unwrap();
            store.flush().await.unwrap();
            assert!(
                EmbeddedStore::open(dir.path())
                    .unwrap()
                    .set_aside()
                    .is_none()
            );
        }
    }

    #[tokio::test]
    async fn senders_are_independent() {
        let store = EmbeddedStore::in_memory();
        let now = SystemTime::now();
        assert!(store.check("a@x", quota(1), 1, now).await.unwrap().allowed);
        assert!(store.check("b@x", quota(1), 1, now).await.unwrap().allowed);
        assert!(!store.check("a@x", quota(1), 1, now).await.unwrap().allowed);
        assert_eq!(store.counts("b@x", now), (1, 1));
    }
}
