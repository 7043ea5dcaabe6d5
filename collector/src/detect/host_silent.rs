//! `HostpulseHostSilent`: a host that reported before has gone quiet.
//! Detected from the store's host records (`last_report_ms`, the sampling
//! interval the agent announced in its Hello, and how its ingest stream
//! stands), not from series, because a silent host has no series left to
//! select.
//!
//! Rationale: a host that stops reporting is either down (power, kernel
//! panic, hardware fault) or cut off; either way every other alert for it
//! is now blind, so this one alert replaces them (the rule loop inhibits
//! the host's other alerts while this fires).
//!
//! How long a host may be quiet depends on what the collector knows
//! ([`HostSilent::judge`]):
//!
//! - **Open stream, no data**: the host missed its reports while its
//!   connection still stands, which is what a power loss, a kernel panic, a
//!   hang or a dead NIC look like (no FIN or RST reaches the collector). It
//!   is silent after two of its own sampling intervals: one missed report
//!   plus one interval of slack for jitter.
//! - **Stream dropped** (transport error, reset, keepalive timeout): if the
//!   host had already been quiet for two intervals before the drop, the
//!   drop is the keepalive noticing a dead peer and changes nothing.
//!   Otherwise a live agent reconnects within its backoff, so the host gets
//!   [`HostSilent::reconnect_grace_ms`] from the drop.
//! - **Stream ended by this collector** (overload, storage error): the
//!   agent backs off and may fail over to another collector, coming back
//!   only when it probes this one again; it gets
//!   [`HostSilent::failback_grace_ms`].
//! - **Clean goodbye** (agent stopped, restarted, host rebooting): it gets
//!   [`HostSilent::shutdown_grace_ms`] to come back.
//! - **After this collector starts**: hosts that were still reporting when
//!   it stopped get [`HostSilent::failback_grace_ms`] from the start, so
//!   a restart (or a crash after which agents failed over elsewhere) does
//!   not page for the fleet; hosts already silent before the stop stay
//!   silent at once, so a firing alert neither resolves nor pages twice.
//!
//! `host_silent_after`, when set, is a floor under every one of these.

use std::collections::BTreeMap;

use super::{Detector, Inputs};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::Labels;
use crate::store::{HostRecord, StreamState};

/// Quiet time allowed when the agent announced no interval (older agents,
/// older records): the grace this detector used before it knew intervals.
pub const DEFAULT_GRACE_MS: i64 = 3 * 60 * 1000;
/// How many of its own sampling intervals an open-stream host may miss
/// (counting from its last report): one missed report plus one interval
/// of slack.
pub const INTERVALS: i64 = 2;
/// Floor under the open-stream grace, so the millisecond jitter of a very
/// fast agent (sub-5 s intervals) cannot page.
pub const MIN_GRACE_MS: i64 = 10_000;
/// Default [`HostSilent::reconnect_grace_ms`]: twice the agent's default
/// reconnect backoff cap (30 s).
pub const DEFAULT_RECONNECT_GRACE_MS: i64 = 60_000;
/// Default [`HostSilent::failback_grace_ms`]: the agent's default failback
/// probe interval (5 min) plus its drain and a backoff.
pub const DEFAULT_FAILBACK_GRACE_MS: i64 = 6 * 60_000;
/// Default [`HostSilent::shutdown_grace_ms`]: a server's reboot through its
/// firmware's memory test.
pub const DEFAULT_SHUTDOWN_GRACE_MS: i64 = 15 * 60_000;

/// The detector and its knobs (all ms).
#[derive(Debug, Clone, Copy)]
pub struct HostSilent {
    /// Least quiet time before any host counts as silent
    /// (`host_silent_after`; 0: none).
    pub min_grace_ms: i64,
    /// After a stream dropped while the host was reporting.
    pub reconnect_grace_ms: i64,
    /// After this collector ended the stream, and after it started.
    pub failback_grace_ms: i64,
    /// After the agent said goodbye.
    pub shutdown_grace_ms: i64,
    /// When this collector started watching (0 for "always").
    pub started_ms: i64,
}

impl Default for HostSilent {
    fn default() -> Self {
        HostSilent {
            min_grace_ms: 0,
            reconnect_grace_ms: DEFAULT_RECONNECT_GRACE_MS,
            failback_grace_ms: DEFAULT_FAILBACK_GRACE_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            started_ms: 0,
        }
    }
}

/// The alert name.
pub const NAME: &str = "HostpulseHostSilent";

