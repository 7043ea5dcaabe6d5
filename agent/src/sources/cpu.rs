//! The `cpu` source: `/proc/stat`, read once per cycle, gives node_exporter's
//! `cpu` and `stat` collector families — seconds per CPU and mode
//! (`node_cpu_seconds_total`, `node_cpu_guest_seconds_total`), boot time,
//! context switches, interrupts, forks and runnable/blocked process counts.
//! [`parse_stat`] is the pure parser; [`CpuSource`] only reads the file.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Clock ticks per second the kernel uses in `/proc/stat` (`USER_HZ`). It is
/// 100 on every Linux architecture node_exporter supports, and node_exporter
/// hard-codes it too.
const USER_HZ: f64 = 100.0;

/// Modes of `node_cpu_seconds_total`, in `/proc/stat` column order.
const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

/// One `cpuN` line, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTimes {
    /// The CPU number (`N` of `cpuN`).
    pub cpu: u32,
    /// Seconds in each of [`MODES`], same order; missing columns are 0.
    pub modes: [f64; 8],
    /// Seconds running a guest (`guest`), already included in `user`.
    pub guest: f64,
    /// Seconds running a niced guest (`guest_nice`), included in `nice`.
    pub guest_nice: f64,
}

/// Everything the source uses from `/proc/stat`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    /// Per-CPU times (the aggregate `cpu` line is not kept).
    pub cpus: Vec<CpuTimes>,
    /// `btime`: boot time in seconds since the epoch.
    pub boot_time: Option<f64>,
    /// `ctxt`: context switches since boot.
    pub context_switches: Option<f64>,
    /// First number of `intr`: interrupts serviced since boot.
    pub interrupts: Option<f64>,
    /// `processes`: forks since boot.
    pub forks: Option<f64>,
    /// `procs_running`.
    pub procs_running: Option<f64>,
    /// `procs_blocked`.
    pub procs_blocked: Option<f64>,
}

/// Parses the text of `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let mut stat = Stat::default();
    for (lineno, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let first_number = |mut fields: std::str::SplitWhitespace<'_>| -> Result<f64, String> {
            let raw = fields
                .next()
                .ok_or_else(|| format!("line {}: {key} has no value", lineno + 1))?;
            raw.parse::<f64>()
                .map_err(|_| format!("line {}: {key} value {raw:?} is not a number", lineno + 1))
        };
        match key {
            "btime" => stat.boot_time = Some(first_number(fields)?),
            "ctxt" => stat.context_switches = Some(first_number(fields)?),
            "intr" => stat.interrupts = Some(first_number(fields)?),
            "processes" => stat.forks = Some(first_number(fields)?),
            "procs_running" => stat.procs_running = Some(first_number(fields)?),
            "procs_blocked" => stat.procs_blocked = Some(first_number(fields)?),
            _ => {
                let Some(number) = key.strip_prefix("cpu").filter(|n| !n.is_empty()) else {
                    continue;
                };
                let cpu = number
                    .parse::<u32>()
                    .map_err(|_| format!("line {}: bad CPU name {key:?}", lineno + 1))?;
                let mut ticks = [0.0f64; 10];
                for (i, raw) in fields.take(10).enumerate() {
                    ticks[i] = raw
                        .parse::<f64>()
                        .map_err(|_| format!("line {}: {key} column {} is {raw:?}", lineno + 1, i + 1))?;
                }
                let mut modes = [0.0; 8];
                for (mode, tick) in modes.iter_mut().zip(ticks) {
                    *mode = tick / USER_HZ;
                }
                stat.cpus.push(CpuTimes {
                    cpu,
                    modes,
                    guest: ticks[8] / USER_HZ,
                    guest_nice: ticks[9] / USER_HZ,
                });
            }
        }
    }
    Ok(stat)
}

/// Reads `/proc/stat`.
#[derive(Debug, Default)]
pub struct CpuSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for CpuSource {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("stat");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let stat = parse_stat(text).map_err(|m| SourceError::parse(&path, m))?;
        emit(&stat, out);
        Ok(())
    }
}

