//! Fixture-tree tests of the hardware-degradation sources: thermal zones,
//! CPU throttling and frequency, PSI, EDAC (both sysfs layouts), md RAID,
//! network class with PCIe AER, diskstats, NVMe, the kernel log follower and
//! RAPL wrap handling. Each test builds its source through the registry, as
//! the agent does, and runs it against a small tree under
//! `tests/fixtures/<name>/` written for that case (or a temp tree when the
//! test has to change files between two collects).

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use hostpulse_agent::source::SourceOptions;
use hostpulse_agent::sources::find;
use hostpulse_agent::{Emitter, HostPaths, Source};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn paths(root: &Path) -> HostPaths {
    HostPaths {
        sysfs: root.join("sys"),
        procfs: root.join("proc"),
        rootfs: root.to_path_buf(),
        udev_data: root.join("udev"),
        dev: root.join("dev"),
    }
}

fn source(name: &str, options: &SourceOptions) -> Box<dyn Source> {
    (find(name).unwrap_or_else(|| panic!("{name} is not registered")).make)(options)
}

/// One collect of a fresh source over a fixture tree; must succeed.
fn collect(name: &str, root: &Path) -> Emitter {
    let mut out = Emitter::new();
    source(name, &SourceOptions::default())
        .collect(&paths(root), &mut out)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    out
}

/// The value of the series with exactly these labels.
fn value(out: &Emitter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(&str, &str)> = labels.to_vec();
    want.sort();
    out.samples()
        .iter()
        .find(|s| {
            s.name == name
                && s.labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .eq(want.iter().copied())
        })
        .map(|s| s.value)
}

fn count(out: &Emitter, name: &str) -> usize {
    out.samples().iter().filter(|s| s.name == name).count()
}

#[test]
fn thermal_zones_and_cooling_devices() {
    let out = collect("thermal_zone", &fixture("cpu-thermal"));
    let zone = |z: &str, t: &str| value(&out, "node_thermal_zone_temp", &[("zone", z), ("type", t)]);
    assert_eq!(zone("0", "x86_pkg_temp"), Some(97.0));
    assert_eq!(zone("1", "acpitz"), Some(-2.5));
    // A zone whose sensor returns nothing is skipped, not a failure.
    assert_eq!(count(&out, "node_thermal_zone_temp"), 2);
    let fan = [("name", "0"), ("type", "Fan")];
    assert_eq!(value(&out, "node_cooling_device_cur_state", &fan), Some(10.0));
    assert_eq!(value(&out, "node_cooling_device_max_state", &fan), Some(10.0));
}

#[test]
fn throttle_counters_per_core_and_package() {
    let out = collect("thermal_throttle", &fixture("cpu-thermal"));
    // Both hyper-threads sit on core 0; the first CPU speaks for the core.
    assert_eq!(
        value(
            &out,
            "node_cpu_core_throttles_total",
            &[("core", "0"), ("package", "0")]
        ),
        Some(1234.0)
    );
    assert_eq!(count(&out, "node_cpu_core_throttles_total"), 1);
    assert_eq!(
        value(&out, "node_cpu_package_throttles_total", &[("package", "0")]),
        Some(5678.0)
    );
}

#[test]
fn cpu_frequency_from_cheap_files() {
    let out = collect("cpufreq", &fixture("cpu-thermal"));
    let cpu0 = [("cpu", "0")];
    assert_eq!(value(&out, "node_cpu_scaling_frequency_hertz", &cpu0), Some(8e8));
    assert_eq!(value(&out, "node_cpu_scaling_frequency_max_hertz", &cpu0), Some(3.5e9));
    assert_eq!(value(&out, "node_cpu_scaling_frequency_min_hertz", &cpu0), Some(8e8));
    assert_eq!(value(&out, "node_cpu_frequency_max_hertz", &cpu0), Some(3.5e9));
    assert_eq!(value(&out, "node_cpu_frequency_min_hertz", &cpu0), Some(8e8));
    let governor = |g: &str| value(&out, "node_cpu_scaling_governor", &[("cpu", "1"), ("governor", g)]);
    assert_eq!(governor("performance"), Some(1.0));
    assert_eq!(governor("powersave"), Some(0.0));
    assert_eq!(count(&out, "node_cpu_frequency_hertz"), 0);
    // The `cpufreq` policy directory is not a CPU.
    assert_eq!(count(&out, "node_cpu_scaling_frequency_hertz"), 2);
}

