//! The `thermal_zone` source: ACPI/platform thermal zones and the cooling
//! devices bound to them, from `/sys/class/thermal`, as node_exporter's
//! `node_thermal_zone_temp{zone,type}` and
//! `node_cooling_device_{cur,max}_state{name,type}`.
//!
//! A zone whose temperature cannot be read (some firmware zones return
//! `EINVAL` or `EAGAIN` while the sensor sleeps) is skipped for the cycle,
//! as node_exporter does, rather than failing the whole source. Parsers
//! ([`parse_millicelsius`], [`parse_state`], [`entry_number`]) are pure.

use std::path::Path;
use std::sync::Arc;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses a zone `temp` file (millidegrees Celsius, may be negative) into
/// degrees Celsius.
pub fn parse_millicelsius(text: &str) -> Result<f64, String> {
    let text = text.trim();
    text.parse::<i64>()
        .map(|milli| milli as f64 / 1000.0)
        .map_err(|_| format!("temperature {text:?} is not an integer"))
}

/// Parses a cooling device `cur_state`/`max_state` file (an integer; some
/// drivers report -1 for "unknown").
pub fn parse_state(text: &str) -> Result<f64, String> {
    let text = text.trim();
    text.parse::<i64>()
        .map(|v| v as f64)
        .map_err(|_| format!("state {text:?} is not an integer"))
}

/// The number after `prefix` in an entry name (`thermal_zone3` → `3`);
/// `None` for entries that are not numbered instances of `prefix`.
pub fn entry_number<'a>(entry: &'a str, prefix: &str) -> Option<&'a str> {
    entry
        .strip_prefix(prefix)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads `/sys/class/thermal`: zones, types and maximum states from the
/// refreshed cache, temperatures and current states through kept
/// descriptors.
#[derive(Debug, Default)]
pub struct ThermalZoneSource {
    files: Files,
}

/// Sorted entry names of `dir` (cached until the next refresh), or `None`
/// when it does not exist.
fn list(files: &mut Files, dir: &Path) -> Result<Option<Arc<[String]>>, SourceError> {
    match files.list(dir) {
        Ok(names) => Ok(Some(names)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::io(dir, e)),
    }
}

impl Source for ThermalZoneSource {
    fn name(&self) -> &'static str {
        "thermal_zone"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("class/thermal");
        let Some(names) = list(files, &dir)? else { return Ok(()) };
        for name in names.iter() {
            let entry = dir.join(name);
            if let Some(zone) = entry_number(name, "thermal_zone") {
                let Some(kind) = files.static_in(&entry, "type") else {
                    continue;
                };
                let Some(Ok(temp)) = files.attr_in(&entry, "temp").map(|t| parse_millicelsius(&t)) else {
                    continue;
                };
                out.gauge(
                    "node_thermal_zone_temp",
                    "Zone temperature in Celsius",
                    &[("zone", zone), ("type", &kind)],
                    temp,
                );
            } else if let Some(number) = entry_number(name, "cooling_device") {
                let Some(kind) = files.static_in(&entry, "type") else {
                    continue;
                };
                let cur = files.attr_in(&entry, "cur_state").map(|t| parse_state(&t));
                let max = files.static_in(&entry, "max_state").map(|t| parse_state(&t));
                let (Some(Ok(cur)), Some(Ok(max))) = (cur, max) else {
                    continue;
                };
                let labels = [("name", number), ("type", kind.as_str())];
                out.gauge(
                    "node_cooling_device_cur_state",
                    "Current throttle state of the cooling device",
                    &labels,
                    cur,
                );
                out.gauge(
                    "node_cooling_device_max_state",
                    "Maximum throttle state of the cooling device",
                    &labels,
                    max,
                );
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
    fn temperatures_are_millidegrees() {
        assert_eq!(parse_millicelsius("12376\n").unwrap(), 12.376);
        assert_eq!(parse_millicelsius("-5000").unwrap(), -5.0);
        assert!(parse_millicelsius("").is_err());
        assert!(parse_millicelsius("hot").is_err());
    }

    #[test]
    fn states_are_integers() {
        assert_eq!(parse_state("3\n").unwrap(), 3.0);
        assert_eq!(parse_state("-1").unwrap(), -1.0);
        assert!(parse_state("x").is_err());
    }

    #[test]
    fn entry_numbers() {
        assert_eq!(entry_number("thermal_zone10", "thermal_zone"), Some("10"));
        assert_eq!(entry_number("cooling_device0", "cooling_device"), Some("0"));
        assert_eq!(entry_number("thermal_zone", "thermal_zone"), None);
        assert_eq!(entry_number("thermal_zonex", "thermal_zone"), None);
        assert_eq!(entry_number("cooling_device0", "thermal_zone"), None);
    }
}
