//! The `thermal_throttle` source: how often each CPU core and package was
//! throttled for heat, from `/sys/devices/system/cpu/cpu*/thermal_throttle`,
//! as node_exporter's `node_cpu_core_throttles_total{core,package}` and
//! `node_cpu_package_throttles_total{package}`.
//!
//! Hyper-threads of one core, and all cores of one package, show the same
//! counter; like node_exporter, the first CPU seen for a core or package
//! speaks for it. A rising counter is the earliest sign of a failing fan or
//! dried-out thermal paste. [`throttle_counts`] is the pure part: it folds
//! per-CPU readings into per-core and per-package counters.

use std::collections::BTreeMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// What one logical CPU's sysfs directory says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuThrottle {
    /// `topology/physical_package_id`.
    pub package: String,
    /// `topology/core_id`.
    pub core: String,
    /// `thermal_throttle/core_throttle_count`, if readable.
    pub core_count: Option<u64>,
    /// `thermal_throttle/package_throttle_count`, if readable.
    pub package_count: Option<u64>,
}

/// Per-(package, core) and per-package counters, first CPU wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThrottleCounts {
    /// Keyed by (package, core).
    pub cores: BTreeMap<(String, String), u64>,
    /// Keyed by package.
    pub packages: BTreeMap<String, u64>,
}

/// Folds per-CPU readings (in CPU order) into counters.
pub fn throttle_counts(cpus: &[CpuThrottle]) -> ThrottleCounts {
    let mut counts = ThrottleCounts::default();
    for cpu in cpus {
        if let Some(n) = cpu.core_count {
            counts.cores.entry((cpu.package.clone(), cpu.core.clone())).or_insert(n);
        }
        if let Some(n) = cpu.package_count {
            counts.packages.entry(cpu.package.clone()).or_insert(n);
        }
    }
    counts
}

/// Parses a counter file.
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Numbers of the `cpuN` directories under `dir`, sorted numerically (the
/// listing is cached until the next refresh of `files`).
pub(crate) fn cpu_numbers(files: &mut Files, dir: &std::path::Path) -> Result<Option<Vec<u32>>, SourceError> {
    let entries = match files.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io(dir, e)),
    };
    let mut cpus: Vec<u32> = entries
        .iter()
        .filter_map(|name| name.strip_prefix("cpu")?.parse::<u32>().ok())
        .collect();
    cpus.sort_unstable();
    Ok(Some(cpus))
}

/// Reads the per-CPU `thermal_throttle` directories; topology from the
/// refreshed cache, counters through kept descriptors.
#[derive(Debug, Default)]
pub struct ThermalThrottleSource {
    files: Files,
}

impl Source for ThermalThrottleSource {
    fn name(&self) -> &'static str {
        "thermal_throttle"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("devices/system/cpu");
        let Some(numbers) = cpu_numbers(files, &dir)? else {
            return Ok(());
        };
        let mut cpus = Vec::new();
        for n in numbers {
            let cpu = dir.join(format!("cpu{n}"));
            let throttle = cpu.join("thermal_throttle");
            if !files.is_dir(&throttle) {
                continue;
            }
            let topology = cpu.join("topology");
            let (Some(package), Some(core)) = (
                files.static_in(&topology, "physical_package_id"),
                files.static_in(&topology, "core_id"),
            ) else {
                continue;
            };
            cpus.push(CpuThrottle {
                package,
                core,
                core_count: files
                    .attr_in(&throttle, "core_throttle_count")
                    .and_then(|t| parse_count(&t)),
                package_count: files
                    .attr_in(&throttle, "package_throttle_count")
                    .and_then(|t| parse_count(&t)),
            });
        }
        let counts = throttle_counts(&cpus);
        for ((package, core), n) in &counts.cores {
            out.counter(
                "node_cpu_core_throttles_total",
                "Number of times this CPU core has been throttled.",
                &[("core", core), ("package", package)],
                *n as f64,
            );
        }
        for (package, n) in &counts.packages {
            out.counter(
                "node_cpu_package_throttles_total",
                "Number of times this CPU package has been throttled.",
                &[("package", package)],
                *n as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cpu(package: &str, core: &str, c: Option<u64>, p: Option<u64>) -> CpuThrottle {
        CpuThrottle {
            package: package.into(),
            core: core.into(),
            core_count: c,
            package_count: p,
        }
    }

    #[test]
    fn first_cpu_of_a_core_or_package_wins() {
        let counts = throttle_counts(&[
            cpu("0", "0", Some(5), Some(30)),
            cpu("0", "1", Some(0), Some(31)),
            cpu("0", "0", Some(7), Some(32)),
            cpu("1", "0", None, Some(6)),
        ]);
        assert_eq!(counts.cores.len(), 2);
        assert_eq!(counts.cores[&("0".to_string(), "0".to_string())], 5);
        assert_eq!(counts.packages["0"], 30);
        assert_eq!(counts.packages["1"], 6);
    }

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("12\n"), Some(12));
        assert_eq!(parse_count("-1"), None);
        assert_eq!(parse_count(""), None);
    }
}