/// Why a host's quiet time is judged as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Its stream is open (or its state unknown): two of its intervals.
    OpenStream,
    /// Its stream dropped after it had already gone quiet.
    QuietBeforeDrop,
    /// Its stream dropped while it was reporting.
    Dropped,
    /// This collector ended its stream.
    Refused,
    /// Its agent said goodbye.
    Goodbye,
    /// This collector restarted since it last heard from the host.
    CollectorRestart,
}

impl Basis {
    fn text(self) -> &'static str {
        match self {
            Basis::OpenStream => "its stream is open but carries nothing",
            Basis::QuietBeforeDrop => "it went quiet on an open stream that then timed out",
            Basis::Dropped => "its stream dropped and the agent did not reconnect",
            Basis::Refused => "the collector ended its stream and the agent did not come back",
            Basis::Goodbye => "its agent shut down cleanly and did not come back",
            Basis::CollectorRestart => "it did not reconnect after the collector restarted",
        }
    }
}

/// How one host is judged: silent once it has been quiet for more than
/// `grace_ms` since `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Where the quiet time counts from.
    pub since_ms: i64,
    /// How long it may last.
    pub grace_ms: i64,
    /// Why.
    pub basis: Basis,
}

impl Judgement {
    /// Whether the host is silent at `now_ms`.
    pub fn silent_at(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.since_ms) > self.grace_ms
    }
}

impl Detector for HostSilent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        self.silent_hosts(inputs.hosts(), now_ms)
    }
}

impl HostSilent {
    /// Quiet time an open-stream host may have: two of its intervals (the
    /// old fixed grace when it announced none), never below
    /// [`MIN_GRACE_MS`] or `min_grace_ms`.
    pub fn tight_grace_ms(&self, h: &HostRecord) -> i64 {
        let by_interval = match i64::try_from(h.interval_ms) {
            Ok(i) if i > 0 => i.saturating_mul(INTERVALS),
            _ => DEFAULT_GRACE_MS,
        };
        by_interval.max(MIN_GRACE_MS).max(self.min_grace_ms)
    }

    /// How `h` is judged from its stream alone, as if the collector had
    /// run throughout.
    pub fn judge_stream(&self, h: &HostRecord) -> Judgement {
        let tight = self.tight_grace_ms(h);
        let last = h.last_report_ms;
        let ended = h.stream_since_ms;
        let after_end = |grace: i64, basis| Judgement {
            since_ms: ended,
            grace_ms: grace.max(tight),
            basis,
        };
        match h.stream {
            StreamState::Open | StreamState::Unknown => Judgement {
                since_ms: last,
                grace_ms: tight,
                basis: Basis::OpenStream,
            },
            StreamState::Dropped if ended.saturating_sub(last) > tight => Judgement {
                since_ms: last,
                grace_ms: tight,
                basis: Basis::QuietBeforeDrop,
            },
            // Silent once both the tight grace from the last report and
            // the reconnect grace from the drop have passed.
            StreamState::Dropped => Judgement {
                since_ms: ended,
                grace_ms: self
                    .reconnect_grace_ms
                    .max(last.saturating_add(tight).saturating_sub(ended))
                    .max(self.min_grace_ms),
                basis: Basis::Dropped,
            },
            StreamState::Refused => after_end(self.failback_grace_ms, Basis::Refused),
            StreamState::Goodbye => after_end(self.shutdown_grace_ms, Basis::Goodbye),
        }
    }

    /// How `h` is judged at this collector's start. `stopped_ms` is when
    /// the collector last heard from anyone before it started (its stop,
    /// as far as the records tell).
    pub fn judge(&self, h: &HostRecord, stopped_ms: Option<i64>) -> Judgement {
        let j = self.judge_stream(h);
        let heard_since_start = h.last_report_ms.max(h.stream_since_ms) >= self.started_ms;
        match stopped_ms {
            Some(stop) if !heard_since_start && !j.silent_at(stop) => Judgement {
                since_ms: self.started_ms,
                grace_ms: j.grace_ms.max(self.failback_grace_ms),
                basis: Basis::CollectorRestart,
            },
            _ => j,
        }
    }

    /// An alert for every silent host. Hosts that never reported
    /// (`last_report_ms <= 0`) are not silent, they are unknown.
    pub fn silent_hosts(&self, hosts: &[HostRecord], now_ms: i64) -> Vec<ActiveAlert> {
        let stopped_ms = (self.started_ms > 0)
            .then(|| {
                hosts
                    .iter()
                    .map(|h| h.last_report_ms.max(h.stream_since_ms))
                    .filter(|&t| t > 0 && t < self.started_ms)
                    .max()
            })
            .flatten();
        hosts
            .iter()
            .filter(|h| h.last_report_ms > 0)
            .filter_map(|h| {
                let j = self.judge(h, stopped_ms);
                j.silent_at(now_ms).then(|| alert(h, j, now_ms))
            })
            .collect()
    }
}

