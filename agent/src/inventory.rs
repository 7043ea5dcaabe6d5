//! Static facts about the machine (CPU model, memory, kernel, DMI board and
//! BIOS), read once at start and sent in the stream's `Hello`, plus the
//! identity files (host name, machine id, boot id). Every fact is optional:
//! a container or VM without DMI simply leaves it empty.

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
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: String,
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
}

impl Inventory {
    /// Reads every fact it can find under `paths`.
    pub fn read(paths: &HostPaths) -> Inventory {
        let attr = |p: std::path::PathBuf| read_attr(&p).unwrap_or_default();
        let cpuinfo = std::fs::read_to_string(paths.proc("cpuinfo")).unwrap_or_default();
        let (cpu_model, cpu_count) = parse_cpuinfo(&cpuinfo);
        let meminfo = std::fs::read_to_string(paths.proc("meminfo")).unwrap_or_default();
        let os_release = std::fs::read_to_string(paths.root("/etc/os-release"))
            .or_else(|_| std::fs::read_to_string(paths.root("/usr/lib/os-release")))
            .unwrap_or_default();
        Inventory {
            hostname: attr(paths.proc("sys/kernel/hostname")),
            machine_id: attr(paths.root("/etc/machine-id")),
            boot_id: attr(paths.proc("sys/kernel/random/boot_id")),
            cpu_model,
            cpu_count,
            memory_bytes: parse_mem_total(&meminfo),
            kernel_release: attr(paths.proc("sys/kernel/osrelease")),
            os: parse_os_pretty_name(&os_release),
            board_vendor: attr(paths.sys("class/dmi/id/board_vendor")),
            board_name: attr(paths.sys("class/dmi/id/board_name")),
            product_name: attr(paths.sys("class/dmi/id/product_name")),
            bios_version: attr(paths.sys("class/dmi/id/bios_version")),
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
        }
    }
}

/// First `model name` and the count of `processor` lines.
pub fn parse_cpuinfo(text: &str) -> (String, u32) {
    let mut model = String::new();
    let mut count = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => count += 1,
            "model name" if model.is_empty() => model = value.trim().to_string(),
            _ => {}
        }
    }
    (model, count)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_model_and_count() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6130\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6130\n";
        assert_eq!(parse_cpuinfo(text), ("Intel(R) Xeon(R) Gold 6130".to_string(), 2));
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
}
