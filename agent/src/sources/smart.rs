//! SMART health of ATA, NVMe and SCSI drives, from `smartctl --json`.
//!
//! Two readers feed the same pure parser (`smart/report.rs`) and produce the
//! same series:
//! - **directory mode** (`--smartctl-json-dir`): a root-owned timer
//!   (`deploy/hostpulse-smartctl-dump`) writes one JSON file per drive; the
//!   unprivileged agent reads them, re-parsing a file only when its size or
//!   modification time changed;
//! - **run mode**: the agent runs `smartctl --scan-open` and then
//!   `smartctl --json --all --nocheck=standby` per drive itself (it needs
//!   CAP_SYS_RAWIO/CAP_SYS_ADMIN). SMART commands are slow and wake disks,
//!   so they run on a background thread every `smart_interval`, each with
//!   the command timeout, and every cycle emits the last results. The
//!   sampling path never waits on smartctl (except, briefly, for the very
//!   first scan, so a one-shot `hostpulse-agent sample` shows the drives).
//!
//! A drive smartctl cannot read is a `hostpulse_smart_device_state` series
//! with `state="unreadable"` and the reason, not a missing series. A missing
//! smartctl binary is reported once and emits nothing.

mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

pub use report::{DeviceState, SmartParseError, SmartReport, leading_number, parse_smartctl_json};

use super::command::{CommandError, run_with_timeout};
use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, SourceOptions};

/// How long the first collection waits for the first smartctl scan before
/// returning with no drives (later collections never wait).
const FIRST_SCAN_WAIT: Duration = Duration::from_secs(3);

/// The `smart` source.
pub struct SmartSource {
    mode: Mode,
}

enum Mode {
    Dir(DirReader),
    Run(Runner),
}

impl SmartSource {
    /// Builds the source from its options: directory mode when a JSON
    /// directory is configured, otherwise run mode.
    pub fn new(options: &SourceOptions) -> Self {
        let mode = match &options.smartctl_json_dir {
            Some(dir) => Mode::Dir(DirReader {
                dir: dir.clone(),
                cache: BTreeMap::new(),
                warned_missing: false,
            }),
            None => Mode::Run(Runner::new(
                options.smartctl.clone(),
                options.command_timeout,
                options.smart_interval,
            )),
        };
        SmartSource { mode }
    }
}

impl Source for SmartSource {
    fn name(&self) -> &'static str {
        "smart"
    }

    /// Run mode waits for the first smartctl scan; directory mode only reads
    /// the helper's local files.
    fn may_block(&self) -> bool {
        matches!(self.mode, Mode::Run(_))
    }

    fn collect(&mut self, _paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        match &mut self.mode {
            Mode::Dir(reader) => reader.collect(out),
            Mode::Run(runner) => {
                runner.collect(out);
                Ok(())
            }
        }
    }
}

fn emit_age(device: &str, age: Duration, out: &mut Emitter) {
    out.gauge(
        "hostpulse_smart_report_age_seconds",
        "Age of the SMART data shown for the drive (it is refreshed on a slow interval).",
        &[("device", device)],
        age.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------
// Directory mode.

struct DirReader {
    dir: PathBuf,
    cache: BTreeMap<PathBuf, CachedFile>,
    warned_missing: bool,
}

struct CachedFile {
    modified: SystemTime,
    len: u64,
    parsed: Result<SmartReport, SmartParseError>,
}

impl DirReader {
    fn collect(&mut self, out: &mut Emitter) -> Result<(), SourceError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The helper has not run yet (or is not installed): no data,
                // which is not a failure of this source.
                if !self.warned_missing {
                    self.warned_missing = true;
                    tracing::warn!(dir = %self.dir.display(), "smartctl JSON directory does not exist; no SMART data until the helper writes it");
                }
                self.cache.clear();
                return Ok(());
            }
            Err(e) => return Err(SourceError::io(&self.dir, e)),
        };
        let mut seen = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // The helper writes `.name.json.tmp` and renames; skip partial files.
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let fresh = self
                .cache
                .get(&path)
                .is_some_and(|c| c.modified == modified && c.len == meta.len());
            if !fresh {
                let parsed = match std::fs::read_to_string(&path) {
                    Ok(text) => parse_smartctl_json(&text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(SourceError::io(&path, e)),
                };
                self.cache.insert(
                    path.clone(),
                    CachedFile {
                        modified,
                        len: meta.len(),
                        parsed,
                    },
                );
            }
            seen.push(path);
        }
        self.cache.retain(|path, _| seen.contains(path));
        let now = SystemTime::now();
        let mut first_error = None;
        for (path, cached) in &self.cache {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let age = now.duration_since(cached.modified).unwrap_or_default();
            match &cached.parsed {
                Ok(report) => {
                    report::emit_report(report, &stem, out);
                    let device = if report.device.is_empty() {
                        &stem
                    } else {
                        &report.device
                    };
                    emit_age(device, age, out);
                }
                Err(e) => {
                    let reason = format!("unusable smartctl output: {e}");
                    report::emit_unreadable(&stem, DeviceState::Unreadable, &reason, out);
                    emit_age(&stem, age, out);
                    if first_error.is_none() {
                        first_error = Some(SourceError::parse(path, e.to_string()));
                    }
                }
            }
        }
        // Every other file's series are already out; the bad file fails the
        // source so `hostpulse_source_success{source="smart"}` shows it.
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Run mode.

/// A drive found by `smartctl --scan-open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedDevice {
    /// Device path (`/dev/sda`, `/dev/bus/0`).
    pub name: String,
    /// smartctl device type to pass with `-d` (`sat`, `nvme`, `megaraid,0`).
    pub kind: String,
}

