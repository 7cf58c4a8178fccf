//! The answer cache on disk: a snapshot in the state directory, written every
//! minute and at shutdown, loaded at start, so stale-on-error works from the
//! first request after a restart (a deploy or a crash during a backend outage).
//!
//! The file holds addresses: it is written `0600`, durably (like the quota state
//! file), and a damaged one is moved aside, never fatal. Loaded answers are
//! stale-only ([`super::AnswerCache::import`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::CachedBackend;
use crate::metrics::Metrics;

/// The snapshot's name in the state directory.
pub(crate) const SNAPSHOT_FILE: &str = "lookup-cache.json";

/// How often the snapshot is written while serving.
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// The cache and where it is kept.
#[derive(Debug)]
pub(crate) struct CachePersistence {
    cache: Arc<CachedBackend>,
    path: PathBuf,
}

impl CachePersistence {
    /// Loads the snapshot in `state_dir` (if there is one) into `cache` and returns
    /// the handle that saves it; `None` (with a warning) when the directory cannot
    /// be used: the adapter then runs without a snapshot, as it would have before.
    pub(crate) fn open(
        state_dir: &Path,
        cache: Arc<CachedBackend>,
        metrics: &Metrics,
    ) -> Option<Self> {
        if let Err(e) = std::fs::create_dir_all(state_dir) {
            tracing::warn!(directory = %state_dir.display(), error = %e, "lookup cache snapshot off: the state directory cannot be created (LOOKUP_CACHE_PERSIST)");
            return None;
        }
        // Prove now that it can be written, rather than warn at every save.
        let probe = state_dir.join(".lookup-cache-write-test");
        if let Err(e) = crate::state_file::write_private(&probe, b"") {
            tracing::warn!(directory = %state_dir.display(), error = %e, "lookup cache snapshot off: the state directory cannot be written (LOOKUP_CACHE_PERSIST)");
            return None;
        }
        let _ = std::fs::remove_file(&probe);
        let path = state_dir.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let since_written = crate::state_file::time_since_written(&path);
                let started = Instant::now();
                match cache.restore(&bytes, since_written) {
                    Ok(loaded) => tracing::info!(
                        file = %path.display(),
                        loaded,
                        took_ms = started.elapsed().as_millis() as u64,
                        "lookup cache snapshot loaded (answers served only when the backend fails)"
                    ),
                    Err(why) => {
                        let aside = crate::state_file::set_aside(&path, SystemTime::now());
                        metrics.state_file_damaged("lookup-cache");
                        tracing::error!(
                            file = %path.display(),
                            moved_to = %aside.as_ref().map_or_else(|e| format!("(not moved: {e})"), |p| p.display().to_string()),
                            error = %why,
                            "lookup cache snapshot is damaged: moved aside, starting with an empty cache"
                        );
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "lookup cache snapshot cannot be read; starting with an empty cache");
            }
        }
        Some(Self { cache, path })
    }

    /// Writes the snapshot now (off the runtime's workers).
    pub(crate) async fn save(&self) {
        let cache = self.cache.clone();
        let path = self.path.clone();
        // Serialising 100k answers takes tens of milliseconds: not on a worker.
        let written = tokio::task::spawn_blocking(move || {
            crate::state_file::write_private(&path, &cache.snapshot())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(file = %self.path.display(), error = %e, "lookup cache snapshot not written")
            }
            Err(e) => tracing::warn!(error = %e, "lookup cache snapshot writer failed"),
        }
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
