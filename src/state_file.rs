//! Files in the state directory that must survive power loss and damage: written
//! so that a crash or power cut leaves either the old or the new file, never a
//! mix; read so that a damaged file is set aside instead of stopping the adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Replaces `path` with `bytes` durably: writes a temporary file next to it,
/// flushes it to the disk, renames it over `path` and flushes the directory, so
/// that the rename itself survives a power cut.
///
/// # Errors
/// The first failing step's error.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_directory(path)
}

/// [`write_durably`], the file readable and writable by its owner only (`0600`):
/// for files that hold addresses.
///
/// # Errors
/// The first failing step's error.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temporary_path(path);
    // A leftover temporary (a crash mid-write) keeps its mode when reopened: start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_directory(path)
}

/// The temporary file [`write_durably`] writes first: `<name>.tmp`.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Flushes the directory holding `path`, so a rename or creation in it is on disk.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// How long ago `path` was last written, to age what it holds: zero when that
/// cannot be read, and [`Duration::MAX`] (too old for anything) when it was written
/// "in the future": the clock was set back, so the ages cannot be known.
pub(crate) fn time_since_written(path: &Path) -> Duration {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or(Duration::MAX))
        .unwrap_or_default()
}

/// Moves a damaged `path` aside to `<name>.corrupt-<unix seconds>` (kept for
/// inspection, never read again) and returns the new name.
///
/// # Errors
/// The rename's error.
pub(crate) fn set_aside(path: &Path, now: SystemTime) -> std::io::Result<PathBuf> {
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".corrupt-{seconds}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside)?;
    sync_directory(path)?;
    prune_set_aside(path, KEPT_SET_ASIDE);
    Ok(aside)
}

/// How many damaged copies of one file are kept: enough to inspect a recurring
/// fault, never a directory that fills up when one keeps recurring.
pub(crate) const KEPT_SET_ASIDE: usize = 3;

/// Removes all but the newest `keep` copies [`set_aside`] made of `path`.
fn prune_set_aside(path: &Path, keep: usize) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.to_owned();
    prefix.push(".corrupt-");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut copies: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file_name = e.file_name();
            let seconds = file_name.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((seconds, e.path()))
        })
        .collect();
    copies.sort_unstable_by_key(|copy| std::cmp::Reverse(copy.0));
    for (_, old) in copies.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_durably(&path, b"one").unwrap();
        write_durably(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_private_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        write_private(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn a_damaged_file_is_moved_aside_with_a_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"garbage").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let aside = set_aside(&path, now).unwrap();
        assert_eq!(aside, dir.path().join("state.json.corrupt-1700000000"));
        assert!(!path.exists());
        assert_eq!(std::fs::read(&aside).unwrap(), b"garbage");
    }

    #[test]
    fn only_the_newest_damaged_copies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(dir.path().join("other.json.corrupt-1"), b"x").unwrap();
        for second in 1..=5u64 {
            std::fs::write(&path, b"garbage").unwrap();
            set_aside(&path, UNIX_EPOCH + Duration::from_secs(second)).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "other.json.corrupt-1",
                "state.json.corrupt-3",
                "state.json.corrupt-4",
                "state.json.corrupt-5"
            ]
        );
    }

    #[test]
    fn a_leftover_temporary_does_not_lend_its_mode_to_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let tmp = temporary_path(&path);
        std::fs::write(&tmp, b"half").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
