//! The collector's own metrics, defined in one place. Code increments them
//! by variant (`telemetry.inc(Counter::IngestBatches)`), never by a string
//! scattered through the code; `/metrics` renders them in Prometheus text
//! format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! counters {
    ($($variant:ident => ($name:literal, $labels:literal, $help:literal),)*) => {
        /// Every counter the collector keeps.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $(#[doc = $help] $variant,)* }
        const COUNTERS: &[(&str, &str, &str)] = &[$(($name, $labels, $help),)*];
    };
}

counters! {
    IngestStreams => ("hostpulse_ingest_streams_total", "", "Agent streams opened."),
    IngestBatches => ("hostpulse_ingest_batches_total", "", "Batches stored and acknowledged."),
    IngestDuplicateBatches => ("hostpulse_ingest_duplicate_batches_total", "", "Batches acknowledged without storing because they were already stored (replays)."),
    IngestSamples => ("hostpulse_ingest_samples_total", "", "Samples stored."),
    RejectedProtocol => ("hostpulse_ingest_rejected_total", "reason=\"protocol\"", "Messages rejected, by reason."),
    RejectedHello => ("hostpulse_ingest_rejected_total", "reason=\"bad_hello\"", "Messages rejected, by reason."),
    RejectedBatch => ("hostpulse_ingest_rejected_total", "reason=\"bad_batch\"", "Messages rejected, by reason."),
    RejectedSample => ("hostpulse_ingest_rejected_total", "reason=\"sample\"", "Messages rejected, by reason."),
    RejectedStorage => ("hostpulse_ingest_rejected_total", "reason=\"storage\"", "Messages rejected, by reason."),
    RejectedIdentity => ("hostpulse_ingest_rejected_total", "reason=\"identity\"", "Messages rejected, by reason."),
    RejectedUnauthenticated => ("hostpulse_ingest_rejected_total", "reason=\"unauthenticated\"", "Messages rejected, by reason."),
    RejectedRateLimited => ("hostpulse_ingest_rejected_total", "reason=\"rate_limited\"", "Messages rejected, by reason."),
    RejectedOverloaded => ("hostpulse_ingest_rejected_total", "reason=\"overloaded\"", "Messages rejected, by reason."),
    RejectedOutOfOrder => ("hostpulse_ingest_rejected_total", "reason=\"out_of_order\"", "Messages rejected, by reason."),
    RejectedNewSeriesRate => ("hostpulse_ingest_rejected_total", "reason=\"new_series_rate\"", "Messages rejected, by reason."),
    HttpRequests => ("hostpulse_http_requests_total", "", "HTTP API requests served."),
    HttpErrors => ("hostpulse_http_request_errors_total", "", "HTTP API requests answered with an error."),
    RuleEvaluations => ("hostpulse_rule_evaluations_total", "", "Alert rule evaluations."),
    RuleEvaluationFailures => ("hostpulse_rule_evaluation_failures_total", "", "Alert rule evaluations that failed."),
    NotificationsSent => ("hostpulse_notifications_sent_total", "", "Alert notifications delivered to webhooks."),
    NotificationsFailed => ("hostpulse_notifications_failed_total", "", "Alert notifications that could not be delivered."),
    RejectedLimit => ("hostpulse_ingest_limit_rejections_total", "", "Batches rejected because they exceeded a limit (series per stream, labels per series, name or value length)."),
    IngestStreamErrors => ("hostpulse_ingest_stream_errors_total", "", "Agent streams that ended on a transport or decoding error, such as an undecodable or oversized message."),
    HttpUnauthorized => ("hostpulse_http_unauthorized_total", "", "Write and admin HTTP requests refused for a missing or wrong admin token."),
    AlertmanagerSent => ("hostpulse_alertmanager_sends_total", "result=\"ok\"", "Batches of alerts posted to an Alertmanager, by result."),
    AlertmanagerFailed => ("hostpulse_alertmanager_sends_total", "result=\"failed\"", "Batches of alerts posted to an Alertmanager, by result."),
    RuleReloads => ("hostpulse_rule_reloads_total", "result=\"ok\"", "Rule file reloads (start, SIGHUP, POST /-/reload), by result."),
    RuleReloadFailures => ("hostpulse_rule_reloads_total", "result=\"failed\"", "Rule file reloads (start, SIGHUP, POST /-/reload), by result."),
    RecordedSamples => ("hostpulse_rule_recorded_samples_total", "", "Samples written by recording rules."),
    PromqlQueries => ("hostpulse_promql_queries_total", "", "PromQL queries (instant and range) evaluated for the HTTP API."),
    PromqlTimeouts => ("hostpulse_promql_query_timeouts_total", "", "PromQL queries stopped by their deadline."),
    PromqlExecutionErrors => ("hostpulse_promql_execution_errors_total", "", "PromQL queries that failed while evaluating (limits, many-to-many matching, duplicate series)."),
}

