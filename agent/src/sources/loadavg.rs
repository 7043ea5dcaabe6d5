//! The `loadavg` source: the 1, 5 and 15 minute load averages from
//! `/proc/loadavg` as node_exporter's `node_load1`, `node_load5` and
//! `node_load15`. [`parse_loadavg`] is pure; [`LoadavgSource`] reads the file.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses the first three fields of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], String> {
    let mut fields = text.split_whitespace();
    let mut loads = [0.0; 3];
    for (i, load) in loads.iter_mut().enumerate() {
        let raw = fields
            .next()
            .ok_or_else(|| format!("expected 3 load averages, found {i}"))?;
        *load = raw
            .parse::<f64>()
            .map_err(|_| format!("load average {} is {raw:?}, not a number", i + 1))?;
    }
    Ok(loads)
}

/// Reads `/proc/loadavg`.
#[derive(Debug, Default)]
pub struct LoadavgSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for LoadavgSource {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("loadavg");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let [one, five, fifteen] = parse_loadavg(text).map_err(|m| SourceError::parse(&path, m))?;
        out.gauge("node_load1", "1m load average.", &[], one);
        out.gauge("node_load5", "5m load average.", &[], five);
        out.gauge("node_load15", "15m load average.", &[], fifteen);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_three_loads() {
        assert_eq!(
            parse_loadavg("0.21 0.37 0.39 1/719 19737\n").unwrap(),
            [0.21, 0.37, 0.39]
        );
    }

    #[test]
    fn short_or_garbled_input_is_an_error() {
        assert!(parse_loadavg("0.21 0.37").is_err());
        assert!(parse_loadavg("").is_err());
        assert!(parse_loadavg("0.21 high 0.39").is_err());
    }

    /// The file is read through a kept descriptor; a rewrite between cycles
    /// must still be seen. (A procfs file that goes away fails the read on
    /// the kept descriptor and the reopen; a plain test file would not.)
    #[test]
    fn kept_descriptor_sees_rewritten_content() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            procfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        let file = dir.path().join("loadavg");
        let load1 = |source: &mut LoadavgSource| {
            let mut out = Emitter::new();
            source.collect(&paths, &mut out).unwrap();
            out.samples().iter().find(|s| s.name == "node_load1").map(|s| s.value)
        };
        let mut source = LoadavgSource::default();
        std::fs::write(&file, "0.21 0.37 0.39 1/719 19737\n").unwrap();
        assert_eq!(load1(&mut source), Some(0.21));
        std::fs::write(&file, "1.5 0.37 0.39 1/719 19737\n").unwrap();
        assert_eq!(load1(&mut source), Some(1.5));
        std::fs::write(&file, "2.25 0.37 0.39 1/719 19737\n").unwrap();
        assert_eq!(load1(&mut source), Some(2.25));
    }
}
