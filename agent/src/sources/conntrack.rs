//! The `conntrack` source: the netfilter connection tracking table from
//! `/proc/sys/net/netfilter/nf_conntrack_{count,max}` and the per-CPU
//! statistics in `/proc/net/stat/nf_conntrack` (summed over CPUs), as
//! node_exporter's `node_nf_conntrack_*`. A full table silently drops new
//! connections ("nf_conntrack: table full"), which looks like a flaky NIC.
//! No netfilter module loaded means no files and no series, not an error.
//! [`parse_stat`] is pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Statistic columns node_exporter exports: (column name in the header,
/// metric suffix, help).
const STATS: [(&str, &str, &str); 8] = [
    ("found", "found", "Number of searched entries which were successful."),
    ("invalid", "invalid", "Number of packets seen which can not be tracked."),
    (
        "ignore",
        "ignore",
        "Number of packets seen which are already connected to a conntrack entry.",
    ),
    ("insert", "insert", "Number of entries inserted into the list."),
    (
        "insert_failed",
        "insert_failed",
        "Number of entries for which list insertion was attempted but failed.",
    ),
    ("drop", "drop", "Number of packets dropped due to conntrack failure."),
    (
        "early_drop",
        "early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (
        "search_restart",
        "search_restart",
        "Number of conntrack table lookups which had to be restarted due to hashtable resizes.",
    ),
];

/// Parses `/proc/net/stat/nf_conntrack` (a header naming the columns, then
/// one line of hexadecimal counters per CPU) into the sum over CPUs of each
/// column in [`STATS`] that the header names, in [`STATS`] order. Columns
/// are found by name because kernels renamed some (`searched` became
/// `clashres`).
pub fn parse_stat(text: &str) -> Result<Vec<(&'static str, f64)>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let wanted: Vec<(usize, &'static str)> = STATS
        .iter()
        .filter_map(|(column, suffix, _)| names.iter().position(|n| n == column).map(|i| (i, *suffix)))
        .collect();
    let mut sums = vec![0u64; wanted.len()];
    for line in lines {
        let values = line
            .split_whitespace()
            .map(|v| u64::from_str_radix(v, 16).map_err(|_| format!("{v:?} is not hexadecimal")))
            .collect::<Result<Vec<u64>, String>>()?;
        if values.len() != names.len() {
            return Err(format!(
                "{} columns in the header but {} in {line:?}",
                names.len(),
                values.len()
            ));
        }
        for (sum, (index, _)) in sums.iter_mut().zip(&wanted) {
            *sum = sum.saturating_add(values[*index]);
        }
    }
    Ok(wanted
        .iter()
        .zip(sums)
        .map(|((_, suffix), sum)| (*suffix, sum as f64))
        .collect())
}

/// Reads a single-number file; `Ok(None)` when it does not exist.
fn read_number(files: &mut Files, path: &std::path::Path) -> Result<Option<f64>, SourceError> {
    match files.read_text(path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(|v| Some(v as f64))
            .map_err(|_| SourceError::parse(path, format!("{:?} is not a whole number", text.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::io(path, e)),
    }
}

/// Reads the conntrack files.
#[derive(Debug, Default)]
pub struct ConntrackSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for ConntrackSource {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        // Without the count file netfilter is not loaded: nothing to report.
        let Some(entries) = read_number(&mut self.files, &paths.proc("sys/net/netfilter/nf_conntrack_count"))? else {
            return Ok(());
        };
        out.gauge(
            "node_nf_conntrack_entries",
            "Number of currently allocated flow entries for connection tracking.",
            &[],
            entries,
        );
        if let Some(limit) = read_number(&mut self.files, &paths.proc("sys/net/netfilter/nf_conntrack_max"))? {
            out.gauge(
                "node_nf_conntrack_entries_limit",
                "Maximum size of connection tracking table.",
                &[],
                limit,
            );
        }
        let path = paths.proc("net/stat/nf_conntrack");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        for (suffix, value) in parse_stat(text).map_err(|m| SourceError::parse(&path, m))? {
            let help = STATS
                .iter()
                .find(|(_, s, _)| *s == suffix)
                .map(|(_, _, help)| *help)
                .unwrap_or_default();
            out.gauge(&format!("node_nf_conntrack_stat_{suffix}"), help, &[], value);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STAT: &str = "\
entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000021  00000000 00000001 00000000 00000003 0000588a 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
00000021  00000000 00000000 00000000 00000002 000056a4 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000002
";

    #[test]
    fn sums_columns_over_cpus() {
        let stats = parse_stat(STAT).unwrap();
        assert_eq!(
            stats,
            vec![
                ("found", 1.0),
                ("invalid", 5.0),
                ("ignore", (0x588a + 0x56a4) as f64),
                ("insert", 0.0),
                ("insert_failed", 0.0),
                ("drop", 0.0),
                ("early_drop", 0.0),
                ("search_restart", 2.0),
            ]
        );
    }

    #[test]
    fn columns_are_found_by_name() {
        let stats = parse_stat("entries clashres found invalid\n1 2 3 4\n").unwrap();
        assert_eq!(stats, vec![("found", 3.0), ("invalid", 4.0)]);
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse_stat("entries found\n1\n").is_err());
        assert!(parse_stat("entries found\n1 zz\n").is_err());
        assert!(parse_stat("").unwrap().is_empty());
    }
}
