//! The `kmsg` source: follows the kernel log and turns hardware trouble into
//! counters and events. Every line matching the built-in pattern pack
//! ([`PATTERNS`]: machine checks, EDAC, PCIe AER, NVMe timeouts and resets,
//! ATA/SCSI I/O and medium errors, filesystem errors and read-only remounts,
//! thermal throttling, hung tasks, soft lockups, OOM kills) increments
//! `hostpulse_kernel_events_total{kind,device}` (counted since the agent
//! started) and is sent as a [`KernelEvent`] with the cycle's batch — at
//! most [`EVENTS_PER_KIND_PER_CYCLE`] events per kind per cycle, so an error
//! storm cannot flood the stream while the counter still counts every line.
//!
//! Reading never blocks and never replays history:
//! - `/dev/kmsg` (a character device) is opened `O_NONBLOCK` and seeked to
//!   its end (`SEEK_END`: "after the last record"), then each cycle reads
//!   one record per `read(2)` until `EAGAIN`. `EPIPE` means the ring buffer
//!   overwrote records we had not read yet; the read position has moved to
//!   the oldest record left, so the lost records are counted in
//!   `hostpulse_kernel_log_overruns_total` and reading continues.
//! - A plain file (`--kmsg FILE`, tests) is read from the offset where the
//!   previous cycle stopped (its end at start), complete lines only; a file
//!   that shrank was rotated or truncated and is read from the start.
//!
//! `EACCES` (the agent lacks `CAP_SYSLOG` or `kernel.dmesg_restrict` is set)
//! is [`SourceError::PermissionDenied`], reported once by the sampler. A
//! missing device (some containers) is "no such hardware". The pure parts
//! are [`parse_record`] and [`Classifier::classify`].
//!
//! The pattern pack is compiled when the first record arrives, not at
//! start: compiled, it is about half a MiB of resident memory, and a
//! healthy server's kernel log is often silent for days after boot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
#[cfg(unix)]
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use regex::bytes::{Regex, RegexBuilder};

use crate::emit::{Emitter, KernelEvent};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// Events sent per kind per cycle; the counter counts the rest too.
pub const EVENTS_PER_KIND_PER_CYCLE: usize = 20;

/// Upper bound of `/dev/kmsg` records read in one cycle, so a flood cannot
/// keep the source busy past its deadline; the rest is read next cycle.
const MAX_RECORDS_PER_CYCLE: usize = 20_000;

/// Upper bound of bytes read from a plain file in one cycle.
const MAX_FILE_BYTES_PER_CYCLE: u64 = 4 << 20;

/// The pattern pack: (kind, regex), tried in order, first match wins. The
/// order matters where lines fit several kinds: a thermal line is printed
/// with an `mce:` prefix, AER reports carry `[Hardware Error]`, a read-only
/// remount is also an EXT4 line, and medium errors are also I/O errors.
pub const PATTERNS: &[(&str, &str)] = &[
    (
        "thermal_throttle",
        r"temperature above threshold|cpu clock throttled|thermal.*critical temperature",
    ),
    ("edac_ue", r"EDAC.*(?:\bUE\b|[Uu]ncorrect)"),
    ("edac_ce", r"EDAC.*(?:\bCE\b|[Cc]orrected)"),
    ("pcie_aer", r"\bAER: |PCIe Bus Error"),
    (
        "mce",
        r"\[Hardware Error\]|[Mm]achine [Cc]heck|\bmce: Uncorrected|Uncorrected hardware memory error",
    ),
    ("nvme_timeout", r"\bnvme\S*: .*\btimeout"),
    (
        "nvme_reset",
        r"\bnvme\S*: .*(?:[Rr]esetting controller|reset controller|controller is down|Removing after probe failure|Device not ready)",
    ),
    ("fs_readonly", r"Remounting filesystem read-only"),
    (
        "fs_error",
        r"EXT[234]-fs (?:error|warning \(device)|EXT[234]-fs \([^)]*\): .*(?:error|shut ?down)|XFS \([^)]*\): .*(?:[Cc]orrupt|[Ss]hut ?down|I/O [Ee]rror)|BTRFS (?:error|critical)",
    ),
    ("buffer_io_error", r"Buffer I/O error"),
    (
        "medium_error",
        r"Medium Error|Unrecovered read error|critical medium error|\{ UNC",
    ),
    (
        "ata_error",
        r"\bata\d+(?:\.\d+)?: (?:exception Emask|failed command|status: \{|error: \{|SError:|hard resetting link|COMRESET failed)",
    ),
    (
        "io_error",
        r"I/O error|\bFAILED Result:|critical target error|timing out command",
    ),
    ("hung_task", r"INFO: task .* blocked for more than \d+ seconds"),
    (
        "soft_lockup",
        r"soft lockup - CPU#\d+ stuck|BUG: soft lockup|hard LOCKUP",
    ),
    ("oom_kill", r"(?i)out of memory: kill"),
];

