//! The `meminfo` source: every field of `/proc/meminfo` as
//! `node_memory_<Key>[_bytes]`, mangled exactly as node_exporter does
//! (`Active(anon)` becomes `Active_anon`; values with a `kB` unit are
//! multiplied by 1024 and get a `_bytes` suffix; unitless counts such as
//! `HugePages_Total` keep their bare name). `HardwareCorrupted` — memory the
//! kernel poisoned after uncorrectable ECC errors — is one of them.
//! [`parse_meminfo`] is pure; [`MeminfoSource`] reads the file once a cycle.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses `/proc/meminfo` into `(metric suffix, value)` pairs in file order,
/// e.g. `("Active_anon_bytes", 2068484096.0)`.
pub fn parse_meminfo(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut fields = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else {
            continue;
        };
        let raw_key = first.strip_suffix(':').unwrap_or(first);
        let raw_value = parts
            .next()
            .ok_or_else(|| format!("line {}: {raw_key} has no value", lineno + 1))?;
        let mut value = raw_value
            .parse::<f64>()
            .map_err(|_| format!("line {}: {raw_key} value {raw_value:?} is not a number", lineno + 1))?;
        let mut key = mangle_key(raw_key);
        match (parts.next(), parts.next()) {
            (None, _) => {}
            (Some(_unit), None) => {
                // The kernel writes "kB" but means KiB.
                value *= 1024.0;
                key.push_str("_bytes");
            }
            (Some(_), Some(_)) => return Err(format!("line {}: unexpected layout {line:?}", lineno + 1)),
        }
        fields.push((key, value));
    }
    Ok(fields)
}

/// `Active(anon)` → `Active_anon`, as node_exporter's `\((.*)\)` → `_$1`.
fn mangle_key(key: &str) -> String {
    match (key.find('('), key.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}_{}{}", &key[..open], &key[open + 1..close], &key[close + 1..])
        }
        _ => key.to_string(),
    }
}

/// Reads `/proc/meminfo`.
#[derive(Debug, Default)]
pub struct MeminfoSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for MeminfoSource {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("meminfo");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let fields = parse_meminfo(text).map_err(|m| SourceError::parse(&path, m))?;
        // One name and one help buffer for all fields, not two strings per
        // field per cycle.
        let (mut name, mut help) = (String::new(), String::new());
        for (key, value) in fields {
            name.clear();
            name.push_str("node_memory_");
            name.push_str(&key);
            help.clear();
            help.push_str("Memory information field ");
            help.push_str(&key);
            help.push('.');
            if key.ends_with("_total") {
                out.counter(&name, &help, &[], value);
            } else {
                out.gauge(&name, &help, &[], value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &[(&str, f64)]) {
        let got = parse_meminfo(input).unwrap();
        let got: Vec<(&str, f64)> = got.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn mangles_keys_and_scales_kilobytes() {
        check(
            "MemTotal:        3742148 kB\nActive(anon):    2020004 kB\nHugePages_Total:       0\nHardwareCorrupted:     4 kB\n",
            &[
                ("MemTotal_bytes", 3831959552.0),
                ("Active_anon_bytes", 2068484096.0),
                ("HugePages_Total", 0.0),
                ("HardwareCorrupted_bytes", 4096.0),
            ],
        );
    }

    #[test]
    fn blank_lines_are_skipped() {
        check("\nMemFree: 1 kB\n\n", &[("MemFree_bytes", 1024.0)]);
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse_meminfo("MemFree: lots kB\n").is_err());
        assert!(parse_meminfo("MemFree:\n").is_err());
        assert!(parse_meminfo("MemFree: 1 kB extra\n").is_err());
    }

    #[test]
    fn key_mangling() {
        assert_eq!(mangle_key("Inactive(file)"), "Inactive_file");
        assert_eq!(mangle_key("Odd)("), "Odd)(");
        assert_eq!(mangle_key("Plain"), "Plain");
    }
}
