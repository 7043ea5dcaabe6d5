//! The `hwmon` source: every chip under `/sys/class/hwmon` — temperatures,
//! fans, voltages, currents, power, energy, humidity, PWM settings, alarms —
//! as node_exporter's `node_hwmon_*{chip,sensor}` series, plus the
//! annotation series `node_hwmon_chip_names{chip,chip_name}` and
//! `node_hwmon_sensor_label{chip,sensor,label}`.
//!
//! Names, units and scaling follow node_exporter's `hwmon_linux.go` exactly
//! (millidegrees × 0.001 → `_celsius`, millivolts → `_volts`, microwatts →
//! `_watt`, ...), so dashboards and alert rules written for node_exporter
//! work unchanged. The `chip` label is derived from the chip's stable device
//! path, not from the unstable `hwmonN` number: the resolved `device` link's
//! parent and own directory names (`platform_coretemp_0`,
//! `pci0000:00_0000:00:1f_3`), else the `name` file, else the `hwmonN`
//! directory. When several chips hang off one device (a Wi-Fi PHY with one
//! chip per band, `asus-nb-wmi`), each gets its `name` — or, if that does not
//! tell them apart, its `hwmonN` — appended, as node_exporter does since it
//! fixed those collisions.
//!
//! Pure parts ([`clean_name`], [`explode_sensor_filename`], [`chip_base_name`],
//! [`disambiguate`], [`sensor_series`]) are tested with literal strings; the
//! reader lists directories, resolves links and reads labels and limits at
//! start and on [`Files`]' slow refresh, and re-reads each value file once
//! per cycle through a kept descriptor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Sensor types node_exporter reads; other files are ignored.
const SENSOR_TYPES: &[&str] = &[
    "vrm",
    "beep_enable",
    "update_interval",
    "in",
    "cpu",
    "fan",
    "pwm",
    "temp",
    "curr",
    "power",
    "energy",
    "humidity",
    "intrusion",
    "freq",
];

/// Lower-cases and replaces every character outside `[a-z0-9:_]` with `_`,
/// then trims `_` from both ends (node_exporter's `cleanMetricName`).
pub fn clean_name(raw: &str) -> String {
    let replaced: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    replaced.trim_matches('_').to_string()
}

/// Splits an attribute file name into `(type, number, property)`:
/// `temp1_crit_alarm` → `("temp", 1, "crit_alarm")`, `pwm1` → `("pwm", 1, "")`,
/// `beep_enable` → `("beep_enable", 0, "")`. `None` when the name does not
/// have that shape (a digit run not followed by `_` or the end).
pub fn explode_sensor_filename(name: &str) -> Option<(&str, u64, &str)> {
    let type_end = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
    if type_end == 0 {
        return None;
    }
    let sensor_type = &name[..type_end];
    let rest = &name[type_end..];
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let (digits, tail) = rest.split_at(digits_end);
    let number = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().ok()?
    };
    let property = if tail.is_empty() {
        ""
    } else {
        let property = tail.strip_prefix('_')?;
        if property.is_empty() {
            return None;
        }
        property
    };
    Some((sensor_type, number, property))
}

/// The chip name before collision handling: from the resolved `device` link
/// (`<parent dir>_<device dir>`, both cleaned), else the cleaned `name` file,
/// else the cleaned `hwmonN` directory name.
pub fn chip_base_name(device_target: Option<&Path>, name_file: Option<&str>, hwmon_dir_name: &str) -> Option<String> {
    if let Some(target) = device_target {
        let dev_name = target.file_name().map(|n| clean_name(&n.to_string_lossy()));
        let dev_type = target
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| clean_name(&n.to_string_lossy()));
        match (dev_type, dev_name) {
            (Some(t), Some(n)) if !t.is_empty() && !n.is_empty() => return Some(format!("{t}_{n}")),
            (_, Some(n)) if !n.is_empty() => return Some(n),
            _ => {}
        }
    }
    if let Some(name) = name_file.map(clean_name).filter(|n| !n.is_empty()) {
        return Some(name);
    }
    Some(clean_name(hwmon_dir_name)).filter(|n| !n.is_empty())
}

/// One chip as seen by [`disambiguate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipIdentity {
    /// Result of [`chip_base_name`].
    pub base: String,
    /// The cleaned `name` file, if any.
    pub name: Option<String>,
    /// The cleaned `hwmonN` directory name.
    pub dir: String,
}

