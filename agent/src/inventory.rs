//! Static facts about the machine, read at start (and by the `inventory`
//! source every ten minutes), sent in the stream's `Hello` and exposed as
//! `*_info` series: the identity files (host name, machine id, boot id),
//! CPU model and topology, memory modules, disks, NICs, DMI board/BIOS
//! data and the kernel. The collector groups peers by them (same CPU model,
//! same drive model). Every fact is optional: a container or VM without DMI
//! simply leaves it empty, and nothing here is an error.
//!
//! What is read, all without root:
//! - CPU: `model name` from `/proc/cpuinfo`; sockets, cores and threads from
//!   `/sys/devices/system/cpu/cpu<N>/topology/{physical_package_id,core_id}`,
//!   else from the `physical id`/`core id` lines of `/proc/cpuinfo`.
//! - DIMMs: the SMBIOS type 17 tables in
//!   `/sys/firmware/dmi/entries/17-*/raw` (slot, size, type, speed,
//!   manufacturer, part number, serial). Those files are root-only on most
//!   kernels, so an unprivileged agent falls back to EDAC's
//!   `/sys/devices/system/edac/mc/mc*/{dimm,rank}*/{dimm_label,size,dimm_mem_type}`
//!   (slot, size and type only).
//! - Disks: every `/sys/block/<dev>` with a `device` link (so no partitions,
//!   md, dm, loop or zram): size, `queue/rotational`, `device/vendor`, and
//!   model/serial/firmware from the udev database (`b<major>:<minor>`,
//!   `ID_MODEL_ENC`, `ID_SERIAL_SHORT`, `ID_REVISION`), else from sysfs
//!   (`device/model`, `device/serial`, `device/firmware_rev`, `device/rev`).
//!   udev comes first because SCSI's sysfs model of a SATA drive is cut to
//!   16 characters.
//! - NICs: every `/sys/class/net/<if>` with a `device` link: the driver (the
//!   name `device/driver` links to), `address` and the negotiated `speed`;
//!   and the fastest link mode the NIC advertises, which sysfs does not
//!   have: it comes from ethtool netlink (`ETHTOOL_MSG_LINKMODES_GET`, no
//!   privilege, no ioctl, through the `ethtool` crate), asked only when
//!   sysfs is the running host's `/sys` (a fixture tree's NICs are not the
//!   kernel's) and given two seconds. A link negotiated below it (a 10G
//!   port at 1G) is a bad cable, transceiver or switch port.
//! - DMI: every `/sys/class/dmi/id` attribute node_exporter's `node_dmi_info`
//!   has (serials and the UUID are root-only and then left out, as
//!   node_exporter does).
//! - Kernel: `/proc/sys/kernel/{osrelease,version,arch}`.
//!
//! Parsers ([`parse_cpuinfo`], [`topology_counts`], [`parse_smbios_memory_device`],
//! [`parse_udev`], [`decode_udev_escapes`], [`valid_utf8_lossy`]) are pure.

use std::collections::BTreeSet;
use std::path::Path;

use crate::paths::HostPaths;
use crate::source::read_attr;

/// The machine's identity and static facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Host name from the kernel (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    /// `/etc/machine-id` under rootfs.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// First `model name` in /proc/cpuinfo.
    pub cpu_model: String,
    /// Number of `processor` entries in /proc/cpuinfo.
    pub cpu_count: u32,
    /// CPU sockets; 0 when unknown.
    pub cpu_sockets: u32,
    /// Physical cores; 0 when unknown.
    pub cpu_cores: u32,
    /// Hardware threads; 0 when unknown.
    pub cpu_threads: u32,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: String,
    /// `/proc/sys/kernel/version`.
    pub kernel_version: String,
    /// `/proc/sys/kernel/arch`, else the agent's build architecture.
    pub architecture: String,
    /// PRETTY_NAME from os-release under rootfs.
    pub os: String,
    /// DMI board vendor.
    pub board_vendor: String,
    /// DMI board name.
    pub board_name: String,
    /// DMI product name.
    pub product_name: String,
    /// DMI BIOS version.
    pub bios_version: String,
    /// DMI BIOS vendor.
    pub bios_vendor: String,
    /// DMI BIOS date.
    pub bios_date: String,
    /// DMI system vendor (`sys_vendor`).
    pub system_vendor: String,
    /// DMI product serial (root-only on most kernels).
    pub product_serial: String,
    /// Every readable DMI attribute as `(node_dmi_info label, value)`,
    /// sorted by label.
    pub dmi: Vec<(String, String)>,
    /// Installed memory modules.
    pub dimms: Vec<Dimm>,
    /// Physical disks, sorted by device name.
    pub disks: Vec<Disk>,
    /// Physical network interfaces, sorted by name.
    pub nics: Vec<Nic>,
}

