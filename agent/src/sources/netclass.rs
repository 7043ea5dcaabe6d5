//! The `netclass` source: link state of every network interface from
//! `/sys/class/net/<iface>` as node_exporter's netclass family
//! (`node_network_up`, `node_network_info{address,adminstate,broadcast,
//! duplex,ifalias,operstate}`, `node_network_carrier`,
//! `node_network_carrier_{,up_,down_}changes_total`,
//! `node_network_speed_bytes`, `node_network_mtu_bytes`, ...), plus the PCIe
//! Advanced Error Reporting counters of the interface's PCI device as
//! `hostpulse_pcie_aer_errors_total{device,severity,error}` (`device` is the
//! interface, so it joins with `node_network_*`).
//!
//! A flapping link (carrier changes climbing) or a NIC logging correctable
//! PCIe errors (a marginal slot or riser) are failure signals node_exporter
//! users already alert on; AER is what it lacks. A speed of `-1` (link down
//! or a virtual device) is skipped, as node_exporter does with
//! `--collector.netclass.ignore-invalid-speed`. Parsers ([`parse_number`],
//! [`parse_aer`], [`admin_state`]) are pure.

use std::path::Path;

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses a decimal or `0x` hexadecimal sysfs number.
pub fn parse_number(text: &str) -> Option<i64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `up` when the interface flags have `IFF_UP`, else `down`.
pub fn admin_state(flags: i64) -> &'static str {
    if flags & 1 == 1 { "up" } else { "down" }
}

/// Parses an `aer_dev_{correctable,fatal,nonfatal}` file into
/// `(error name, count)`, leaving out the `TOTAL_ERR_*` sum lines.
pub fn parse_aer(text: &str) -> Result<Vec<(&str, u64)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(count)) = (fields.next(), fields.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("AER line {line:?} is not \"NAME COUNT\""));
        };
        let count = count
            .parse::<u64>()
            .map_err(|_| format!("AER count {count:?} is not an integer"))?;
        if !name.starts_with("TOTAL_ERR_") {
            out.push((name, count));
        }
    }
    Ok(out)
}

/// (sysfs file, metric suffix, type, scale) of the numeric properties, as
/// node_exporter exposes them (help is "Network device property: <suffix>").
const PROPERTIES: &[(&str, &str, MetricType, i64)] = &[
    ("addr_assign_type", "address_assign_type", MetricType::Gauge, 1),
    ("carrier", "carrier", MetricType::Gauge, 1),
    ("carrier_changes", "carrier_changes_total", MetricType::Counter, 1),
    ("carrier_up_count", "carrier_up_changes_total", MetricType::Counter, 1),
    (
        "carrier_down_count",
        "carrier_down_changes_total",
        MetricType::Counter,
        1,
    ),
    ("dev_id", "device_id", MetricType::Gauge, 1),
    ("dormant", "dormant", MetricType::Gauge, 1),
    ("flags", "flags", MetricType::Gauge, 1),
    ("ifindex", "iface_id", MetricType::Gauge, 1),
    ("iflink", "iface_link", MetricType::Gauge, 1),
    ("link_mode", "iface_link_mode", MetricType::Gauge, 1),
    ("mtu", "mtu_bytes", MetricType::Gauge, 1),
    ("name_assign_type", "name_assign_type", MetricType::Gauge, 1),
    ("netdev_group", "net_dev_group", MetricType::Gauge, 1),
    // Mbit/s → bytes/s.
    ("speed", "speed_bytes", MetricType::Gauge, 125_000),
    ("tx_queue_len", "transmit_queue_length", MetricType::Gauge, 1),
    ("type", "protocol_type", MetricType::Gauge, 1),
];

const AER_FILES: &[(&str, &str)] = &[
    ("aer_dev_correctable", "correctable"),
    ("aer_dev_nonfatal", "nonfatal"),
    ("aer_dev_fatal", "fatal"),
];

