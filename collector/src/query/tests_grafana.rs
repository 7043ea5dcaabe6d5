//! The Grafana dashboards in `deploy/grafana/dashboards/` against the query
//! engine: every panel query, with its template variables filled in, runs
//! against a store holding fixture data shaped like what the agent emits,
//! evaluates without error, and (except for families the fixture does not
//! hold) returns data, so no panel of a shipped dashboard is broken or
//! empty.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::Value as Json;

use super::eval::Value;
use crate::model::{Labels, SeriesSamples};
use crate::store::{Store, StoreOptions};

/// Fixture start: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;
const STEP: i64 = 15_000;
const SAMPLES: i64 = 121;

/// Metric families no fixture series carries, whose panels may be empty.
const ABSENT_FAMILIES: &[&str] = &["ALERTS"];

/// Two hosts with every family the dashboards show: gauges constant per
/// series, counters growing so that rates are non-zero.
fn fixture() -> Vec<SeriesSamples> {
    let mut out = Vec::new();
    for (h, host) in ["host-01", "host-02"].iter().enumerate() {
        let mut add = |name: &str, extra: &[(&str, &str)], start: f64, growth: f64| {
            let mut pairs: Vec<(&str, &str)> = vec![("__name__", name), ("instance", host), ("job", "hostpulse")];
            pairs.extend_from_slice(extra);
            out.push(SeriesSamples {
                labels: Labels::from_pairs(&pairs),
                samples: (0..SAMPLES)
                    .map(|i| (T0 + i * STEP, start + growth * i as f64 + h as f64))
                    .collect(),
            });
        };
        add("up", &[], 1.0, 0.0);
        for sensor in ["temp1", "temp2"] {
            let l = [("chip", "platform_coretemp_0"), ("sensor", sensor)];
            add("node_hwmon_temp_celsius", &l, 55.0, 0.01);
            add("node_hwmon_temp_crit_celsius", &l, 100.0, 0.0);
        }
        add(
            "node_hwmon_fan_rpm",
            &[("chip", "platform_nct6775_656"), ("sensor", "fan1")],
            1200.0,
            0.0,
        );
        add(
            "node_hwmon_in_volts",
            &[("chip", "platform_nct6775_656"), ("sensor", "in0")],
            1.2,
            0.0,
        );
        add(
            "node_hwmon_power_watt",
            &[("chip", "acpi_power_meter"), ("sensor", "power1")],
            180.0,
            0.0,
        );
        add(
            "node_thermal_zone_temp",
            &[("type", "x86_pkg_temp"), ("zone", "0")],
            52.0,
            0.0,
        );
        add(
            "node_rapl_package_joules_total",
            &[("index", "0"), ("path", "/sys/class/powercap/intel-rapl:0")],
            1e6,
            1500.0,
        );
        add("node_cpu_package_throttles_total", &[("package", "0")], 3.0, 0.1);
        add(
            "node_cpu_core_throttles_total",
            &[("core", "0"), ("package", "0")],
            2.0,
            0.1,
        );
        for cpu in ["0", "1"] {
            add("node_cpu_seconds_total", &[("cpu", cpu), ("mode", "idle")], 1e5, 12.0);
            add("node_cpu_seconds_total", &[("cpu", cpu), ("mode", "user")], 1e4, 2.5);
            add("node_cpu_seconds_total", &[("cpu", cpu), ("mode", "system")], 1e3, 0.5);
        }
        add("node_memory_MemTotal_bytes", &[], 64e9, 0.0);
        add("node_memory_MemAvailable_bytes", &[], 40e9, -1e6);
        add("node_edac_correctable_errors_total", &[("controller", "0")], 4.0, 0.05);
        add("node_edac_uncorrectable_errors_total", &[("controller", "0")], 0.0, 0.0);
        for (mp, dev) in [("/", "/dev/sda1"), ("/data", "/dev/md0")] {
            let l = [("device", dev), ("fstype", "ext4"), ("mountpoint", mp)];
            add("node_filesystem_avail_bytes", &l, 2e11, -1e6);
            add("node_filesystem_size_bytes", &l, 5e11, 0.0);
        }
        add("node_disk_read_bytes_total", &[("device", "sda")], 1e9, 1e6);
        add("node_disk_written_bytes_total", &[("device", "sda")], 2e9, 3e6);
        add("node_disk_io_time_seconds_total", &[("device", "sda")], 100.0, 1.5);
        add("smartctl_device_smart_status", &[("device", "sda")], 1.0, 0.0);
        add(
            "smartctl_device_temperature",
            &[("device", "sda"), ("temperature_type", "current")],
            38.0,
            0.0,
        );
        add("smartctl_device_percentage_used", &[("device", "nvme0")], 3.0, 0.0);
        add("smartctl_device_media_errors", &[("device", "nvme0")], 0.0, 0.0);
        for state in ["active", "failed", "spare"] {
            add(
                "node_md_disks",
                &[("device", "md0"), ("state", state)],
                if state == "active" { 2.0 } else { 0.0 },
                0.0,
            );
        }
        add("node_md_disks_required", &[("device", "md0")], 2.0, 0.0);
        add("node_network_up", &[("device", "eth0")], 1.0, 0.0);
        add("node_network_carrier_changes_total", &[("device", "eth0")], 2.0, 0.01);
        add("node_network_receive_bytes_total", &[("device", "eth0")], 1e10, 2e6);
        add("node_network_transmit_bytes_total", &[("device", "eth0")], 5e9, 1e6);
        add(
            "hostpulse_kernel_events_total",
            &[("device", "cpu0"), ("kind", "mce")],
            1.0,
            0.02,
        );
    }
    out
}