/// One memory module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dimm {
    /// Slot name (`DIMM_A1`).
    pub locator: String,
    /// Bank or channel name, empty when unknown.
    pub bank_locator: String,
    /// Size in bytes; 0 when the firmware says unknown.
    pub size_bytes: u64,
    /// Memory type (`DDR4`).
    pub memory_type: String,
    /// Rated speed in MT/s; 0 when unknown.
    pub speed_mts: u32,
    /// Manufacturer.
    pub manufacturer: String,
    /// Part number.
    pub part_number: String,
    /// Serial number.
    pub serial: String,
    /// `smbios` or `edac`.
    pub source: &'static str,
}

/// One physical disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Block device name (`sda`).
    pub device: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
    /// Vendor (`ATA` for SATA drives behind libata).
    pub vendor: String,
    /// Whether the kernel says it spins.
    pub rotational: bool,
    /// Capacity in bytes.
    pub size_bytes: u64,
}

/// One physical network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// Interface name.
    pub device: String,
    /// Bound driver.
    pub driver: String,
    /// MAC address.
    pub address: String,
    /// Negotiated speed in Mbit/s; 0 when down or unknown.
    pub link_speed_mbps: u32,
    /// Fastest link mode the NIC advertises in Mbit/s; 0 when unknown
    /// (virtual NICs, drivers without link modes, no ethtool netlink).
    pub max_speed_mbps: u32,
}

/// `/sys/class/dmi/id` file → `node_dmi_info` label, in label order.
const DMI_FILES: [(&str, &str); 20] = [
    ("bios_date", "bios_date"),
    ("bios_release", "bios_release"),
    ("bios_vendor", "bios_vendor"),
    ("bios_version", "bios_version"),
    ("board_asset_tag", "board_asset_tag"),
    ("board_name", "board_name"),
    ("board_serial", "board_serial"),
    ("board_vendor", "board_vendor"),
    ("board_version", "board_version"),
    ("chassis_asset_tag", "chassis_asset_tag"),
    ("chassis_serial", "chassis_serial"),
    ("chassis_vendor", "chassis_vendor"),
    ("chassis_version", "chassis_version"),
    ("product_family", "product_family"),
    ("product_name", "product_name"),
    ("product_serial", "product_serial"),
    ("product_sku", "product_sku"),
    ("product_uuid", "product_uuid"),
    ("product_version", "product_version"),
    ("sys_vendor", "system_vendor"),
];