/// Final chip labels, one per input, in input order. A base name shared by
/// several chips gets `_<name>` appended when that name is unique in the
/// group, otherwise `_<hwmonN>`.
pub fn disambiguate(chips: &[ChipIdentity]) -> Vec<String> {
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, chip) in chips.iter().enumerate() {
        groups.entry(chip.base.as_str()).or_default().push(i);
    }
    chips
        .iter()
        .map(|chip| {
            let group = &groups[chip.base.as_str()];
            if group.len() < 2 {
                return chip.base.clone();
            }
            let unique_name = chip.name.as_deref().filter(|name| {
                !name.is_empty()
                    && group
                        .iter()
                        .filter(|&&j| chips[j].name.as_deref() == Some(*name))
                        .count()
                        == 1
            });
            match unique_name {
                Some(name) => format!("{}_{name}", chip.base),
                None => format!("{}_{}", chip.base, chip.dir),
            }
        })
        .collect()
}

/// One series of one sensor, without the `chip` label.
#[derive(Clone, Debug, PartialEq)]
pub struct HwmonSeries {
    /// Metric name.
    pub name: String,
    /// Help text, as node_exporter words it.
    pub help: String,
    /// Gauge or counter.
    pub kind: MetricType,
    /// Labels other than `chip`.
    pub labels: Vec<(&'static str, String)>,
    /// The scaled value.
    pub value: f64,
}

/// The series of one sensor (`temp1`, `fan2`, `beep_enable0`, ...) given its
/// properties (`""` for a bare `pwm1` file, `input`, `crit`, `label`, ...)
/// with their raw file contents.
pub fn sensor_series(sensor: &str, props: &BTreeMap<String, String>) -> Vec<HwmonSeries> {
    let mut out = Vec::new();
    let Some((sensor_type, _, _)) = explode_sensor_filename(sensor) else {
        return out;
    };
    let sensor_labels = || vec![("sensor", sensor.to_string())];
    let mut push = |name: String, help: String, kind: MetricType, labels: Vec<(&'static str, String)>, value: f64| {
        out.push(HwmonSeries {
            name,
            help,
            kind,
            labels,
            value,
        })
    };
    if let Some(label) = props.get("label") {
        push(
            "node_hwmon_sensor_label".to_string(),
            "Label for given chip and sensor".to_string(),
            MetricType::Gauge,
            vec![("sensor", sensor.to_string()), ("label", label.clone())],
            1.0,
        );
    }
    let bare = props.get("").map(|v| v.parse::<f64>());
    match sensor_type {
        "beep_enable" => {
            let value = if props.get("").map(String::as_str) == Some("1") {
                1.0
            } else {
                0.0
            };
            push(
                "node_hwmon_beep_enabled".to_string(),
                "Hardware beep enabled".to_string(),
                MetricType::Gauge,
                sensor_labels(),
                value,
            );
            return out;
        }
        "vrm" => {
            if let Some(Ok(value)) = bare {
                push(
                    "node_hwmon_voltage_regulator_version".to_string(),
                    "Hardware voltage regulator".to_string(),
                    MetricType::Gauge,
                    sensor_labels(),
                    value,
                );
            }
            return out;
        }
        "update_interval" => {
            if let Some(Ok(value)) = bare {
                push(
                    "node_hwmon_update_interval_seconds".to_string(),
                    "Hardware monitor update interval".to_string(),
                    MetricType::Gauge,
                    sensor_labels(),
                    value * 0.001,
                );
            }
            return out;
        }
        _ => {}
    }
    let prefix = format!("node_hwmon_{sensor_type}");
    for (element, raw) in props {
        let element = element.as_str();
        if element == "label" {
            continue;
        }
        let mut name = prefix.clone();
        if element == "input" {
            if props.contains_key("") {
                name.push_str("_input");
            }
        } else if !element.is_empty() {
            name.push('_');
            name.push_str(&clean_name(element));
        }
        let Ok(value) = raw.parse::<f64>() else { continue };
        let gauge = MetricType::Gauge;
        if element == "fault" || element == "alarm" {
            let help = format!("Hardware sensor {element} status ({sensor_type})");
            push(name, help, gauge, sensor_labels(), value);
            continue;
        }
        if element == "beep" {
            let help = "Hardware monitor sensor has beeping enabled".to_string();
            push(format!("{name}_enabled"), help, gauge, sensor_labels(), value);
            continue;
        }
        match sensor_type {
            "in" | "cpu" => {
                let help = format!("Hardware monitor for voltage ({element})");
                push(format!("{name}_volts"), help, gauge, sensor_labels(), value * 0.001);
                continue;
            }
            "temp" if element != "type" => {
                let shown = if element.is_empty() { "input" } else { element };
                let help = format!("Hardware monitor for temperature ({shown})");
                push(format!("{name}_celsius"), help, gauge, sensor_labels(), value * 0.001);
                continue;
            }
            "curr" => {
                let help = format!("Hardware monitor for current ({element})");
                push(format!("{name}_amps"), help, gauge, sensor_labels(), value * 0.001);
                continue;
            }
            "energy" => {
                let help = format!("Hardware monitor for joules used so far ({element})");
                let counter = MetricType::Counter;
                push(
                    format!("{name}_joule_total"),
                    help,
                    counter,
                    sensor_labels(),
                    value / 1000000.0,
                );
                continue;
            }
            "power" if element == "accuracy" => {
                let help = "Hardware monitor power meter accuracy, as a ratio".to_string();
                push(name, help, gauge, sensor_labels(), value / 1000000.0);
                continue;
            }
            "power"
                if matches!(
                    element,
                    "average_interval" | "average_interval_min" | "average_interval_max"
                ) =>
            {
                let help = format!("Hardware monitor power usage update interval ({element})");
                push(format!("{name}_seconds"), help, gauge, sensor_labels(), value * 0.001);
                continue;
            }
            "power" => {
                let help = format!("Hardware monitor for power usage in watts ({element})");
                push(format!("{name}_watt"), help, gauge, sensor_labels(), value / 1000000.0);
                continue;
            }
            "humidity" => {
                let help = format!(
                    "Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity as a percentage) ({element})"
                );
                push(name, help, gauge, sensor_labels(), value / 1000000.0);
                continue;
            }
            "fan" if matches!(element, "input" | "min" | "max" | "target") => {
                let help = format!("Hardware monitor for fan revolutions per minute ({element})");
                push(format!("{name}_rpm"), help, gauge, sensor_labels(), value);
                continue;
            }
            "freq" if element == "input" => {
                // node_exporter names GPU clocks by their label ("sclk"), and
                // skips unlabelled ones.
                if let Some(label) = props.get("label") {
                    let help = "Hardware monitor for GPU frequency in MHz".to_string();
                    let labels = vec![("sensor", clean_name(label))];
                    push(format!("{name}_freq_mhz"), help, gauge, labels, value / 1000000.0);
                }
                continue;
            }
            _ => {}
        }
        let help = format!("Hardware monitor {sensor_type} element {element}");
        push(name, help, gauge, sensor_labels(), value);
    }
    out
}

/// Sensor properties that are configuration, not measurement (labels and
/// limits): read at start and on each refresh of [`Files`], not every cycle.
const STATIC_PROPERTIES: &[&str] = &[
    "label",
    "min",
    "max",
    "crit",
    "lcrit",
    "emergency",
    "min_hyst",
    "max_hyst",
    "crit_hyst",
    "lcrit_hyst",
    "emergency_hyst",
    "type",
    "offset",
    "div",
    "pulses",
    "rated_min",
    "rated_max",
    "cap",
    "cap_min",
    "cap_max",
    "accuracy",
    "average_interval",
    "average_interval_min",
    "average_interval_max",
];

/// Reads `/sys/class/hwmon`. Chip names, directory listings, labels and
/// limits come from [`Files`]' refreshed cache; values are re-read through
/// kept descriptors.
#[derive(Debug, Default)]
pub struct HwmonSource {
    files: Files,
    /// What each sensor directory's files are, planned from its cached
    /// listing, so a cycle does not classify file names, build paths and
    /// look up labels and limits in the cache again for every attribute.
    plans: HashMap<PathBuf, DirPlan>,
    cycle: u64,
}

/// The attribute files of one sensor directory, as of one listing.
#[derive(Debug)]
struct DirPlan {
    /// The listing this plan was made from: [`Files`] hands out the same
    /// `Arc` until its next refresh, which also drops the static values
    /// kept here, so a new `Arc` means a new plan.
    listing: Arc<[String]>,
    files: Vec<PlannedFile>,
    /// The cycle that last used the plan (unused plans are dropped).
    used: u64,
}

/// One attribute file of a known sensor type.
#[derive(Debug)]
struct PlannedFile {
    /// `temp1`, `fan2`, ...
    sensor: String,
    /// `input`, `crit`, `label`, `""` for a bare `pwm1`, ...
    property: String,
    path: PathBuf,
    /// The content of a label or limit, newlines trimmed (`None` when it
    /// could not be read); `None` for a changing value, read every cycle.
    fixed: Option<Option<String>>,
}

/// A chip directory found in one cycle.
struct Chip {
    dir: PathBuf,
    identity: ChipIdentity,
    name_file: Option<String>,
}

impl Source for HwmonSource {
    fn name(&self) -> &'static str {
        "hwmon"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        self.cycle += 1;
        let mut plans = Plans {
            plans: &mut self.plans,
            cycle: self.cycle,
        };
        let class_dir = paths.sys("class/hwmon");
        let names = match files.list(&class_dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&class_dir, e)),
        };
        let mut chips = Vec::new();
        for name in names.iter() {
            let dir = class_dir.join(name);
            // Entries are symlinks into /sys/devices; follow them, and skip
            // dangling links and anything that is not a directory.
            if !files.is_dir(&dir) {
                continue;
            }
            let device_target = files.canonicalize(&dir.join("device"));
            let name_file = files.read_static(&dir.join("name")).map(|s| s.to_string());
            let real_dir = files.canonicalize(&dir).unwrap_or_else(|| dir.clone());
            let dir_name = real_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(base) = chip_base_name(device_target.as_deref(), name_file.as_deref(), &dir_name) else {
                continue;
            };
            let identity = ChipIdentity {
                base,
                name: name_file.as_deref().map(clean_name).filter(|n| !n.is_empty()),
                dir: clean_name(&dir_name),
            };
            chips.push(Chip {
                dir,
                identity,
                name_file,
            });
        }
        let identities: Vec<ChipIdentity> = chips.iter().map(|c| c.identity.clone()).collect();
        let labels = disambiguate(&identities);
        for (chip, chip_label) in chips.iter().zip(labels) {
            emit_chip(files, &mut plans, chip, &chip_label, out);
        }
        let cycle = self.cycle;
        self.plans.retain(|_, plan| plan.used == cycle);
        Ok(())
    }
}