/// Where the device a line names is found, in order; first match wins.
/// The captured text is lower-cased (`MC0` → `mc0`, `CPU3` → `cpu3`).
const DEVICE_PATTERNS: &[&str] = &[
    // AER: the root port logs, the device that erred follows "received:".
    r"error received: (?:id=)?([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])",
    r"\[(sd[a-z]+|sr\d+)\]",
    r"\bdev ([A-Za-z0-9_\-]+)",
    r"\(device ([^)\s]+)\)",
    r"(?:EXT[234]-fs|XFS|BTRFS[^(]*) \(([^)\s]+)\)",
    r"\b(nvme\d+(?:n\d+)?)",
    r"EDAC (?:\w+ )?(MC\d+)",
    r"\b([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\b",
    r"\b(ata\d+)(?:\.\d+)?:",
    r"^(CPU\d+):",
    r"CPU#(\d+)",
];

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Microseconds since boot, when the line had a `/dev/kmsg` header.
    pub usec: Option<u64>,
    /// The message text.
    pub message: &'a str,
}

/// Parses one `/dev/kmsg` record (`prio,seq,usec,flags[,...];message`,
/// optionally followed by ` KEY=value` dictionary lines, which are dropped)
/// or, without that header, takes the line as the message.
pub fn parse_record(text: &str) -> Record<'_> {
    let first = text.split('\n').next().unwrap_or_default();
    if let Some((header, message)) = first.split_once(';') {
        let fields: Vec<&str> = header.split(',').collect();
        let numeric = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (true, Some(_), Some(_), Some(usec)) = (fields.len() >= 4, numeric(0), numeric(1), numeric(2)) {
            return Record {
                usec: Some(usec),
                message,
            };
        }
    }
    Record {
        usec: None,
        message: first,
    }
}

/// Compiles one pattern of the pack in ASCII mode (`\b`, `\w`, `\S`,
/// `(?i)` over ASCII only) on bytes. Kernel messages are ASCII, and the
/// Unicode classes made the compiled pack the largest part of the agent's
/// heap (about 1 MiB of its resident memory for 30 patterns).
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).build()
}