impl Inventory {
    /// Reads every fact it can find under `paths`.
    pub fn read(paths: &HostPaths) -> Inventory {
        let attr = |p: std::path::PathBuf| read_attr(&p).unwrap_or_default();
        let cpuinfo = std::fs::read_to_string(paths.proc("cpuinfo")).unwrap_or_default();
        let cpu = parse_cpuinfo(&cpuinfo);
        let sysfs_topology = read_sysfs_topology(paths);
        let (cpu_sockets, cpu_cores, cpu_threads) = if sysfs_topology.is_empty() {
            topology_counts(&cpu.topology)
        } else {
            topology_counts(&sysfs_topology)
        };
        let meminfo = std::fs::read_to_string(paths.proc("meminfo")).unwrap_or_default();
        let os_release = std::fs::read_to_string(paths.root("/etc/os-release"))
            .or_else(|_| std::fs::read_to_string(paths.root("/usr/lib/os-release")))
            .unwrap_or_default();
        let dmi = read_dmi(paths);
        let dmi_value = |label: &str| {
            dmi.iter()
                .find(|(l, _)| l == label)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut dimms = read_smbios_dimms(paths);
        if dimms.is_empty() {
            dimms = read_edac_dimms(paths);
        }
        Inventory {
            hostname: attr(paths.proc("sys/kernel/hostname")),
            machine_id: attr(paths.root("/etc/machine-id")),
            boot_id: attr(paths.proc("sys/kernel/random/boot_id")),
            cpu_model: cpu.model,
            cpu_count: cpu.processors,
            cpu_sockets,
            cpu_cores,
            cpu_threads,
            memory_bytes: parse_mem_total(&meminfo),
            kernel_release: attr(paths.proc("sys/kernel/osrelease")),
            kernel_version: attr(paths.proc("sys/kernel/version")),
            architecture: read_attr(&paths.proc("sys/kernel/arch"))
                .unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            os: parse_os_pretty_name(&os_release),
            board_vendor: dmi_value("board_vendor"),
            board_name: dmi_value("board_name"),
            product_name: dmi_value("product_name"),
            bios_version: dmi_value("bios_version"),
            bios_vendor: dmi_value("bios_vendor"),
            bios_date: dmi_value("bios_date"),
            system_vendor: dmi_value("system_vendor"),
            product_serial: dmi_value("product_serial"),
            dmi,
            dimms,
            disks: read_disks(paths),
            nics: read_nics(paths),
        }
    }

    /// The inventory as the wire message.
    pub fn to_proto(&self) -> hostpulse_proto::Inventory {
        hostpulse_proto::Inventory {
            cpu_model: self.cpu_model.clone(),
            cpu_count: self.cpu_count,
            memory_bytes: self.memory_bytes,
            kernel_release: self.kernel_release.clone(),
            os: self.os.clone(),
            board_vendor: self.board_vendor.clone(),
            board_name: self.board_name.clone(),
            product_name: self.product_name.clone(),
            bios_version: self.bios_version.clone(),
            cpu_sockets: self.cpu_sockets,
            cpu_cores: self.cpu_cores,
            cpu_threads: self.cpu_threads,
            dimms: self
                .dimms
                .iter()
                .map(|d| hostpulse_proto::Dimm {
                    locator: d.locator.clone(),
                    size_bytes: d.size_bytes,
                    memory_type: d.memory_type.clone(),
                    manufacturer: d.manufacturer.clone(),
                    part_number: d.part_number.clone(),
                    serial: d.serial.clone(),
                    speed_mts: d.speed_mts,
                    source: d.source.to_string(),
                    bank_locator: d.bank_locator.clone(),
                })
                .collect(),
            disks: self
                .disks
                .iter()
                .map(|d| hostpulse_proto::Disk {
                    device: d.device.clone(),
                    model: d.model.clone(),
                    serial: d.serial.clone(),
                    firmware: d.firmware.clone(),
                    rotational: d.rotational,
                    size_bytes: d.size_bytes,
                    vendor: d.vendor.clone(),
                })
                .collect(),
            nics: self
                .nics
                .iter()
                .map(|n| hostpulse_proto::Nic {
                    device: n.device.clone(),
                    driver: n.driver.clone(),
                    address: n.address.clone(),
                    link_speed_mbps: n.link_speed_mbps,
                })
                .collect(),
            bios_vendor: self.bios_vendor.clone(),
            bios_date: self.bios_date.clone(),
            system_vendor: self.system_vendor.clone(),
            product_serial: self.product_serial.clone(),
            kernel_version: self.kernel_version.clone(),
            architecture: self.architecture.clone(),
        }
    }
}

/// What the inventory uses from `/proc/cpuinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// First `model name` (x86) or, failing that, first `Model`/`cpu model`
    /// line (arm64, MIPS).
    pub model: String,
    /// Count of `processor` entries.
    pub processors: u32,
    /// `(physical id, core id)` per processor, when the file has them.
    pub topology: Vec<(String, String)>,
}

/// Parses `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut fallback_model = String::new();
    let (mut package, mut core): (Option<String>, Option<String>) = (None, None);
    let flush = |package: &mut Option<String>, core: &mut Option<String>, info: &mut CpuInfo| {
        if let (Some(p), Some(c)) = (package.take(), core.take()) {
            info.topology.push((p, c));
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut package, &mut core, &mut info);
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => info.processors += 1,
            "model name" if info.model.is_empty() => info.model = value.to_string(),
            "Model" | "cpu model" if fallback_model.is_empty() => fallback_model = value.to_string(),
            "physical id" => package = Some(value.to_string()),
            "core id" => core = Some(value.to_string()),
            _ => {}
        }
    }
    flush(&mut package, &mut core, &mut info);
    if info.model.is_empty() {
        info.model = fallback_model;
    }
    info
}

