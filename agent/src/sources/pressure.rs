//! The `pressure` source: Linux pressure stall information (PSI) from
//! `/proc/pressure/{cpu,io,memory,irq}` as node_exporter's
//! `node_pressure_*_seconds_total` counters. Stalls on memory or I/O are how
//! a dying disk or a leaking service shows up before anything crashes.
//!
//! Kernels without PSI (older than 4.20, or booted with `psi=0`) have no
//! directory or fail reads with `EOPNOTSUPP`; both are "no such hardware".
//! [`parse_psi`] is the pure parser.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// The `total=` microsecond counters of one pressure file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Psi {
    /// `some` line total, in seconds.
    pub some: Option<f64>,
    /// `full` line total, in seconds.
    pub full: Option<f64>,
}

/// Parses a pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=14036781`).
pub fn parse_psi(text: &str) -> Result<Psi, String> {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(kind) = fields.next() else { continue };
        let total = fields
            .find_map(|f| f.strip_prefix("total="))
            .ok_or_else(|| format!("{kind} line has no total: {line:?}"))?;
        let micros = total
            .parse::<u64>()
            .map_err(|_| format!("total {total:?} is not an integer"))?;
        // Divided twice, as node_exporter does, so the float is bit-identical.
        let seconds = micros as f64 / 1000.0 / 1000.0;
        match kind {
            "some" => psi.some = Some(seconds),
            "full" => psi.full = Some(seconds),
            other => return Err(format!("unknown pressure line kind {other:?}")),
        }
    }
    Ok(psi)
}

/// (resource, `some` metric and help, `full` metric and help), as
/// node_exporter exposes them. CPU `full` and IRQ `some` are not exposed.
type Family = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Option<(&'static str, &'static str)>,
);

const RESOURCES: &[Family] = &[
    (
        "cpu",
        Some((
            "node_pressure_cpu_waiting_seconds_total",
            "Total time in seconds that processes have waited for CPU time",
        )),
        None,
    ),
    (
        "io",
        Some((
            "node_pressure_io_waiting_seconds_total",
            "Total time in seconds that processes have waited due to IO congestion",
        )),
        Some((
            "node_pressure_io_stalled_seconds_total",
            "Total time in seconds no process could make progress due to IO congestion",
        )),
    ),
    (
        "memory",
        Some((
            "node_pressure_memory_waiting_seconds_total",
            "Total time in seconds that processes have waited for memory",
        )),
        Some((
            "node_pressure_memory_stalled_seconds_total",
            "Total time in seconds no process could make progress due to memory congestion",
        )),
    ),
    (
        "irq",
        None,
        Some((
            "node_pressure_irq_stalled_seconds_total",
            "Total time in seconds no process could make progress due to IRQ congestion",
        )),
    ),
];

/// Reads `/proc/pressure`.
#[derive(Debug, Default)]
pub struct PressureSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for PressureSource {
    fn name(&self) -> &'static str {
        "pressure"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        for (resource, some, full) in RESOURCES {
            let path = paths.proc(format!("pressure/{resource}"));
            let text = match self.files.read_text(&path) {
                Ok(text) => text,
                // ENOTSUP (95): PSI compiled in but disabled.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(95) => continue,
                Err(e) => return Err(SourceError::io(&path, e)),
            };
            let psi = parse_psi(text).map_err(|m| SourceError::parse(&path, m))?;
            if let (Some((name, help)), Some(v)) = (some, psi.some) {
                out.counter(name, help, &[], v);
            }
            if let (Some((name, help)), Some(v)) = (full, psi.full) {
                out.counter(name, help, &[], v);
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
    fn totals_are_seconds() {
        let psi = parse_psi(
            "some avg10=0.18 avg60=0.34 avg300=0.10 total=159886802\n\
             full avg10=0.18 avg60=0.34 avg300=0.10 total=159229614\n",
        )
        .unwrap();
        assert_eq!(psi.some, Some(159.886802));
        assert_eq!(psi.full, Some(159.229614));
    }

    #[test]
    fn irq_has_only_full() {
        let psi = parse_psi("full avg10=0.00 avg60=0.00 avg300=0.00 total=8494").unwrap();
        assert_eq!(psi.some, None);
        assert_eq!(psi.full, Some(0.008494));
        let cpu = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=14036781").unwrap();
        assert_eq!(cpu.some, Some(14.036781000000001));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_psi("some avg10=0.00").is_err());
        assert!(parse_psi("some total=x").is_err());
        assert!(parse_psi("half total=1").is_err());
        assert_eq!(parse_psi("").unwrap(), Psi::default());
    }
}
