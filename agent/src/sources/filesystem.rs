//! The `filesystem` source: space and inodes of every real mounted
//! filesystem as node_exporter's `node_filesystem_{size,free,avail}_bytes`,
//! `node_filesystem_files`, `node_filesystem_files_free`,
//! `node_filesystem_readonly` and `node_filesystem_device_error`, labelled
//! `device`, `fstype` and `mountpoint`.
//!
//! Mounts come from `<procfs>/1/mounts` (the host's mount namespace when the
//! agent runs in a container with the host's procfs), falling back to
//! `<procfs>/mounts`. node_exporter's default exclusions apply: pseudo and
//! virtual filesystem types (proc, sysfs, cgroup, overlay, squashfs, ...) and
//! mount points under `/dev`, `/proc`, `/sys`, `/run/credentials/*` and
//! container-runtime storage. Each mount point is resolved under
//! [`HostPaths::root`] before `statvfs`.
//!
//! `statvfs` on a hung network mount (NFS, CIFS with an unreachable server)
//! can block in the kernel indefinitely and cannot be cancelled. The calls
//! therefore run on a worker thread kept across cycles, and the cycle waits
//! at most [`STATVFS_TIMEOUT`] for all of them together. A mount that did not
//! answer is reported with `node_filesystem_device_error` = 1 and is not
//! asked again until its stuck call returns; the worker stuck in it is
//! abandoned and a fresh one takes the next cycle, so one dead server costs
//! one parked thread, not one per cycle. The parked thread itself cannot be
//! reclaimed: that is the remaining limitation.
//!
//! [`parse_mounts`] and [`is_excluded`] are pure; [`FilesystemSource`] does
//! the I/O.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// How long one cycle waits for the `statvfs` calls of all mounts (the same
/// default as node_exporter's `--collector.filesystem.mount-timeout`).
pub const STATVFS_TIMEOUT: Duration = Duration::from_secs(5);

/// Filesystem types node_exporter skips by default
/// (`--collector.filesystem.fs-types-exclude`).
const EXCLUDED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
];

/// One line of a mounts file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mounted device or source (`/dev/sda1`, `server:/export`, `tmpfs`).
    pub device: String,
    /// Where it is mounted, as the host sees it, with `\040` and `\011`
    /// decoded as node_exporter does.
    pub mount_point: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Whether the options include `ro`.
    pub read_only: bool,
}

/// Parses `/proc/<pid>/mounts` (fstab layout: device, mount point, type,
/// options, dump, pass).
pub fn parse_mounts(text: &str) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 4 {
            return Err(format!("line {}: expected at least 4 fields in {line:?}", lineno + 1));
        }
        mounts.push(Mount {
            device: fields[0].to_string(),
            mount_point: fields[1].replace("\\040", " ").replace("\\011", "\t"),
            fs_type: fields[2].to_string(),
            read_only: fields[3].split(',').any(|o| o == "ro"),
        });
    }
    Ok(mounts)
}

/// Whether node_exporter's default filters skip this mount.
pub fn is_excluded(mount: &Mount) -> bool {
    if EXCLUDED_FS_TYPES.contains(&mount.fs_type.as_str()) {
        return true;
    }
    // ^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)
    let Some(rest) = mount.mount_point.strip_prefix('/') else {
        return false;
    };
    let under = |dir: &str| rest == dir || rest.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    let below = |prefix: &str| rest.strip_prefix(prefix).is_some_and(|r| !r.is_empty());
    under("dev")
        || under("proc")
        || under("sys")
        || below("run/credentials/")
        || below("var/lib/docker/")
        || below("var/lib/containers/storage/")
}

/// What `statvfs` said about one filesystem, in node_exporter's units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FsUsage {
    /// Total bytes.
    pub size: f64,
    /// Free bytes (including those reserved for root).
    pub free: f64,
    /// Bytes available to unprivileged users.
    pub avail: f64,
    /// Total inodes.
    pub files: f64,
    /// Free inodes.
    pub files_free: f64,
}

#[cfg(unix)]
fn statvfs(path: &Path) -> std::io::Result<FsUsage> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    // node_exporter multiplies by the statfs block size (f_bsize), not the
    // fragment size; the two agree on Linux filesystems in practice, and
    // using the same one keeps the values identical.
    let block = s.f_bsize as f64;
    Ok(FsUsage {
        size: s.f_blocks as f64 * block,
        free: s.f_bfree as f64 * block,
        avail: s.f_bavail as f64 * block,
        files: s.f_files as f64,
        files_free: s.f_ffree as f64,
    })
}

#[cfg(not(unix))]
fn statvfs(_path: &Path) -> std::io::Result<FsUsage> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "statvfs needs a Unix host",
    ))
}