/// (sockets, cores, threads) from one `(package, core)` pair per hardware
/// thread.
pub fn topology_counts(threads: &[(String, String)]) -> (u32, u32, u32) {
    let sockets: BTreeSet<&str> = threads.iter().map(|(p, _)| p.as_str()).collect();
    let cores: BTreeSet<(&str, &str)> = threads.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (count(sockets.len()), count(cores.len()), count(threads.len()))
}

/// `(physical_package_id, core_id)` of every CPU with a sysfs topology.
fn read_sysfs_topology(paths: &HostPaths) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(paths.sys("devices/system/cpu")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let is_cpu = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let topology = entry.path().join("topology");
        if let (Some(package), Some(core)) = (
            read_attr(&topology.join("physical_package_id")),
            read_attr(&topology.join("core_id")),
        ) {
            out.push((package, core));
        }
    }
    out
}

/// MemTotal in bytes, 0 when absent.
pub fn parse_mem_total(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// PRETTY_NAME from os-release, unquoted.
pub fn parse_os_pretty_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .unwrap_or_default()
}

/// Text of possibly invalid UTF-8, each run of invalid bytes replaced by
/// one U+FFFD (Go's `strings.ToValidUTF8`, which node_exporter applies to
/// DMI values, so labels match byte for byte).
pub fn valid_utf8_lossy(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut in_invalid_run = false;
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                if !valid.is_empty() {
                    in_invalid_run = false;
                    // valid_up_to guarantees this prefix is UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                }
                if !in_invalid_run {
                    out.push('\u{FFFD}');
                    in_invalid_run = true;
                }
                let skip = e.error_len().unwrap_or(rest.len());
                bytes = &rest[skip..];
            }
        }
    }
}

/// Every readable DMI attribute as `(label, value)`, sorted by label.
fn read_dmi(paths: &HostPaths) -> Vec<(String, String)> {
    let dir = paths.sys("class/dmi/id");
    let mut out = Vec::new();
    for (file, label) in DMI_FILES {
        // Absent and root-only attributes are both simply left out.
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            out.push((label.to_string(), valid_utf8_lossy(&bytes).trim().to_string()));
        }
    }
    out.sort();
    out
}

/// SMBIOS memory type names (SMBIOS 3.x, table 7.18.2).
fn smbios_memory_type(code: u8) -> String {
    let name = match code {
        0x01 => "Other",
        0x02 => "Unknown",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0A => "EEPROM",
        0x0B => "FEPROM",
        0x0C => "EPROM",
        0x0D => "CDRAM",
        0x0E => "3DRAM",
        0x0F => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return format!("0x{code:02X}"),
    };
    name.to_string()
}

/// Parses one SMBIOS type 17 (Memory Device) structure as the kernel
/// exposes it in `entries/17-N/raw`: the formatted area, then the string
/// set. `Ok(None)` for an empty slot (size 0).
pub fn parse_smbios_memory_device(raw: &[u8]) -> Result<Option<Dimm>, String> {
    let (&kind, &length) = match raw {
        [kind, length, ..] => (kind, length),
        _ => return Err("shorter than a structure header".into()),
    };
    if kind != 17 {
        return Err(format!("structure type {kind}, want 17"));
    }
    let length = usize::from(length);
    if length < 0x15 || raw.len() < length {
        return Err(format!("formatted area of {length} bytes in {} bytes", raw.len()));
    }
    let formatted = &raw[..length];
    let byte = |offset: usize| formatted.get(offset).copied();
    let word = |offset: usize| Some(u16::from_le_bytes([byte(offset)?, byte(offset + 1)?]));
    let dword = |offset: usize| {
        Some(u32::from_le_bytes([
            byte(offset)?,
            byte(offset + 1)?,
            byte(offset + 2)?,
            byte(offset + 3)?,
        ]))
    };
    let strings: Vec<String> = raw[length..]
        .split(|b| *b == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| valid_utf8_lossy(s).trim().to_string())
        .collect();
    let string = |offset: usize| {
        byte(offset)
            .filter(|i| *i > 0)
            .and_then(|i| strings.get(usize::from(i) - 1))
            .cloned()
            .unwrap_or_default()
    };
    let size_bytes = match word(0x0C) {
        Some(0) | None => return Ok(None),
        Some(0xFFFF) => 0,
        // Sizes of 32 GiB and more are in the extended size field, in MiB.
        Some(0x7FFF) => dword(0x1C).map_or(0, |mib| u64::from(mib & 0x7FFF_FFFF) << 20),
        // Bit 15 set: the size is in KiB.
        Some(size) if size & 0x8000 != 0 => u64::from(size & 0x7FFF) << 10,
        Some(size) => u64::from(size) << 20,
    };
    let speed_mts = match word(0x15) {
        Some(0xFFFF) => dword(0x54).unwrap_or(0),
        Some(speed) => u32::from(speed),
        None => 0,
    };
    Ok(Some(Dimm {
        locator: string(0x10),
        bank_locator: string(0x11),
        size_bytes,
        memory_type: byte(0x12).map(smbios_memory_type).unwrap_or_default(),
        speed_mts,
        manufacturer: string(0x17),
        serial: string(0x18),
        part_number: string(0x1A),
        source: "smbios",
    }))
}

