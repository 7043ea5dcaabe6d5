//! The `time` source: the host's wall clock as node_exporter's
//! `node_time_seconds`, so clock skew between a host and the collector shows
//! up as a series (`node_time_seconds - timestamp(node_time_seconds)`).
//! Boot time comes from the `cpu` source (`node_boot_time_seconds`), so there
//! is no separate uptime source.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// Seconds since the epoch for `now`; a clock before 1970 gives a negative
/// value rather than an error.
pub fn epoch_seconds(now: SystemTime) -> f64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Reads the system clock (no files).
#[derive(Debug, Default)]
pub struct TimeSource;

impl Source for TimeSource {
    fn name(&self) -> &'static str {
        "time"
    }

    fn collect(&mut self, _paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        out.gauge(
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            &[],
            epoch_seconds(SystemTime::now()),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn converts_both_sides_of_the_epoch() {
        assert_eq!(epoch_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1.5);
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2.0);
    }
}
