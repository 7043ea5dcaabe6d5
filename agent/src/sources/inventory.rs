//! The `inventory` source: the static facts of [`crate::inventory`] as
//! `*_info` series with value 1, so dashboards and rules can join on them —
//! node_exporter's `node_dmi_info` (same labels: every DMI attribute that
//! is readable), and `hostpulse_cpu_info{model,sockets,cores,threads}`,
//! `hostpulse_disk_info{device,model,serial,firmware,rotational}`,
//! `hostpulse_disk_size_bytes{device}`, `hostpulse_nic_info{device,driver,
//! address,max_speed_mbps}`, `hostpulse_network_max_speed_bytes{device}`,
//! `hostpulse_dimm_info{locator,bank,type,manufacturer,
//! part_number,serial,speed_mts}` and `hostpulse_dimm_size_bytes{locator,bank}`.
//!
//! `hostpulse_network_max_speed_bytes` is the fastest link mode the NIC
//! advertises, in the unit of node_exporter's `node_network_speed_bytes`
//! (bytes per second), so a rule finds a link negotiated below what the
//! port can do: `node_network_speed_bytes < on(device)
//! hostpulse_network_max_speed_bytes`. It is absent when the modes are
//! unknown (see [`crate::inventory`]).
//!
//! The facts are read when the source is first run and again every ten
//! minutes (a hot-swapped disk shows up then), never every cycle: reading
//! them touches a few hundred files.

use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::inventory::Inventory;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// How often the facts are read again.
pub const REFRESH: Duration = Duration::from_secs(600);

/// Emits the inventory read at most every `refresh`.
#[derive(Debug)]
pub struct InventorySource {
    refresh: Duration,
    cached: Option<(Instant, Inventory)>,
}

impl Default for InventorySource {
    fn default() -> Self {
        InventorySource::with_refresh(REFRESH)
    }
}

impl InventorySource {
    /// A source that reads the facts again after `refresh`.
    pub fn with_refresh(refresh: Duration) -> Self {
        InventorySource { refresh, cached: None }
    }
}

impl Source for InventorySource {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        if self.cached.as_ref().is_none_or(|(at, _)| at.elapsed() >= self.refresh) {
            self.cached = Some((Instant::now(), Inventory::read(paths)));
        }
        if let Some((_, inventory)) = &self.cached {
            emit(inventory, out);
        }
        Ok(())
    }
}

/// `"1"`/`"0"` for a flag label, as sysfs writes it.
fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