/// Parses `smartctl --scan-open --json`. Entries without a name are skipped;
/// an entry without a type gets `auto`.
pub fn parse_scan(text: &str) -> Result<Vec<ScannedDevice>, SmartParseError> {
    let root: Value = serde_json::from_str(text).map_err(|e| SmartParseError::Json(e.to_string()))?;
    let devices = root
        .get("devices")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|d| {
                    let name = d.get("name").and_then(Value::as_str)?.trim();
                    if name.is_empty() {
                        return None;
                    }
                    let kind = d.get("type").and_then(Value::as_str).unwrap_or("auto").trim();
                    Some(ScannedDevice {
                        name: name.to_string(),
                        kind: if kind.is_empty() { "auto" } else { kind }.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(devices)
}

/// The result of reading one scanned drive.
#[derive(Debug)]
enum DeviceResult {
    Report(Box<SmartReport>),
    Unreadable { device: String, reason: String },
}

#[derive(Default)]
struct RunState {
    /// A refresh thread is running.
    busy: bool,
    /// At least one refresh finished.
    done_once: bool,
    /// smartctl is not installed; warned about once.
    missing_binary: bool,
    results: Vec<DeviceResult>,
    refreshed_at: Option<Instant>,
}

struct Runner {
    smartctl: PathBuf,
    timeout: Duration,
    interval: Duration,
    state: Arc<(Mutex<RunState>, Condvar)>,
    last_start: Option<Instant>,
    warned_missing: bool,
}

fn lock(m: &Mutex<RunState>) -> MutexGuard<'_, RunState> {
    // A panic on the refresh thread leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Runner {
    fn new(smartctl: PathBuf, timeout: Duration, interval: Duration) -> Self {
        Runner {
            smartctl,
            timeout,
            interval,
            state: Arc::new((Mutex::new(RunState::default()), Condvar::new())),
            last_start: None,
            warned_missing: false,
        }
    }

    fn collect(&mut self, out: &mut Emitter) {
        let due = self.last_start.is_none_or(|t| t.elapsed() >= self.interval);
        let (mutex, cond) = &*self.state;
        let mut state = lock(mutex);
        if due && !state.busy {
            state.busy = true;
            self.last_start = Some(Instant::now());
            let shared = self.state.clone();
            let smartctl = self.smartctl.clone();
            let timeout = self.timeout;
            let spawned = std::thread::Builder::new()
                .name("hostpulse-smart".into())
                .spawn(move || refresh(&smartctl, timeout, &shared));
            if let Err(e) = spawned {
                state.busy = false;
                tracing::warn!(error = %e, "could not start the SMART refresh thread");
            }
        }
        if !state.done_once && state.busy {
            let deadline = Instant::now() + FIRST_SCAN_WAIT;
            while state.busy {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = cond
                    .wait_timeout(state, left)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
        }
        if state.missing_binary {
            if !self.warned_missing {
                self.warned_missing = true;
                tracing::warn!(smartctl = %self.smartctl.display(), "smartctl not found; no SMART data (install smartmontools or use --smartctl-json-dir)");
            }
            return;
        }
        let age = state.refreshed_at.map(|t| t.elapsed()).unwrap_or_default();
        for result in &state.results {
            match result {
                DeviceResult::Report(report) => {
                    report::emit_report(report, "", out);
                    emit_age(&report.device, age, out);
                }
                DeviceResult::Unreadable { device, reason } => {
                    report::emit_unreadable(device, DeviceState::Unreadable, reason, out);
                    emit_age(device, age, out);
                }
            }
        }
    }
}

/// One refresh: scan, then read every drive, then publish all results at
/// once. Runs on its own thread.
fn refresh(smartctl: &Path, timeout: Duration, shared: &(Mutex<RunState>, Condvar)) {
    let outcome = scan_and_read(smartctl, timeout);
    let (mutex, cond) = shared;
    let mut state = lock(mutex);
    match outcome {
        Ok(results) => {
            state.missing_binary = false;
            state.results = results;
        }
        Err(CommandError::NotFound { .. }) => {
            state.missing_binary = true;
            state.results.clear();
        }
        Err(e) => {
            // The scan itself failed: keep the previous drive list rather
            // than making every drive vanish.
            tracing::warn!(error = %e, "smartctl --scan-open failed");
        }
    }
    state.busy = false;
    state.done_once = true;
    state.refreshed_at = Some(Instant::now());
    cond.notify_all();
}

fn scan_and_read(smartctl: &Path, timeout: Duration) -> Result<Vec<DeviceResult>, CommandError> {
    let scan = run_with_timeout(smartctl, &["--scan-open", "--json"], timeout)?;
    let devices = match parse_scan(&String::from_utf8_lossy(&scan.stdout)) {
        Ok(devices) => devices,
        Err(e) => {
            tracing::warn!(error = %e, "smartctl --scan-open printed no usable JSON");
            Vec::new()
        }
    };
    let mut results = Vec::with_capacity(devices.len());
    for dev in devices {
        let short = dev.name.strip_prefix("/dev/").unwrap_or(&dev.name).to_string();
        let args = [
            "--json",
            "--all",
            "--nocheck=standby",
            dev.name.as_str(),
            "-d",
            dev.kind.as_str(),
        ];
        let result = match run_with_timeout(smartctl, &args, timeout) {
            Ok(output) => match parse_smartctl_json(&String::from_utf8_lossy(&output.stdout)) {
                Ok(mut report) => {
                    if report.device.is_empty() {
                        report.device = short;
                    }
                    DeviceResult::Report(Box::new(report))
                }
                Err(e) => DeviceResult::Unreadable {
                    device: short,
                    reason: format!("unusable smartctl output: {e}"),
                },
            },
            Err(CommandError::Timeout { .. }) => DeviceResult::Unreadable {
                device: short,
                reason: "timeout".into(),
            },
            Err(e) => DeviceResult::Unreadable {
                device: short,
                reason: e.to_string(),
            },
        };
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scan_output() {
        let text = r#"{"json_format_version": [1, 0], "smartctl": {"version": [7, 3], "exit_status": 0},
          "devices": [
            {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"},
            {"name": "/dev/nvme0", "info_name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"},
            {"name": "/dev/bus/0", "info_name": "/dev/bus/0 [megaraid_disk_00]", "type": "megaraid,0", "protocol": "SCSI"},
            {"info_name": "nameless"},
            {"name": "/dev/sdz"}
          ]}"#;
        let devices = parse_scan(text).unwrap();
        let got: Vec<(&str, &str)> = devices.iter().map(|d| (d.name.as_str(), d.kind.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("/dev/sda", "sat"),
                ("/dev/nvme0", "nvme"),
                ("/dev/bus/0", "megaraid,0"),
                ("/dev/sdz", "auto")
            ]
        );
        assert_eq!(parse_scan(r#"{"smartctl": {}}"#).unwrap(), vec![]);
        assert!(parse_scan("not json").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_smartctl_emits_nothing_and_is_not_a_failure() {
        let options = SourceOptions {
            smartctl: PathBuf::from("/nonexistent/smartctl"),
            ..SourceOptions::default()
        };
        let mut source = SmartSource::new(&options);
        for _ in 0..2 {
            let mut out = Emitter::new();
            assert!(source.collect(&HostPaths::default(), &mut out).is_ok());
            assert!(out.samples().is_empty(), "{:?}", out.samples());
        }
    }

    /// A fake smartctl: a shell script answering the scan with two drives and
    /// the read of one of them with a report; the other read hangs past the
    /// timeout.
    #[cfg(unix)]
    #[test]
    fn run_mode_reads_scanned_drives_and_times_out_a_hung_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("smartctl");
        std::fs::write(
            &script,
            r#"#!/bin/sh
case "$1" in
  --scan-open) echo '{"devices":[{"name":"/dev/sda","type":"sat"},{"name":"/dev/sdb","type":"sat"}]}' ;;
  *) case "$4" in
       /dev/sda) echo '{"smartctl":{"exit_status":0},"device":{"name":"/dev/sda","type":"sat","protocol":"ATA"},"smart_status":{"passed":true}}' ;;
       *) exec sleep 30 ;;
     esac ;;
esac
"#,
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let options = SourceOptions {
            smartctl: script,
            command_timeout: Duration::from_millis(300),
            ..SourceOptions::default()
        };
        let mut source = SmartSource::new(&options);
        let mut out = Emitter::new();
        source.collect(&HostPaths::default(), &mut out).unwrap();
        let state = |device: &str| {
            out.samples()
                .iter()
                .find(|s| {
                    s.name == "hostpulse_smart_device_state"
                        && s.labels.iter().any(|(k, v)| k == "device" && v == device)
                })
                .map(|s| s.labels.clone())
        };
        let sda = state("sda").unwrap();
        assert!(sda.contains(&("state".into(), "ok".into())), "{sda:?}");
        let sdb = state("sdb").unwrap();
        assert!(sdb.contains(&("state".into(), "unreadable".into())), "{sdb:?}");
        assert!(sdb.contains(&("reason".into(), "timeout".into())), "{sdb:?}");
    }
}
