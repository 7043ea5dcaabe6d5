//! `HostpulseHostSilent`: a host that reported before has sent nothing for
//! longer than a grace period. Detected from the store's host records
//! (`last_report_ms` of each agent), not from series, because a silent host
//! has no series left to select.
//!
//! Rationale: a host that stops reporting is either down (power, kernel
//! panic, hardware fault) or cut off; either way every other alert for it
//! is now blind, so this one alert replaces them (the rule loop inhibits
//! the host's other alerts while this fires).

use std::collections::BTreeMap;

use super::{Detector, Inputs};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::Labels;
use crate::store::HostRecord;

/// Default grace period: long enough for an agent restart or a collector
/// failover (agents reconnect with backoff up to a minute), short enough
/// to page well before anyone notices by hand.
pub const DEFAULT_GRACE_MS: i64 = 3 * 60 * 1000;

/// The detector; `grace_ms` is how long a host may be quiet.
#[derive(Debug, Clone, Copy)]
pub struct HostSilent {
    /// Quiet time before the alert fires.
    pub grace_ms: i64,
    /// When this collector started watching (ms; 0 for "always"). Hosts
    /// that were reporting when the collector last stopped get a fresh
    /// grace period from here, so a collector outage longer than the grace
    /// does not page for the whole fleet before the agents reconnect.
    pub started_ms: i64,
}

/// The alert name.
pub const NAME: &str = "HostpulseHostSilent";

impl Detector for HostSilent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        silent_hosts(inputs.hosts(), now_ms, self.grace_ms, self.started_ms)
    }
}

/// An alert for every host quiet for more than `grace_ms`. Hosts that never
/// reported (`last_report_ms <= 0`) are not silent, they are unknown.
///
/// Quiet time normally counts from the host's last report. A host that was
/// still reporting when the collector last stopped (its last report within
/// the grace period of the newest report before `started_ms`) counts from
/// `started_ms` instead: its silence is the collector's outage, and it gets
/// the usual grace to reconnect. A host that was already silent before the
/// stop stays silent at once, so an alert that was firing keeps firing
/// across a restart instead of resolving and paging again.
pub fn silent_hosts(hosts: &[HostRecord], now_ms: i64, grace_ms: i64, started_ms: i64) -> Vec<ActiveAlert> {
    let newest_before_start = hosts
        .iter()
        .map(|h| h.last_report_ms)
        .filter(|&t| t > 0 && t <= started_ms)
        .max();
    let quiet_since = |h: &HostRecord| match newest_before_start {
        Some(newest) if h.last_report_ms >= newest.saturating_sub(grace_ms) => h.last_report_ms.max(started_ms),
        _ => h.last_report_ms,
    };
    hosts
        .iter()
        .filter(|h| h.last_report_ms > 0 && now_ms.saturating_sub(quiet_since(h)) > grace_ms)
        .map(|h| {
            let quiet_s = (now_ms - h.last_report_ms) as f64 / 1000.0;
            ActiveAlert {
                labels: Labels::from_pairs(&[
                    (ALERT_NAME, NAME),
                    ("instance", &h.host),
                    ("job", "hostpulse"),
                    ("severity", "critical"),
                ]),
                annotations: BTreeMap::from([
                    ("summary".to_string(), format!("Host {} stopped reporting", h.host)),
                    (
                        "description".to_string(),
                        format!(
                            "No data from {} for {:.0} s (grace period {} s). The host may be down, hung or cut off from the collector; its other alerts are held until it reports again.",
                            h.host,
                            quiet_s,
                            grace_ms / 1000
                        ),
                    ),
                    (
                        "rationale".to_string(),
                        "A silent host cannot report its own failure; silence after a period of regular reports is the failure signal.".to_string(),
                    ),
                ]),
                value: quiet_s,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn host(name: &str, last_report_ms: i64) -> HostRecord {
        HostRecord {
            host: name.into(),
            last_report_ms,
            ..HostRecord::default()
        }
    }

    #[test]
    fn a_collector_outage_does_not_page_for_hosts_that_were_reporting() {
        let g = DEFAULT_GRACE_MS;
        // The collector stopped at `stop`, was down for 10 minutes, and
        // started again at `start`.
        let stop = 1_700_000_000_000;
        let start = stop + 10 * 60_000;
        let hosts = [
            host("was-fine", stop - 5_000),
            host("was-dead", stop - 2 * g),
            host("back", start + 30_000),
        ];
        // Right after the start nobody new is silent; the host that was
        // already silent before the outage still is (its alert keeps firing).
        let alerts = silent_hosts(&hosts, start + 60_000, g, start);
        let names: Vec<&str> = alerts.iter().map(|a| a.labels.get("instance")).collect();
        assert_eq!(names, ["was-dead"]);
        // A host that does not come back within the grace after the start
        // is silent then.
        let alerts = silent_hosts(&hosts, start + g + 1, g, start);
        let names: Vec<&str> = alerts.iter().map(|a| a.labels.get("instance")).collect();
        assert_eq!(names, ["was-fine", "was-dead"]);
        // Without a start time the quiet time is the plain one.
        assert_eq!(silent_hosts(&hosts, start + 60_000, g, 0).len(), 2);
    }

    #[test]
    fn only_hosts_quiet_past_the_grace_period() {
        let now = 1_700_000_000_000;
        let hosts = [
            host("fresh", now - 10_000),
            host("edge", now - DEFAULT_GRACE_MS),
            host("gone", now - DEFAULT_GRACE_MS - 1),
            host("never", 0),
        ];
        let alerts = silent_hosts(&hosts, now, DEFAULT_GRACE_MS, 0);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].labels.get("instance"), "gone");
        assert_eq!(alerts[0].labels.get(ALERT_NAME), NAME);
        assert!((alerts[0].value - 180.001).abs() < 1e-9);
        assert!(alerts[0].annotations["summary"].contains("gone"));
    }
}