/// Properties fixed while the interface exists (identity and naming) or set
/// only by an administrator: read at start and on [`Files`]' refresh; the
/// link state (carrier, flaps, operstate, speed, duplex, flags, dormant) is
/// re-read every cycle.
const STATIC_FILES: &[&str] = &[
    "address",
    "broadcast",
    // Set by the administrator; reading it takes the RTNL lock (~40 µs).
    "ifalias",
    "addr_assign_type",
    "dev_id",
    "ifindex",
    "iflink",
    "name_assign_type",
    "type",
    // Changed only by an administrator (`ip link set ... mtu/group/txqueuelen`):
    // seen within one refresh period, and 4 of the 13 reads per interface
    // and cycle saved.
    "link_mode",
    "mtu",
    "netdev_group",
    "tx_queue_len",
];

/// Reads `/sys/class/net`; listings and identity attributes come from the
/// refreshed cache, link state through kept descriptors.
#[derive(Debug, Default)]
pub struct NetclassSource {
    files: Files,
}

fn collect_interface(files: &mut Files, device: &str, dir: &Path, out: &mut Emitter) {
    let mut attr = |name: &str| {
        if STATIC_FILES.contains(&name) {
            files.static_in(dir, name)
        } else {
            files.attr_in(dir, name)
        }
    };
    let operstate = attr("operstate").unwrap_or_default();
    out.gauge(
        "node_network_up",
        "Value is 1 if operstate is 'up', 0 otherwise.",
        &[("device", device)],
        if operstate == "up" { 1.0 } else { 0.0 },
    );
    let flags = attr("flags").and_then(|f| parse_number(&f));
    out.gauge(
        "node_network_info",
        "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
        &[
            ("device", device),
            ("address", &attr("address").unwrap_or_default()),
            ("broadcast", &attr("broadcast").unwrap_or_default()),
            ("duplex", &attr("duplex").unwrap_or_default()),
            ("operstate", &operstate),
            ("adminstate", flags.map(admin_state).unwrap_or("")),
            ("ifalias", &attr("ifalias").unwrap_or_default()),
        ],
        1.0,
    );
    for (file, suffix, kind, scale) in PROPERTIES {
        let Some(value) = attr(file).and_then(|v| parse_number(&v)) else {
            continue;
        };
        if *file == "speed" && value < 0 {
            continue;
        }
        out.push(
            &format!("node_network_{suffix}"),
            *kind,
            &format!("Network device property: {suffix}"),
            &[("device", device)],
            (value * scale) as f64,
        );
    }
    let device_dir = dir.join("device");
    for (file, severity) in AER_FILES {
        let Some(text) = files.attr_in(&device_dir, file) else {
            continue;
        };
        // A malformed file is skipped rather than failing every interface.
        let Ok(counts) = parse_aer(&text) else { continue };
        for (error, count) in counts {
            out.counter(
                "hostpulse_pcie_aer_errors_total",
                "PCIe Advanced Error Reporting errors of the interface's PCI device since boot, by severity and error.",
                &[("device", device), ("severity", severity), ("error", error)],
                count as f64,
            );
        }
    }
}

impl Source for NetclassSource {
    fn name(&self) -> &'static str {
        "netclass"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("class/net");
        let devices = match files.list(&dir) {
            Ok(devices) => devices,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&dir, e)),
        };
        for device in devices.iter() {
            let iface = dir.join(device);
            // `bonding_masters` and other plain files are not interfaces.
            if files.is_dir(&iface) {
                collect_interface(files, device, &iface, out);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_decimal_and_hex() {
        assert_eq!(parse_number("0x1303\n"), Some(4867));
        assert_eq!(parse_number("0x20"), Some(32));
        assert_eq!(parse_number("-1"), Some(-1));
        assert_eq!(parse_number("1500"), Some(1500));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0xzz"), None);
    }

    #[test]
    fn admin_state_from_flags() {
        assert_eq!(admin_state(0x1303), "up");
        assert_eq!(admin_state(0x1002), "down");
    }

    #[test]
    fn aer_counters_without_totals() {
        let text = "RxErr 3\nBadTLP 0\nBadDLLP 1\nTOTAL_ERR_COR 4\n";
        assert_eq!(
            parse_aer(text).unwrap(),
            vec![("RxErr", 3), ("BadTLP", 0), ("BadDLLP", 1)]
        );
        assert!(parse_aer("RxErr x\n").is_err());
        assert!(parse_aer("RxErr\n").is_err());
        assert!(parse_aer("\n").unwrap().is_empty());
    }
}
