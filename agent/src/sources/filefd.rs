//! The `filefd` source: allocated and maximum file handles from
//! `/proc/sys/fs/file-nr`, as node_exporter's `node_filefd_allocated` and
//! `node_filefd_maximum`. A host running out of file handles fails in ways
//! that look like hardware trouble (sockets and disks refusing I/O), so the
//! ratio is worth an alert. [`parse_file_nr`] is pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses `file-nr` (`allocated unused maximum`) into (allocated, maximum).
pub fn parse_file_nr(text: &str) -> Result<(f64, f64), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [allocated, _unused, maximum] = fields[..] else {
        return Err(format!("want 3 fields, got {text:?}"));
    };
    let number = |raw: &str| raw.parse::<f64>().map_err(|_| format!("{raw:?} is not a number"));
    Ok((number(allocated)?, number(maximum)?))
}

/// Reads `/proc/sys/fs/file-nr`.
#[derive(Debug, Default)]
pub struct FilefdSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for FilefdSource {
    fn name(&self) -> &'static str {
        "filefd"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let path = paths.proc("sys/fs/file-nr");
        let text = match self.files.read_text(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        let (allocated, maximum) = parse_file_nr(text).map_err(|m| SourceError::parse(&path, m))?;
        out.gauge(
            "node_filefd_allocated",
            "File descriptor statistics: allocated.",
            &[],
            allocated,
        );
        out.gauge(
            "node_filefd_maximum",
            "File descriptor statistics: maximum.",
            &[],
            maximum,
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_allocated_and_maximum() {
        assert_eq!(parse_file_nr("1024\t0\t1631329\n").unwrap(), (1024.0, 1631329.0));
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse_file_nr("1024 0\n").is_err());
        assert!(parse_file_nr("1024 0 max\n").is_err());
        assert!(parse_file_nr("").is_err());
    }
}
