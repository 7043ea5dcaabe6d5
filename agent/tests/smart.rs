//! SMART source tests through the real sampler and Prometheus text printer.
//!
//! `dir_mode` reads `tests/fixtures/smart`, a directory written by hand the
//! way `deploy/hostpulse-smartctl-dump` writes one: a healthy SATA drive
//! with packed raw values, a failing NVMe drive, a drive smartctl could not
//! open, and a half-written temporary file the reader must skip.
//! `corpus` (ignored by default; CI runs it with `-- --ignored`) replays the
//! real smartctl outputs in `../shared/fixtures/smartctl`.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostpulse_agent::source::SourceOptions;
use hostpulse_agent::sources::smart::parse_smartctl_json;
use hostpulse_agent::{Cycle, HostPaths, Sampler, exposition};

fn sample_dir(dir: &Path) -> Cycle {
    let options = SourceOptions {
        smartctl_json_dir: Some(dir.to_path_buf()),
        ..SourceOptions::default()
    };
    let mut sampler = Sampler::build(HostPaths::default(), &["smart".to_string()], &[], &options).unwrap();
    // Debug builds parse the whole corpus slowly; this test is not about deadlines.
    sampler.set_deadline(Duration::from_secs(120));
    sampler.sample()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(cycle: &Cycle, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = cycle
        .samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
    found.first().copied()
}

mod dir_mode {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart")
    }

    #[test]
    fn healthy_failing_and_unreadable_drives() {
        let cycle = sample_dir(&fixture());
        assert_eq!(
            value(&cycle, "hostpulse_source_success", &[("source", "smart")]),
            Some(1.0)
        );

        let sda = [("device", "sda")];
        assert_eq!(value(&cycle, "hostpulse_smart_healthy", &sda), Some(1.0));
        assert_eq!(value(&cycle, "smartctl_device_smart_status", &sda), Some(1.0));
        let raw = |id: &str| {
            value(
                &cycle,
                "smartctl_device_attribute",
                &[("device", "sda"), ("attribute_id", id), ("attribute_value_type", "raw")],
            )
        };
        assert_eq!(raw("194"), Some(34.0), "packed temperature decoded");
        assert_eq!(raw("188"), Some(3.0), "packed command timeouts decoded");
        assert_eq!(
            value(&cycle, "smartctl_device_power_on_seconds", &sda),
            Some(3_600_000.0)
        );

        let nvme = [("device", "nvme0")];
        assert_eq!(value(&cycle, "hostpulse_smart_healthy", &nvme), Some(0.0));
        assert_eq!(value(&cycle, "smartctl_device_critical_warning", &nvme), Some(4.0));
        assert_eq!(value(&cycle, "smartctl_device_media_errors", &nvme), Some(17.0));
        assert_eq!(
            value(
                &cycle,
                "hostpulse_smart_device_state",
                &[("device", "nvme0"), ("state", "failed")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &cycle,
                "hostpulse_smart_exit_status_bit",
                &[("device", "nvme0"), ("bit", "disk_failing")]
            ),
            Some(1.0)
        );

        // The unreadable drive is present, as a state with smartctl's reason.
        let reason = "Smartctl open device: /dev/sdc failed: No such device or address";
        assert_eq!(
            value(
                &cycle,
                "hostpulse_smart_device_state",
                &[("device", "sdc"), ("state", "unreadable"), ("reason", reason)]
            ),
            Some(1.0)
        );
        assert_eq!(value(&cycle, "hostpulse_smart_healthy", &[("device", "sdc")]), None);

        // The temporary file of an unfinished write is not a drive.
        assert!(
            !cycle
                .samples
                .iter()
                .any(|s| s.labels.iter().any(|(_, v)| v.contains("sdd")))
        );

        let text = exposition::render(&cycle);
        assert!(text.contains("# TYPE smartctl_device_attribute gauge\n"), "{text}");
        assert!(
            text.contains("smartctl_device_smartctl_exit_status{device=\"sdc\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn a_corrupt_file_fails_the_source_but_not_the_other_drives() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture().join("sda.json"), dir.path().join("sda.json")).unwrap();
        std::fs::write(dir.path().join("sdx.json"), "{\"smartctl\": ").unwrap();
        let cycle = sample_dir(dir.path());
        assert_eq!(
            value(&cycle, "hostpulse_source_success", &[("source", "smart")]),
            Some(0.0)
        );
        assert_eq!(
            value(&cycle, "hostpulse_smart_healthy", &[("device", "sda")]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &cycle,
                "hostpulse_smart_device_state",
                &[("device", "sdx"), ("state", "unreadable")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_missing_directory_is_no_data_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let cycle = sample_dir(&dir.path().join("not-yet-written"));
        assert_eq!(
            value(&cycle, "hostpulse_source_success", &[("source", "smart")]),
            Some(1.0)
        );
        assert!(!cycle.samples.iter().any(|s| s.name.starts_with("smartctl_")));
    }
}

mod corpus {
    use super::*;
    use serde_json::Value;

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/smartctl")
    }

    /// The failure signs the issue names, read straight from the JSON
    /// without the agent's parser: SMART verdict failed, NVMe critical
    /// warning, reallocated/pending/offline-uncorrectable sectors, or a
    /// SCSI grown defect list (SCSI's reallocated sectors).
    fn shows_failure(json: &Value) -> bool {
        let passed_false = json.pointer("/smart_status/passed") == Some(&Value::Bool(false));
        let critical = json
            .pointer("/nvme_smart_health_information_log/critical_warning")
            .and_then(Value::as_u64)
            .is_some_and(|w| w != 0);
        let sectors = json
            .pointer("/ata_smart_attributes/table")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|a| {
                matches!(a["id"].as_u64(), Some(5 | 197 | 198))
                    && a.pointer("/raw/value").and_then(Value::as_u64).unwrap_or(0) > 0
            });
        let defects = json.get("scsi_grown_defect_list").and_then(Value::as_u64).unwrap_or(0) > 0;
        passed_false || critical || sectors || defects
    }

    fn json_files() -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI runs it with --ignored)"]
    fn every_drive_parses_and_failing_drives_are_unhealthy() {
        let files = json_files();
        // 168 drive files (plus the LICENSE, which makes the folder's 169).
        assert_eq!(files.len(), 168);
        let mut unhealthy = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let report = parse_smartctl_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let json: Value = serde_json::from_str(&text).unwrap();
            let reasons = report
                .unhealthy_reasons()
                .unwrap_or_else(|| panic!("{}: no SMART data found", path.display()));
            assert_eq!(
                !reasons.is_empty(),
                shows_failure(&json),
                "{}: reasons {reasons:?}",
                path.display()
            );
            if !reasons.is_empty() {
                unhealthy.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        assert_eq!(
            unhealthy,
            vec![
                "SEAGATE_ST373453LC_26.json",
                "ST3500418AS_11.json",
                "ST3500418AS_12.json",
                "nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json",
                "sat-Intel_S3520_Series_SSDs-INTEL_SSDSC2BB016T7-sdc.json",
                "sat-Intel_S4510_S4610_S4500_S4600_Series_SSDs-INTEL_SSDSC2KB240G7-sdd.json",
                "sat-Phison_Driven_SSDs-KINGSTON_SKC400S371T-sda.json",
                "sat-Seagate_Constellation_ES.3-ST3000NM0033-9ZM178-sdc.json",
            ]
        );
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI runs it with --ignored)"]
    fn the_whole_corpus_through_the_sampler() {
        let cycle = sample_dir(&corpus_dir());
        assert_eq!(
            value(&cycle, "hostpulse_source_success", &[("source", "smart")]),
            Some(1.0)
        );
        let healthy: Vec<f64> = cycle
            .samples
            .iter()
            .filter(|s| s.name == "hostpulse_smart_healthy")
            .map(|s| s.value)
            .collect();
        assert_eq!(healthy.len(), 168);
        assert_eq!(healthy.iter().filter(|v| **v == 0.0).count(), 8);
        // Not one drive of the corpus is unreadable.
        assert_eq!(
            cycle
                .samples
                .iter()
                .filter(|s| s.name == "hostpulse_smart_device_state")
                .filter(|s| s.labels.iter().any(|(k, v)| k == "state" && v == "unreadable"))
                .count(),
            0
        );
    }

    #[test]
    #[ignore = "needs ../shared/fixtures (CI runs it with --ignored)"]
    fn packed_raw_values_are_decoded_as_smartctl_shows_them() {
        let read = |name: &str| {
            let text = std::fs::read_to_string(corpus_dir().join(name)).unwrap();
            parse_smartctl_json(&text).unwrap()
        };
        let raw = |name: &str, id: u32| read(name).attributes.iter().find(|a| a.id == id).and_then(|a| a.raw);
        // raw.value 176094511130, raw.string "26 (Min/Max 13/41)".
        assert_eq!(raw("HGST_HUS724020ALE640_28.json", 194), Some(26.0));
        // raw.value 656146467, raw.string "35 (Min/Max 28/39)".
        assert_eq!(raw("ST3200820AS_15.json", 190), Some(35.0));
        // raw.value 8590065666, raw.string "2 2 2" (three 16-bit counters).
        assert_eq!(
            raw(
                "sat-Seagate_Enterprise_Capacity_3.5_HDD-ST2000NM0008-2F3100-sdl.json",
                188
            ),
            Some(2.0)
        );
        // raw.value 115594749838557, raw.string "34013 (105 34 0)".
        assert_eq!(
            raw(
                "sat-Seagate_Enterprise_Capacity_3.5_HDD-ST10000NM0016-1TT101-sda.json",
                9
            ),
            Some(34013.0)
        );
        let nvme = read("nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json");
        assert_eq!(nvme.nvme.and_then(|n| n.critical_warning), Some(16.0));
        assert_eq!(read("SEAGATE_ST373453LC_26.json").scsi_grown_defects, Some(260.0));
    }
}
