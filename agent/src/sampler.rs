//! The sampler: runs every enabled source once per cycle, isolates their
//! failures, and records per-source success and duration. One timestamp
//! per cycle.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::emit::{Emitter, KernelEvent, MetricMeta, Sample};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, SourceOptions};
use crate::sources::{REGISTRY, find};

/// One sampling cycle's output.
#[derive(Debug)]
pub struct Cycle {
    /// When the cycle started, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Every sample of the cycle.
    pub samples: Vec<Sample>,
    /// Type and help of every metric name in `samples`.
    pub meta: std::collections::BTreeMap<String, MetricMeta>,
    /// Kernel events seen during the cycle.
    pub events: Vec<KernelEvent>,
}

/// Runs a fixed set of sources against one `HostPaths`.
pub struct Sampler {
    paths: HostPaths,
    sources: Vec<Box<dyn Source>>,
    /// Sources that already reported a missing permission; not logged again.
    reported_denied: std::collections::HashSet<&'static str>,
}

/// `--only` named a source that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown source {name:?}; known sources: {known}")]
pub struct UnknownSource {
    /// The name given.
    pub name: String,
    /// Comma-separated list of valid names.
    pub known: String,
}

impl Sampler {
    /// A sampler running `only` (or every default source when empty) with
    /// default source options.
    pub fn new(paths: HostPaths, only: &[String]) -> Result<Self, UnknownSource> {
        Self::build(paths, only, &[], &SourceOptions::default())
    }

    /// A sampler running `only` (or every default-on source when empty),
    /// minus `disable`, with the given source options.
    pub fn build(
        paths: HostPaths,
        only: &[String],
        disable: &[String],
        options: &SourceOptions,
    ) -> Result<Self, UnknownSource> {
        let unknown = |name: &String| UnknownSource {
            name: name.clone(),
            known: REGISTRY.iter().map(|e| e.name).collect::<Vec<_>>().join(","),
        };
        for name in only.iter().chain(disable) {
            find(name).ok_or_else(|| unknown(name))?;
        }
        let sources = REGISTRY
            .iter()
            .filter(|e| {
                if only.is_empty() {
                    e.default_on
                } else {
                    only.iter().any(|n| n == e.name)
                }
            })
            .filter(|e| !disable.iter().any(|n| n == e.name))
            .map(|e| (e.make)(options))
            .collect();
        Ok(Self::with_sources(paths, sources))
    }

    /// A sampler over explicitly built sources (tests use this).
    pub fn with_sources(paths: HostPaths, sources: Vec<Box<dyn Source>>) -> Self {
        Sampler {
            paths,
            sources,
            reported_denied: Default::default(),
        }
    }

    /// Names of the sources this sampler runs.
    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Runs one cycle.
    pub fn sample(&mut self) -> Cycle {
        let timestamp_ms = now_ms();
        let mut out = Emitter::new();
        for source in &mut self.sources {
            let name = source.name();
            let mut own = Emitter::new();
            let started = Instant::now();
            let result = source.collect(&self.paths, &mut own);
            let elapsed = started.elapsed().as_secs_f64();
            let ok = match result {
                Ok(()) => true,
                Err(SourceError::PermissionDenied { path }) => {
                    if self.reported_denied.insert(name) {
                        tracing::warn!(source = name, path = %path.display(), "missing permission; this source's series are skipped until the agent has it");
                    }
                    false
                }
                Err(e) => {
                    tracing::debug!(source = name, error = %e, "source failed");
                    false
                }
            };
            // A failed source may have emitted part of its series; keep them,
            // they are correct values.
            out.extend(own);
            out.gauge(
                "hostpulse_source_success",
                "Whether the source's last collection succeeded (1) or failed (0).",
                &[("source", name)],
                if ok { 1.0 } else { 0.0 },
            );
            out.gauge(
                "hostpulse_source_duration_seconds",
                "How long the source's last collection took.",
                &[("source", name)],
                elapsed,
            );
        }
        let events = out.take_events();
        let (samples, meta) = out.take();
        Cycle {
            timestamp_ms,
            samples,
            meta,
            events,
        }
    }
}

/// Milliseconds since the Unix epoch on the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Fails;
    impl Source for Fails {
        fn name(&self) -> &'static str {
            "fails"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            out.gauge("partial", "h", &[], 1.0);
            Err(SourceError::parse(std::path::Path::new("/x"), "bad"))
        }
    }
    struct Works;
    impl Source for Works {
        fn name(&self) -> &'static str {
            "works"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            out.gauge("whole", "h", &[], 2.0);
            Ok(())
        }
    }

    #[test]
    fn a_failing_source_does_not_stop_the_others() {
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(Fails), Box::new(Works)]);
        let cycle = s.sample();
        let get = |name: &str, source: &str| {
            cycle
                .samples
                .iter()
                .find(|x| x.name == name && x.labels.iter().any(|(k, v)| k == "source" && v == source))
                .map(|x| x.value)
        };
        assert_eq!(get("hostpulse_source_success", "fails"), Some(0.0));
        assert_eq!(get("hostpulse_source_success", "works"), Some(1.0));
        assert!(cycle.samples.iter().any(|x| x.name == "whole" && x.value == 2.0));
    }

    #[test]
    fn disable_removes_a_source_and_is_checked() {
        let opts = SourceOptions::default();
        let all = Sampler::build(HostPaths::default(), &[], &[], &opts)
            .unwrap()
            .source_names();
        let without = Sampler::build(HostPaths::default(), &[], &["hwmon".to_string()], &opts)
            .unwrap()
            .source_names();
        assert!(all.contains(&"hwmon"));
        assert!(!without.contains(&"hwmon"));
        assert_eq!(without.len(), all.len() - 1);
        let err = Sampler::build(HostPaths::default(), &[], &["hwmonn".to_string()], &opts)
            .err()
            .map(|e| e.name);
        assert_eq!(err.as_deref(), Some("hwmonn"));
    }

    #[test]
    fn unknown_only_names_the_source() {
        let err = Sampler::new(HostPaths::default(), &["nope".to_string()])
            .err()
            .map(|e| e.name);
        assert_eq!(err.as_deref(), Some("nope"));
    }
}