#[test]
fn pressure_stall_totals() {
    let out = collect("pressure", &fixture("cpu-thermal"));
    assert_eq!(
        value(&out, "node_pressure_io_waiting_seconds_total", &[]),
        Some(987.654321)
    );
    assert_eq!(
        value(&out, "node_pressure_io_stalled_seconds_total", &[]),
        Some(876543210.0 / 1000.0 / 1000.0)
    );
    assert_eq!(value(&out, "node_pressure_cpu_waiting_seconds_total", &[]), Some(2.5));
    assert_eq!(
        value(&out, "node_pressure_memory_stalled_seconds_total", &[]),
        Some(0.0005)
    );
    // No irq file in this tree: nothing, and no error.
    assert_eq!(count(&out, "node_pressure_irq_stalled_seconds_total"), 0);
}

#[test]
fn edac_csrow_layout() {
    let out = collect("edac", &fixture("edac-csrow"));
    let mc0 = [("controller", "0")];
    assert_eq!(value(&out, "node_edac_correctable_errors_total", &mc0), Some(12.0));
    assert_eq!(value(&out, "node_edac_uncorrectable_errors_total", &mc0), Some(1.0));
    assert_eq!(
        value(
            &out,
            "node_edac_csrow_correctable_errors_total",
            &[("controller", "0"), ("csrow", "unknown")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &out,
            "node_edac_csrow_correctable_errors_total",
            &[("controller", "0"), ("csrow", "0")]
        ),
        Some(10.0)
    );
    let ch = |channel: &'static str, label: &'static str| {
        [
            ("controller", "0"),
            ("csrow", "0"),
            ("channel", channel),
            ("dimm_label", label),
        ]
    };
    assert_eq!(
        value(&out, "node_edac_channel_correctable_errors_total", &ch("0", "DIMMA1")),
        Some(7.0)
    );
    assert_eq!(
        value(
            &out,
            "node_edac_channel_uncorrectable_errors_total",
            &ch("1", "unknown")
        ),
        Some(1.0)
    );
    // Channel 0 has no ue file: no series rather than a made-up zero.
    assert_eq!(count(&out, "node_edac_channel_uncorrectable_errors_total"), 1);
    assert_eq!(count(&out, "hostpulse_edac_dimm_correctable_errors_total"), 0);
}

#[test]
fn edac_dimm_layout_names_the_slot() {
    let out = collect("edac", &fixture("edac-dimm"));
    let failing = [
        ("controller", "1"),
        ("dimm", "1"),
        ("label", "CPU_SrcID#0_MC#1_Chan#1_DIMM#0"),
    ];
    assert_eq!(
        value(&out, "hostpulse_edac_dimm_correctable_errors_total", &failing),
        Some(41.0)
    );
    assert_eq!(
        value(&out, "hostpulse_edac_dimm_uncorrectable_errors_total", &failing),
        Some(0.0)
    );
    assert_eq!(count(&out, "hostpulse_edac_dimm_correctable_errors_total"), 4);
    assert_eq!(
        value(&out, "node_edac_correctable_errors_total", &[("controller", "1")]),
        Some(41.0)
    );
    assert_eq!(count(&out, "node_edac_channel_correctable_errors_total"), 0);
}

#[test]
fn md_raid_degraded_with_failed_member_and_recovery() {
    let out = collect("mdraid", &fixture("mdraid-degraded"));
    let md0 = ("device", "md0");
    let md1 = ("device", "md1");
    assert_eq!(value(&out, "node_md_degraded", &[md0]), Some(1.0));
    assert_eq!(value(&out, "node_md_raid_disks", &[md1]), Some(4.0));
    assert_eq!(value(&out, "node_md_disks", &[md0, ("state", "failed")]), Some(1.0));
    assert_eq!(value(&out, "node_md_disks", &[md0, ("state", "active")]), Some(1.0));
    assert_eq!(value(&out, "node_md_disks_required", &[md0]), Some(2.0));
    // A bitmap line is not a sync.
    assert_eq!(value(&out, "node_md_state", &[md0, ("state", "active")]), Some(1.0));
    assert_eq!(value(&out, "node_md_blocks_synced", &[md0]), Some(976630464.0));
    assert_eq!(value(&out, "node_md_state", &[md1, ("state", "recovering")]), Some(1.0));
    assert_eq!(value(&out, "node_md_state", &[md1, ("state", "active")]), Some(0.0));
    assert_eq!(value(&out, "node_md_blocks_synced", &[md1]), Some(439511552.0));

    assert_eq!(
        value(
            &out,
            "hostpulse_md_member_state",
            &[md0, ("member", "sdb1"), ("state", "faulty")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&out, "hostpulse_md_member_read_errors", &[md0, ("member", "sdb1")]),
        Some(117.0)
    );
    assert_eq!(
        value(
            &out,
            "hostpulse_md_member_state",
            &[md1, ("member", "sdf1"), ("state", "spare")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&out, "hostpulse_md_array_state", &[md0, ("state", "clean")]),
        Some(1.0)
    );
    assert_eq!(
        value(&out, "hostpulse_md_sync_action", &[md1, ("action", "recover")]),
        Some(1.0)
    );
    assert_eq!(
        value(&out, "hostpulse_md_sync_action", &[md1, ("action", "idle")]),
        Some(0.0)
    );
    assert_eq!(
        value(&out, "hostpulse_md_sync_completed_ratio", &[md1]),
        Some(879023104.0 / 3906764800.0)
    );
    assert_eq!(value(&out, "hostpulse_md_sync_completed_ratio", &[md0]), None);
    // sys/block/sda is not an array.
    assert!(!out.samples().iter().any(|s| s.labels.iter().any(|(_, v)| v == "sda")));
}

#[test]
fn nic_link_state_and_aer_counters() {
    let out = collect("netclass", &fixture("nic-aer"));
    let eth0 = ("device", "eth0");
    let br0 = ("device", "br0");
    assert_eq!(value(&out, "node_network_up", &[eth0]), Some(1.0));
    assert_eq!(value(&out, "node_network_up", &[br0]), Some(0.0));
    assert_eq!(value(&out, "node_network_carrier_changes_total", &[eth0]), Some(57.0));
    assert_eq!(
        value(&out, "node_network_carrier_down_changes_total", &[eth0]),
        Some(28.0)
    );
    assert_eq!(value(&out, "node_network_speed_bytes", &[eth0]), Some(3.125e9));
    assert_eq!(value(&out, "node_network_speed_bytes", &[br0]), None);
    assert_eq!(value(&out, "node_network_mtu_bytes", &[eth0]), Some(9000.0));
    assert_eq!(
        value(
            &out,
            "node_network_info",
            &[
                eth0,
                ("address", "3c:fd:fe:aa:bb:cc"),
                ("adminstate", "up"),
                ("broadcast", "ff:ff:ff:ff:ff:ff"),
                ("duplex", "full"),
                ("ifalias", ""),
                ("operstate", "up"),
            ]
        ),
        Some(1.0)
    );
    let aer = |severity: &str, error: &str| {
        value(
            &out,
            "hostpulse_pcie_aer_errors_total",
            &[eth0, ("severity", severity), ("error", error)],
        )
    };
    assert_eq!(aer("correctable", "RxErr"), Some(14.0));
    assert_eq!(aer("correctable", "BadTLP"), Some(3.0));
    assert_eq!(aer("nonfatal", "CmpltTO"), Some(1.0));
    assert_eq!(aer("fatal", "DLP"), Some(0.0));
    assert_eq!(aer("correctable", "TOTAL_ERR_COR"), None);
    assert!(
        !out.samples()
            .iter()
            .any(|s| s.name == "hostpulse_pcie_aer_errors_total" && s.labels.contains(&("device".into(), "br0".into())))
    );
    assert!(
        !out.samples()
            .iter()
            .any(|s| s.labels.iter().any(|(_, v)| v == "bonding_masters"))
    );
}

#[test]
fn diskstats_with_udev_facts() {
    let out = collect("diskstats", &fixture("disks"));
    let sda = ("device", "sda");
    assert_eq!(value(&out, "node_disk_reads_completed_total", &[sda]), Some(1000.0));
    assert_eq!(value(&out, "node_disk_read_bytes_total", &[sda]), Some(80000.0 * 512.0));
    assert_eq!(value(&out, "node_disk_io_now", &[sda]), Some(3.0));
    assert_eq!(value(&out, "node_disk_io_time_seconds_total", &[sda]), Some(6.0));
    assert_eq!(
        value(
            &out,
            "node_disk_info",
            &[
                sda,
                ("major", "8"),
                ("minor", "0"),
                ("model", "ST4000NM0035-1V4107"),
                ("path", "pci-0000:00:17.0-ata-1"),
                ("revision", "TN05"),
                ("rotational", "1"),
                ("serial", "ZC1234AB"),
                ("wwn", "0x5000c500a1b2c3d4"),
            ]
        ),
        Some(1.0)
    );
    assert_eq!(value(&out, "node_disk_ata_rotation_rate_rpm", &[sda]), Some(7200.0));
    assert_eq!(
        value(
            &out,
            "node_disk_filesystem_info",
            &[
                sda,
                ("type", "linux_raid_member"),
                ("usage", "raid"),
                ("uuid", "0fbf5f2c-add2-43c2-bd78-a4be3ab709ef"),
                ("version", "1.2"),
            ]
        ),
        Some(1.0)
    );
    let nvme = ("device", "nvme0n1");
    assert_eq!(value(&out, "node_disk_flush_requests_total", &[nvme]), Some(30.0));
    assert_eq!(
        value(&out, "node_disk_discarded_sectors_total", &[nvme]),
        Some(204800.0)
    );
    // Partitions and loop devices are excluded by node_exporter's default filter.
    for dev in ["sda1", "loop0"] {
        assert!(
            !out.samples()
                .iter()
                .any(|s| s.labels.contains(&("device".into(), dev.into()))),
            "{dev}"
        );
    }
}

#[test]
fn nvme_controller_resetting_is_visible() {
    let out = collect("nvme", &fixture("disks"));
    assert_eq!(
        value(
            &out,
            "node_nvme_info",
            &[
                ("device", "nvme0"),
                ("firmware_revision", "VDV10131"),
                ("model", "INTEL SSDPE2KX040T8"),
                ("serial", "PHLJ000000AB4P0DGN"),
                ("state", "resetting"),
                ("cntlid", "0"),
            ]
        ),
        Some(1.0)
    );
    let ns = [("device", "nvme0"), ("nsid", "1")];
    assert_eq!(
        value(&out, "node_nvme_namespace_size_bytes", &ns),
        Some(7814037168.0 * 512.0)
    );
    assert_eq!(value(&out, "node_nvme_namespace_used_bytes", &ns), Some(51200.0));
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn kernel_events(out: &Emitter, kind: &str, device: &str) -> Option<f64> {
    value(
        out,
        "hostpulse_kernel_events_total",
        &[("kind", kind), ("device", device)],
    )
}

#[test]
fn kmsg_file_starts_at_the_end_and_counts_appended_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg");
    std::fs::copy(fixture("kmsg").join("boot.log"), &log).unwrap();
    let options = SourceOptions {
        kmsg: Some(log.clone()),
        ..SourceOptions::default()
    };
    let mut kmsg = source("kmsg", &options);
    let paths = paths(dir.path());

    // History already in the log is not replayed.
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert!(out.events().is_empty());
    assert_eq!(count(&out, "hostpulse_kernel_events_total"), 0);

    append(
        &log,
        &std::fs::read_to_string(fixture("kmsg").join("trouble.log")).unwrap(),
    );
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    let expected = [
        ("mce", "", 1.0),
        ("edac_ce", "mc0", 2.0),
        ("pcie_aer", "0000:3b:00.0", 2.0),
        ("nvme_timeout", "nvme0", 2.0),
        ("ata_error", "ata3", 2.0),
        ("medium_error", "ata3", 1.0),
        ("medium_error", "sdc", 2.0),
        ("io_error", "sdc", 2.0),
        ("buffer_io_error", "sdc1", 1.0),
        ("fs_error", "sdc1", 1.0),
        ("fs_readonly", "sdc1", 1.0),
        ("thermal_throttle", "cpu12", 1.0),
        ("hung_task", "", 1.0),
        ("soft_lockup", "cpu7", 1.0),
        ("oom_kill", "", 1.0),
    ];
    for (kind, device, n) in expected {
        assert_eq!(kernel_events(&out, kind, device), Some(n), "{kind} {device}");
    }
    assert_eq!(count(&out, "hostpulse_kernel_events_total"), expected.len());
    assert_eq!(out.events().len(), 21);
    let first = &out.events()[0];
    assert_eq!(first.kind, "mce");
    assert_eq!(first.message, "mce: [Hardware Error]: Machine check events logged");
    assert!(first.timestamp_ms > 0);
    let aer = out.events().iter().find(|e| e.kind == "pcie_aer").unwrap();
    assert_eq!(aer.device, "0000:3b:00.0");

    // Nothing new: the counters stay, no events.
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert!(out.events().is_empty());
    assert_eq!(kernel_events(&out, "edac_ce", "mc0"), Some(2.0));

    // A line still being written is read once complete.
    append(&log, "4,1300,86900000000,-;nvme nvme0: I/O 1 QID 1 timeout, aborting");
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert_eq!(kernel_events(&out, "nvme_timeout", "nvme0"), Some(2.0));
    append(&log, "\n");
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert_eq!(kernel_events(&out, "nvme_timeout", "nvme0"), Some(3.0));
    assert_eq!(out.events().len(), 1);
}

#[test]
fn kmsg_events_are_rate_limited_but_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg");
    std::fs::write(&log, "").unwrap();
    let options = SourceOptions {
        kmsg: Some(log.clone()),
        ..SourceOptions::default()
    };
    let mut kmsg = source("kmsg", &options);
    let paths = paths(dir.path());
    kmsg.collect(&paths, &mut Emitter::new()).unwrap();
    let storm: String = (0..50)
        .map(|i| format!("3,{i},{i}000,-;blk_update_request: I/O error, dev sdd, sector {i} op 0x0:(READ)\n"))
        .chain(std::iter::once(
            "0,99,99000,-;mce: [Hardware Error]: Machine check events logged\n".to_string(),
        ))
        .collect();
    append(&log, &storm);
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert_eq!(kernel_events(&out, "io_error", "sdd"), Some(50.0));
    assert_eq!(out.events().iter().filter(|e| e.kind == "io_error").count(), 20);
    // Another kind in the same cycle has its own budget.
    assert_eq!(out.events().iter().filter(|e| e.kind == "mce").count(), 1);

    // A truncated (rotated) file is read from its start.
    std::fs::write(
        &log,
        "3,1,1,-;Buffer I/O error on dev sdd1, logical block 9, async page read\n",
    )
    .unwrap();
    let mut out = Emitter::new();
    kmsg.collect(&paths, &mut out).unwrap();
    assert_eq!(kernel_events(&out, "buffer_io_error", "sdd1"), Some(1.0));
    assert_eq!(kernel_events(&out, "io_error", "sdd"), Some(50.0));
}

#[test]
fn rapl_wrap_keeps_the_hostpulse_total_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("sys/class/powercap/intel-rapl:0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("name"), "package-0\n").unwrap();
    std::fs::write(zone.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::write(zone.join("energy_uj"), "262143000000\n").unwrap();
    let mut rapl = source("rapl", &SourceOptions::default());
    let paths = paths(dir.path());
    let path = zone.to_string_lossy().into_owned();
    let raw = |out: &Emitter| {
        value(
            out,
            "node_rapl_package_joules_total",
            &[("index", "0"), ("path", &path)],
        )
    };
    let total = |out: &Emitter| value(out, "hostpulse_rapl_energy_joules_total", &[("zone", "intel-rapl:0")]);

    let mut out = Emitter::new();
    rapl.collect(&paths, &mut out).unwrap();
    assert_eq!(raw(&out), Some(262143.0));
    assert_eq!(total(&out), Some(262143.0));

    // The counter wrapped: 328850 µJ to the top of the range, then 1671150 µJ.
    std::fs::write(zone.join("energy_uj"), "1671150\n").unwrap();
    let mut out = Emitter::new();
    rapl.collect(&paths, &mut out).unwrap();
    assert_eq!(raw(&out), Some(1.67115));
    assert_eq!(total(&out), Some(262145.0));
}

#[test]
fn absent_hardware_is_silent_success() {
    let empty = tempfile::tempdir().unwrap();
    for name in [
        "thermal_zone",
        "thermal_throttle",
        "cpufreq",
        "pressure",
        "edac",
        "mdraid",
        "nvme",
        "netclass",
        "diskstats",
        "kmsg",
        "rapl",
    ] {
        let out = collect(name, empty.path());
        assert!(out.samples().is_empty(), "{name}: {:?}", out.samples());
        assert!(out.events().is_empty(), "{name}");
    }
}
