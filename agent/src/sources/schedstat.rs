//! The `schedstat` source: per-CPU scheduler time from `/proc/schedstat`, as
//! node_exporter's `node_schedstat_{running,waiting}_seconds_total{cpu}`
//! and `node_schedstat_timeslices_total{cpu}`. Time spent waiting for a CPU
//! is run-queue pressure, the per-CPU view that complements PSI.
//! [`parse_schedstat`] is pure; only the `cpuN` lines are read (the
//! `domainN` lines are load-balancer internals).

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// One `cpuN` line's last three fields.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuSchedstat {
    /// `N` of `cpuN`, as written.
    pub cpu: String,
    /// Nanoseconds spent running tasks (field 7).
    pub running_ns: u64,
    /// Nanoseconds tasks spent waiting to run (field 8).
    pub waiting_ns: u64,
    /// Timeslices run (field 9).
    pub timeslices: u64,
}

/// Parses `/proc/schedstat` (version 15 and later keep these fields where
/// node_exporter reads them).
pub fn parse_schedstat(text: &str) -> Result<Vec<CpuSchedstat>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        let numbers: Vec<&str> = fields.collect();
        if numbers.len() < 9 {
            return Err(format!("cpu{cpu}: {} fields, want 9", numbers.len()));
        }
        let number = |i: usize| {
            numbers[i]
                .parse::<u64>()
                .map_err(|_| format!("cpu{cpu}: field {} is {:?}", i + 1, numbers[i]))
        };
        out.push(CpuSchedstat {
            cpu: cpu.to_string(),
            running_ns: number(6)?,
            waiting_ns: number(7)?,
            timeslices: number(8)?,
        });
    }
    Ok(out)
}

/// Reads `/proc/schedstat`.
#[derive(Debug, Default)]
pub struct SchedstatSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for SchedstatSource {
    fn name(&self) -> &'static str {
        "schedstat"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("schedstat");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        for cpu in parse_schedstat(text).map_err(|m| SourceError::parse(&path, m))? {
            let labels = [("cpu", cpu.cpu.as_str())];
            out.counter(
                "node_schedstat_running_seconds_total",
                "Number of seconds CPU spent running a process.",
                &labels,
                cpu.running_ns as f64 / 1e9,
            );
            out.counter(
                "node_schedstat_waiting_seconds_total",
                "Number of seconds spent by processing waiting for this CPU.",
                &labels,
                cpu.waiting_ns as f64 / 1e9,
            );
            out.counter(
                "node_schedstat_timeslices_total",
                "Number of timeslices executed by CPU.",
                &labels,
                cpu.timeslices as f64,
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
    fn reads_cpu_lines_only() {
        let text = "version 15\ntimestamp 15819019232\n\
                    cpu0 498494191 0 3533438552 2553969831 3853684107 2465731542 2045936778163039 343796328169361 4767485306\n\
                    domain0 00000000,00000003 212499247 210112015\n";
        assert_eq!(
            parse_schedstat(text).unwrap(),
            vec![CpuSchedstat {
                cpu: "0".into(),
                running_ns: 2045936778163039,
                waiting_ns: 343796328169361,
                timeslices: 4767485306,
            }]
        );
    }

    #[test]
    fn short_or_bad_lines_are_errors() {
        assert!(parse_schedstat("cpu0 1 2 3\n").is_err());
        assert!(parse_schedstat("cpu0 1 2 3 4 5 6 x 8 9\n").is_err());
        assert!(parse_schedstat("").unwrap().is_empty());
    }
}
