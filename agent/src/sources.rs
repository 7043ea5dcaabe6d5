//! The registry of sources: one explicit list, one file per source under
//! `sources/`. `--only` and the config name sources by the names here.

use crate::source::Source;

/// One registered source: its name and how to build it.
#[derive(Clone, Copy)]
pub struct SourceEntry {
    /// Name used by `--only` and in `hostpulse_source_*{source}`.
    pub name: &'static str,
    /// What the source reads, for `--help` and the README.
    pub about: &'static str,
    /// Builds a fresh instance.
    pub make: fn() -> Box<dyn Source>,
}

/// Every source the agent knows, in sampling order.
pub const REGISTRY: &[SourceEntry] = &[];

/// Looks a source up by name.
pub fn find(name: &str) -> Option<&'static SourceEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}
