//! The `arp` source: neighbour (ARP) table entries per interface from
//! `/proc/net/arp`, as node_exporter 1.5's `node_arp_entries{device}`. An
//! interface whose neighbour count collapses to zero while its carrier is up
//! has lost its L2 segment (a dead switch port or a bad cable); a count that
//! climbs to the kernel's `gc_thresh3` limit drops traffic. The file is kept
//! open and re-read from offset 0 each cycle ([`Files`]). [`parse_arp`] is
//! pure.

use std::collections::BTreeMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Counts the entries of `/proc/net/arp` per device.
///
/// The first line is the column header; every other line has six columns
/// (`IP address`, `HW type`, `Flags`, `HW address`, `Mask`, `Device`). Like
/// node_exporter 1.5, every listed entry counts whatever its flags; a line
/// with another number of columns is an error, since it means the format
/// changed and the counts would be wrong.
pub fn parse_arp(text: &str) -> Result<BTreeMap<&str, u64>, String> {
    let mut counts = BTreeMap::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        match columns[..] {
            [] => continue,
            [_, _, _, _, _, device] => *counts.entry(device).or_insert(0) += 1,
            _ => return Err(format!("line {}: want 6 columns, got {line:?}", index + 1)),
        }
    }
    Ok(counts)
}

/// Reads `/proc/net/arp` through a kept descriptor.
#[derive(Debug, Default)]
pub struct ArpSource {
    files: Files,
}

impl Source for ArpSource {
    fn name(&self) -> &'static str {
        "arp"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("net/arp");
        let bytes = match self.files.read_bytes(&path) {
            Ok(bytes) => bytes,
            // No IPv4 (or no procfs networking in a container): nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let text = String::from_utf8_lossy(bytes);
        let counts = parse_arp(&text).map_err(|m| SourceError::parse(&path, m))?;
        for (device, count) in counts {
            out.gauge(
                "node_arp_entries",
                "ARP entries by device",
                &[("device", device)],
                count as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEADER: &str = "IP address       HW type     Flags       HW address            Mask     Device\n";

    #[test]
    fn counts_entries_per_device() {
        let text = format!(
            "{HEADER}\
             192.168.1.1      0x1         0x2         cc:aa:dd:ee:ff:00     *        eth0\n\
             192.168.1.7      0x1         0x0         00:00:00:00:00:00     *        eth0\n\
             10.0.0.1         0x1         0x2         aa:bb:cc:dd:ee:01     *        bond0\n"
        );
        let counts = parse_arp(&text).unwrap();
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("bond0", 1), ("eth0", 2)]);
    }

    #[test]
    fn an_empty_table_has_no_devices() {
        assert!(parse_arp(HEADER).unwrap().is_empty());
        assert!(parse_arp("").unwrap().is_empty());
    }

    #[test]
    fn a_changed_format_is_an_error() {
        let text = format!("{HEADER}192.168.1.1 0x1 0x2 cc:aa:dd:ee:ff:00 eth0\n");
        assert!(parse_arp(&text).unwrap_err().contains("line 2"));
    }

    #[test]
    fn reads_a_fixture_table_and_skips_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            procfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        let mut source = ArpSource::default();
        let mut out = Emitter::new();
        source.collect(&paths, &mut out).unwrap();
        assert!(out.samples().is_empty());

        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        std::fs::write(
            dir.path().join("net/arp"),
            format!("{HEADER}10.0.2.2         0x1         0x2         52:55:0a:00:02:02     *        eth0\n"),
        )
        .unwrap();
        source.collect(&paths, &mut out).unwrap();
        assert_eq!(out.samples().len(), 1);
    }
}