/// Reads one chip's attribute files and records its series.
fn emit_chip(files: &mut Files, plans: &mut Plans<'_>, chip: &Chip, chip_label: &str, out: &mut Emitter) {
    let mut data: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    read_sensor_files(files, plans, &chip.dir, &mut data);
    // Older drivers keep their attributes in the device directory.
    let device_dir = chip.dir.join("device");
    if files.is_dir(&device_dir) {
        read_sensor_files(files, plans, &device_dir, &mut data);
    }
    if let Some(chip_name) = chip.name_file.as_deref().map(clean_name).filter(|n| !n.is_empty()) {
        out.gauge(
            "node_hwmon_chip_names",
            "Annotation metric for human-readable chip names",
            &[("chip", chip_label), ("chip_name", &chip_name)],
            1.0,
        );
    }
    for (sensor, props) in &data {
        for series in sensor_series(sensor, props) {
            let mut labels: Vec<(&str, &str)> = vec![("chip", chip_label)];
            labels.extend(series.labels.iter().map(|(k, v)| (*k, v.as_str())));
            out.push(&series.name, series.kind, &series.help, &labels, series.value);
        }
    }
}

/// The source's directory plans during one cycle.
struct Plans<'a> {
    plans: &'a mut HashMap<PathBuf, DirPlan>,
    cycle: u64,
}