/// DIMMs from the SMBIOS type 17 tables (root-only on most kernels).
fn read_smbios_dimms(paths: &HostPaths) -> Vec<Dimm> {
    let Ok(entries) = std::fs::read_dir(paths.sys("firmware/dmi/entries")) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, Dimm)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name.strip_prefix("17-")?.parse::<u32>().ok()?;
            let raw = std::fs::read(e.path().join("raw")).ok()?;
            let dimm = parse_smbios_memory_device(&raw).ok()??;
            Some((index, dimm))
        })
        .collect();
    found.sort_by_key(|(index, _)| *index);
    found.into_iter().map(|(_, d)| d).collect()
}

/// DIMMs from EDAC (world-readable, but only slot, size and type).
fn read_edac_dimms(paths: &HostPaths) -> Vec<Dimm> {
    let mc_root = paths.sys("devices/system/edac/mc");
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for mc in sorted_dir(&mc_root).into_iter().filter(|(n, _)| n.starts_with("mc")) {
        for (name, path) in sorted_dir(&mc.1) {
            if name.starts_with("dimm") || name.starts_with("rank") {
                dirs.push(path);
            }
        }
    }
    dirs.iter()
        .filter_map(|dir| {
            let mib = read_attr(&dir.join("size"))?.parse::<u64>().ok()?;
            (mib > 0).then(|| Dimm {
                locator: read_attr(&dir.join("dimm_label")).unwrap_or_default(),
                bank_locator: read_attr(&dir.join("dimm_location")).unwrap_or_default(),
                size_bytes: mib << 20,
                memory_type: read_attr(&dir.join("dimm_mem_type")).unwrap_or_default(),
                source: "edac",
                ..Dimm::default()
            })
        })
        .collect()
}

