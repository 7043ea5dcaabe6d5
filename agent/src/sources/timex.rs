//! The `timex` source: what node_exporter's `time` and `timex` collectors
//! report that can be read without a system call — the kernel's clock
//! sources from `/sys/devices/system/clocksource/clocksource<N>/`, as
//! `node_time_clocksource_available_info{clocksource,device}` and
//! `node_time_clocksource_current_info{clocksource,device}`. The kernel
//! switching away from `tsc` (to `hpet` or `acpi_pm`) at run time means it
//! found the TSC unstable, a CPU or firmware problem.
//!
//! Not here: node_exporter's `node_timex_*` (offset, frequency, sync status,
//! PPS) come only from `adjtimex(2)`. Neither `std` nor the `rustix` version
//! the agent uses wraps it, and the workspace forbids `unsafe`, so those
//! series are not produced. `node_time_seconds` comes from the `time`
//! source. [`parse_available`] is pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// Splits `available_clocksource` (`tsc hpet acpi_pm`) into names.
pub fn parse_available(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Reads the clock source directories.
#[derive(Debug, Default)]
pub struct TimexSource;

/// Reads a file; `Ok(None)` when it does not exist.
fn read_optional(path: &std::path::Path) -> Result<Option<String>, SourceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::io(path, e)),
    }
}

impl Source for TimexSource {
    fn name(&self) -> &'static str {
        "timex"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let root = paths.sys("devices/system/clocksource");
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&root, e)),
        };
        let mut devices: Vec<(String, std::path::PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let number = name.strip_prefix("clocksource")?;
                (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| (number.to_string(), e.path()))
            })
            .collect();
        devices.sort();
        for (device, dir) in devices {
            if let Some(text) = read_optional(&dir.join("available_clocksource"))? {
                for clocksource in parse_available(&text) {
                    out.gauge(
                        "node_time_clocksource_available_info",
                        "Available clocksources read from '/sys/devices/system/clocksource'.",
                        &[("clocksource", clocksource), ("device", &device)],
                        1.0,
                    );
                }
            }
            if let Some(text) = read_optional(&dir.join("current_clocksource"))? {
                let current = text.trim();
                if !current.is_empty() {
                    out.gauge(
                        "node_time_clocksource_current_info",
                        "Current clocksource read from '/sys/devices/system/clocksource'.",
                        &[("clocksource", current), ("device", &device)],
                        1.0,
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_names() {
        assert_eq!(parse_available("tsc hpet acpi_pm \n"), vec!["tsc", "hpet", "acpi_pm"]);
        assert!(parse_available("\n").is_empty());
    }
}
