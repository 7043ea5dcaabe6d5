//! The `entropy` source: the kernel entropy pool from
//! `/proc/sys/kernel/random/{entropy_avail,poolsize}`, as node_exporter's
//! `node_entropy_available_bits` and `node_entropy_pool_size_bits`. A pool
//! stuck near zero on old kernels blocks TLS handshakes and key generation.
//! [`parse_bits`] is pure.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Parses one of the single-number files.
pub fn parse_bits(text: &str) -> Result<f64, String> {
    let text = text.trim();
    text.parse::<u64>()
        .map(|v| v as f64)
        .map_err(|_| format!("{text:?} is not a whole number"))
}

/// Reads the two entropy files.
#[derive(Debug, Default)]
pub struct EntropySource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

impl Source for EntropySource {
    fn name(&self) -> &'static str {
        "entropy"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        let files = [
            (
                "sys/kernel/random/entropy_avail",
                "node_entropy_available_bits",
                "Bits of available entropy.",
            ),
            (
                "sys/kernel/random/poolsize",
                "node_entropy_pool_size_bits",
                "Bits of entropy pool.",
            ),
        ];
        for (file, name, help) in files {
            let path = paths.proc(file);
            let text = match self.files.read_text(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&path, e)),
            };
            let bits = parse_bits(text).map_err(|m| SourceError::parse(&path, m))?;
            out.gauge(name, help, &[], bits);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_number_with_newline() {
        assert_eq!(parse_bits("1337\n").unwrap(), 1337.0);
        assert_eq!(parse_bits("256").unwrap(), 256.0);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_bits("").is_err());
        assert!(parse_bits("-1").is_err());
        assert!(parse_bits("12 bits").is_err());
    }
}