/// Every gauge the collector keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    /// Agent streams currently open.
    IngestStreamsActive,
    /// Alerts currently firing.
    AlertsFiring,
    /// Bytes of the ingest in-flight budget reserved at the moment.
    IngestInflightBytes,
    /// Most bytes of the ingest in-flight budget ever reserved at once.
    IngestInflightPeakBytes,
    /// The ingest in-flight budget for decoded batches, in bytes (three
    /// quarters of `[ingest] max_inflight_mb`).
    IngestInflightLimitBytes,
    /// Streams holding a prepared batch while they wait for a turn at the
    /// store's writer.
    IngestWaitingForWriter,
    /// Received frames waiting, undecoded, for room in the in-flight budget.
    IngestFramesWaiting,
}

const GAUGES: &[(&str, &str)] = &[
    ("hostpulse_ingest_streams_active", "Agent streams currently open."),
    ("hostpulse_alerts_firing", "Alerts currently firing."),
    (
        "hostpulse_ingest_inflight_bytes",
        "Bytes of the ingest in-flight budget reserved by received, decoded or queued batches.",
    ),
    (
        "hostpulse_ingest_inflight_peak_bytes",
        "Most bytes of the ingest in-flight budget reserved at once since start.",
    ),
    (
        "hostpulse_ingest_inflight_limit_bytes",
        "The ingest in-flight budget for decoded batches, in bytes: three quarters of [ingest] max_inflight_mb.",
    ),
    (
        "hostpulse_ingest_waiting_for_writer",
        "Streams holding a prepared batch while they wait for a turn at the store's writer.",
    ),
    (
        "hostpulse_ingest_frames_waiting",
        "Received frames waiting, undecoded, for room in the ingest in-flight budget.",
    ),
];

/// The live values. Shared by reference (`Arc<Telemetry>`).
#[derive(Debug)]
pub struct Telemetry {
    counters: Vec<AtomicU64>,
    gauges: Vec<AtomicI64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            counters: COUNTERS.iter().map(|_| AtomicU64::new(0)).collect(),
            gauges: GAUGES.iter().map(|_| AtomicI64::new(0)).collect(),
        }
    }
}

impl Telemetry {
    /// Adds one to a counter.
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// Sets a gauge.
    pub fn set(&self, g: Gauge, v: i64) {
        self.gauges[g as usize].store(v, Ordering::Relaxed);
    }

    /// Adds `delta` (possibly negative) to a gauge.
    pub fn adjust(&self, g: Gauge, delta: i64) {
        self.gauges[g as usize].fetch_add(delta, Ordering::Relaxed);
    }

    /// Current value of a gauge.
    pub fn gauge(&self, g: Gauge) -> i64 {
        self.gauges[g as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every counter and gauge.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last_name = "";
        for (i, (name, labels, help)) in COUNTERS.iter().enumerate() {
            if *name != last_name {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                last_name = name;
            }
            let v = self.counters[i].load(Ordering::Relaxed);
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        for (i, (name, help)) in GAUGES.iter().enumerate() {
            let v = self.gauges[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_share_one_header() {
        let t = Telemetry::default();
        t.inc(Counter::RejectedBatch);
        t.add(Counter::IngestSamples, 5);
        let text = t.render();
        assert_eq!(
            text.matches("# TYPE hostpulse_ingest_rejected_total counter").count(),
            1
        );
        assert!(text.contains("hostpulse_ingest_rejected_total{reason=\"bad_batch\"} 1\n"));
        assert!(text.contains("hostpulse_ingest_samples_total 5\n"));
    }
}