/// The compiled pattern pack.
#[derive(Debug)]
pub struct Classifier {
    kinds: Vec<(&'static str, Regex)>,
    devices: Vec<Regex>,
}

impl Default for Classifier {
    fn default() -> Self {
        // The patterns are constants covered by tests; one that failed to
        // compile would only be missing, never a crash.
        Classifier {
            kinds: PATTERNS
                .iter()
                .filter_map(|(kind, re)| Some((*kind, compile(re).ok()?)))
                .collect(),
            devices: DEVICE_PATTERNS.iter().filter_map(|re| compile(re).ok()).collect(),
        }
    }
}

impl Classifier {
    /// `(kind, device)` for a hardware-related message, `None` otherwise.
    pub fn classify(&self, message: &str) -> Option<(&'static str, String)> {
        let message = message.as_bytes();
        let kind = self.kinds.iter().find(|(_, re)| re.is_match(message))?.0;
        let device = self
            .devices
            .iter()
            .find_map(|re| re.captures(message)?.get(1))
            .map(|m| {
                let d = String::from_utf8_lossy(m.as_bytes());
                if d.bytes().all(|b| b.is_ascii_digit()) {
                    format!("cpu{d}")
                } else {
                    d.to_lowercase()
                }
            })
            .unwrap_or_default();
        Some((kind, device))
    }
}

/// An open kernel log.
#[derive(Debug)]
enum Log {
    /// `/dev/kmsg`: one record per read.
    Device(File),
    /// A plain file, read from `offset`.
    Plain { file: File, offset: u64 },
}

/// Follows the kernel log.
#[derive(Debug)]
pub struct KmsgSource {
    configured: Option<PathBuf>,
    log: Option<Log>,
    /// Compiled on the first record (see the module documentation).
    classifier: Option<Classifier>,
    counts: BTreeMap<(&'static str, String), u64>,
    overruns: u64,
}

impl KmsgSource {
    /// Follows `path`, or `<dev>/kmsg` when `None`.
    pub fn new(path: Option<PathBuf>) -> Self {
        KmsgSource {
            configured: path,
            log: None,
            classifier: None,
            counts: BTreeMap::new(),
            overruns: 0,
        }
    }

    /// The kernel log exists only on Linux; elsewhere there is nothing to follow.
    #[cfg(not(unix))]
    fn open(_path: &Path) -> Result<Option<Log>, SourceError> {
        Ok(None)
    }

    /// Opens the log positioned at its end; `Ok(None)` when it does not exist.
    #[cfg(unix)]
    fn open(path: &Path) -> Result<Option<Log>, SourceError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SourceError::io(path, e)),
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| SourceError::io(path, e))?;
        let end = file.seek(SeekFrom::End(0)).map_err(|e| SourceError::io(path, e))?;
        if meta.file_type().is_char_device() {
            Ok(Some(Log::Device(file)))
        } else {
            Ok(Some(Log::Plain { file, offset: end }))
        }
    }

    /// Reads the records logged since the last call.
    fn read_new(log: &mut Log, path: &Path, overruns: &mut u64) -> Result<Vec<String>, SourceError> {
        let mut records = Vec::new();
        match log {
            Log::Device(file) => {
                let mut buf = vec![0u8; 8192];
                while records.len() < MAX_RECORDS_PER_CYCLE {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => records.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // EPIPE: records were overwritten before we read them.
                        Err(e) if e.raw_os_error() == Some(32) => *overruns += 1,
                        Err(e) => return Err(SourceError::io(path, e)),
                    }
                }
            }
            Log::Plain { file, offset } => {
                let len = file.metadata().map_err(|e| SourceError::io(path, e))?.len();
                if len < *offset {
                    *offset = 0;
                }
                let want = (len - *offset).min(MAX_FILE_BYTES_PER_CYCLE);
                if want == 0 {
                    return Ok(records);
                }
                file.seek(SeekFrom::Start(*offset))
                    .map_err(|e| SourceError::io(path, e))?;
                let mut buf = Vec::new();
                file.by_ref()
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(|e| SourceError::io(path, e))?;
                // Only complete lines; a partial last line is read next cycle.
                let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                    return Ok(records);
                };
                *offset += end as u64 + 1;
                records.extend(
                    String::from_utf8_lossy(&buf[..end])
                        .split('\n')
                        .filter(|l| !l.is_empty() && !l.starts_with(' '))
                        .map(str::to_string),
                );
            }
        }
        Ok(records)
    }
}

/// Milliseconds since the epoch at which the host booted, from
/// `/proc/uptime`, to date `/dev/kmsg` records.
fn boot_epoch_ms(paths: &HostPaths, now_ms: i64) -> Option<i64> {
    let text = std::fs::read_to_string(paths.proc("uptime")).ok()?;
    let uptime: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(now_ms - (uptime * 1000.0) as i64)
}

