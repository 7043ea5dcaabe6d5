//! The `sockstat` source: socket counts and socket buffer memory from
//! `/proc/net/sockstat` and `/proc/net/sockstat6`, as node_exporter's
//! `node_sockstat_<PROTO>_<state>` gauges plus `node_sockstat_sockets_used`.
//! `mem` is in pages, so node_exporter also exports `<PROTO>_mem_bytes`;
//! the page size is the running kernel's, read once from the agent's own
//! auxiliary vector (`/proc/self/auxv`, `AT_PAGESZ`) because asking libc for
//! it needs `unsafe`. [`parse_sockstat`] and [`parse_auxv_page_size`] are
//! pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Page size when the auxiliary vector cannot be read (every common Linux
/// platform but some arm64/ppc64 kernels).
const FALLBACK_PAGE_SIZE: u64 = 4096;

/// The `AT_PAGESZ` key of the ELF auxiliary vector.
const AT_PAGESZ: u64 = 6;

/// The states node_exporter exports, in its order; others are ignored.
const STATES: [&str; 6] = ["inuse", "orphan", "tw", "alloc", "mem", "memory"];

/// One protocol line, e.g. `TCP: inuse 4 orphan 0 tw 4 alloc 17 mem 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtocolSockets {
    /// Protocol name as written (`TCP`, `UDP6`, `FRAG`).
    pub protocol: String,
    /// `(state, count)` for the known [`STATES`], in file order.
    pub states: Vec<(&'static str, f64)>,
}

/// Everything in one sockstat file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sockstat {
    /// `sockets: used N` (only in the IPv4 file).
    pub used: Option<f64>,
    /// Per-protocol lines.
    pub protocols: Vec<ProtocolSockets>,
}

/// Parses a sockstat or sockstat6 file.
pub fn parse_sockstat(text: &str) -> Result<Sockstat, String> {
    let mut stat = Sockstat::default();
    for line in text.lines() {
        let Some((protocol, rest)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {line:?} has no \"PROTO:\""));
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if !fields.len().is_multiple_of(2) {
            return Err(format!("{protocol}: odd number of fields in {line:?}"));
        }
        let mut states = Vec::new();
        for pair in fields.chunks(2) {
            let value = pair[1]
                .parse::<f64>()
                .map_err(|_| format!("{protocol} {}: {:?} is not a number", pair[0], pair[1]))?;
            if protocol == "sockets" {
                if pair[0] == "used" {
                    stat.used = Some(value);
                }
            } else if let Some(state) = STATES.iter().find(|s| **s == pair[0]) {
                states.push((*state, value));
            }
        }
        if protocol != "sockets" {
            stat.protocols.push(ProtocolSockets {
                protocol: protocol.to_string(),
                states,
            });
        }
    }
    Ok(stat)
}

/// Finds `AT_PAGESZ` in the bytes of `/proc/self/auxv` (pairs of native
/// `usize` key and value, ended by key 0).
pub fn parse_auxv_page_size(bytes: &[u8]) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |chunk: &[u8]| -> Option<u64> {
        let array: [u8; WORD] = chunk.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(array)).ok()
    };
    for pair in bytes.chunks_exact(2 * WORD) {
        let key = word(&pair[..WORD])?;
        match key {
            0 => return None,
            AT_PAGESZ => return word(&pair[WORD..]).filter(|&size| size > 0),
            _ => {}
        }
    }
    None
}

/// Records one file's counts under node_exporter's names.
fn emit(stat: &Sockstat, ipv4: bool, page_size: u64, out: &mut Emitter) {
    if ipv4 && let Some(used) = stat.used {
        out.gauge(
            "node_sockstat_sockets_used",
            "Number of IPv4 sockets in use.",
            &[],
            used,
        );
    }
    for proto in &stat.protocols {
        let mut states: Vec<(&str, f64)> = proto.states.clone();
        if let Some((_, pages)) = proto.states.iter().find(|(s, _)| *s == "mem") {
            states.push(("mem_bytes", pages * page_size as f64));
        }
        for (state, value) in states {
            out.gauge(
                &format!("node_sockstat_{}_{state}", proto.protocol),
                &format!("Number of {} sockets in state {state}.", proto.protocol),
                &[],
                value,
            );
        }
    }
}