/// Entries of a directory as (name, path), sorted by name; empty when it
/// cannot be read.
fn sorted_dir(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The `E:KEY=value` properties of a udev database file.
pub fn parse_udev(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// Decodes udev's `\xNN` escapes (`ID_MODEL_ENC`), trimming the padding
/// drives put in their identify strings.
pub fn decode_udev_escapes(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(hex) = encoded.get(i + 2..i + 4)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    valid_utf8_lossy(&out).trim().to_string()
}

/// Physical disks under `/sys/block`.
fn read_disks(paths: &HostPaths) -> Vec<Disk> {
    let mut disks = Vec::new();
    for (name, dir) in sorted_dir(&paths.sys("block")) {
        let device = dir.join("device");
        // Virtual devices (md, dm, loop, zram, ram) have no `device` link.
        if std::fs::metadata(&device).is_err() {
            continue;
        }
        let udev_text = read_attr(&dir.join("dev"))
            .and_then(|dev| std::fs::read_to_string(paths.udev_data.join(format!("b{dev}"))).ok())
            .unwrap_or_default();
        let udev = parse_udev(&udev_text);
        let prop = |key: &str| {
            udev.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let sys = |file: &str| {
            read_attr(&device.join(file))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let model = prop("ID_MODEL_ENC")
            .map(|m| decode_udev_escapes(&m))
            .filter(|m| !m.is_empty())
            .or_else(|| sys("model"))
            .or_else(|| prop("ID_MODEL"))
            .unwrap_or_default();
        let serial = prop("ID_SERIAL_SHORT")
            .or_else(|| sys("serial"))
            .or_else(|| prop("ID_SERIAL"))
            .unwrap_or_default();
        let firmware = prop("ID_REVISION")
            .or_else(|| sys("firmware_rev"))
            .or_else(|| sys("rev"))
            .unwrap_or_default();
        let sectors = read_attr(&dir.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        disks.push(Disk {
            device: name,
            model,
            serial,
            firmware,
            vendor: sys("vendor").unwrap_or_default(),
            rotational: read_attr(&dir.join("queue/rotational")).as_deref() == Some("1"),
            // sysfs `size` is in 512-byte sectors whatever the block size.
            size_bytes: sectors.saturating_mul(512),
        });
    }
    disks
}

/// The fastest speed among ethtool link mode names (`1000baseT/Full`,
/// `25000baseCR/Full`), in Mbit/s. Names that are not speeds (`Autoneg`,
/// `TP`, `Pause`) are ignored; `None` when no name is a speed.
pub fn max_mode_speed_mbps<S: AsRef<str>>(modes: &[S]) -> Option<u32> {
    modes
        .iter()
        .filter_map(|mode| {
            let mode = mode.as_ref();
            let digits = mode.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || !mode[digits..].starts_with("base") {
                return None;
            }
            mode[..digits].parse::<u32>().ok()
        })
        .max()
}

/// The link modes every interface of the running kernel advertises, by
/// interface name; empty when ethtool netlink is unavailable.
#[cfg(target_os = "linux")]
fn advertised_link_modes() -> std::collections::BTreeMap<String, Vec<String>> {
    // A thread of its own: `Inventory::read` may run inside the agent's tokio
    // runtime, where blocking on another runtime would panic.
    let worker = std::thread::Builder::new().name("ethtool".into()).spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), dump_link_modes())
                .await
                .ok()
        })
    });
    worker.ok().and_then(|w| w.join().ok()).flatten().unwrap_or_default()
}

/// Dumps `ETHTOOL_MSG_LINKMODES_GET` for every interface.
#[cfg(target_os = "linux")]
async fn dump_link_modes() -> std::collections::BTreeMap<String, Vec<String>> {
    use ethtool::{EthtoolAttr, EthtoolHeader, EthtoolLinkModeAttr};
    use futures_util::TryStreamExt;

    let mut modes = std::collections::BTreeMap::new();
    let Ok((connection, mut handle, _)) = ethtool::new_connection() else {
        return modes;
    };
    let task = tokio::spawn(connection);
    if let Ok(mut replies) = handle.link_mode().get(None).execute().await {
        // A reply that fails to decode ends the dump; what came before stays.
        while let Ok(Some(reply)) = replies.try_next().await {
            let mut name = None;
            let mut advertised = Vec::new();
            for attr in reply.payload.nlas {
                match attr {
                    EthtoolAttr::LinkMode(EthtoolLinkModeAttr::Header(headers)) => {
                        for header in headers {
                            if let EthtoolHeader::DevName(n) = header {
                                name = Some(n);
                            }
                        }
                    }
                    EthtoolAttr::LinkMode(EthtoolLinkModeAttr::Ours(ours)) => advertised = ours,
                    _ => {}
                }
            }
            if let Some(name) = name {
                modes.insert(name, advertised);
            }
        }
    }
    task.abort();
    modes
}

/// Other systems have no ethtool netlink.
#[cfg(not(target_os = "linux"))]
fn advertised_link_modes() -> std::collections::BTreeMap<String, Vec<String>> {
    std::collections::BTreeMap::new()
}

