//! The `process` source: the agent's own CPU time, memory, descriptors and
//! start time from `<procfs>/self`, under the names every Prometheus client
//! library exports for its process (`process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`,
//! `process_virtual_memory_max_bytes`, `process_resident_memory_bytes`,
//! `process_start_time_seconds`). The "Node Exporter Full" dashboard plots
//! them for the exporter; here they show what the agent itself costs the
//! host, and a descriptor count creeping toward the limit is a leak.
//!
//! `stat` and `status` are kept open and re-read each cycle ([`Files`]);
//! `limits` and the boot time (`btime` of `<procfs>/stat`) are static and
//! re-read on the slow refresh. The parsers ([`parse_self_stat`],
//! [`parse_status_kib`], [`parse_soft_limit`], [`parse_btime`]) are pure.

use std::io::ErrorKind;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Clock ticks per second of the times in `/proc/<pid>/stat`. The kernel
/// fixes USER_HZ at 100 on every architecture Linux supports today; the
/// Prometheus client libraries assume the same.
const USER_HZ: f64 = 100.0;

/// The fields of `/proc/self/stat` this source uses, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfStat {
    /// Time in user mode.
    pub utime: u64,
    /// Time in kernel mode.
    pub stime: u64,
    /// Start time after boot.
    pub starttime: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_self_stat(text: &str) -> Result<SelfStat, String> {
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| "no ')' closing the command name".to_string())?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the man page, so field N is at N - 3.
    let field = |n: usize| -> Result<u64, String> {
        let raw = fields.get(n - 3).ok_or_else(|| format!("field {n} missing"))?;
        raw.parse().map_err(|_| format!("field {n} {raw:?} is not a number"))
    };
    Ok(SelfStat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// Reads a `Key:   1234 kB` line of `/proc/<pid>/status` as bytes.
pub fn parse_status_kib(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: f64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024.0)
    })
}

/// Reads the soft limit of one row of `/proc/<pid>/limits` (`Max open
/// files`, `Max address space`). `unlimited` is the largest 64-bit value,
/// which is what the client libraries report.
pub fn parse_soft_limit(text: &str, row: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(row)?;
        match rest.split_whitespace().next()? {
            "unlimited" => Some(u64::MAX as f64),
            value => value.parse().ok(),
        }
    })
}

/// Reads the boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// Reads `<procfs>/self`.
#[derive(Debug, Default)]
pub struct ProcessSource {
    files: Files,
}

impl ProcessSource {
    /// Reads a changing file; `Ok(None)` when it does not exist.
    fn read(&mut self, path: &std::path::Path) -> Result<Option<String>, SourceError> {
        match self.files.read_bytes(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
            // A fixture tree may have `self` as a plain file (a symlink that
            // was copied as its target's name): no process to describe.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
            Err(e) => Err(SourceError::io(path, e)),
        }
    }
}

impl Source for ProcessSource {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let dir = paths.proc("self");
        let stat_path = dir.join("stat");
        // No procfs (or a fixture tree without `self`): nothing to report.
        let Some(stat_text) = self.read(&stat_path)? else {
            return Ok(());
        };
        let stat = parse_self_stat(&stat_text).map_err(|m| SourceError::parse(&stat_path, m))?;
        out.counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            &[],
            (stat.utime + stat.stime) as f64 / USER_HZ,
        );
        if let Some(btime) = self
            .files
            .read_static(&paths.proc("stat"))
            .and_then(|t| parse_btime(&t))
        {
            out.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &[],
                btime + stat.starttime as f64 / USER_HZ,
            );
        }
        if let Some(status) = self.read(&dir.join("status"))? {
            if let Some(bytes) = parse_status_kib(&status, "VmRSS") {
                out.gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    &[],
                    bytes,
                );
            }
            if let Some(bytes) = parse_status_kib(&status, "VmSize") {
                out.gauge(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    &[],
                    bytes,
                );
            }
        }
        if let Some(limits) = self.files.read_static(&dir.join("limits")) {
            if let Some(max) = parse_soft_limit(&limits, "Max open files") {
                out.gauge("process_max_fds", "Maximum number of open file descriptors.", &[], max);
            }
            if let Some(max) = parse_soft_limit(&limits, "Max address space") {
                out.gauge(
                    "process_virtual_memory_max_bytes",
                    "Maximum amount of virtual memory available in bytes.",
                    &[],
                    max,
                );
            }
        }
        // Counting the entries is the only way to learn the number of open
        // descriptors; the listing cache would hide changes, so read it fresh.
        let fd_dir = dir.join("fd");
        if let Ok(entries) = std::fs::read_dir(&fd_dir) {
            // The descriptor read_dir itself holds is one of the entries.
            let open = entries.count().saturating_sub(1);
            out.gauge("process_open_fds", "Number of open file descriptors.", &[], open as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STAT: &str = "3353 (hostpulse (a)) S 3348 3348 21391 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 9 0 \
                        1934607 3133440 418 18446744073709551615 93842700845056\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = parse_self_stat(STAT).unwrap();
        assert_eq!(
            stat,
            SelfStat {
                utime: 250,
                stime: 75,
                starttime: 1_934_607
            }
        );
    }

    #[test]
    fn a_truncated_stat_is_an_error() {
        assert!(parse_self_stat("3353 (cat) R 1 2 3").unwrap_err().contains("field 14"));
        assert!(parse_self_stat("no name here").is_err());
    }

    #[test]
    fn status_sizes_are_bytes() {
        let status = "Name:\thostpulse\nVmSize:\t 1022404 kB\nVmRSS:\t   15184 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(15_184.0 * 1024.0));
        assert_eq!(parse_status_kib(status, "VmSize"), Some(1_022_404.0 * 1024.0));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn soft_limits_and_unlimited() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_soft_limit(limits, "Max open files"), Some(20_000.0));
        assert_eq!(
            parse_soft_limit(limits, "Max address space"),
            Some(1.8446744073709552e19)
        );
        assert_eq!(parse_soft_limit(limits, "Max processes"), None);
    }

    #[test]
    fn boot_time() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1795653000\nprocesses 9\n"),
            Some(1_795_653_000.0)
        );
        assert_eq!(parse_btime("cpu  1 2 3\n"), None);
    }

    #[test]
    fn a_self_that_is_not_a_directory_is_no_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("self"), "26231").unwrap();
        let paths = HostPaths {
            procfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        let mut out = Emitter::new();
        ProcessSource::default().collect(&paths, &mut out).unwrap();
        assert!(out.samples().is_empty());
    }

    #[test]
    fn reads_the_running_agent() {
        let mut source = ProcessSource::default();
        let mut out = Emitter::new();
        source.collect(&HostPaths::default(), &mut out).unwrap();
        let names: Vec<&str> = out.samples().iter().map(|s| s.name.as_str()).collect();
        for want in [
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_max_fds",
            "process_virtual_memory_max_bytes",
            "process_open_fds",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
}