/// Reads both sockstat files.
#[derive(Debug)]
pub struct SockstatSource {
    page_size: u64,
    /// Kept descriptors of the two tables.
    files: Files,
}

impl Default for SockstatSource {
    fn default() -> Self {
        // The agent's own process, not the sampled tree: the page size
        // belongs to the kernel the agent runs on, like getpagesize(2).
        let page_size = std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|bytes| parse_auxv_page_size(&bytes))
            .unwrap_or(FALLBACK_PAGE_SIZE);
        SockstatSource {
            page_size,
            files: Files::default(),
        }
    }
}

impl Source for SockstatSource {
    fn name(&self) -> &'static str {
        "sockstat"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        for (file, ipv4) in [("net/sockstat", true), ("net/sockstat6", false)] {
            let path = paths.proc(file);
            let text = match self.files.read_text(&path) {
                Ok(text) => text,
                // IPv4 or IPv6 may be disabled in this kernel.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&path, e)),
            };
            let stat = parse_sockstat(text).map_err(|m| SourceError::parse(&path, m))?;
            emit(&stat, ipv4, self.page_size, out);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SOCKSTAT: &str = "\
sockets: used 229
TCP: inuse 4 orphan 0 tw 4 alloc 17 mem 1
UDP: inuse 0 mem 0
FRAG: inuse 0 memory 0
";

    #[test]
    fn parses_used_and_protocol_states() {
        let stat = parse_sockstat(SOCKSTAT).unwrap();
        assert_eq!(stat.used, Some(229.0));
        assert_eq!(stat.protocols[0].protocol, "TCP");
        assert_eq!(
            stat.protocols[0].states,
            vec![
                ("inuse", 4.0),
                ("orphan", 0.0),
                ("tw", 4.0),
                ("alloc", 17.0),
                ("mem", 1.0)
            ]
        );
        assert_eq!(stat.protocols[2].states, vec![("inuse", 0.0), ("memory", 0.0)]);
    }

    #[test]
    fn mem_is_also_exported_in_bytes() {
        let mut out = Emitter::new();
        emit(&parse_sockstat(SOCKSTAT).unwrap(), true, 4096, &mut out);
        let get = |name: &str| out.samples().iter().find(|s| s.name == name).map(|s| s.value);
        assert_eq!(get("node_sockstat_TCP_mem_bytes"), Some(4096.0));
        assert_eq!(get("node_sockstat_UDP_mem_bytes"), Some(0.0));
        assert_eq!(get("node_sockstat_FRAG_memory"), Some(0.0));
        assert_eq!(get("node_sockstat_FRAG_mem_bytes"), None);
        assert_eq!(get("node_sockstat_sockets_used"), Some(229.0));
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_sockstat("TCP: inuse\n").is_err());
        assert!(parse_sockstat("TCP: inuse x\n").is_err());
        assert!(parse_sockstat("garbage\n").is_err());
        assert_eq!(parse_sockstat("\n").unwrap(), Sockstat::default());
    }

    #[test]
    fn auxv_page_size() {
        let mut bytes = Vec::new();
        for (k, v) in [(33usize, 7usize), (6, 16384), (0, 0)] {
            bytes.extend_from_slice(&k.to_ne_bytes());
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_auxv_page_size(&bytes), Some(16384));
        assert_eq!(parse_auxv_page_size(&bytes[..16]), None);
        assert_eq!(parse_auxv_page_size(&[]), None);
        assert_eq!(parse_auxv_page_size(&[1, 2, 3]), None);
    }

    #[test]
    fn this_process_has_a_page_size() {
        let bytes = std::fs::read("/proc/self/auxv").unwrap();
        let size = parse_auxv_page_size(&bytes).unwrap();
        assert!(size.is_power_of_two() && size >= 4096, "{size}");
    }
}
