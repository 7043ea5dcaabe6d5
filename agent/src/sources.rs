//! The registry of sources: one explicit list, one file per source under
//! `sources/`. `--only` and the config name sources by the names here.

use crate::source::{Source, SourceOptions};

mod arp;
mod command;
mod conntrack;
mod cpu;
mod cpufreq;
mod diskstats;
mod edac;
mod entropy;
mod filefd;
pub(crate) mod files;
mod filesystem;
mod hwmon;
mod interrupts;
mod inventory;
mod ipmi;
mod kmsg;
mod loadavg;
mod mdraid;
mod meminfo;
mod netclass;
mod netdev;
mod netstat;
mod nvme;
mod os_release;
// Every source parser by name, for the fuzz targets and their corpus replay.
pub mod parsers;
mod power_supply;
mod pressure;
mod process;
mod processes;
mod rapl;
mod schedstat;
pub mod smart;
mod sockstat;
mod softnet;
mod systemd;
mod thermal_throttle;
mod thermal_zone;
mod time;
mod timex;
mod uname;
mod vmstat;

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
        make: |_| Box::new(cpu::CpuSource::default()),
    },
    SourceEntry {
        name: "meminfo",
        about: "Memory and swap usage, hugepages and hardware-corrupted memory from /proc/meminfo.",
        default_on: true,
        make: |_| Box::new(meminfo::MeminfoSource::default()),
    },
    SourceEntry {
        name: "loadavg",
        about: "1, 5 and 15 minute load averages from /proc/loadavg.",
        default_on: true,
        make: |_| Box::new(loadavg::LoadavgSource::default()),
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
        make: |_| Box::new(netdev::NetdevSource::default()),
    },
    SourceEntry {
        name: "hwmon",
        about: "Temperatures, fans, voltages, currents and power of hardware monitoring chips in /sys/class/hwmon.",
        default_on: true,
        make: |_| Box::new(hwmon::HwmonSource::default()),
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
        make: |_| Box::new(power_supply::PowerSupplySource::default()),
    },
    SourceEntry {
        name: "thermal_zone",
        about: "Thermal zone temperatures and cooling device (fan, throttle) states from /sys/class/thermal.",
        default_on: true,
        make: |_| Box::new(thermal_zone::ThermalZoneSource::default()),
    },
    SourceEntry {
        name: "thermal_throttle",
        about: "How often each CPU core and package was throttled for heat, from thermal_throttle counters.",
        default_on: true,
        make: |_| Box::new(thermal_throttle::ThermalThrottleSource::default()),
    },
    SourceEntry {
        name: "cpufreq",
        about: "Per-CPU current scaled frequency, limits and governor from cpufreq (never the slow cpuinfo_cur_freq).",
        default_on: true,
        make: |_| Box::new(cpufreq::CpufreqSource::default()),
    },
    SourceEntry {
        name: "edac",
        about: "ECC memory error counters per controller, csrow, channel and DIMM from the EDAC subsystem.",
        default_on: true,
        make: |_| Box::new(edac::EdacSource::default()),
    },
    SourceEntry {
        name: "pressure",
        about: "CPU, I/O, memory and IRQ pressure stall totals from /proc/pressure.",
        default_on: true,
        make: |_| Box::new(pressure::PressureSource::default()),
    },
    SourceEntry {
        name: "mdraid",
        about: "Software RAID state, members, degraded disks and sync progress from /proc/mdstat and /sys/block/md*/md.",
        default_on: true,
        make: |_| Box::new(mdraid::MdraidSource::default()),
    },
    SourceEntry {
        name: "nvme",
        about: "NVMe controller state, model, serial, firmware and namespace sizes from /sys/class/nvme.",
        default_on: true,
        make: |_| Box::new(nvme::NvmeSource::default()),
    },
    SourceEntry {
        name: "netclass",
        about: "Network link state (carrier, flaps, speed, duplex, MTU) and the NIC's PCIe AER error counters from /sys/class/net.",
        default_on: true,
        make: |_| Box::new(netclass::NetclassSource::default()),
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
    SourceEntry {
        name: "vmstat",
        about: "Paging, swapping, page faults and OOM kills from /proc/vmstat (node_exporter's default fields).",
        default_on: true,
        make: |_| Box::new(vmstat::VmstatSource::default()),
    },
    SourceEntry {
        name: "netstat",
        about: "TCP/UDP/IP protocol counters (retransmits, listen drops, buffer errors) from /proc/net/{netstat,snmp,snmp6}.",
        default_on: true,
        make: |_| Box::new(netstat::NetstatSource::default()),
    },
    SourceEntry {
        name: "sockstat",
        about: "Sockets in use and socket buffer memory per protocol from /proc/net/sockstat{,6}.",
        default_on: true,
        make: |_| Box::new(sockstat::SockstatSource::default()),
    },
    SourceEntry {
        name: "softnet",
        about: "Per-CPU packets processed, dropped and squeezed in the receive path from /proc/net/softnet_stat.",
        default_on: true,
        make: |_| Box::new(softnet::SoftnetSource::default()),
    },
    SourceEntry {
        name: "filefd",
        about: "Allocated and maximum file handles from /proc/sys/fs/file-nr.",
        default_on: true,
        make: |_| Box::new(filefd::FilefdSource::default()),
    },
    SourceEntry {
        name: "entropy",
        about: "Available entropy and pool size from /proc/sys/kernel/random.",
        default_on: true,
        make: |_| Box::new(entropy::EntropySource::default()),
    },
    SourceEntry {
        name: "conntrack",
        about: "Netfilter connection tracking table use, limit and per-CPU statistics.",
        default_on: true,
        make: |_| Box::new(conntrack::ConntrackSource::default()),
    },
    SourceEntry {
        name: "timex",
        about: "Kernel clock discipline (offset, frequency, errors, sync status, PPS) from a read-only adjtimex(2), and the clock sources in /sys/devices/system/clocksource.",
        default_on: true,
        make: |_| Box::new(timex::TimexSource::default()),
    },
    SourceEntry {
        name: "uname",
        about: "Kernel name, release, version, machine and host name as node_uname_info (read every 10 minutes).",
        default_on: true,
        make: |_| Box::new(uname::UnameSource::default()),
    },
    SourceEntry {
        name: "os_release",
        about: "Operating system name and version from os-release as node_os_info/node_os_version (read every 10 minutes).",
        default_on: true,
        make: |_| Box::new(os_release::OsReleaseSource::default()),
    },
    SourceEntry {
        name: "schedstat",
        about: "Per-CPU time running and waiting to run, and timeslices, from /proc/schedstat.",
        default_on: true,
        make: |_| Box::new(schedstat::SchedstatSource::default()),
    },
    SourceEntry {
        name: "inventory",
        about: "Static facts as *_info series: DMI board and BIOS, CPU topology, disks, NICs and DIMMs (read every 10 minutes).",
        default_on: true,
        make: |_| Box::new(inventory::InventorySource::default()),
    },
    SourceEntry {
        name: "interrupts",
        about: "Per-CPU interrupt counts from /proc/interrupts (off by default, as in node_exporter: many series).",
        default_on: false,
        make: |_| Box::new(interrupts::InterruptsSource::default()),
    },
    SourceEntry {
        name: "processes",
        about: "Process and thread counts, states and limits (off by default: reads every /proc/<pid>/stat each cycle).",
        default_on: false,
        make: |_| Box::new(processes::ProcessesSource),
    },
    SourceEntry {
        name: "arp",
        about: "ARP (neighbour) table entries per interface from /proc/net/arp.",
        default_on: true,
        make: |_| Box::new(arp::ArpSource::default()),
    },
    SourceEntry {
        name: "process",
        about: "The agent's own CPU time, memory, open descriptors and start time as process_* series.",
        default_on: true,
        make: |_| Box::new(process::ProcessSource::default()),
    },
    SourceEntry {
        name: "systemd",
        about: "systemd unit states and socket connection counters from systemctl every minute (nothing without systemd).",
        default_on: true,
        make: |opts| Box::new(systemd::SystemdSource::new(opts)),
    },
];

/// Looks a source up by name.
pub fn find(name: &str) -> Option<&'static SourceEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}
