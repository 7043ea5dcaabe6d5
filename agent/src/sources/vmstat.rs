//! The `vmstat` source: the fields of `/proc/vmstat` that node_exporter's
//! vmstat collector keeps by default (`--collector.vmstat.fields`
//! `^(oom_kill|pgpg|pswp|pg.*fault).*`), as untyped `node_vmstat_<field>`.
//! Page-in/out, swap-in/out, major faults and OOM kills are what the "Node
//! Exporter Full" dashboard plots; the other ~150 fields are left unread to
//! keep the series count down. [`parse_vmstat`] is pure; [`VmstatSource`]
//! reads the file once per cycle.

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Whether node_exporter's default vmstat field filter keeps `field`.
pub fn default_field(field: &str) -> bool {
    field.starts_with("oom_kill")
        || field.starts_with("pgpg")
        || field.starts_with("pswp")
        || field.strip_prefix("pg").is_some_and(|rest| rest.contains("fault"))
}

/// Parses `/proc/vmstat` (`name value` lines) into the fields the default
/// filter keeps, in file order.
pub fn parse_vmstat(text: &str) -> Result<Vec<(&str, f64)>, String> {
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next() else { continue };
        if !default_field(name) {
            continue;
        }
        let raw = parts
            .next()
            .ok_or_else(|| format!("line {}: {name} has no value", lineno + 1))?;
        let value = raw
            .parse::<f64>()
            .map_err(|_| format!("line {}: {name} value {raw:?} is not a number", lineno + 1))?;
        out.push((name, value));
    }
    Ok(out)
}

/// Reads `/proc/vmstat`.
#[derive(Debug, Default)]
pub struct VmstatSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for VmstatSource {
    fn name(&self) -> &'static str {
        "vmstat"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("vmstat");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        for (field, value) in parse_vmstat(text).map_err(|m| SourceError::parse(&path, m))? {
            out.push(
                &format!("node_vmstat_{field}"),
                MetricType::Untyped,
                &format!("/proc/vmstat information field {field}."),
                &[],
                value,
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
    fn keeps_only_the_default_fields() {
        let text = "nr_free_pages 977769\npgpgin 7344136\npswpout 35045\npgfault 2320168809\n\
                    pgmajfault 507162\nthp_fault_alloc 3\npgsteal_kswapd 1\noom_kill 0\n";
        assert_eq!(
            parse_vmstat(text).unwrap(),
            vec![
                ("pgpgin", 7344136.0),
                ("pswpout", 35045.0),
                ("pgfault", 2320168809.0),
                ("pgmajfault", 507162.0),
                ("oom_kill", 0.0),
            ]
        );
    }

    #[test]
    fn filter_matches_node_exporter_regex() {
        for kept in ["oom_kill", "pgpgin", "pswpin", "pgfault", "pgmajfault", "pg_x_fault_y"] {
            assert!(default_field(kept), "{kept}");
        }
        for dropped in ["nr_dirty", "thp_fault_alloc", "pgsteal_direct", "xpgfault", "pg"] {
            assert!(!default_field(dropped), "{dropped}");
        }
    }

    #[test]
    fn bad_values_of_kept_fields_are_errors() {
        assert!(parse_vmstat("pgfault lots\n").is_err());
        assert!(parse_vmstat("pgfault\n").is_err());
        // Fields that are not kept are not even parsed.
        assert_eq!(parse_vmstat("nr_dirty x\n\n").unwrap(), vec![]);
    }
}
