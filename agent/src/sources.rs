//! The registry of sources: one explicit list, one file per source under
//! `sources/`. `--only` and the config name sources by the names here.

use crate::source::{Source, SourceOptions};

mod cpu;
mod filesystem;
mod hwmon;
mod loadavg;
mod meminfo;
mod netdev;
mod power_supply;
mod rapl;
mod time;

/// One registered source: its name and how to build it.
#[derive(Clone, Copy)]
pub struct SourceEntry {
    /// Name used by `--only` and in `hostpulse_source_*{source}`.
    pub name: &'static str,
    /// What the source reads, for `--help` and the README.
    pub about: &'static str,
    /// Whether it runs when neither `--only` nor the config names it (off
    /// for sources that run external tools, such as IPMI).
    pub default_on: bool,
    /// Builds a fresh instance.
    pub make: fn(&SourceOptions) -> Box<dyn Source>,
}

/// Every source the agent knows, in sampling order.
pub const REGISTRY: &[SourceEntry] = &[
    SourceEntry {
        name: "cpu",
        about: "CPU time per mode, boot time, context switches, interrupts, forks and runnable/blocked processes from /proc/stat.",
        default_on: true,
        make: |_| Box::new(cpu::CpuSource),
    },
    SourceEntry {
        name: "meminfo",
        about: "Memory and swap usage, hugepages and hardware-corrupted memory from /proc/meminfo.",
        default_on: true,
        make: |_| Box::new(meminfo::MeminfoSource),
    },
    SourceEntry {
        name: "loadavg",
        about: "1, 5 and 15 minute load averages from /proc/loadavg.",
        default_on: true,
        make: |_| Box::new(loadavg::LoadavgSource),
    },
    SourceEntry {
        name: "time",
        about: "The host's wall clock, to spot clock skew against the collector.",
        default_on: true,
        make: |_| Box::new(time::TimeSource),
    },
    SourceEntry {
        name: "filesystem",
        about: "Size, free space and inodes of every real mounted filesystem (statvfs, with a timeout for hung mounts).",
        default_on: true,
        make: |_| Box::new(filesystem::FilesystemSource::default()),
    },
    SourceEntry {
        name: "netdev",
        about: "Per-interface byte, packet, error and drop counters from /proc/net/dev.",
        default_on: true,
        make: |_| Box::new(netdev::NetdevSource),
    },
    SourceEntry {
        name: "hwmon",
        about: "Temperatures, fans, voltages, currents and power of hardware monitoring chips in /sys/class/hwmon.",
        default_on: true,
        make: |_| Box::new(hwmon::HwmonSource),
    },
    SourceEntry {
        name: "rapl",
        about: "CPU package and core energy counters (Intel/AMD RAPL) from /sys/class/powercap.",
        default_on: true,
        make: |_| Box::new(rapl::RaplSource),
    },
    SourceEntry {
        name: "power_supply",
        about: "Mains adapters and batteries (online, capacity, energy, voltage, status) from /sys/class/power_supply.",
        default_on: true,
        make: |_| Box::new(power_supply::PowerSupplySource),
    },
];

/// Looks a source up by name.
pub fn find(name: &str) -> Option<&'static SourceEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}