impl Plans<'_> {
    /// The plan of `dir` for its current listing `names`, made afresh when
    /// the listing changed (a refresh of [`Files`]).
    fn get(&mut self, files: &mut Files, dir: &Path, names: &Arc<[String]>) -> Option<&DirPlan> {
        let current = self
            .plans
            .get(dir)
            .is_some_and(|plan| Arc::ptr_eq(&plan.listing, names));
        if !current {
            let plan = plan_dir(files, dir, names.clone());
            self.plans.insert(dir.to_path_buf(), plan);
        }
        let plan = self.plans.get_mut(dir)?;
        plan.used = self.cycle;
        Some(plan)
    }
}

/// Classifies the files of a sensor directory and reads its labels and
/// limits (through the static cache, which the next refresh drops along
/// with the listing).
fn plan_dir(files: &mut Files, dir: &Path, listing: Arc<[String]>) -> DirPlan {
    let mut planned = Vec::new();
    for file_name in listing.iter() {
        let Some((sensor_type, number, property)) = explode_sensor_filename(file_name) else {
            continue;
        };
        if !SENSOR_TYPES.contains(&sensor_type) {
            continue;
        }
        let path = dir.join(file_name);
        let fixed = STATIC_PROPERTIES
            .contains(&property)
            .then(|| files.read_static(&path).map(|text| text.trim_matches('\n').to_string()));
        planned.push(PlannedFile {
            sensor: format!("{sensor_type}{number}"),
            property: property.to_string(),
            path,
            fixed,
        });
    }
    DirPlan {
        listing,
        files: planned,
        used: 0,
    }
}

