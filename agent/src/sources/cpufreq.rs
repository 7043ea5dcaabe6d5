//! The `cpufreq` source: per-CPU frequency limits and the current scaled
//! frequency from `/sys/devices/system/cpu/cpu*/cpufreq`, as node_exporter's
//! `node_cpu_scaling_frequency{,_min,_max}_hertz{cpu}`,
//! `node_cpu_frequency_{min,max}_hertz{cpu}` and
//! `node_cpu_scaling_governor{cpu,governor}`.
//!
//! Only cheap attributes are read. `cpuinfo_cur_freq` is deliberately never
//! opened: on some kernels reading it sends an IPI and waits for the target
//! CPU (~20 ms per CPU), so node_exporter's `node_cpu_frequency_hertz` from
//! that file is not produced; `scaling_cur_freq` carries the same signal (a
//! CPU stuck at its minimum while busy is being throttled). The parsers
//! ([`parse_khz`], [`governor_states`]) are pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;
use crate::sources::thermal_throttle::cpu_numbers;

/// Parses a cpufreq kHz file into hertz.
pub fn parse_khz(text: &str) -> Option<f64> {
    text.trim().parse::<u64>().ok().map(|khz| khz as f64 * 1000.0)
}

/// `(governor, 1 or 0)` for every available governor, 1 for the current one.
pub fn governor_states<'a>(available: &'a str, current: &str) -> Vec<(&'a str, f64)> {
    let current = current.trim();
    available
        .split_whitespace()
        .map(|g| (g, if g == current { 1.0 } else { 0.0 }))
        .collect()
}

/// Files read per CPU: (file, metric, help).
const FREQUENCY_FILES: &[(&str, &str, &str)] = &[
    (
        "cpuinfo_max_freq",
        "node_cpu_frequency_max_hertz",
        "Maximum CPU thread frequency in hertz.",
    ),
    (
        "cpuinfo_min_freq",
        "node_cpu_frequency_min_hertz",
        "Minimum CPU thread frequency in hertz.",
    ),
    (
        "scaling_cur_freq",
        "node_cpu_scaling_frequency_hertz",
        "Current scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_max_freq",
        "node_cpu_scaling_frequency_max_hertz",
        "Maximum scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_min_freq",
        "node_cpu_scaling_frequency_min_hertz",
        "Minimum scaled CPU thread frequency in hertz.",
    ),
];

/// Reads `/sys/devices/system/cpu/cpu*/cpufreq`; listings, limits and the
/// available governors from the refreshed cache, the current frequency and
/// governor through kept descriptors.
#[derive(Debug, Default)]
pub struct CpufreqSource {
    files: Files,
}

/// Frequency files that are hardware limits, not state.
const STATIC_FILES: &[&str] = &["cpuinfo_max_freq", "cpuinfo_min_freq"];

impl Source for CpufreqSource {
    fn name(&self) -> &'static str {
        "cpufreq"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("devices/system/cpu");
        let Some(numbers) = cpu_numbers(files, &dir)? else {
            return Ok(());
        };
        for n in numbers {
            let freq = dir.join(format!("cpu{n}/cpufreq"));
            if !files.is_dir(&freq) {
                continue;
            }
            let cpu = n.to_string();
            for (file, metric, help) in FREQUENCY_FILES {
                let text = if STATIC_FILES.contains(file) {
                    files.static_in(&freq, file)
                } else {
                    files.attr_in(&freq, file)
                };
                if let Some(hz) = text.and_then(|t| parse_khz(&t)) {
                    out.gauge(metric, help, &[("cpu", &cpu)], hz);
                }
            }
            let available = files.static_in(&freq, "scaling_available_governors");
            let current = files.attr_in(&freq, "scaling_governor");
            if let (Some(available), Some(current)) = (available, current) {
                for (governor, value) in governor_states(&available, &current) {
                    out.gauge(
                        "node_cpu_scaling_governor",
                        "Current enabled CPU frequency governor.",
                        &[("cpu", &cpu), ("governor", governor)],
                        value,
                    );
                }
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
    fn khz_becomes_hertz() {
        assert_eq!(parse_khz("1699981\n"), Some(1_699_981_000.0));
        assert_eq!(parse_khz("<unsupported>"), None);
        assert_eq!(parse_khz(""), None);
    }

    #[test]
    fn current_governor_is_one() {
        assert_eq!(
            governor_states("performance powersave\n", "powersave\n"),
            vec![("performance", 0.0), ("powersave", 1.0)]
        );
        assert!(governor_states("", "powersave").is_empty());
    }
}