impl Source for KmsgSource {
    fn name(&self) -> &'static str {
        "kmsg"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let path = self.configured.clone().unwrap_or_else(|| paths.dev.join("kmsg"));
        if self.log.is_none() {
            self.log = Self::open(&path)?;
        }
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        let records = Self::read_new(log, &path, &mut self.overruns)?;
        let classifier = match (&mut self.classifier, records.is_empty()) {
            (Some(classifier), _) => Some(&*classifier),
            (None, true) => None,
            (slot @ None, false) => Some(&*slot.insert(Classifier::default())),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let mut boot_ms = None;
        let mut sent: BTreeMap<&'static str, usize> = BTreeMap::new();
        for text in &records {
            let record = parse_record(text);
            let Some((kind, device)) = classifier.and_then(|c| c.classify(record.message)) else {
                continue;
            };
            *self.counts.entry((kind, device.clone())).or_insert(0) += 1;
            let n = sent.entry(kind).or_insert(0);
            if *n >= EVENTS_PER_KIND_PER_CYCLE {
                continue;
            }
            *n += 1;
            let timestamp_ms = match record.usec {
                Some(usec) => {
                    let boot = *boot_ms.get_or_insert_with(|| boot_epoch_ms(paths, now_ms));
                    boot.map(|b| b + (usec / 1000) as i64)
                        .filter(|t| *t <= now_ms)
                        .unwrap_or(now_ms)
                }
                None => now_ms,
            };
            out.event(KernelEvent {
                timestamp_ms,
                kind: kind.to_string(),
                device,
                message: record.message.to_string(),
            });
        }
        for ((kind, device), count) in &self.counts {
            out.counter(
                "hostpulse_kernel_events_total",
                "Hardware-related kernel log lines seen since the agent started, by kind and device.",
                &[("kind", kind), ("device", device)],
                *count as f64,
            );
        }
        if matches!(log, Log::Device(_)) {
            out.counter(
                "hostpulse_kernel_log_overruns_total",
                "Times the kernel ring buffer overwrote records before the agent read them.",
                &[],
                self.overruns as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for (kind, re) in PATTERNS {
            assert!(compile(re).is_ok(), "{kind}");
        }
        for re in DEVICE_PATTERNS {
            assert!(compile(re).is_ok(), "{re}");
        }
        assert_eq!(Classifier::default().kinds.len(), PATTERNS.len());
        assert_eq!(Classifier::default().devices.len(), DEVICE_PATTERNS.len());
    }

    #[test]
    fn kmsg_records_and_plain_lines() {
        assert_eq!(
            parse_record("3,1234,5678901,-;nvme nvme0: I/O 5 QID 2 timeout, aborting\n SUBSYSTEM=nvme\n"),
            Record {
                usec: Some(5678901),
                message: "nvme nvme0: I/O 5 QID 2 timeout, aborting"
            }
        );
        assert_eq!(
            parse_record("6,17,0,c,more;x"),
            Record {
                usec: Some(0),
                message: "x"
            }
        );
        assert_eq!(
            parse_record("EXT4-fs error; whatever"),
            Record {
                usec: None,
                message: "EXT4-fs error; whatever"
            }
        );
        assert_eq!(parse_record("").message, "");
    }

    /// `(line, kind, device)`; kind `""` means not hardware-related.
    const CASES: &[(&str, &str, &str)] = &[
        ("mce: [Hardware Error]: Machine check events logged", "mce", ""),
        (
            "mce: [Hardware Error]: CPU 2: Machine Check: 0 Bank 7: cc00008000010090",
            "mce",
            "",
        ),
        (
            "EDAC MC0: 1 CE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x4a12 offset:0x0 grain:32 syndrome:0x0)",
            "edac_ce",
            "mc0",
        ),
        (
            "EDAC MC1: 1 UE memory read error on CPU_SrcID#1_MC#1_Chan#0_DIMM#0 (channel:0 slot:0)",
            "edac_ue",
            "mc1",
        ),
        ("EDAC sbridge MC0: HANDLING MCE MEMORY ERROR", "", ""),
        (
            "pcieport 0000:00:1c.0: AER: Corrected error received: 0000:3b:00.0",
            "pcie_aer",
            "0000:3b:00.0",
        ),
        (
            "ixgbe 0000:3b:00.1: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)",
            "pcie_aer",
            "0000:3b:00.1",
        ),
        ("nvme nvme0: I/O 123 QID 4 timeout, aborting", "nvme_timeout", "nvme0"),
        (
            "nvme nvme1: I/O 9 QID 0 timeout, reset controller",
            "nvme_timeout",
            "nvme1",
        ),
        ("nvme nvme0: resetting controller", "nvme_reset", "nvme0"),
        ("ata3.00: failed command: READ FPDMA QUEUED", "ata_error", "ata3"),
        (
            "ata1.00: exception Emask 0x0 SAct 0x0 SErr 0x0 action 0x0",
            "ata_error",
            "ata1",
        ),
        ("ata3.00: error: { UNC }", "medium_error", "ata3"),
        (
            "sd 0:0:0:0: [sda] tag#0 Sense Key : Medium Error [current]",
            "medium_error",
            "sda",
        ),
        (
            "sd 0:0:0:0: [sda] tag#0 Add. Sense: Unrecovered read error - auto reallocate failed",
            "medium_error",
            "sda",
        ),
        (
            "blk_update_request: critical medium error, dev sdb, sector 123456 op 0x0:(READ)",
            "medium_error",
            "sdb",
        ),
        (
            "blk_update_request: I/O error, dev sdc, sector 2048 op 0x1:(WRITE) flags 0x800",
            "io_error",
            "sdc",
        ),
        (
            "sd 2:0:0:0: [sdb] tag#3 FAILED Result: hostbyte=DID_BAD_TARGET driverbyte=DRIVER_OK",
            "io_error",
            "sdb",
        ),
        (
            "Buffer I/O error on dev sda1, logical block 0, async page read",
            "buffer_io_error",
            "sda1",
        ),
        (
            "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
            "fs_error",
            "sda1",
        ),
        ("EXT4-fs (dm-0): Remounting filesystem read-only", "fs_readonly", "dm-0"),
        (
            "XFS (sdb1): metadata I/O error in \"xfs_imap_to_bp+0x5c/0xa0\" at daddr 0x40 len 32 error 5",
            "fs_error",
            "sdb1",
        ),
        (
            "XFS (sdb1): Corruption of in-memory data detected.  Shutting down filesystem",
            "fs_error",
            "sdb1",
        ),
        (
            "CPU3: Core temperature above threshold, cpu clock throttled (total events = 42)",
            "thermal_throttle",
            "cpu3",
        ),
        (
            "mce: CPU0: Package temperature above threshold, cpu clock throttled (total events = 7)",
            "thermal_throttle",
            "",
        ),
        ("mce: CPU0: Core temperature/speed normal", "", ""),
        (
            "INFO: task kworker/u16:2:1234 blocked for more than 120 seconds.",
            "hung_task",
            "",
        ),
        (
            "watchdog: BUG: soft lockup - CPU#5 stuck for 23s! [java:4242]",
            "soft_lockup",
            "cpu5",
        ),
        (
            "Out of memory: Killed process 4242 (java) total-vm:9000000kB, anon-rss:8000000kB",
            "oom_kill",
            "",
        ),
        (
            "Memory cgroup out of memory: Killed process 77 (python3) total-vm:1kB",
            "oom_kill",
            "",
        ),
        ("EXT4-fs (sda1): mounted filesystem with ordered data mode", "", ""),
        ("e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex", "", ""),
        ("usb 1-1: new high-speed USB device number 2 using xhci_hcd", "", ""),
    ];

    #[test]
    fn pattern_pack() {
        let c = Classifier::default();
        for (line, kind, device) in CASES {
            let got = c.classify(line);
            let want = (!kind.is_empty()).then(|| (*kind, device.to_string()));
            assert_eq!(got, want, "{line}");
        }
    }
}