/// Reads mounts and runs `statvfs` on each, remembering mounts whose call
/// is still stuck from an earlier cycle.
#[derive(Debug, Default)]
pub struct FilesystemSource {
    /// Resolved mount point → set when its stuck `statvfs` finally returns.
    stuck: HashMap<PathBuf, Arc<AtomicBool>>,
    /// The thread that runs the calls, kept across cycles (spawning one
    /// thread per mount per cycle cost more than the calls themselves).
    worker: Option<StatWorker>,
}

/// One `statvfs` job: a batch of (index, path).
type StatJob = Vec<(usize, PathBuf)>;

/// The mount a worker is inside `statvfs` for, with the flag it sets when
/// that call returns.
type InFlight = Arc<Mutex<Option<(PathBuf, Arc<AtomicBool>)>>>;

/// A long-lived thread running `statvfs` calls one after another.
#[derive(Debug)]
struct StatWorker {
    jobs: mpsc::Sender<StatJob>,
    results: mpsc::Receiver<(usize, Option<FsUsage>)>,
    in_flight: InFlight,
}

impl StatWorker {
    fn spawn() -> Option<StatWorker> {
        let (jobs, job_rx) = mpsc::channel::<StatJob>();
        let (result_tx, results) = mpsc::channel();
        let in_flight: InFlight = Arc::default();
        let current = Arc::clone(&in_flight);
        std::thread::Builder::new()
            .name("hostpulse-statvfs".to_string())
            .spawn(move || {
                while let Ok(batch) = job_rx.recv() {
                    for (i, path) in batch {
                        let done = Arc::new(AtomicBool::new(false));
                        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some((path.clone(), Arc::clone(&done)));
                        let result = statvfs(&path).ok();
                        done.store(true, Ordering::Release);
                        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        // The receiver is gone when the source gave up on
                        // this thread (a call past the deadline): stop.
                        if result_tx.send((i, result)).is_err() {
                            return;
                        }
                    }
                }
            })
            .ok()?;
        Some(StatWorker {
            jobs,
            results,
            in_flight,
        })
    }
}

impl FilesystemSource {
    /// Runs `statvfs` for every path on the worker thread, waiting at most
    /// `timeout` overall. `None` marks a failure or a timeout. When the
    /// deadline passes, the mount the worker is stuck on is remembered (not
    /// asked again until its call returns), the worker is abandoned, and the
    /// next cycle starts a fresh one; mounts queued behind the stuck one
    /// report an error for this cycle only.
    fn stat_all(&mut self, targets: &[PathBuf], timeout: Duration) -> Vec<Option<FsUsage>> {
        let mut results = vec![None; targets.len()];
        let mut batch = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            if let Some(done) = self.stuck.get(target) {
                if !done.load(Ordering::Acquire) {
                    continue;
                }
                self.stuck.remove(target);
            }
            batch.push((i, target.clone()));
        }
        if batch.is_empty() {
            return results;
        }
        if self.worker.is_none() {
            self.worker = StatWorker::spawn();
        }
        let Some(worker) = self.worker.as_ref() else {
            return results;
        };
        let mut pending = batch.len();
        if worker.jobs.send(batch).is_err() {
            self.worker = None;
            return results;
        }
        let deadline = Instant::now() + timeout;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match worker.results.recv_timeout(left) {
                Ok((i, result)) => {
                    pending -= 1;
                    if let Some(slot) = results.get_mut(i) {
                        *slot = result;
                    }
                }
                Err(_) => break,
            }
        }
        if pending > 0 {
            let in_flight = worker.in_flight.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((path, done)) = in_flight {
                self.stuck.insert(path, done);
            }
            self.worker = None;
        }
        results
    }
}

impl Source for FilesystemSource {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    /// `statvfs` on a hung network mount blocks; the source's own wait is
    /// [`STATVFS_TIMEOUT`], which may be longer than the cycle deadline.
    fn may_block(&self) -> bool {
        true
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let mut text = None;
        for candidate in [paths.proc("1/mounts"), paths.proc("mounts")] {
            match std::fs::read_to_string(&candidate) {
                Ok(t) => {
                    text = Some((candidate, t));
                    break;
                }
                // /proc/1 is hidden with hidepid=2; /proc/self/mounts then.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => return Err(SourceError::io(&candidate, e)),
            }
        }
        let Some((path, text)) = text else { return Ok(()) };
        let mounts = parse_mounts(&text).map_err(|m| SourceError::parse(&path, m))?;
        let mut seen = HashSet::new();
        let mounts: Vec<Mount> = mounts
            .into_iter()
            .filter(|m| !is_excluded(m))
            .filter(|m| seen.insert((m.device.clone(), m.mount_point.clone(), m.fs_type.clone())))
            .collect();
        let targets: Vec<PathBuf> = mounts.iter().map(|m| paths.root(&m.mount_point)).collect();
        let usages = self.stat_all(&targets, STATVFS_TIMEOUT);
        for (mount, usage) in mounts.iter().zip(usages) {
            emit(mount, usage, out);
        }
        Ok(())
    }
}

