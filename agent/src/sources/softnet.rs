//! The `softnet` source: per-CPU packet processing counters from
//! `/proc/net/softnet_stat`, as node_exporter's `node_softnet_*`. Drops and
//! "times squeezed" climbing mean the receive path cannot keep up — a NIC
//! interrupt storm or a CPU starved by something else.
//!
//! The file has one line of hexadecimal columns per CPU; newer kernels add
//! columns at the end (received_rps in 2.6.39, flow_limit_count in 4.18,
//! backlog length and CPU index in 5.14). On older kernels the CPU is the
//! line number. [`parse_softnet`] is pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Columns every kernel since 2.6.23 writes.
const MIN_COLUMNS: usize = 9;

/// One CPU's line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoftnetCpu {
    /// The CPU number (column 13, or the line number on older kernels).
    pub cpu: u32,
    /// Packets processed.
    pub processed: u32,
    /// Packets dropped because the backlog queue was full.
    pub dropped: u32,
    /// Times the NAPI budget or time ran out with work left.
    pub time_squeezed: u32,
    /// Collisions taking the device lock while transmitting.
    pub cpu_collision: u32,
    /// Times this CPU was woken by an inter-processor interrupt for RPS.
    pub received_rps: u32,
    /// Times the flow limit was hit.
    pub flow_limit_count: u32,
    /// Current backlog length (0 before 5.14).
    pub backlog_len: u32,
}

/// Parses `/proc/net/softnet_stat`.
pub fn parse_softnet(text: &str) -> Result<Vec<SoftnetCpu>, String> {
    let mut cpus = Vec::new();
    for (line_index, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let columns = line
            .split_whitespace()
            .map(|c| u32::from_str_radix(c, 16).map_err(|_| format!("column {c:?} is not hexadecimal")))
            .collect::<Result<Vec<u32>, String>>()?;
        if columns.len() < MIN_COLUMNS {
            return Err(format!(
                "line {} has {} columns, want at least {MIN_COLUMNS}",
                line_index + 1,
                columns.len()
            ));
        }
        let column = |i: usize| columns.get(i).copied().unwrap_or(0);
        let (backlog_len, cpu) = if columns.len() >= 13 {
            (column(11), column(12))
        } else {
            (0, u32::try_from(line_index).unwrap_or(u32::MAX))
        };
        cpus.push(SoftnetCpu {
            cpu,
            processed: column(0),
            dropped: column(1),
            time_squeezed: column(2),
            cpu_collision: column(8),
            received_rps: column(9),
            flow_limit_count: column(10),
            backlog_len,
        });
    }
    Ok(cpus)
}

/// Reads `/proc/net/softnet_stat`.
#[derive(Debug, Default)]
pub struct SoftnetSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for SoftnetSource {
    fn name(&self) -> &'static str {
        "softnet"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("net/softnet_stat");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        for stat in parse_softnet(text).map_err(|m| SourceError::parse(&path, m))? {
            let cpu = stat.cpu.to_string();
            let labels = [("cpu", cpu.as_str())];
            let counters = [
                (
                    "node_softnet_processed_total",
                    "Number of processed packets",
                    stat.processed,
                ),
                ("node_softnet_dropped_total", "Number of dropped packets", stat.dropped),
                (
                    "node_softnet_times_squeezed_total",
                    "Number of times processing packets ran out of quota",
                    stat.time_squeezed,
                ),
                (
                    "node_softnet_cpu_collision_total",
                    "Number of collision occur while obtaining device lock while transmitting",
                    stat.cpu_collision,
                ),
                (
                    "node_softnet_received_rps_total",
                    "Number of times cpu woken up received_rps",
                    stat.received_rps,
                ),
                (
                    "node_softnet_flow_limit_count_total",
                    "Number of times flow limit has been reached",
                    stat.flow_limit_count,
                ),
            ];
            for (name, help, value) in counters {
                out.counter(name, help, &labels, f64::from(value));
            }
            out.gauge(
                "node_softnet_backlog_len",
                "Softnet backlog status",
                &labels,
                f64::from(stat.backlog_len),
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
    fn old_kernels_number_cpus_by_line() {
        let text = "00049279 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n\
                    000dfb82 00000029 0000000a 00000000 00000000 00000000 00000000 00000000 00000002 00000003 00000004\n";
        let cpus = parse_softnet(text).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[1],
            SoftnetCpu {
                cpu: 1,
                processed: 0xdfb82,
                dropped: 0x29,
                time_squeezed: 10,
                cpu_collision: 2,
                received_rps: 3,
                flow_limit_count: 4,
                backlog_len: 0,
            }
        );
    }

    #[test]
    fn new_kernels_name_the_cpu() {
        // Offline CPUs are skipped by the kernel, so line 0 may be CPU 2.
        let text = "00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000002\n";
        let cpus = parse_softnet(text).unwrap();
        assert_eq!(cpus[0].cpu, 2);
        assert_eq!(cpus[0].backlog_len, 5);
        assert_eq!(cpus[0].processed, 16);
    }

    #[test]
    fn nine_columns_are_enough() {
        let cpus = parse_softnet("1 2 3 0 0 0 0 0 9\n").unwrap();
        assert_eq!((cpus[0].cpu_collision, cpus[0].received_rps), (9, 0));
    }

    #[test]
    fn short_or_non_hex_lines_are_errors() {
        assert!(parse_softnet("1 2 3\n").is_err());
        assert!(parse_softnet("1 2 3 4 5 6 7 8 zz\n").is_err());
        assert!(parse_softnet("").unwrap().is_empty());
    }
}