fn alert(h: &HostRecord, j: Judgement, now_ms: i64) -> ActiveAlert {
    let quiet_s = now_ms.saturating_sub(h.last_report_ms) as f64 / 1000.0;
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
                    "No data from {} for {quiet_s:.0} s: {} (allowed {} s). The host may be down, hung or cut off from the collector; its other alerts are held until it reports again.",
                    h.host,
                    j.basis.text(),
                    j.grace_ms / 1000
                ),
            ),
            (
                "rationale".to_string(),
                "A silent host cannot report its own failure; missing two of its own sampling intervals on a connection that still stands is the failure signal, while agents that disconnected or a collector that restarted get time to reconnect.".to_string(),
            ),
        ]),
        value: quiet_s,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    fn host(name: &str, last_report_ms: i64, interval_ms: u64, stream: StreamState, since: i64) -> HostRecord {
        HostRecord {
            host: name.into(),
            last_report_ms,
            interval_ms,
            stream,
            stream_since_ms: since,
            ..HostRecord::default()
        }
    }

    fn open(name: &str, last: i64, interval_ms: u64) -> HostRecord {
        host(name, last, interval_ms, StreamState::Open, last - 3_600_000)
    }

    fn names(d: &HostSilent, hosts: &[HostRecord], now: i64) -> Vec<String> {
        d.silent_hosts(hosts, now)
            .iter()
            .map(|a| a.labels.get("instance").to_string())
            .collect()
    }

    #[test]
    fn an_open_stream_is_silent_after_two_of_its_own_intervals() {
        let d = HostSilent::default();
        let hosts = [
            open("ten-fresh", NOW - 20_000, 10_000),
            open("ten-gone", NOW - 20_001, 10_000),
            open("minute-fresh", NOW - 2 * MIN, 60_000),
            open("minute-gone", NOW - 2 * MIN - 1, 60_000),
            // An agent that announced no interval keeps the old 3-minute grace.
            open("no-interval", NOW - 3 * MIN, 0),
            open("no-interval-gone", NOW - 3 * MIN - 1, 0),
            // Sub-second agents get the 10 s floor.
            open("fast", NOW - 9_000, 500),
            host("never", 0, 10_000, StreamState::Open, 0),
        ];
        assert_eq!(names(&d, &hosts, NOW), ["ten-gone", "minute-gone", "no-interval-gone"]);
        let a = d.silent_hosts(&hosts[1..2], NOW);
        assert!((a[0].value - 20.001).abs() < 1e-9);
        assert!(a[0].annotations["description"].contains("open but carries nothing"));
        assert_eq!(a[0].labels.get(ALERT_NAME), NAME);
    }

    #[test]
    fn host_silent_after_is_a_floor() {
        let d = HostSilent {
            min_grace_ms: 5 * MIN,
            ..HostSilent::default()
        };
        let hosts = [open("a", NOW - 4 * MIN, 10_000), open("b", NOW - 5 * MIN - 1, 10_000)];
        assert_eq!(names(&d, &hosts, NOW), ["b"]);
        let g = host("g", NOW - 20 * MIN, 10_000, StreamState::Goodbye, NOW - 20 * MIN);
        assert_eq!(d.judge_stream(&g).grace_ms, DEFAULT_SHUTDOWN_GRACE_MS);
    }

    #[test]
    fn a_drop_while_reporting_gives_the_agent_time_to_reconnect() {
        let d = HostSilent::default();
        let last = NOW - 50_000;
        // 10 s agent: its stream dropped right after a report.
        let h = host("blip", last, 10_000, StreamState::Dropped, last + 1_000);
        let j = d.judge_stream(&h);
        assert_eq!(j.basis, Basis::Dropped);
        assert!(!j.silent_at(last + 1_000 + DEFAULT_RECONNECT_GRACE_MS));
        assert!(j.silent_at(last + 1_000 + DEFAULT_RECONNECT_GRACE_MS + 1));
        // 60 s agent whose dead host the keepalive noticed 40 s after its
        // last report: still two intervals from that report, not later.
        let h = host("dead", last, 60_000, StreamState::Dropped, last + 40_000);
        let j = d.judge_stream(&h);
        assert!(!j.silent_at(last + 2 * MIN));
        assert!(j.silent_at(last + 2 * MIN + 1));
    }

    #[test]
    fn a_drop_after_the_host_went_quiet_changes_nothing() {
        // 10 s agent: quiet for 40 s on an open stream, then the keepalive
        // (30 s + 10 s) closed it. It was silent before the drop and stays so.
        let d = HostSilent::default();
        let last = NOW - 45_000;
        let before = open("h", last, 10_000);
        let after = host("h", last, 10_000, StreamState::Dropped, last + 40_000);
        assert!(d.judge_stream(&before).silent_at(last + 39_000));
        let j = d.judge_stream(&after);
        assert_eq!(j.basis, Basis::QuietBeforeDrop);
        assert!(j.silent_at(last + 40_001));
    }

    #[test]
    fn goodbyes_and_refusals_get_their_own_graces() {
        let d = HostSilent::default();
        let at = NOW - 2 * MIN;
        let hosts = [
            host("rebooting", at - 5_000, 10_000, StreamState::Goodbye, at),
            host("shed", at - 5_000, 10_000, StreamState::Refused, at),
            host("crashed", at - 5_000, 10_000, StreamState::Dropped, at),
        ];
        // 2 minutes after the ends only the drop is past its grace.
        assert_eq!(names(&d, &hosts, NOW), ["crashed"]);
        assert_eq!(
            names(&d, &hosts, at + DEFAULT_FAILBACK_GRACE_MS + 1),
            ["shed", "crashed"]
        );
        assert_eq!(names(&d, &hosts, at + DEFAULT_SHUTDOWN_GRACE_MS + 1).len(), 3);
    }

    #[test]
    fn a_collector_restart_does_not_page_for_hosts_that_were_reporting() {
        // The collector stopped at `stop`, was down for 10 minutes, and
        // started again at `start`. Its stop dropped every stream.
        let stop = NOW;
        let start = stop + 10 * MIN;
        let d = HostSilent {
            started_ms: start,
            ..HostSilent::default()
        };
        let hosts = [
            host("was-fine", stop - 5_000, 10_000, StreamState::Dropped, stop),
            host("was-dead", stop - 5 * MIN, 10_000, StreamState::Open, stop - 60 * MIN),
            host(
                "was-rebooting",
                stop - 2 * MIN,
                10_000,
                StreamState::Goodbye,
                stop - 2 * MIN,
            ),
            host("back", start + 55_000, 10_000, StreamState::Open, start + 30_000),
        ];
        // Right after the start nobody new is silent; the host that was
        // already silent before the stop still is (its alert keeps firing).
        assert_eq!(names(&d, &hosts, start + MIN), ["was-dead"]);
        // Agents that failed over elsewhere come back within the failback
        // grace ("back" stays out from here: it would go on reporting).
        let hosts = &hosts[..3];
        assert_eq!(names(&d, hosts, start + DEFAULT_FAILBACK_GRACE_MS), ["was-dead"]);
        // A host that does not come back within it is silent then; the
        // rebooting one keeps its longer shutdown grace.
        assert_eq!(
            names(&d, hosts, start + DEFAULT_FAILBACK_GRACE_MS + 1),
            ["was-fine", "was-dead"]
        );
        assert_eq!(names(&d, hosts, start + DEFAULT_SHUTDOWN_GRACE_MS + 1).len(), 3);
        // Without a start time the quiet time is the plain one.
        let plain = HostSilent::default();
        assert_eq!(names(&plain, hosts, start + MIN), ["was-fine", "was-dead"]);
    }

    #[test]
    fn a_fleet_reconnecting_after_a_restart_never_pages() {
        // 200 agents (10 s) reporting until the stop; after the start they
        // come back one by one over the failback window.
        let stop = NOW;
        let start = stop + 2 * MIN;
        let d = HostSilent {
            started_ms: start,
            ..HostSilent::default()
        };
        let mut hosts: Vec<HostRecord> = (0..200)
            .map(|i| {
                host(
                    &format!("h{i}"),
                    stop - (i % 10) * 1_000,
                    10_000,
                    StreamState::Dropped,
                    stop,
                )
            })
            .collect();
        let step = DEFAULT_FAILBACK_GRACE_MS / 200;
        for (i, h) in hosts.iter_mut().enumerate() {
            let back = start + step * i as i64;
            assert!(names(&d, std::slice::from_ref(h), back).is_empty(), "{} paged", h.host);
            *h = host(&h.host, back, 10_000, StreamState::Open, back);
            assert!(names(&d, std::slice::from_ref(h), back + 20_000).is_empty());
        }
    }
}
