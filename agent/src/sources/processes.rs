//! The `processes` source: node_exporter's `processes` collector —
//! `node_processes_pids`, `node_processes_threads`,
//! `node_processes_state{state}` and the limits `node_processes_max_processes`
//! (`kernel/pid_max`) and `node_processes_max_threads` (`kernel/threads-max`).
//! Many processes stuck in `D` (uninterruptible sleep) are the classic sign
//! of a hung disk or NFS server.
//!
//! Off by default, as in node_exporter, because of its cost: it reads one
//! `/proc/<pid>/stat` per process every cycle (about 5 µs each, so 5 ms per
//! cycle on a host with a thousand processes — more than every other
//! default source together). [`parse_pid_stat`] is pure.

use std::collections::BTreeMap;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// What the source uses from one `/proc/<pid>/stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidStat {
    /// State letter (`R`, `S`, `D`, `Z`, `I`, ...).
    pub state: String,
    /// Threads in the process.
    pub threads: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_pid_stat(text: &str) -> Result<PidStat, String> {
    let close = text.rfind(')').ok_or("no \")\" after the command name")?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // fields[0] is the state (field 3 of proc(5)), num_threads is field 20.
    let state = fields.first().ok_or("no state field")?;
    let threads = fields.get(17).ok_or("no num_threads field")?;
    Ok(PidStat {
        state: (*state).to_string(),
        threads: threads
            .parse()
            .map_err(|_| format!("num_threads {threads:?} is not a number"))?,
    })
}

/// Reads every process's stat file and the two limits.
#[derive(Debug, Default)]
pub struct ProcessesSource;

/// Reads a single-number procfs file.
fn read_limit(path: &std::path::Path) -> Result<Option<f64>, SourceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(|v| Some(v as f64))
            .map_err(|_| SourceError::parse(path, format!("{:?} is not a number", text.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::io(path, e)),
    }
}

impl Source for ProcessesSource {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let root = paths.proc("");
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&root, e)),
        };
        let mut pids = 0u64;
        let mut threads = 0u64;
        let mut states: BTreeMap<String, u64> = BTreeMap::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = entry.path().join("stat");
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // The process exited between listing and reading.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) || e.raw_os_error() == Some(3) => {
                    continue;
                }
                Err(e) => return Err(SourceError::io(&path, e)),
            };
            let stat = parse_pid_stat(&text).map_err(|m| SourceError::parse(&path, m))?;
            pids += 1;
            threads += stat.threads;
            *states.entry(stat.state).or_default() += 1;
        }
        out.gauge("node_processes_pids", "Number of PIDs", &[], pids as f64);
        out.gauge(
            "node_processes_threads",
            "Allocated threads in system",
            &[],
            threads as f64,
        );
        for (state, count) in &states {
            out.gauge(
                "node_processes_state",
                "Number of processes in each state.",
                &[("state", state)],
                *count as f64,
            );
        }
        if let Some(max) = read_limit(&paths.proc("sys/kernel/threads-max"))? {
            out.gauge("node_processes_max_threads", "Limit of threads in the system", &[], max);
        }
        if let Some(max) = read_limit(&paths.proc("sys/kernel/pid_max"))? {
            out.gauge("node_processes_max_processes", "Number of max PIDs limit", &[], max);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_and_threads() {
        let text = "1 (systemd) S 0 1 1 0 -1 4194560 9061 9416027 94 2620 36 98 54406 13885 20 0 1 0 29 109604864\n";
        assert_eq!(
            parse_pid_stat(text).unwrap(),
            PidStat {
                state: "S".into(),
                threads: 1
            }
        );
    }

    #[test]
    fn command_names_with_spaces_and_parentheses() {
        let text = "42 (a) b (c)) D 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 7 0\n";
        assert_eq!(
            parse_pid_stat(text).unwrap(),
            PidStat {
                state: "D".into(),
                threads: 7
            }
        );
    }

    #[test]
    fn truncated_lines_are_errors() {
        assert!(parse_pid_stat("1 (x) S 0 1\n").is_err());
        assert!(parse_pid_stat("1 x S\n").is_err());
        assert!(parse_pid_stat("1 (x)").is_err());
        assert!(parse_pid_stat("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 many 0\n").is_err());
    }
}
