//! The `power_supply` source: mains adapters, batteries and UPS units from
//! `/sys/class/power_supply/<name>/` as node_exporter's
//! `node_power_supply_*{power_supply}` gauges plus one
//! `node_power_supply_info` series carrying the text attributes (status,
//! technology, model, ...) as labels. Names and scaling follow node_exporter:
//! micro-units (µV, µA, µWh, µW) are divided by 10^6, tenths of a degree by 10,
//! and `cycle_count` becomes `cyclecount`. Only the attribute files some series
//! needs are read. [`supply_series`] is pure; [`PowerSupplySource`] reads.

use std::collections::BTreeMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// How an attribute file becomes a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Integer taken as is.
    Raw,
    /// Micro-units → base units.
    Micro,
    /// Tenths of a degree Celsius → degrees.
    Deci,
    /// Text, becomes a label of `node_power_supply_info`.
    Info,
}

/// `(attribute file, metric suffix, kind)`, as node_exporter maps them.
const ATTRIBUTES: &[(&str, &str, Kind)] = &[
    ("authentic", "authentic", Kind::Raw),
    ("calibrate", "calibrate", Kind::Raw),
    ("capacity", "capacity", Kind::Raw),
    ("capacity_alert_max", "capacity_alert_max", Kind::Raw),
    ("capacity_alert_min", "capacity_alert_min", Kind::Raw),
    ("cycle_count", "cyclecount", Kind::Raw),
    ("online", "online", Kind::Raw),
    ("present", "present", Kind::Raw),
    ("time_to_empty_now", "time_to_empty_seconds", Kind::Raw),
    ("time_to_full_now", "time_to_full_seconds", Kind::Raw),
    ("current_boot", "current_boot", Kind::Micro),
    ("current_max", "current_max", Kind::Micro),
    ("current_now", "current_ampere", Kind::Micro),
    ("energy_empty", "energy_empty", Kind::Micro),
    ("energy_empty_design", "energy_empty_design", Kind::Micro),
    ("energy_full", "energy_full", Kind::Micro),
    ("energy_full_design", "energy_full_design", Kind::Micro),
    ("energy_now", "energy_watthour", Kind::Micro),
    ("voltage_boot", "voltage_boot", Kind::Micro),
    ("voltage_max", "voltage_max", Kind::Micro),
    ("voltage_max_design", "voltage_max_design", Kind::Micro),
    ("voltage_min", "voltage_min", Kind::Micro),
    ("voltage_min_design", "voltage_min_design", Kind::Micro),
    ("voltage_now", "voltage_volt", Kind::Micro),
    ("voltage_ocv", "voltage_ocv", Kind::Micro),
    ("charge_control_limit", "charge_control_limit", Kind::Micro),
    ("charge_control_limit_max", "charge_control_limit_max", Kind::Micro),
    ("charge_counter", "charge_counter", Kind::Micro),
    ("charge_empty", "charge_empty", Kind::Micro),
    ("charge_empty_design", "charge_empty_design", Kind::Micro),
    ("charge_full", "charge_full", Kind::Micro),
    ("charge_full_design", "charge_full_design", Kind::Micro),
    ("charge_now", "charge_ampere", Kind::Micro),
    ("charge_term_current", "charge_term_current", Kind::Micro),
    ("constant_charge_current", "constant_charge_current", Kind::Micro),
    (
        "constant_charge_current_max",
        "constant_charge_current_max",
        Kind::Micro,
    ),
    ("constant_charge_voltage", "constant_charge_voltage", Kind::Micro),
    (
        "constant_charge_voltage_max",
        "constant_charge_voltage_max",
        Kind::Micro,
    ),
    ("precharge_current", "precharge_current", Kind::Micro),
    ("input_current_limit", "input_current_limit", Kind::Micro),
    ("power_now", "power_watt", Kind::Micro),
    ("temp", "temp_celsius", Kind::Deci),
    ("temp_alert_max", "temp_alert_max_celsius", Kind::Deci),
    ("temp_alert_min", "temp_alert_min_celsius", Kind::Deci),
    ("temp_ambient", "temp_ambient_celsius", Kind::Deci),
    ("temp_ambient_max", "temp_ambient_max_celsius", Kind::Deci),
    ("temp_ambient_min", "temp_ambient_min_celsius", Kind::Deci),
    ("temp_max", "temp_max_celsius", Kind::Deci),
    ("temp_min", "temp_min_celsius", Kind::Deci),
    ("capacity_level", "capacity_level", Kind::Info),
    ("charge_type", "charge_type", Kind::Info),
    ("health", "health", Kind::Info),
    ("manufacturer", "manufacturer", Kind::Info),
    ("model_name", "model_name", Kind::Info),
    ("serial_number", "serial_number", Kind::Info),
    ("status", "status", Kind::Info),
    ("technology", "technology", Kind::Info),
    ("type", "type", Kind::Info),
    ("usb_type", "usb_type", Kind::Info),
    ("scope", "scope", Kind::Info),
];