/// Every `(dashboard, panel title, expr)` of the shipped dashboards.
fn panel_queries() -> Vec<(String, String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let dash: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().to_string();
                out.push((name.clone(), panel["title"].as_str().unwrap().to_string(), expr));
            }
        }
    }
    out
}

/// Fills in the dashboards' template variables as Grafana would.
fn substitute(expr: &str) -> String {
    expr.replace("$instance", "host-01")
        .replace("$job", "hostpulse")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
}

#[tokio::test]
async fn every_dashboard_panel_runs_and_shows_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store.append_unsequenced(fixture()).await.unwrap();
    let queries = panel_queries();
    assert!(queries.len() >= 30, "{} panel queries", queries.len());
    let mut problems = Vec::new();
    for (dash, title, expr) in &queries {
        let text = substitute(expr);
        assert!(
            !text.contains('$'),
            "{dash} / {title}: unsubstituted variable in {text}"
        );
        let parsed = match super::eval::parse(&text) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{dash} / {title}: {text}: parse error {e}"));
                continue;
            }
        };
        let end = T0 + (SAMPLES - 1) * STEP;
        let result = super::range_query(
            store.clone(),
            parsed,
            end - 20 * 60_000,
            end,
            60_000,
            Duration::from_secs(30),
        )
        .await;
        let may_be_empty = ABSENT_FAMILIES.iter().any(|f| text.contains(f));
        match result {
            Err(e) => problems.push(format!("{dash} / {title}: {text}: {e}")),
            Ok(Value::Matrix(m)) if m.is_empty() && !may_be_empty => {
                problems.push(format!("{dash} / {title}: {text}: no data"))
            }
            Ok(Value::Matrix(_)) => {}
            Ok(other) => problems.push(format!("{dash} / {title}: {text}: unexpected {other:?}")),
        }
    }
    assert!(problems.is_empty(), "broken panels:\n{}", problems.join("\n"));
}

#[test]
fn provisioning_points_grafana_at_the_collector() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/provisioning/datasources/hostpulse.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("type: prometheus"), "{text}");
    assert!(text.contains("url: http://127.0.0.1:9470"), "{text}");
    // Every panel uses the dashboard's `datasource` variable, which picks
    // among Prometheus-type data sources such as the provisioned one.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    for entry in std::fs::read_dir(dir).unwrap() {
        let dash: Json = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let vars = dash["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["query"] == "prometheus")
        );
        for panel in dash["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        }
    }
}
