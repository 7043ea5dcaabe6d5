//! The registry of sources: one explicit list, one file per source under
//! `sources/`. `--only` and the config name sources by the names here.

use crate::source::{Source, SourceOptions};

mod command;
mod cpu;
mod cpufreq;
mod diskstats;
mod edac;
mod filesystem;
mod hwmon;
mod ipmi;
mod kmsg;
mod loadavg;
mod mdraid;
mod meminfo;
mod netclass;
mod netdev;
mod nvme;
mod power_supply;
mod pressure;
mod rapl;
pub mod smart;
mod thermal_throttle;
mod thermal_zone;
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
        make: |_| Box::new(rapl::RaplSource::default()),
    },
    SourceEntry {
        name: "power_supply",
        about: "Mains adapters and batteries (online, capacity, energy, voltage, status) from /sys/class/power_supply.",
        default_on: true,
        make: |_| Box::new(power_supply::PowerSupplySource),
    },
    SourceEntry {
        name: "thermal_zone",
        about: "Thermal zone temperatures and cooling device (fan, throttle) states from /sys/class/thermal.",
        default_on: true,
        make: |_| Box::new(thermal_zone::ThermalZoneSource),
    },
    SourceEntry {
        name: "thermal_throttle",
        about: "How often each CPU core and package was throttled for heat, from thermal_throttle counters.",
        default_on: true,
        make: |_| Box::new(thermal_throttle::ThermalThrottleSource),
    },
    SourceEntry {
        name: "cpufreq",
        about: "Per-CPU current scaled frequency, limits and governor from cpufreq (never the slow cpuinfo_cur_freq).",
        default_on: true,
        make: |_| Box::new(cpufreq::CpufreqSource),
    },
    SourceEntry {
        name: "edac",
        about: "ECC memory error counters per controller, csrow, channel and DIMM from the EDAC subsystem.",
        default_on: true,
        make: |_| Box::new(edac::EdacSource),
    },
    SourceEntry {
        name: "pressure",
        about: "CPU, I/O, memory and IRQ pressure stall totals from /proc/pressure.",
        default_on: true,
        make: |_| Box::new(pressure::PressureSource),
    },
    SourceEntry {
        name: "mdraid",
        about: "Software RAID state, members, degraded disks and sync progress from /proc/mdstat and /sys/block/md*/md.",
        default_on: true,
        make: |_| Box::new(mdraid::MdraidSource),
    },
    SourceEntry {
        name: "nvme",
        about: "NVMe controller state, model, serial, firmware and namespace sizes from /sys/class/nvme.",
        default_on: true,
        make: |_| Box::new(nvme::NvmeSource),
    },
    SourceEntry {
        name: "netclass",
        about: "Network link state (carrier, flaps, speed, duplex, MTU) and the NIC's PCIe AER error counters from /sys/class/net.",
        default_on: true,
        make: |_| Box::new(netclass::NetclassSource),
    },
    SourceEntry {
        name: "diskstats",
        about: "Per-disk I/O counters from /proc/diskstats, with model, serial, WWN and filesystem facts from udev.",
        default_on: true,
        make: |_| Box::new(diskstats::DiskstatsSource::default()),
    },
    SourceEntry {
        name: "kmsg",
        about: "Hardware errors in the kernel log (MCE, EDAC, AER, NVMe, ATA/SCSI, filesystem, thermal, lockups, OOM), followed from /dev/kmsg.",
        default_on: true,
        make: |opts: &SourceOptions| Box::new(kmsg::KmsgSource::new(opts.kmsg.clone())),
    },
    SourceEntry {
        name: "smart",
        about: "SMART health of ATA, NVMe and SCSI drives from smartctl --json (run by the agent, or files from --smartctl-json-dir).",
        default_on: true,
        make: |opts| Box::new(smart::SmartSource::new(opts)),
    },
    SourceEntry {
        name: "ipmi",
        about: "BMC sensors (ipmitool sdr elist) and DCMI power reading, with the command timeout.",
        default_on: false,
        make: |opts| Box::new(ipmi::IpmiSource::new(opts)),
    },
];

/// Looks a source up by name.
pub fn find(name: &str) -> Option<&'static SourceEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}
