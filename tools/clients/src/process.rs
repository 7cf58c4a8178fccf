//! What a running adapter uses, read from `/proc` (Linux).

/// A process's resources at one moment; `None` where `/proc` could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident memory (`VmRSS`), KiB.
    pub rss_kib: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
}

impl ProcSample {
    /// Samples process `pid`, or this process for `None`.
    pub fn of(pid: Option<u32>) -> Self {
        let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
        let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
        Self {
            rss_kib: status_field(&status, "VmRSS:"),
            threads: status_field(&status, "Threads:"),
            fds: std::fs::read_dir(format!("{dir}/fd"))
                .ok()
                .map(|d| d.count() as u64),
        }
    }
}

/// Resident memory of `pid` (or this process) in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    ProcSample::of(pid).rss_kib
}

/// The number after `field` in `/proc/PID/status` (`VmRSS:   1234 kB` → 1234).
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// This process's soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_status_text() {
        let status = "Name:\tx\nVmRSS:\t   1234 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1234));
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = ProcSample::of(None);
        assert!(me.rss_kib.is_some_and(|k| k > 0));
        assert!(me.threads.is_some_and(|t| t >= 1));
        assert!(me.fds.is_some_and(|f| f >= 3));
        assert!(open_files_limit().is_some_and(|l| l > 0));
    }
}
