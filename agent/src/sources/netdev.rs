//! The `netdev` source: per-interface counters from `/proc/net/dev` as
//! node_exporter's `node_network_{receive,transmit}_<field>_total{device}`.
//! Field names come from the file's own header (`bytes packets errs drop fifo
//! frame compressed multicast | bytes packets errs drop fifo colls carrier
//! compressed`), as node_exporter's text parser does, so a kernel that adds a
//! column gets a series for it without a code change. [`parse_net_dev`] is
//! pure; [`NetdevSource`] reads the file once a cycle.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Counters of one interface: `(stat name, value)` such as
/// `("receive_bytes", 1234.0)`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetDevStats {
    /// Interface name.
    pub device: String,
    /// Counters in header order.
    pub stats: Vec<(String, f64)>,
}

/// Parses `/proc/net/dev` (two header lines, then one line per interface).
pub fn parse_net_dev(text: &str) -> Result<Vec<NetDevStats>, String> {
    let mut lines = text.lines();
    let _title = lines.next();
    let header = lines.next().ok_or("missing column header line")?;
    let groups: Vec<&str> = header.split('|').collect();
    if groups.len() < 3 {
        return Err(format!("unexpected column header {header:?}"));
    }
    let mut names = Vec::new();
    for field in groups[1].split_whitespace() {
        names.push(format!("receive_{field}"));
    }
    for field in groups[2].split_whitespace() {
        names.push(format!("transmit_{field}"));
    }
    let mut devices = Vec::new();
    for (lineno, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (device, values) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: no interface name in {line:?}", lineno + 3))?;
        let values: Vec<&str> = values.split_whitespace().collect();
        if values.len() != names.len() {
            return Err(format!(
                "line {}: {} values for {} columns",
                lineno + 3,
                values.len(),
                names.len()
            ));
        }
        let mut stats = Vec::with_capacity(names.len());
        for (name, raw) in names.iter().zip(values) {
            let value = raw
                .parse::<f64>()
                .map_err(|_| format!("line {}: {name} is {raw:?}", lineno + 3))?;
            stats.push((name.clone(), value));
        }
        devices.push(NetDevStats {
            device: device.trim().to_string(),
            stats,
        });
    }
    Ok(devices)
}

/// Reads `/proc/net/dev`.
#[derive(Debug, Default)]
pub struct NetdevSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for NetdevSource {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("net/dev");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let devices = parse_net_dev(text).map_err(|m| SourceError::parse(&path, m))?;
        for dev in &devices {
            for (stat, value) in &dev.stats {
                out.counter(
                    &format!("node_network_{stat}_total"),
                    &format!("Network device statistic {stat}."),
                    &[("device", &dev.device)],
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

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  435303    1832    0    0    0     0          0         0   435303    1832    0    0    0     0       0          0
  eth0:68210035552 520993275    1    2    3     4          5         6 9315587528 43451486    7    8    9    10      11         12
";

    #[test]
    fn parses_every_column_under_its_header_name() {
        let devs = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].device, "lo");
        assert_eq!(devs[1].device, "eth0");
        assert_eq!(devs[1].stats.len(), 16);
        assert_eq!(devs[1].stats[0], ("receive_bytes".to_string(), 68210035552.0));
        assert_eq!(devs[1].stats[7], ("receive_multicast".to_string(), 6.0));
        assert_eq!(devs[1].stats[13], ("transmit_colls".to_string(), 10.0));
        assert_eq!(devs[1].stats[15], ("transmit_compressed".to_string(), 12.0));
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(parse_net_dev("").is_err());
        assert!(parse_net_dev("a\nno pipes here\n").is_err());
        let short = "x\n face |bytes packets|bytes packets\n lo: 1 2 3\n";
        assert!(parse_net_dev(short).is_err());
        let garbled = "x\n face |bytes packets|bytes packets\n lo: 1 2 3 x\n";
        assert!(parse_net_dev(garbled).is_err());
        let nameless = "x\n face |bytes|bytes\n 1 2\n";
        assert!(parse_net_dev(nameless).is_err());
    }
}