/// Reads every attribute file of a known sensor type in `dir` into
/// `data[sensor][property]`, with surrounding line feeds removed. Unreadable
/// files (absent sensors, directories, driver errors) are skipped. Labels
/// and limits come from the plan (the static cache); one bounded `pread`
/// per value.
fn read_sensor_files(
    files: &mut Files,
    plans: &mut Plans<'_>,
    dir: &Path,
    data: &mut BTreeMap<String, BTreeMap<String, String>>,
) {
    let Ok(names) = files.list(dir) else { return };
    let Some(plan) = plans.get(files, dir, &names) else {
        return;
    };
    for file in &plan.files {
        let value = match &file.fixed {
            Some(Some(text)) => text.clone(),
            Some(None) => continue,
            None => match files.read_bytes(&file.path) {
                Ok(bytes) => String::from_utf8_lossy(bytes).trim_matches('\n').to_string(),
                Err(_) => continue,
            },
        };
        match data.get_mut(&file.sensor) {
            Some(props) => {
                props.insert(file.property.clone(), value);
            }
            None => {
                data.insert(file.sensor.clone(), BTreeMap::from([(file.property.clone(), value)]));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn lines(series: &[HwmonSeries]) -> Vec<String> {
        let mut out: Vec<String> = series
            .iter()
            .map(|s| {
                let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn clean_name_matches_node_exporter() {
        assert_eq!(clean_name("coretemp.0"), "coretemp_0");
        assert_eq!(clean_name("coretemp\n"), "coretemp");
        assert_eq!(clean_name("0000:00:1f.3"), "0000:00:1f_3");
        assert_eq!(clean_name("Physical id 0"), "physical_id_0");
        assert_eq!(clean_name("__x__"), "x");
        assert_eq!(clean_name("\u{e9}"), "");
    }

    #[test]
    fn explodes_attribute_names() {
        assert_eq!(explode_sensor_filename("temp1_input"), Some(("temp", 1, "input")));
        assert_eq!(
            explode_sensor_filename("temp1_crit_alarm"),
            Some(("temp", 1, "crit_alarm"))
        );
        assert_eq!(explode_sensor_filename("pwm1"), Some(("pwm", 1, "")));
        assert_eq!(
            explode_sensor_filename("pwm1_auto_point1_pwm"),
            Some(("pwm", 1, "auto_point1_pwm"))
        );
        assert_eq!(explode_sensor_filename("beep_enable"), Some(("beep_enable", 0, "")));
        assert_eq!(explode_sensor_filename("temp01_max"), Some(("temp", 1, "max")));
        assert_eq!(explode_sensor_filename("temp1input"), None);
        assert_eq!(explode_sensor_filename("1abc"), None);
        assert_eq!(explode_sensor_filename("temp1_"), None);
        assert_eq!(explode_sensor_filename("temp99999999999999999999999_input"), None);
    }

    #[test]
    fn chip_base_names() {
        let dev = Path::new("/sys/devices/platform/coretemp.0");
        assert_eq!(
            chip_base_name(Some(dev), Some("coretemp\n"), "hwmon0").as_deref(),
            Some("platform_coretemp_0")
        );
        let pci = Path::new("/sys/devices/pci0000:00/0000:00:1f.3");
        assert_eq!(
            chip_base_name(Some(pci), None, "hwmon1").as_deref(),
            Some("pci0000:00_0000:00:1f_3")
        );
        assert_eq!(
            chip_base_name(None, Some("nct6779\n"), "hwmon3").as_deref(),
            Some("nct6779")
        );
        assert_eq!(chip_base_name(None, Some("\n"), "hwmon4").as_deref(), Some("hwmon4"));
        assert_eq!(chip_base_name(None, None, "hwmon4").as_deref(), Some("hwmon4"));
    }

    #[test]
    fn colliding_chips_are_told_apart() {
        let chip = |base: &str, name: Option<&str>, dir: &str| ChipIdentity {
            base: base.to_string(),
            name: name.map(str::to_string),
            dir: dir.to_string(),
        };
        let chips = [
            chip("platform_coretemp_0", Some("coretemp"), "hwmon0"),
            chip("platform_coretemp_1", Some("coretemp"), "hwmon1"),
            chip("ieee80211_phy0", Some("mt7996_phy0_0"), "hwmon8"),
            chip("ieee80211_phy0", Some("mt7996_phy0_1"), "hwmon9"),
            chip("platform_x", Some("same"), "hwmon11"),
            chip("platform_x", Some("same"), "hwmon12"),
            chip("platform_x", None, "hwmon13"),
        ];
        assert_eq!(
            disambiguate(&chips),
            vec![
                "platform_coretemp_0",
                "platform_coretemp_1",
                "ieee80211_phy0_mt7996_phy0_0",
                "ieee80211_phy0_mt7996_phy0_1",
                "platform_x_hwmon11",
                "platform_x_hwmon12",
                "platform_x_hwmon13",
            ]
        );
    }

    #[test]
    fn temperatures_are_scaled_and_labelled() {
        let got = sensor_series(
            "temp1",
            &props(&[
                ("input", "95000"),
                ("crit", "90000"),
                ("max", "80000"),
                ("crit_alarm", "1"),
                ("label", "Package id 0"),
                ("type", "3"),
            ]),
        );
        assert_eq!(
            lines(&got),
            vec![
                "node_hwmon_sensor_label{sensor=temp1,label=Package id 0} 1",
                "node_hwmon_temp_celsius{sensor=temp1} 95",
                "node_hwmon_temp_crit_alarm_celsius{sensor=temp1} 0.001",
                "node_hwmon_temp_crit_celsius{sensor=temp1} 90",
                "node_hwmon_temp_max_celsius{sensor=temp1} 80",
                "node_hwmon_temp_type{sensor=temp1} 3",
            ]
        );
        let help = |name: &str| got.iter().find(|s| s.name == name).map(|s| s.help.clone()).unwrap();
        assert_eq!(
            help("node_hwmon_temp_celsius"),
            "Hardware monitor for temperature (input)"
        );
        assert_eq!(help("node_hwmon_temp_type"), "Hardware monitor temp element type");
    }

    #[test]
    fn fans_voltages_power_and_alarms() {
        let fan = sensor_series(
            "fan2",
            &props(&[
                ("input", "1098"),
                ("alarm", "0"),
                ("beep", "0"),
                ("pulses", "2"),
                ("min", "x"),
            ]),
        );
        assert_eq!(
            lines(&fan),
            vec![
                "node_hwmon_fan_alarm{sensor=fan2} 0",
                "node_hwmon_fan_beep_enabled{sensor=fan2} 0",
                "node_hwmon_fan_pulses{sensor=fan2} 2",
                "node_hwmon_fan_rpm{sensor=fan2} 1098",
            ]
        );
        let volts = sensor_series("in0", &props(&[("input", "792"), ("max", "1744")]));
        assert_eq!(
            lines(&volts),
            vec![
                "node_hwmon_in_max_volts{sensor=in0} 1.744",
                "node_hwmon_in_volts{sensor=in0} 0.792"
            ]
        );
        let power = sensor_series(
            "power1",
            &props(&[
                ("input", "5000000"),
                ("accuracy", "500000"),
                ("average_interval", "1000"),
            ]),
        );
        assert_eq!(
            lines(&power),
            vec![
                "node_hwmon_power_accuracy{sensor=power1} 0.5",
                "node_hwmon_power_average_interval_seconds{sensor=power1} 1",
                "node_hwmon_power_watt{sensor=power1} 5",
            ]
        );
        let energy = sensor_series("energy1", &props(&[("input", "2500000")]));
        assert_eq!(energy[0].name, "node_hwmon_energy_joule_total");
        assert_eq!(energy[0].kind, MetricType::Counter);
        assert_eq!(energy[0].value, 2.5);
    }

    #[test]
    fn pwm_bare_value_and_input_suffix() {
        let pwm = sensor_series("pwm1", &props(&[("", "128"), ("enable", "2"), ("input", "7")]));
        assert_eq!(
            lines(&pwm),
            vec![
                "node_hwmon_pwm_enable{sensor=pwm1} 2",
                "node_hwmon_pwm_input{sensor=pwm1} 7",
                "node_hwmon_pwm{sensor=pwm1} 128",
            ]
        );
    }

    #[test]
    fn special_sensor_types() {
        let beep = sensor_series("beep_enable0", &props(&[("", "1")]));
        assert_eq!(lines(&beep), vec!["node_hwmon_beep_enabled{sensor=beep_enable0} 1"]);
        let interval = sensor_series("update_interval0", &props(&[("", "1000")]));
        assert_eq!(
            lines(&interval),
            vec!["node_hwmon_update_interval_seconds{sensor=update_interval0} 1"]
        );
        let vrm = sensor_series("vrm0", &props(&[("", "bogus")]));
        assert!(vrm.is_empty());
        let freq = sensor_series("freq1", &props(&[("input", "214000000"), ("label", "sclk")]));
        assert_eq!(
            lines(&freq),
            vec![
                "node_hwmon_freq_freq_mhz{sensor=sclk} 214",
                "node_hwmon_sensor_label{sensor=freq1,label=sclk} 1",
            ]
        );
        assert!(sensor_series("freq2", &props(&[("input", "1")])).is_empty());
    }

    /// Values of `node_hwmon_temp_celsius` by chip label, from one cycle.
    fn temps(source: &mut HwmonSource, paths: &HostPaths) -> BTreeMap<String, f64> {
        let mut out = Emitter::new();
        source.collect(paths, &mut out).unwrap();
        out.samples()
            .iter()
            .filter(|s| s.name == "node_hwmon_temp_celsius")
            .map(|s| (s.labels[0].1.to_string(), s.value))
            .collect()
    }

    #[test]
    fn values_change_every_cycle_and_chips_follow_the_refresh() {
        use crate::sources::files::REFRESH_CYCLES;
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            sysfs: root.path().to_path_buf(),
            ..HostPaths::default()
        };
        let chip = |n: &str, name: &str, millis: &str| {
            let dir = root.path().join("class/hwmon").join(n);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("temp1_input"), format!("{millis}\n")).unwrap();
            std::fs::write(dir.join("temp1_crit"), "100000\n").unwrap();
        };
        chip("hwmon0", "acpitz", "40000");
        let mut source = HwmonSource::default();
        assert_eq!(
            temps(&mut source, &paths),
            BTreeMap::from([("acpitz".to_string(), 40.0)])
        );
        // A changed value is seen on the next cycle (kept descriptor, pread).
        std::fs::write(root.path().join("class/hwmon/hwmon0/temp1_input"), "41500\n").unwrap();
        assert_eq!(temps(&mut source, &paths)["acpitz"], 41.5);
        // A new chip appears within one refresh period ...
        chip("hwmon1", "nvme", "35000");
        let mut seen_after = None;
        for cycle in 0..=REFRESH_CYCLES {
            if temps(&mut source, &paths).contains_key("nvme") {
                seen_after = Some(cycle);
                break;
            }
        }
        assert!(seen_after.is_some_and(|c| c < REFRESH_CYCLES));
        // ... and a vanished one goes away within one, without errors.
        std::fs::remove_dir_all(root.path().join("class/hwmon/hwmon0")).unwrap();
        let mut gone = false;
        for _ in 0..=REFRESH_CYCLES {
            if !temps(&mut source, &paths).contains_key("acpitz") {
                gone = true;
                break;
            }
        }
        assert!(gone);
        assert_eq!(temps(&mut source, &paths), BTreeMap::from([("nvme".to_string(), 35.0)]));
    }
}
