//! Fixture-tree tests of the agent's sources, run through the real sampler
//! and Prometheus text printer.
//!
//! `hot` runs every registered source against `tests/fixtures/hot`, a small
//! tree written by hand (one coretemp package above its critical
//! temperature, one Super-I/O chip running normally, and minimal procfs
//! files); the end-to-end tests reuse that tree. `node_exporter_reference`
//! (ignored by default, run by CI with `-- --ignored`) samples the real
//! captures in `../shared/fixtures/node-exporter` and requires every line of
//! each family we share with node_exporter to equal its `e2e-output.txt`.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hostpulse_agent::{HostPaths, Sampler, exposition};

/// One series of a text exposition: name, sorted labels.
type SeriesKey = (String, Vec<(String, String)>);

/// Parses Prometheus text format into series → value text (values are kept
/// as text so the float formatting is compared too).
fn parse_exposition(text: &str) -> BTreeMap<SeriesKey, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
            None => (series, Vec::new()),
        };
        out.insert((name.to_string(), labels), value.to_string());
    }
    out
}

/// Parses `a="x",b="y\"z"` (without the braces).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((name, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels.sort();
    labels
}

/// `# HELP` and `# TYPE` lines by metric name.
fn parse_meta(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) else {
            continue;
        };
        let name = rest.split(' ').next().unwrap_or_default();
        out.entry(name.to_string()).or_default().push(line.to_string());
    }
    out
}

fn label<'a>(key: &'a SeriesKey, name: &str) -> Option<&'a str> {
    key.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn render(paths: HostPaths) -> String {
    let mut sampler = Sampler::new(paths, &[]).unwrap();
    exposition::render(&sampler.sample())
}

