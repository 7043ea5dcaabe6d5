//! The `rapl` source: CPU package/core/DRAM energy counters from the powercap
//! framework (`/sys/class/powercap/intel-rapl:*`, also used by AMD) as
//! node_exporter's `node_rapl_<zone>_joules_total{index,path}`. The `path`
//! label is the zone's directory under the configured sysfs root, exactly as
//! node_exporter labels it (`/sys/class/powercap/intel-rapl:0` on a host).
//!
//! Recent kernels make `energy_uj` readable by root only (CVE-2020-8694); an
//! `EACCES` is returned as [`SourceError::PermissionDenied`] so the sampler
//! reports the missing capability once instead of failing noisily each cycle.
//!
//! `energy_uj` wraps to 0 after `max_energy_range_uj` (a package drawing
//! 200 W wraps a 2^32 µJ range every ~6 hours). node_exporter's series are
//! kept raw, so its dashboards keep working (and `rate()` treats a wrap as a
//! counter reset); alongside, `hostpulse_rapl_energy_joules_total{zone}`
//! (`zone` = the zone directory, `intel-rapl:0`) adds each cycle's
//! wrap-corrected delta to a total kept in the source, so it only ever rises.
//! [`wrapped_delta`] is the pure part.

use std::collections::HashMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Splits a zone name into node_exporter's `(index, name)`: `package-0` is
/// `(0, "package")`; a name without a numeric suffix (`core`, `dram`) gets
/// the count of earlier zones with the same name as its index. `seen` carries
/// that count across the zones of one directory listing.
pub fn zone_index_and_name(raw: &str, seen: &mut HashMap<String, u32>) -> (u32, String) {
    let raw = raw.trim();
    let parts: Vec<&str> = raw.split('-').collect();
    let (index, name) = match parts.as_slice() {
        [name, index] => match index.parse::<u32>() {
            Ok(index) => (index, (*name).to_string()),
            Err(_) => (seen.get(raw).copied().unwrap_or(0), raw.to_string()),
        },
        _ => (seen.get(raw).copied().unwrap_or(0), raw.to_string()),
    };
    seen.insert(name.clone(), index.saturating_add(1));
    (index, name)
}

/// Parses an `energy_uj` file (microjoules, unsigned).
pub fn parse_energy_uj(text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse::<u64>()
        .map_err(|_| format!("energy_uj is {text:?}, not an unsigned integer"))
}

/// The metric name for a zone, with characters invalid in metric names
/// replaced by `_` (node_exporter's `SanitizeMetricName`).
pub fn metric_name(zone: &str) -> String {
    let sanitized: String = format!("{zone}_joules_total")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("node_rapl_{sanitized}")
}

/// Microjoules consumed between two readings of a counter that wraps to 0
/// after `max_range` (`None` when `max_energy_range_uj` is unreadable; a
/// smaller reading is then taken as a restart from 0).
pub fn wrapped_delta(previous: u64, now: u64, max_range: Option<u64>) -> u64 {
    if now >= previous {
        return now - previous;
    }
    match max_range {
        Some(max) if max >= previous => (max - previous).saturating_add(now),
        _ => now,
    }
}

/// Running total of one zone.
#[derive(Clone, Debug)]
struct ZoneTotal {
    last_uj: u64,
    total_uj: u128,
    max_range: Option<u64>,
}

/// Reads `/sys/class/powercap`, keeping the wrap-corrected total per zone;
/// zones and their names from the refreshed cache, energy through kept
/// descriptors.
#[derive(Debug, Default)]
pub struct RaplSource {
    totals: HashMap<String, ZoneTotal>,
    files: Files,
}

impl Source for RaplSource {
    fn name(&self) -> &'static str {
        "rapl"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("class/powercap");
        // node_exporter lists the directory sorted (as the cache does); the
        // duplicate-name index depends on that order.
        let names = match files.list(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&dir, e)),
        };
        let mut seen = HashMap::new();
        for entry in names.iter() {
            let zone_dir = dir.join(entry);
            // Only zones have a `name` file (the `intel-rapl` control type does not).
            let Some(raw_name) = files.read_static(&zone_dir.join("name")) else {
                continue;
            };
            let (index, zone) = zone_index_and_name(&raw_name, &mut seen);
            let energy_path = zone_dir.join("energy_uj");
            let text = match files.read_bytes(&energy_path) {
                Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&energy_path, e)),
            };
            let micro = parse_energy_uj(&text).map_err(|m| SourceError::parse(&energy_path, m))?;
            let total = match self.totals.get_mut(entry) {
                Some(zone) => {
                    zone.total_uj += u128::from(wrapped_delta(zone.last_uj, micro, zone.max_range));
                    zone.last_uj = micro;
                    zone.total_uj
                }
                None => {
                    // The range is static: read once per zone.
                    let max_range = std::fs::read_to_string(zone_dir.join("max_energy_range_uj"))
                        .ok()
                        .and_then(|t| parse_energy_uj(&t).ok());
                    let zone = ZoneTotal {
                        last_uj: micro,
                        total_uj: u128::from(micro),
                        max_range,
                    };
                    self.totals.insert(entry.clone(), zone);
                    u128::from(micro)
                }
            };
            out.counter(
                "hostpulse_rapl_energy_joules_total",
                "Energy used by a RAPL zone in joules, corrected for wraps of energy_uj at max_energy_range_uj.",
                &[("zone", entry)],
                total as f64 / 1_000_000.0,
            );
            out.counter(
                &metric_name(&zone),
                &format!("Current RAPL {zone} value in joules"),
                &[("index", &index.to_string()), ("path", &zone_dir.to_string_lossy())],
                micro as f64 / 1_000_000.0,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_and_indexes() {
        let mut seen = HashMap::new();
        assert_eq!(
            zone_index_and_name("package-0\n", &mut seen),
            (0, "package".to_string())
        );
        assert_eq!(zone_index_and_name("core", &mut seen), (0, "core".to_string()));
        assert_eq!(zone_index_and_name("package-1", &mut seen), (1, "package".to_string()));
        assert_eq!(zone_index_and_name("dram", &mut seen), (0, "dram".to_string()));
        assert_eq!(zone_index_and_name("dram", &mut seen), (1, "dram".to_string()));
        assert_eq!(zone_index_and_name("psys-x", &mut seen), (0, "psys-x".to_string()));
    }

    #[test]
    fn energy_is_parsed_and_garbage_rejected() {
        assert_eq!(parse_energy_uj("240422366267\n").unwrap(), 240422366267);
        assert!(parse_energy_uj("-1").is_err());
        assert!(parse_energy_uj("").is_err());
    }

    #[test]
    fn wraps_are_added_not_reset() {
        assert_eq!(wrapped_delta(100, 250, Some(1000)), 150);
        assert_eq!(wrapped_delta(900, 50, Some(1000)), 150);
        assert_eq!(wrapped_delta(900, 50, None), 50);
        assert_eq!(wrapped_delta(900, 50, Some(800)), 50);
        assert_eq!(wrapped_delta(5, 5, Some(10)), 0);
    }

    #[test]
    fn metric_names_are_sanitized() {
        assert_eq!(metric_name("package"), "node_rapl_package_joules_total");
        assert_eq!(metric_name("psys-x"), "node_rapl_psys_x_joules_total");
    }
}
