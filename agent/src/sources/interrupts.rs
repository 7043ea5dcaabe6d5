//! The `interrupts` source: per-CPU interrupt counts from `/proc/interrupts`
//! as node_exporter's `node_interrupts_total{cpu,devices,info,type}`. Off by
//! default, as in node_exporter: it is one series per interrupt line per
//! CPU (thousands on a large host) for a signal most fleets never look at.
//! When enabled (`--only`/config), a NIC or disk controller interrupt storm
//! and machine-check counts (`MCE`, `MCP`) become visible per CPU.
//!
//! [`parse_interrupts`] is pure and follows node_exporter's reading: the
//! header counts the CPUs; a line needs one value per CPU plus a
//! description (so `ERR`/`MIS` are skipped); numbered interrupts split the
//! description into the chip/type (`info`) and the device names
//! (`devices`); a name seen twice keeps its last line.

use std::collections::BTreeMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// One interrupt line.
#[derive(Clone, Debug, PartialEq)]
pub struct Interrupt {
    /// Chip and trigger type for numbered interrupts (`IR-PCI-MSI-edge`),
    /// the description for named ones (`Local timer interrupts`).
    pub info: String,
    /// Device names for numbered interrupts (`ehci_hcd:usb1, mmc0`), empty
    /// for named ones.
    pub devices: String,
    /// Count per CPU, in header order.
    pub values: Vec<f64>,
}

/// Parses `/proc/interrupts` into interrupts by name (`0`, `LOC`, ...).
pub fn parse_interrupts(text: &str) -> Result<BTreeMap<String, Interrupt>, String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty file")?;
    let cpus = header.split_whitespace().count();
    let mut out = BTreeMap::new();
    for line in lines {
        // On aarch64 the name can touch the first value, so split at ':'.
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        if parts.len() < cpus + 1 {
            continue;
        }
        let name = name.trim_start_matches(' ');
        let values = parts[..cpus]
            .iter()
            .map(|v| v.parse::<f64>().map_err(|_| format!("{name}: {v:?} is not a number")))
            .collect::<Result<Vec<f64>, String>>()?;
        let (info, devices) = if name.parse::<i64>().is_ok() {
            (parts[cpus].to_string(), parts[cpus + 1..].join(" "))
        } else {
            (parts[cpus..].join(" "), String::new())
        };
        out.insert(name.to_string(), Interrupt { info, devices, values });
    }
    Ok(out)
}

/// Reads `/proc/interrupts`.
#[derive(Debug, Default)]
pub struct InterruptsSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for InterruptsSource {
    fn name(&self) -> &'static str {
        "interrupts"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("interrupts");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        for (name, interrupt) in parse_interrupts(text).map_err(|m| SourceError::parse(&path, m))? {
            for (cpu, value) in interrupt.values.iter().enumerate() {
                out.counter(
                    "node_interrupts_total",
                    "Interrupt details.",
                    &[
                        ("cpu", &cpu.to_string()),
                        ("devices", &interrupt.devices),
                        ("info", &interrupt.info),
                        ("type", &name),
                    ],
                    *value,
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

    const TEXT: &str = "           CPU0       CPU1
  0:         18          0  IR-IO-APIC-edge      timer
 16:     328511     322879  IR-IO-APIC-fasteoi   ehci_hcd:usb1, mmc0
NMI:         47       5031   Non-maskable interrupts
ERR:          0
";

    #[test]
    fn numbered_and_named_interrupts() {
        let got = parse_interrupts(TEXT).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got["16"],
            Interrupt {
                info: "IR-IO-APIC-fasteoi".into(),
                devices: "ehci_hcd:usb1, mmc0".into(),
                values: vec![328511.0, 322879.0],
            }
        );
        assert_eq!(got["NMI"].info, "Non-maskable interrupts");
        assert_eq!(got["NMI"].devices, "");
        assert_eq!(got["0"].values, vec![18.0, 0.0]);
    }

    #[test]
    fn aarch64_names_touching_values() {
        let got = parse_interrupts("  CPU0 CPU1\nIPI0:12 13 Rescheduling interrupts\n").unwrap();
        assert_eq!(got["IPI0"].values, vec![12.0, 13.0]);
        assert_eq!(got["IPI0"].info, "Rescheduling interrupts");
    }

    #[test]
    fn bad_values_are_errors_and_empty_is_an_error() {
        assert!(parse_interrupts("CPU0\n 1: x edge dev\n").is_err());
        assert!(parse_interrupts("").is_err());
    }
}