/// Records `stat` under node_exporter's names.
fn emit(stat: &Stat, out: &mut Emitter) {
    for cpu in &stat.cpus {
        let id = cpu.cpu.to_string();
        for (mode, seconds) in MODES.iter().zip(cpu.modes) {
            out.counter(
                "node_cpu_seconds_total",
                "Seconds the CPUs spent in each mode.",
                &[("cpu", &id), ("mode", mode)],
                seconds,
            );
        }
        for (mode, seconds) in [("user", cpu.guest), ("nice", cpu.guest_nice)] {
            out.counter(
                "node_cpu_guest_seconds_total",
                "Seconds the CPUs spent in guests (VMs) for each mode.",
                &[("cpu", &id), ("mode", mode)],
                seconds,
            );
        }
    }
    let singles: [(&str, &str, bool, Option<f64>); 6] = [
        (
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            false,
            stat.boot_time,
        ),
        (
            "node_context_switches_total",
            "Total number of context switches.",
            true,
            stat.context_switches,
        ),
        (
            "node_intr_total",
            "Total number of interrupts serviced.",
            true,
            stat.interrupts,
        ),
        ("node_forks_total", "Total number of forks.", true, stat.forks),
        (
            "node_procs_running",
            "Number of processes in runnable state.",
            false,
            stat.procs_running,
        ),
        (
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            false,
            stat.procs_blocked,
        ),
    ];
    for (name, help, is_counter, value) in singles {
        let Some(value) = value else { continue };
        if is_counter {
            out.counter(name, help, &[], value);
        } else {
            out.gauge(name, help, &[], value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  301854 612 111922 8979004 3552 2 3944 0 44 36
cpu0 44490 19 21045 1087069 220 1 3410 0 2 1
cpu1 47869 23 16474 1110787 591 0 46 0 3 2
intr 8885917 17 0 0
ctxt 38014093
btime 1418183276
processes 26442
procs_running 2
procs_blocked 0
softirq 5057579 250191 1481983
";

    #[test]
    fn parses_per_cpu_times_in_seconds() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.cpus.len(), 2);
        assert_eq!(stat.cpus[0].cpu, 0);
        assert_eq!(stat.cpus[0].modes[0], 444.9);
        assert_eq!(stat.cpus[0].modes[3], 10870.69);
        assert_eq!(stat.cpus[1].guest, 0.03);
        assert_eq!(stat.cpus[1].guest_nice, 0.02);
    }

    #[test]
    fn parses_counters() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.boot_time, Some(1418183276.0));
        assert_eq!(stat.context_switches, Some(38014093.0));
        assert_eq!(stat.interrupts, Some(8885917.0));
        assert_eq!(stat.forks, Some(26442.0));
        assert_eq!(stat.procs_running, Some(2.0));
        assert_eq!(stat.procs_blocked, Some(0.0));
    }

    #[test]
    fn old_kernels_with_fewer_columns_are_accepted() {
        let stat = parse_stat("cpu0 1 2 3 4\n").unwrap();
        assert_eq!(stat.cpus[0].modes, [0.01, 0.02, 0.03, 0.04, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_stat("cpu0 1 x 3\n").is_err());
        assert!(parse_stat("cpuX 1 2 3\n").is_err());
        assert!(parse_stat("btime\n").is_err());
        assert!(parse_stat("\n\n").unwrap().cpus.is_empty());
    }

    #[test]
    fn emits_node_exporter_names() {
        let mut out = Emitter::new();
        emit(&parse_stat(STAT).unwrap(), &mut out);
        let find = |name: &str, labels: &[(&str, &str)]| {
            out.samples()
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|s| s.value)
        };
        assert_eq!(
            find("node_cpu_seconds_total", &[("cpu", "1"), ("mode", "user")]),
            Some(478.69)
        );
        assert_eq!(
            find("node_cpu_guest_seconds_total", &[("cpu", "0"), ("mode", "nice")]),
            Some(0.01)
        );
        assert_eq!(find("node_boot_time_seconds", &[]), Some(1418183276.0));
        assert_eq!(out.samples().len(), 2 * 10 + 6);
    }
}