/// Physical network interfaces under `/sys/class/net`.
fn read_nics(paths: &HostPaths) -> Vec<Nic> {
    let mut nics = Vec::new();
    // Only the running kernel can be asked; a fixture tree's NIC names
    // would otherwise pick up this host's modes.
    let live = paths.sysfs == Path::new("/sys");
    let mut link_modes = None;
    for (name, dir) in sorted_dir(&paths.sys("class/net")) {
        let device = dir.join("device");
        if std::fs::metadata(&device).is_err() {
            continue;
        }
        let driver = std::fs::read_link(device.join("driver"))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let max_speed_mbps = if live {
            link_modes
                .get_or_insert_with(advertised_link_modes)
                .get(&name)
                .and_then(|modes| max_mode_speed_mbps(modes))
                .unwrap_or(0)
        } else {
            0
        };
        nics.push(Nic {
            device: name,
            driver,
            address: read_attr(&dir.join("address")).unwrap_or_default(),
            link_speed_mbps: read_attr(&dir.join("speed"))
                .and_then(|s| s.trim().parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0),
            max_speed_mbps,
        });
    }
    nics
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fastest_advertised_link_mode() {
        let modes = [
            "10baseT/Half",
            "1000baseT/Full",
            "Autoneg",
            "TP",
            "10000baseT/Full",
            "2500baseX/Full",
            "Pause",
        ];
        assert_eq!(max_mode_speed_mbps(&modes), Some(10_000));
        assert_eq!(
            max_mode_speed_mbps(&["400000baseCR4/Full", "100000baseKR4/Full"]),
            Some(400_000)
        );
        assert_eq!(max_mode_speed_mbps(&["Autoneg", "FIBRE", "1000base"]), Some(1000));
        assert_eq!(max_mode_speed_mbps(&["Autoneg", "99999999999baseT/Full"]), None);
        assert_eq!(max_mode_speed_mbps::<&str>(&[]), None);
    }

    /// A fixture tree's NICs are never looked up in the running kernel.
    #[test]
    fn fixture_nics_have_no_advertised_speed() {
        let dir = tempfile::tempdir().unwrap();
        let iface = dir.path().join("class/net/eth0");
        std::fs::create_dir_all(iface.join("device")).unwrap();
        std::fs::write(iface.join("address"), "52:54:00:12:34:56\n").unwrap();
        std::fs::write(iface.join("speed"), "1000\n").unwrap();
        let paths = HostPaths {
            sysfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        let nics = read_nics(&paths);
        assert_eq!(nics.len(), 1);
        assert_eq!((nics[0].link_speed_mbps, nics[0].max_speed_mbps), (1000, 0));
    }

    /// The live netlink dump answers (possibly with no modes, as on a VM's
    /// virtio NIC) within its deadline and never panics.
    #[cfg(target_os = "linux")]
    #[test]
    fn live_link_mode_dump_returns() {
        let started = std::time::Instant::now();
        let modes = advertised_link_modes();
        eprintln!("advertised link modes: {modes:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        for (name, advertised) in &modes {
            assert!(!name.is_empty(), "{advertised:?}");
        }
    }

    #[test]
    fn cpuinfo_model_count_and_topology() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6130\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6130\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nmodel name\t: Intel(R) Xeon(R) Gold 6130\nphysical id\t: 1\ncore id\t: 0\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.model, "Intel(R) Xeon(R) Gold 6130");
        assert_eq!(info.processors, 3);
        assert_eq!(topology_counts(&info.topology), (2, 2, 3));
    }

    #[test]
    fn arm_cpuinfo_has_no_model_name() {
        let info = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n\nModel\t: Raspberry Pi 4 Model B Rev 1.4\n");
        assert_eq!(info.model, "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(info.processors, 1);
        assert!(info.topology.is_empty());
        assert_eq!(topology_counts(&info.topology), (0, 0, 0));
    }

    #[test]
    fn meminfo_and_os_release() {
        assert_eq!(
            parse_mem_total("MemTotal:       16042172 kB\nMemFree: 1 kB\n"),
            16042172 * 1024
        );
        assert_eq!(parse_mem_total("garbage"), 0);
        assert_eq!(
            parse_os_pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn invalid_utf8_runs_become_one_replacement() {
        assert_eq!(valid_utf8_lossy(b"abc"), "abc");
        assert_eq!(valid_utf8_lossy(b"a\xff\xfeb"), "a\u{FFFD}b");
        assert_eq!(valid_utf8_lossy(b"\xffa\xff"), "\u{FFFD}a\u{FFFD}");
        // A valid U+FFFD in the input stays as it is.
        assert_eq!(valid_utf8_lossy("\u{FFFD}\u{1c}[".as_bytes()), "\u{FFFD}\u{1c}[");
        assert_eq!(valid_utf8_lossy(b"x\xe2\x82"), "x\u{FFFD}");
    }

    /// A type 17 structure: formatted area of `length` bytes (fields set
    /// by the caller), then the string set.
    fn type17(length: u8, fields: &[(usize, &[u8])], strings: &[&str]) -> Vec<u8> {
        let mut raw = vec![0u8; usize::from(length)];
        raw[0] = 17;
        raw[1] = length;
        for (offset, bytes) in fields {
            raw[*offset..*offset + bytes.len()].copy_from_slice(bytes);
        }
        for s in strings {
            raw.extend_from_slice(s.as_bytes());
            raw.push(0);
        }
        raw.push(0);
        raw
    }

    #[test]
    fn smbios_ddr4_module() {
        let raw = type17(
            0x28,
            &[
                (0x0C, &16384u16.to_le_bytes()),
                (0x10, &[1]),
                (0x11, &[2]),
                (0x12, &[0x1A]),
                (0x15, &3200u16.to_le_bytes()),
                (0x17, &[3]),
                (0x18, &[4]),
                (0x1A, &[5]),
            ],
            &["DIMM_A1", "P0 CHANNEL A", "Samsung", "12345678", "M393A2K43DB3-CWE    "],
        );
        assert_eq!(
            parse_smbios_memory_device(&raw).unwrap(),
            Some(Dimm {
                locator: "DIMM_A1".into(),
                bank_locator: "P0 CHANNEL A".into(),
                size_bytes: 16 << 30,
                memory_type: "DDR4".into(),
                speed_mts: 3200,
                manufacturer: "Samsung".into(),
                part_number: "M393A2K43DB3-CWE".into(),
                serial: "12345678".into(),
                source: "smbios",
            })
        );
    }

    #[test]
    fn smbios_sizes_empty_slots_and_extended_fields() {
        let empty = type17(0x28, &[(0x10, &[1])], &["DIMM_B1"]);
        assert_eq!(parse_smbios_memory_device(&empty).unwrap(), None);
        let kib = type17(0x15, &[(0x0C, &(0x8000u16 | 512).to_le_bytes())], &[]);
        assert_eq!(parse_smbios_memory_device(&kib).unwrap().unwrap().size_bytes, 512 << 10);
        let extended = type17(
            0x58,
            &[
                (0x0C, &0x7FFFu16.to_le_bytes()),
                (0x1C, &65536u32.to_le_bytes()),
                (0x15, &0xFFFFu16.to_le_bytes()),
                (0x54, &70000u32.to_le_bytes()),
                (0x12, &[0x22]),
            ],
            &[],
        );
        let dimm = parse_smbios_memory_device(&extended).unwrap().unwrap();
        assert_eq!(dimm.size_bytes, 64 << 30);
        assert_eq!(dimm.speed_mts, 70000);
        assert_eq!(dimm.memory_type, "DDR5");
        // A string index past the string set is an empty string, not a panic.
        let dangling = type17(0x15, &[(0x0C, &1u16.to_le_bytes()), (0x10, &[9])], &["x"]);
        assert_eq!(parse_smbios_memory_device(&dangling).unwrap().unwrap().locator, "");
    }

    #[test]
    fn smbios_garbage_is_an_error() {
        assert!(parse_smbios_memory_device(&[]).is_err());
        assert!(parse_smbios_memory_device(&[16, 0x15]).is_err());
        assert!(parse_smbios_memory_device(&[17, 0x28, 0, 0]).is_err());
        assert!(parse_smbios_memory_device(&[17, 4, 0, 0]).is_err());
    }

    #[test]
    fn udev_properties_and_escapes() {
        let text = "S:disk/by-id/ata-X\nE:ID_MODEL=TOSHIBA_KSDB4U86\nE:ID_MODEL_ENC=TOSHIBA\\x20KSDB4U86\\x20\\x20\nE:ID_SERIAL_SHORT=2160A0D5FVGG\n";
        let props = parse_udev(text);
        assert_eq!(props[0], ("ID_MODEL", "TOSHIBA_KSDB4U86"));
        assert_eq!(decode_udev_escapes(props[1].1), "TOSHIBA KSDB4U86");
        assert_eq!(decode_udev_escapes("a\\x2"), "a\\x2");
        assert_eq!(decode_udev_escapes("a\\xzz"), "a\\xzz");
        assert_eq!(decode_udev_escapes("\\xff"), "\u{FFFD}");
    }
}