/// Records the `*_info` series of `inv`.
pub fn emit(inv: &Inventory, out: &mut Emitter) {
    if !inv.dmi.is_empty() {
        let labels: Vec<(&str, &str)> = inv.dmi.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        out.gauge(
            "node_dmi_info",
            "A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, \
             board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, \
             chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, \
             product_sku, product_uuid, product_version, system_vendor if provided by DMI.",
            &labels,
            1.0,
        );
    }
    if !inv.cpu_model.is_empty() || inv.cpu_threads > 0 {
        out.gauge(
            "hostpulse_cpu_info",
            "CPU model and topology (sockets, physical cores, hardware threads; 0 when unknown).",
            &[
                ("model", &inv.cpu_model),
                ("sockets", &inv.cpu_sockets.to_string()),
                ("cores", &inv.cpu_cores.to_string()),
                ("threads", &inv.cpu_threads.to_string()),
            ],
            1.0,
        );
    }
    for disk in &inv.disks {
        out.gauge(
            "hostpulse_disk_info",
            "Model, serial number, firmware and rotational flag of a physical disk.",
            &[
                ("device", &disk.device),
                ("model", &disk.model),
                ("serial", &disk.serial),
                ("firmware", &disk.firmware),
                ("rotational", flag(disk.rotational)),
            ],
            1.0,
        );
        // Size 0 is an empty drive bay of a card reader or an unreadable
        // size file: no capacity to report.
        if disk.size_bytes > 0 {
            out.gauge(
                "hostpulse_disk_size_bytes",
                "Capacity of a physical disk in bytes.",
                &[("device", &disk.device)],
                disk.size_bytes as f64,
            );
        }
    }
    for nic in &inv.nics {
        out.gauge(
            "hostpulse_nic_info",
            "Driver, hardware address and fastest advertised link speed (Mbit/s, 0 when unknown) of a physical network interface.",
            &[
                ("device", &nic.device),
                ("driver", &nic.driver),
                ("address", &nic.address),
                ("max_speed_mbps", &nic.max_speed_mbps.to_string()),
            ],
            1.0,
        );
        if nic.max_speed_mbps > 0 {
            out.gauge(
                "hostpulse_network_max_speed_bytes",
                "Fastest link speed the NIC advertises (ethtool link modes) in bytes per second, comparable with node_network_speed_bytes.",
                &[("device", &nic.device)],
                f64::from(nic.max_speed_mbps) * 125_000.0,
            );
        }
    }
    for dimm in &inv.dimms {
        out.gauge(
            "hostpulse_dimm_info",
            "An installed memory module: slot, type, rated speed (0 when unknown), manufacturer, part and serial number.",
            &[
                ("locator", &dimm.locator),
                ("bank", &dimm.bank_locator),
                ("type", &dimm.memory_type),
                ("speed_mts", &dimm.speed_mts.to_string()),
                ("manufacturer", &dimm.manufacturer),
                ("part_number", &dimm.part_number),
                ("serial", &dimm.serial),
            ],
            1.0,
        );
        out.gauge(
            "hostpulse_dimm_size_bytes",
            "Size of an installed memory module in bytes.",
            &[("locator", &dimm.locator), ("bank", &dimm.bank_locator)],
            dimm.size_bytes as f64,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::inventory::{Dimm, Disk, Nic};

    #[test]
    fn emits_one_info_series_per_part() {
        let inv = Inventory {
            cpu_model: "EPYC 7302P".into(),
            cpu_sockets: 1,
            cpu_cores: 16,
            cpu_threads: 32,
            dmi: vec![("bios_vendor".into(), "Dell Inc.".into())],
            disks: vec![Disk {
                device: "sda".into(),
                model: "ST4000NM".into(),
                rotational: true,
                size_bytes: 4_000_787_030_016,
                ..Disk::default()
            }],
            nics: vec![Nic {
                device: "eno1".into(),
                driver: "tg3".into(),
                address: "aa:bb:cc:dd:ee:ff".into(),
                link_speed_mbps: 1000,
                max_speed_mbps: 10_000,
            }],
            dimms: vec![Dimm {
                locator: "A1".into(),
                size_bytes: 16 << 30,
                source: "edac",
                ..Dimm::default()
            }],
            ..Inventory::default()
        };
        let mut out = Emitter::new();
        emit(&inv, &mut out);
        let names: Vec<&str> = out.samples().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "node_dmi_info",
                "hostpulse_cpu_info",
                "hostpulse_disk_info",
                "hostpulse_disk_size_bytes",
                "hostpulse_nic_info",
                "hostpulse_network_max_speed_bytes",
                "hostpulse_dimm_info",
                "hostpulse_dimm_size_bytes",
            ]
        );
        let disk = &out.samples()[2];
        assert!(disk.labels.contains(&("rotational".into(), "1".into())));
        assert_eq!(out.samples()[3].value, 4_000_787_030_016.0);
        // 10 Gbit/s in node_network_speed_bytes' unit.
        assert_eq!(out.samples()[5].value, 1_250_000_000.0);
        assert!(
            out.samples()[4]
                .labels
                .contains(&("max_speed_mbps".into(), "10000".into()))
        );
    }

    #[test]
    fn nothing_known_emits_nothing() {
        let mut out = Emitter::new();
        emit(&Inventory::default(), &mut out);
        assert!(out.samples().is_empty());
    }

    #[test]
    fn facts_are_read_again_only_after_the_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            sysfs: dir.path().join("sys"),
            procfs: dir.path().join("proc"),
            rootfs: dir.path().to_path_buf(),
            udev_data: dir.path().join("udev"),
            dev: dir.path().join("dev"),
        };
        let cpuinfo = dir.path().join("proc/cpuinfo");
        std::fs::create_dir_all(cpuinfo.parent().unwrap()).unwrap();
        std::fs::write(&cpuinfo, "processor : 0\nmodel name : First\n").unwrap();
        let model = |source: &mut InventorySource| {
            let mut out = Emitter::new();
            source.collect(&paths, &mut out).unwrap();
            out.samples()[0]
                .labels
                .iter()
                .find(|(k, _)| k == "model")
                .unwrap()
                .1
                .clone()
        };
        let mut slow = InventorySource::default();
        let mut always = InventorySource::with_refresh(Duration::ZERO);
        assert_eq!(model(&mut slow), "First");
        assert_eq!(model(&mut always), "First");
        std::fs::write(&cpuinfo, "processor : 0\nmodel name : Second\n").unwrap();
        assert_eq!(model(&mut slow), "First");
        assert_eq!(model(&mut always), "Second");
    }
}