mod hot {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hot")
    }

    fn paths() -> HostPaths {
        let root = fixture();
        HostPaths {
            sysfs: root.join("sys"),
            procfs: root.join("proc"),
            rootfs: root.clone(),
            udev_data: root.join("udev"),
            dev: root.join("dev"),
        }
    }

    fn sampled() -> BTreeMap<SeriesKey, String> {
        parse_exposition(&render(paths()))
    }

    fn value(series: &BTreeMap<SeriesKey, String>, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        let mut labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.sort();
        series.get(&(name.to_string(), labels)).cloned()
    }

    #[test]
    fn every_source_succeeds() {
        let series = sampled();
        for source in [
            "cpu",
            "meminfo",
            "loadavg",
            "time",
            "filesystem",
            "netdev",
            "hwmon",
            "rapl",
            "power_supply",
        ] {
            assert_eq!(
                value(&series, "hostpulse_source_success", &[("source", source)]).as_deref(),
                Some("1"),
                "{source}"
            );
        }
    }

    #[test]
    fn coretemp_above_critical_is_visible() {
        let series = sampled();
        let chip = ("chip", "platform_coretemp_0");
        let temp1 = ("sensor", "temp1");
        let get = |name: &str| value(&series, name, &[chip, temp1]);
        assert_eq!(get("node_hwmon_temp_celsius").as_deref(), Some("95"));
        assert_eq!(get("node_hwmon_temp_crit_celsius").as_deref(), Some("90"));
        assert_eq!(get("node_hwmon_temp_max_celsius").as_deref(), Some("80"));
        assert_eq!(get("node_hwmon_temp_crit_alarm_celsius").as_deref(), Some("0.001"));
        assert_eq!(
            value(&series, "node_hwmon_chip_names", &[chip, ("chip_name", "coretemp")]).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &series,
                "node_hwmon_sensor_label",
                &[chip, temp1, ("label", "Package id 0")]
            )
            .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn chip_without_device_link_is_named_by_its_name_file() {
        let series = sampled();
        let chip = ("chip", "nct6779");
        let get = |name: &str, sensor: &str| value(&series, name, &[chip, ("sensor", sensor)]);
        assert_eq!(get("node_hwmon_temp_celsius", "temp1").as_deref(), Some("45"));
        assert_eq!(get("node_hwmon_temp_celsius", "temp2").as_deref(), Some("38.5"));
        assert_eq!(get("node_hwmon_temp_crit_celsius", "temp1").as_deref(), Some("100"));
        assert_eq!(get("node_hwmon_fan_rpm", "fan2").as_deref(), Some("1098"));
        assert_eq!(get("node_hwmon_fan_min_rpm", "fan2").as_deref(), Some("0"));
        assert_eq!(get("node_hwmon_in_volts", "in0").as_deref(), Some("0.792"));
        // No temperature of this chip is at or above its critical point.
        for (key, v) in &series {
            if key.0 == "node_hwmon_temp_celsius" && label(key, "chip") == Some("nct6779") {
                let crit = series
                    .get(&("node_hwmon_temp_crit_celsius".to_string(), key.1.clone()))
                    .unwrap();
                assert!(v.parse::<f64>().unwrap() < crit.parse::<f64>().unwrap());
            }
        }
    }

    #[test]
    fn procfs_families() {
        let series = sampled();
        let get = |name: &str, labels: &[(&str, &str)]| value(&series, name, labels);
        assert_eq!(
            get("node_memory_MemTotal_bytes", &[]).as_deref(),
            Some("1.6710053888e+10")
        );
        assert_eq!(
            get("node_memory_Active_anon_bytes", &[]).as_deref(),
            Some("2.068484096e+09")
        );
        assert_eq!(get("node_memory_HugePages_Total", &[]).as_deref(), Some("0"));
        assert_eq!(get("node_memory_HardwareCorrupted_bytes", &[]).as_deref(), Some("8192"));
        assert_eq!(
            get("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]).as_deref(),
            Some("200")
        );
        assert_eq!(
            get("node_cpu_guest_seconds_total", &[("cpu", "0"), ("mode", "user")]).as_deref(),
            Some("0.02")
        );
        assert_eq!(get("node_boot_time_seconds", &[]).as_deref(), Some("1.7e+09"));
        assert_eq!(get("node_context_switches_total", &[]).as_deref(), Some("654321"));
        assert_eq!(get("node_intr_total", &[]).as_deref(), Some("123456"));
        assert_eq!(get("node_forks_total", &[]).as_deref(), Some("4242"));
        assert_eq!(get("node_procs_running", &[]).as_deref(), Some("3"));
        assert_eq!(get("node_procs_blocked", &[]).as_deref(), Some("1"));
        assert_eq!(get("node_load1", &[]).as_deref(), Some("1.5"));
        assert_eq!(get("node_load15", &[]).as_deref(), Some("0.25"));
        let eth0 = [("device", "eth0")];
        assert_eq!(get("node_network_receive_bytes_total", &eth0).as_deref(), Some("5e+06"));
        assert_eq!(
            get("node_network_receive_multicast_total", &eth0).as_deref(),
            Some("30")
        );
        assert_eq!(
            get("node_network_transmit_packets_total", &eth0).as_deref(),
            Some("3000")
        );
        assert!(get("node_time_seconds", &[]).is_some());
    }

    #[test]
    fn filesystems_are_stated_under_rootfs() {
        let series = sampled();
        let root = [("device", "/dev/sda1"), ("fstype", "ext4"), ("mountpoint", "/")];
        let nfs = [
            ("device", "server:/export"),
            ("fstype", "nfs4"),
            ("mountpoint", "/srv/nfs"),
        ];
        assert_eq!(
            value(&series, "node_filesystem_device_error", &root).as_deref(),
            Some("0")
        );
        assert_eq!(value(&series, "node_filesystem_readonly", &root).as_deref(), Some("0"));
        assert!(value(&series, "node_filesystem_size_bytes", &root).is_some());
        assert!(value(&series, "node_filesystem_files_free", &root).is_some());
        // The NFS mount point does not exist in the fixture: an error, not a crash.
        assert_eq!(
            value(&series, "node_filesystem_device_error", &nfs).as_deref(),
            Some("1")
        );
        assert!(value(&series, "node_filesystem_size_bytes", &nfs).is_none());
        assert!(!series.keys().any(|k| label(k, "fstype") == Some("proc")));
    }

    #[test]
    fn rapl_and_power_supply() {
        let series = sampled();
        let zone = fixture().join("sys/class/powercap/intel-rapl:0");
        let zone = zone.to_string_lossy();
        assert_eq!(
            value(
                &series,
                "node_rapl_package_joules_total",
                &[("index", "0"), ("path", &zone)]
            )
            .as_deref(),
            Some("1234.56789")
        );
        let bat = [("power_supply", "BAT0")];
        assert_eq!(
            value(&series, "node_power_supply_capacity", &bat).as_deref(),
            Some("42")
        );
        assert_eq!(
            value(&series, "node_power_supply_voltage_volt", &bat).as_deref(),
            Some("12.1")
        );
        assert_eq!(
            value(
                &series,
                "node_power_supply_info",
                &[("power_supply", "BAT0"), ("status", "Charging"), ("type", "Battery")]
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&series, "node_power_supply_online", &[("power_supply", "AC")]).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn absent_hardware_is_not_an_error() {
        let empty = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            sysfs: empty.path().join("sys"),
            procfs: empty.path().join("proc"),
            rootfs: empty.path().to_path_buf(),
            udev_data: empty.path().join("udev"),
            dev: empty.path().join("dev"),
        };
        let series = parse_exposition(&render(paths));
        for (key, v) in &series {
            if key.0 == "hostpulse_source_success" || key.0 == "node_scrape_collector_success" {
                assert_eq!(v, "1", "{key:?}");
            }
        }
        assert!(
            !series
                .keys()
                // The clock and its discipline (adjtimex) are the running
                // kernel's whatever the roots point at, as in node_exporter;
                // the per-source self-telemetry is always there, as there.
                .any(|k| k.0.starts_with("node_")
                    && k.0 != "node_time_seconds"
                    && !k.0.starts_with("node_timex_")
                    && !k.0.starts_with("node_scrape_collector_"))
        );
    }
}

mod node_exporter_reference {
    use super::*;

    /// node_exporter's `--collector.hwmon.chip-include` for the reference
    /// output; an unanchored regex alternation, so "contains any".
    const CHIP_INCLUDE: &[&str] = &["applesmc", "asus_nb_wmi", "coretemp", "hwmon4", "ieee80211", "nct6779"];

    /// Where node_exporter's test ran: the `path` label of RAPL zones
    /// starts with it.
    const REFERENCE_SYSFS: &str = "collector/fixtures/sys";

    fn shared() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/node-exporter")
    }

    /// Copies `from` to `to`, keeping symlinks as symlinks. A small regular
    /// file whose whole content is a relative path starting with `..` is a
    /// symlink that a checkout without symlink support flattened into a file
    /// (the upstream `sys.ttar` has them as links); it is restored as a link,
    /// so the test works on both kinds of copy.
    fn copy_tree_restoring_links(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let src = entry.path();
            let dst = to.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&src).unwrap();
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
            } else if meta.is_dir() {
                copy_tree_restoring_links(&src, &dst);
            } else {
                let bytes = std::fs::read(&src).unwrap();
                let text = std::str::from_utf8(&bytes).ok().map(str::trim_end);
                match text {
                    Some(t)
                        if bytes.len() < 512
                            && (t == ".." || t.starts_with("../"))
                            && !t.contains(char::is_whitespace) =>
                    {
                        std::os::unix::fs::symlink(t, &dst).unwrap();
                    }
                    _ => std::fs::write(&dst, &bytes).unwrap(),
                }
            }
        }
    }

    /// A family to compare: a filter over series keys.
    struct Family {
        what: &'static str,
        includes: fn(&SeriesKey) -> bool,
    }

    fn families() -> Vec<Family> {
        vec![
            Family {
                what: "node_hwmon_* (all, chips in the reference's chip filter)",
                includes: |k| {
                    k.0.starts_with("node_hwmon_")
                        && label(k, "chip").is_some_and(|c| CHIP_INCLUDE.iter().any(|p| c.contains(p)))
                },
            },
            Family {
                what: "node_memory_* (meminfo, not meminfo_numa)",
                includes: |k| k.0.starts_with("node_memory_") && !k.0.starts_with("node_memory_numa_"),
            },
            Family {
                what: "node_cpu_seconds_total / node_cpu_guest_seconds_total",
                includes: |k| k.0 == "node_cpu_seconds_total" || k.0 == "node_cpu_guest_seconds_total",
            },
            Family {
                what: "stat: boot time, context switches, interrupts, forks, procs",
                includes: |k| {
                    [
                        "node_boot_time_seconds",
                        "node_context_switches_total",
                        "node_intr_total",
                        "node_forks_total",
                        "node_procs_running",
                        "node_procs_blocked",
                    ]
                    .contains(&k.0.as_str())
                },
            },
            Family {
                what: "node_load*",
                includes: |k| ["node_load1", "node_load5", "node_load15"].contains(&k.0.as_str()),
            },
            Family {
                what: "node_rapl_*",
                includes: |k| k.0.starts_with("node_rapl_"),
            },
            Family {
                what: "node_power_supply_*",
                includes: |k| k.0.starts_with("node_power_supply_"),
            },
            Family {
                what: "node_thermal_zone_temp / node_cooling_device_*",
                includes: |k| k.0 == "node_thermal_zone_temp" || k.0.starts_with("node_cooling_device_"),
            },
            Family {
                what: "node_cpu_{core,package}_throttles_total",
                includes: |k| k.0 == "node_cpu_core_throttles_total" || k.0 == "node_cpu_package_throttles_total",
            },
            Family {
                what: "cpufreq: node_cpu_scaling_* (node_cpu_frequency_hertz comes from /proc/cpuinfo there)",
                includes: |k| k.0.starts_with("node_cpu_scaling_"),
            },
            Family {
                what: "node_edac_*",
                includes: |k| k.0.starts_with("node_edac_"),
            },
            Family {
                what: "node_pressure_*",
                includes: |k| k.0.starts_with("node_pressure_"),
            },
            Family {
                what: "node_vmstat_* (default field filter)",
                includes: |k| k.0.starts_with("node_vmstat_"),
            },
            Family {
                what: "node_netstat_* (netstat, snmp, snmp6; default field filter)",
                includes: |k| k.0.starts_with("node_netstat_"),
            },
            Family {
                what: "node_sockstat_*",
                includes: |k| k.0.starts_with("node_sockstat_"),
            },
            Family {
                what: "node_softnet_*",
                includes: |k| k.0.starts_with("node_softnet_"),
            },
            Family {
                what: "node_filefd_*",
                includes: |k| k.0.starts_with("node_filefd_"),
            },
            Family {
                what: "node_entropy_*",
                includes: |k| k.0.starts_with("node_entropy_"),
            },
            Family {
                what: "node_nf_conntrack_*",
                includes: |k| k.0.starts_with("node_nf_conntrack_"),
            },
            Family {
                what: "node_time_clocksource_* (timex source)",
                includes: |k| k.0.starts_with("node_time_clocksource_"),
            },
            Family {
                what: "node_schedstat_*",
                includes: |k| k.0.starts_with("node_schedstat_"),
            },
            Family {
                what: "node_dmi_info (inventory source)",
                includes: |k| k.0 == "node_dmi_info",
            },
            Family {
                what: "node_md_* (mdstat and sys/block/md*/md)",
                includes: |k| k.0.starts_with("node_md_"),
            },
            Family {
                what: "node_nvme_*",
                includes: |k| k.0.starts_with("node_nvme_"),
            },
            Family {
                what: "node_disk_* (diskstats with udev facts)",
                includes: |k| k.0.starts_with("node_disk_"),
            },
            Family {
                what: "netclass: node_network_* from /sys/class/net (ignored-devices=(dmz|int))",
                includes: |k| {
                    [
                        "node_network_up",
                        "node_network_info",
                        "node_network_address_assign_type",
                        "node_network_carrier",
                        "node_network_carrier_changes_total",
                        "node_network_carrier_up_changes_total",
                        "node_network_carrier_down_changes_total",
                        "node_network_device_id",
                        "node_network_dormant",
                        "node_network_flags",
                        "node_network_iface_id",
                        "node_network_iface_link",
                        "node_network_iface_link_mode",
                        "node_network_mtu_bytes",
                        "node_network_name_assign_type",
                        "node_network_net_dev_group",
                        "node_network_speed_bytes",
                        "node_network_transmit_queue_length",
                        "node_network_protocol_type",
                    ]
                    .contains(&k.0.as_str())
                        && !label(k, "device").is_some_and(|d| d.contains("dmz") || d.contains("int"))
                },
            },
        ]
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI has them); run with -- --ignored"]
    fn families_match_e2e_output() {
        let shared = shared();
        let reference = std::fs::read_to_string(shared.join("e2e-output.txt"))
            .unwrap_or_else(|e| panic!("{}: {e}", shared.join("e2e-output.txt").display()));
        let reference_meta = parse_meta(&reference);
        let reference = parse_exposition(&reference);

        let work = tempfile::tempdir().unwrap();
        let sysfs = work.path().join("sys");
        copy_tree_restoring_links(&shared.join("sys"), &sysfs);
        let paths = HostPaths {
            sysfs: sysfs.clone(),
            procfs: shared.join("proc"),
            rootfs: work.path().join("root"),
            udev_data: shared.join("udev/data"),
            dev: work.path().join("dev"),
        };
        let text = render(paths);
        let our_meta = parse_meta(&text);
        let ours = parse_exposition(&text);

        // The RAPL `path` label names the sysfs the exporter was given.
        let our_sysfs = sysfs.to_string_lossy().into_owned();
        let ours: BTreeMap<SeriesKey, String> = ours
            .into_iter()
            .map(|((name, labels), v)| {
                let labels = labels
                    .into_iter()
                    .map(|(k, v)| match (k.as_str(), v.strip_prefix(&our_sysfs)) {
                        ("path", Some(rest)) if name.starts_with("node_rapl_") => {
                            (k, format!("{REFERENCE_SYSFS}{rest}"))
                        }
                        _ => (k, v),
                    })
                    .collect();
                ((name, labels), v)
            })
            .collect();

        let mut problems = Vec::new();
        for family in families() {
            let want: BTreeSet<String> = reference
                .iter()
                .filter(|(k, _)| (family.includes)(k))
                .map(|(k, v)| format!("{} {:?} {v}", k.0, k.1))
                .collect();
            let got: BTreeSet<String> = ours
                .iter()
                .filter(|(k, _)| (family.includes)(k))
                .map(|(k, v)| format!("{} {:?} {v}", k.0, k.1))
                .collect();
            assert!(
                !want.is_empty(),
                "{}: reference has no series; filter is wrong",
                family.what
            );
            for missing in want.difference(&got) {
                problems.push(format!("{}: missing {missing}", family.what));
            }
            for extra in got.difference(&want) {
                problems.push(format!("{}: extra   {extra}", family.what));
            }
            // Help and type lines must be the same too.
            let names: BTreeSet<&String> = reference
                .keys()
                .filter(|k| (family.includes)(k))
                .map(|k| &k.0)
                .collect();
            for name in names {
                if reference_meta.get(name) != our_meta.get(name) {
                    problems.push(format!(
                        "{}: meta of {name}: want {:?}, got {:?}",
                        family.what,
                        reference_meta.get(name),
                        our_meta.get(name)
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{} differences:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI has them); run with -- --ignored"]
    fn every_source_succeeds_on_the_reference_tree() {
        let shared = shared();
        let work = tempfile::tempdir().unwrap();
        let sysfs = work.path().join("sys");
        copy_tree_restoring_links(&shared.join("sys"), &sysfs);
        let paths = HostPaths {
            sysfs,
            procfs: shared.join("proc"),
            rootfs: work.path().join("root"),
            udev_data: shared.join("udev/data"),
            dev: work.path().join("dev"),
        };
        let ours = parse_exposition(&render(paths));
        for (key, v) in &ours {
            if key.0 == "hostpulse_source_success" {
                assert_eq!(v, "1", "{key:?}");
            }
        }
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI has them); run with -- --ignored"]
    fn serve_text_equals_render_on_the_reference_tree() {
        let shared = shared();
        let work = tempfile::tempdir().unwrap();
        let sysfs = work.path().join("sys");
        copy_tree_restoring_links(&shared.join("sys"), &sysfs);
        std::fs::create_dir_all(work.path().join("root")).unwrap();
        let paths = HostPaths {
            sysfs,
            procfs: shared.join("proc"),
            rootfs: work.path().join("root"),
            udev_data: shared.join("udev/data"),
            dev: work.path().join("dev"),
        };
        super::serve_text::assert_serve_text_equals_render(paths, 1000);
    }
}

/// `Sampler::render_text` (what `serve` answers a scrape with, from
/// pre-rendered series) against `exposition::render` of ordinary cycles of
/// the same sampler.
mod serve_text {
    use super::*;

    /// Samples an ordinary cycle, two serve-path texts, and another ordinary
    /// cycle; both texts must equal the ordinary ones line by line: the same
    /// lines in the same order, the same values except where the value
    /// changed between the two ordinary cycles (durations, the clock, CPU
    /// time) or is the agent's own resident memory.
    pub fn assert_serve_text_equals_render(paths: HostPaths, min_lines: usize) {
        let mut sampler = Sampler::new(paths, &[]).unwrap();
        let before = exposition::render(&sampler.sample());
        let mut first = String::new();
        sampler.render_text(&mut first);
        let mut second = String::from("kept\n");
        sampler.render_text(&mut second);
        let second = second.strip_prefix("kept\n").unwrap().to_string();
        let after = exposition::render(&sampler.sample());
        let (before, after): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
        assert_eq!(before.len(), after.len(), "ordinary cycles differ in lines");
        assert!(before.len() >= min_lines, "only {} lines", before.len());
        for text in [&first, &second] {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), before.len(), "{text}");
            for ((ours, b), a) in lines.iter().zip(&before).zip(&after) {
                if b.starts_with('#') {
                    assert_eq!(ours, b);
                    continue;
                }
                let (series, value) = ours.rsplit_once(' ').unwrap();
                let (b_series, b_value) = b.rsplit_once(' ').unwrap();
                assert_eq!(series, b_series);
                let volatile = b != a || series == "hostpulse_agent_resident_memory_bytes";
                if !volatile {
                    assert_eq!(value, b_value, "{series}");
                }
            }
        }
    }

    #[test]
    fn serve_text_equals_render_on_the_hot_fixture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hot");
        let paths = HostPaths {
            sysfs: root.join("sys"),
            procfs: root.join("proc"),
            rootfs: root.clone(),
            udev_data: root.join("udev"),
            dev: root.join("dev"),
        };
        assert_serve_text_equals_render(paths, 100);
    }
}