/// The series of one supply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SupplySeries {
    /// `(metric suffix, value)`, e.g. `("voltage_volt", 11.66)`.
    pub gauges: Vec<(&'static str, f64)>,
    /// Labels of `node_power_supply_info` other than `power_supply`.
    pub info: Vec<(&'static str, String)>,
}

/// Turns the attribute files of one supply (file name → content) into its
/// series. Unknown attributes and unparsable numbers are skipped; empty text
/// attributes are left out of the info labels, as node_exporter does.
pub fn supply_series(attrs: &BTreeMap<String, String>) -> SupplySeries {
    let mut series = SupplySeries::default();
    for (file, suffix, kind) in ATTRIBUTES {
        let Some(raw) = attrs.get(*file) else { continue };
        let raw = raw.trim();
        if *kind == Kind::Info {
            if !raw.is_empty() {
                series.info.push((suffix, raw.to_string()));
            }
            continue;
        }
        let Some(value) = parse_go_int(raw) else { continue };
        let value = value as f64;
        let value = match kind {
            Kind::Micro => value / 1e6,
            Kind::Deci => value / 10.0,
            _ => value,
        };
        series.gauges.push((suffix, value));
    }
    series
}

/// Parses an integer like Go's `strconv.ParseInt(s, 0, 64)`: optional sign,
/// and `0x`, `0o`/leading `0`, `0b` prefixes for other bases.
fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i128::from_str_radix(body, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

/// Reads `/sys/class/power_supply`; the supplies and their attribute
/// listings come from the refreshed cache, values through kept descriptors.
#[derive(Debug, Default)]
pub struct PowerSupplySource {
    files: Files,
}

impl Source for PowerSupplySource {
    fn name(&self) -> &'static str {
        "power_supply"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("class/power_supply");
        let supplies = match files.list(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&dir, e)),
        };
        for supply in supplies.iter() {
            let supply_dir = dir.join(supply);
            let mut attrs = BTreeMap::new();
            for (file, _, _) in ATTRIBUTES {
                // Absent attributes are normal, and some drivers fail reads
                // (ENODATA, EINVAL) of attributes they list; skip those.
                if !files.has(&supply_dir, file) {
                    continue;
                }
                if let Ok(bytes) = files.read_bytes(&supply_dir.join(file)) {
                    attrs.insert((*file).to_string(), String::from_utf8_lossy(bytes).into_owned());
                }
            }
            let series = supply_series(&attrs);
            for (suffix, value) in &series.gauges {
                out.gauge(
                    &format!("node_power_supply_{suffix}"),
                    &format!("{suffix} value of /sys/class/power_supply/<power_supply>."),
                    &[("power_supply", supply)],
                    *value,
                );
            }
            let mut labels: Vec<(&str, &str)> = vec![("power_supply", supply)];
            labels.extend(series.info.iter().map(|(k, v)| (*k, v.as_str())));
            out.gauge(
                "node_power_supply_info",
                "info of /sys/class/power_supply/<power_supply>.",
                &labels,
                1.0,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn battery_attributes_are_scaled_and_renamed() {
        let series = supply_series(&attrs(&[
            ("capacity", "81\n"),
            ("cycle_count", "0\n"),
            ("energy_now", "36580000\n"),
            ("voltage_now", "11660000\n"),
            ("power_now", "5002000\n"),
            ("temp", "305\n"),
            ("status", "Discharging\n"),
            ("health", "\n"),
            ("alarm", "2253000\n"),
        ]));
        assert_eq!(
            series.gauges,
            vec![
                ("capacity", 81.0),
                ("cyclecount", 0.0),
                ("energy_watthour", 36.58),
                ("voltage_volt", 11.66),
                ("power_watt", 5.002),
                ("temp_celsius", 30.5),
            ]
        );
        assert_eq!(series.info, vec![("status", "Discharging".to_string())]);
    }

    #[test]
    fn unparsable_numbers_are_skipped() {
        let series = supply_series(&attrs(&[("online", "yes"), ("present", "")]));
        assert!(series.gauges.is_empty());
    }

    #[test]
    fn integers_parse_like_go_base_zero() {
        assert_eq!(parse_go_int("42"), Some(42));
        assert_eq!(parse_go_int("-42"), Some(-42));
        assert_eq!(parse_go_int("0x1f"), Some(31));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("0b101"), Some(5));
        assert_eq!(parse_go_int("--1"), None);
        assert_eq!(parse_go_int("0x"), None);
        assert_eq!(parse_go_int("99999999999999999999"), None);
        assert_eq!(parse_go_int(""), None);
    }
}