/// Records one filesystem's series.
fn emit(mount: &Mount, usage: Option<FsUsage>, out: &mut Emitter) {
    let labels = [
        ("device", mount.device.as_str()),
        ("fstype", mount.fs_type.as_str()),
        ("mountpoint", mount.mount_point.as_str()),
    ];
    out.gauge(
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
        &labels,
        if usage.is_some() { 0.0 } else { 1.0 },
    );
    out.gauge(
        "node_filesystem_readonly",
        "Filesystem read-only status.",
        &labels,
        if mount.read_only { 1.0 } else { 0.0 },
    );
    let Some(usage) = usage else { return };
    let series = [
        ("node_filesystem_size_bytes", "Filesystem size in bytes.", usage.size),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            usage.free,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            usage.avail,
        ),
        ("node_filesystem_files", "Filesystem total file nodes.", usage.files),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            usage.files_free,
        ),
    ];
    for (name, help, value) in series {
        out.gauge(name, help, &labels, value);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
/dev/sdb1 /mnt/with\\040space xfs ro,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=1617716k,mode=755 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/sda2 /var/lib/docker ext4 rw 0 0
server:/export /srv/nfs nfs4 rw,relatime,vers=4.2 0 0
";

    #[test]
    fn parses_and_decodes_mount_points() {
        let mounts = parse_mounts(MOUNTS).unwrap();
        assert_eq!(mounts.len(), 8);
        assert_eq!(
            mounts[3],
            Mount {
                device: "/dev/sdb1".into(),
                mount_point: "/mnt/with space".into(),
                fs_type: "xfs".into(),
                read_only: true,
            }
        );
        assert!(!mounts[2].read_only);
    }

    #[test]
    fn applies_node_exporter_default_exclusions() {
        let kept: Vec<String> = parse_mounts(MOUNTS)
            .unwrap()
            .into_iter()
            .filter(|m| !is_excluded(m))
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(
            kept,
            vec!["/", "/mnt/with space", "/run", "/var/lib/docker", "/srv/nfs"]
        );
    }

    #[test]
    fn mount_point_patterns() {
        let at = |mp: &str| Mount {
            device: "d".into(),
            mount_point: mp.into(),
            fs_type: "ext4".into(),
            read_only: false,
        };
        assert!(is_excluded(&at("/dev")));
        assert!(is_excluded(&at("/dev/shm")));
        assert!(!is_excluded(&at("/devices")));
        assert!(is_excluded(&at("/run/credentials/x.service")));
        assert!(!is_excluded(&at("/run/credentials/")));
        assert!(is_excluded(&at("/var/lib/containers/storage/overlay")));
        assert!(!is_excluded(&at("relative")));
    }

    #[test]
    fn short_lines_are_errors() {
        assert!(parse_mounts("/dev/sda1 / ext4\n").is_err());
        assert!(parse_mounts("\n").unwrap().is_empty());
    }

    #[test]
    fn stats_a_real_directory_and_reports_missing_ones() {
        let mut source = FilesystemSource::default();
        let dir = std::env::temp_dir();
        let got = source.stat_all(&[dir, PathBuf::from("/nonexistent/hostpulse")], STATVFS_TIMEOUT);
        let usage = got[0].unwrap();
        assert!(usage.size > 0.0 && usage.size >= usage.free && usage.free >= usage.avail);
        assert!(got[1].is_none());
        assert!(source.stuck.is_empty());
    }

    #[test]
    fn the_worker_thread_is_kept_across_cycles() {
        let mut source = FilesystemSource::default();
        let dir = std::env::temp_dir();
        assert!(source.stat_all(std::slice::from_ref(&dir), STATVFS_TIMEOUT)[0].is_some());
        let first = Arc::clone(&source.worker.as_ref().unwrap().in_flight);
        for _ in 0..3 {
            let got = source.stat_all(&[PathBuf::from("/nonexistent/hostpulse"), dir.clone()], STATVFS_TIMEOUT);
            assert!(got[0].is_none() && got[1].is_some());
        }
        assert!(Arc::ptr_eq(&first, &source.worker.as_ref().unwrap().in_flight));
        assert!(source.stuck.is_empty());
    }

    #[test]
    fn device_errors_emit_only_error_and_readonly() {
        let mount = &parse_mounts(MOUNTS).unwrap()[7];
        let mut out = Emitter::new();
        emit(mount, None, &mut out);
        let names: Vec<&str> = out.samples().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["node_filesystem_device_error", "node_filesystem_readonly"]);
        assert_eq!(out.samples()[0].value, 1.0);
    }
}
