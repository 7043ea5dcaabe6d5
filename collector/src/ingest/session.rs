//! One agent stream's state and the validation of its batches, without any
//! I/O: the gRPC loop in [`super`] feeds messages in and sends back what
//! this decides. Keeping it pure lets every rejection rule be tested with
//! literal batches.
//!
//! A session maps the stream-local series references of `new_series` to
//! full label sets. The collector, not the agent, sets `instance` (to the
//! Hello's host) and `job`, so an agent cannot write series for another host.

use std::collections::{BTreeMap, HashMap};

use hostpulse_proto::{Batch, CollectorMessage, ErrorCode, SeriesDefinition};

use super::IngestLimits;
use super::validate::{check_label_name, check_metric_name};
use crate::model::{Labels, METRIC_NAME, SeriesSamples, is_stale_marker};

/// The `job` label of every series agents send.
pub const JOB: &str = "hostpulse";

/// Why a whole batch was refused; it is neither stored nor acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `BadBatch` or `Limit`.
    pub code: ErrorCode,
    /// Names the offending input.
    pub message: String,
}

/// A batch ready for the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The batch's sequence number.
    pub seq: u64,
    /// Its samples by series, ascending in time, one value per timestamp.
    pub series: Vec<SeriesSamples>,
    /// Samples dropped individually, and why; the rest is still stored.
    pub dropped: DroppedSamples,
}

/// Counts of samples dropped from an otherwise good batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedSamples {
    /// Timestamp older than `max_past_ms` or newer than `max_future_ms`.
    pub out_of_range: usize,
    /// NaN or infinite and not the stale marker.
    pub non_finite: usize,
}

impl DroppedSamples {
    /// All dropped samples.
    pub fn total(&self) -> usize {
        self.out_of_range + self.non_finite
    }

    /// For the `SAMPLE_REJECTED` error sent to the agent.
    pub fn describe(&self, seq: u64) -> String {
        format!(
            "batch {seq}: dropped {} samples ({} with a timestamp out of range, {} with a non-finite value)",
            self.total(),
            self.out_of_range,
            self.non_finite
        )
    }
}

/// State of one stream after its Hello.
#[derive(Debug)]
pub struct Session {
    host: String,
    refs: HashMap<u32, Labels>,
    /// Highest seq acknowledged on this stream, so acks never go backwards
    /// (a replayed batch below the host's stored seq is acked with the
    /// higher figure, which is just as true).
    acked: u64,
}

impl Session {
    /// A session for a host whose name was already checked.
    pub fn new(host: String) -> Self {
        Session {
            host,
            refs: HashMap::new(),
            acked: 0,
        }
    }

    /// The ack to send for a durable `seq`: never below an earlier ack.
    pub fn ack(&mut self, seq: u64) -> CollectorMessage {
        self.acked = self.acked.max(seq);
        CollectorMessage::ack(self.acked)
    }

    /// The host this stream writes for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Validates `batch` against the stream's definitions and `limits` at
    /// wall-clock time `now_ms`. Definitions take effect only when the batch
    /// is accepted, so a rejected batch leaves the session unchanged.
    pub fn prepare(&mut self, batch: Batch, limits: &IngestLimits, now_ms: i64) -> Result<Prepared, Rejection> {
        let seq = batch.seq;
        batch.check_columns().map_err(bad_batch)?;

        let mut defined: HashMap<u32, Labels> = HashMap::new();
        for def in &batch.new_series {
            let labels = self.labels_of(def, limits, seq)?;
            let earlier = self.refs.get(&def.r#ref).or_else(|| defined.get(&def.r#ref));
            if let Some(earlier) = earlier {
                if *earlier != labels {
                    return Err(bad_batch(format!(
                        "batch {seq}: series ref {} redefined as {labels}, was {earlier}",
                        def.r#ref
                    )));
                }
                continue;
            }
            defined.insert(def.r#ref, labels);
        }
        let total = self.refs.len() + defined.len();
        if total > limits.max_series_per_stream {
            return Err(limit(format!(
                "batch {seq}: {total} series on this stream, more than the limit of {}",
                limits.max_series_per_stream
            )));
        }

        let oldest = now_ms.saturating_sub(limits.max_past_ms);
        let newest = now_ms.saturating_add(limits.max_future_ms);
        let mut dropped = DroppedSamples::default();
        // Keyed by labels so two refs naming one series merge; a later value
        // at the same timestamp wins, as a later write would in the store.
        let mut by_series: BTreeMap<&Labels, BTreeMap<i64, f64>> = BTreeMap::new();
        for (i, (&r, &value)) in batch.refs.iter().zip(&batch.values).enumerate() {
            let Some(labels) = self.refs.get(&r).or_else(|| defined.get(&r)) else {
                return Err(bad_batch(format!(
                    "batch {seq}: sample {i} uses undefined series ref {r}"
                )));
            };
            let ts = batch.timestamp_of(i);
            if ts < oldest || ts > newest {
                dropped.out_of_range += 1;
                continue;
            }
            if !value.is_finite() && !is_stale_marker(value) {
                dropped.non_finite += 1;
                continue;
            }
            by_series.entry(labels).or_default().insert(ts, value);
        }
        let series = by_series
            .into_iter()
            .map(|(labels, samples)| SeriesSamples {
                labels: labels.clone(),
                samples: samples.into_iter().collect(),
            })
            .collect();
        self.refs.extend(defined);
        Ok(Prepared { seq, series, dropped })
    }

    /// The full label set of a definition, after checking names and limits.
    fn labels_of(&self, def: &SeriesDefinition, limits: &IngestLimits, seq: u64) -> Result<Labels, Rejection> {
        let context = |what: String| format!("batch {seq}: series ref {} ({:?}): {what}", def.r#ref, def.name);
        check_metric_name(&def.name).map_err(|e| bad_batch(context(e)))?;
        if def.labels.len() > limits.max_labels_per_series {
            return Err(limit(context(format!(
                "{} labels, more than the limit of {}",
                def.labels.len(),
                limits.max_labels_per_series
            ))));
        }
        let mut pairs = Vec::with_capacity(def.labels.len() + 3);
        for label in &def.labels {
            check_label_name(&label.name).map_err(|e| bad_batch(context(e)))?;
            if label.value.len() > limits.max_label_value_len {
                return Err(limit(context(format!(
                    "label {:?} value of {} bytes, more than the limit of {}",
                    label.name,
                    label.value.len(),
                    limits.max_label_value_len
                ))));
            }
            if pairs.iter().any(|(n, _): &(String, String)| *n == label.name) {
                return Err(bad_batch(context(format!("label {:?} given twice", label.name))));
            }
            // The collector owns these two; the agent's values are ignored.
            if label.name != "instance" && label.name != "job" {
                pairs.push((label.name.clone(), label.value.clone()));
            }
        }
        if def.name.len() > limits.max_label_value_len {
            return Err(limit(context(format!(
                "metric name of {} bytes, more than the limit of {}",
                def.name.len(),
                limits.max_label_value_len
            ))));
        }
        pairs.push((METRIC_NAME.to_owned(), def.name.clone()));
        pairs.push(("instance".to_owned(), self.host.clone()));
        pairs.push(("job".to_owned(), JOB.to_owned()));
        Ok(Labels::new(pairs))
    }
}

fn bad_batch(message: String) -> Rejection {
    Rejection {
        code: ErrorCode::BadBatch,
        message,
    }
}

fn limit(message: String) -> Rejection {
    Rejection {
        code: ErrorCode::Limit,
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hostpulse_proto::Label;

    use super::*;
    use crate::model::STALE_NAN_BITS;

    const NOW: i64 = 1_700_000_000_000;

    fn def(r: u32, name: &str, labels: &[(&str, &str)]) -> SeriesDefinition {
        SeriesDefinition {
            r#ref: r,
            name: name.into(),
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    fn batch(seq: u64, defs: Vec<SeriesDefinition>, samples: &[(u32, i64, f64)]) -> Batch {
        Batch {
            seq,
            new_series: defs,
            base_timestamp_ms: NOW,
            refs: samples.iter().map(|s| s.0).collect(),
            timestamp_deltas_ms: samples.iter().map(|s| s.1).collect(),
            values: samples.iter().map(|s| s.2).collect(),
            events: vec![],
        }
    }

    fn check(session: &mut Session, b: Batch) -> Result<Prepared, Rejection> {
        session.prepare(b, &IngestLimits::default(), NOW)
    }

    fn rejected(r: Result<Prepared, Rejection>, code: ErrorCode, needle: &str) {
        let e = r.unwrap_err();
        assert_eq!(e.code, code, "{}", e.message);
        assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
    }

    #[test]
    fn labels_get_instance_and_job_from_the_collector() {
        let mut s = Session::new("web-1".into());
        let b = batch(
            1,
            vec![def(1, "m", &[("instance", "victim"), ("job", "x"), ("chip", "c0")])],
            &[(1, 5, 2.0), (1, 0, 1.0), (1, 5, 3.0)],
        );
        let p = check(&mut s, b).unwrap();
        assert_eq!(p.series.len(), 1);
        assert_eq!(
            p.series[0].labels.to_string(),
            r#"m{chip="c0",instance="web-1",job="hostpulse"}"#
        );
        assert_eq!(p.series[0].samples, vec![(NOW, 1.0), (NOW + 5, 3.0)]);
        // The ref stays defined for later batches.
        let p = check(&mut s, batch(2, vec![], &[(1, 0, 4.0)])).unwrap();
        assert_eq!(p.series[0].samples, vec![(NOW, 4.0)]);
    }

    #[test]
    fn bad_batches_are_refused_whole_and_change_nothing() {
        let mut s = Session::new("h".into());
        check(&mut s, batch(1, vec![def(1, "m", &[])], &[(1, 0, 1.0)])).unwrap();
        let mut cols = batch(2, vec![], &[(1, 0, 1.0)]);
        cols.values.push(2.0);
        rejected(check(&mut s, cols), ErrorCode::BadBatch, "2 values for 1 refs");
        rejected(
            check(&mut s, batch(3, vec![def(2, "n", &[])], &[(2, 0, 1.0), (9, 0, 1.0)])),
            ErrorCode::BadBatch,
            "undefined series ref 9",
        );
        rejected(
            check(&mut s, batch(4, vec![], &[(2, 0, 1.0)])),
            ErrorCode::BadBatch,
            "undefined series ref 2",
        );
        rejected(
            check(&mut s, batch(5, vec![def(1, "other", &[])], &[])),
            ErrorCode::BadBatch,
            "redefined",
        );
        // The same definition again (a resent batch) is fine.
        check(&mut s, batch(6, vec![def(1, "m", &[])], &[])).unwrap();
        rejected(
            check(&mut s, batch(7, vec![def(3, "1m", &[])], &[])),
            ErrorCode::BadBatch,
            "metric name",
        );
        rejected(
            check(&mut s, batch(8, vec![def(3, "m", &[("__x", "1")])], &[])),
            ErrorCode::BadBatch,
            "reserved",
        );
        rejected(
            check(&mut s, batch(9, vec![def(3, "m", &[("a-b", "1")])], &[])),
            ErrorCode::BadBatch,
            "label name",
        );
        rejected(
            check(&mut s, batch(10, vec![def(3, "m", &[("a", "1"), ("a", "2")])], &[])),
            ErrorCode::BadBatch,
            "twice",
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = IngestLimits {
            max_series_per_stream: 2,
            max_labels_per_series: 1,
            max_label_value_len: 4,
            ..Default::default()
        };
        let mut s = Session::new("h".into());
        let mut run = |b| s.prepare(b, &limits, NOW);
        rejected(
            run(batch(1, vec![def(1, "m", &[("a", "1"), ("b", "2")])], &[])),
            ErrorCode::Limit,
            "2 labels",
        );
        rejected(
            run(batch(2, vec![def(1, "m", &[("a", "12345")])], &[])),
            ErrorCode::Limit,
            "5 bytes",
        );
        run(batch(3, vec![def(1, "m", &[]), def(2, "n", &[])], &[])).unwrap();
        rejected(run(batch(4, vec![def(3, "o", &[])], &[])), ErrorCode::Limit, "3 series");
    }

    #[test]
    fn bad_samples_are_dropped_and_counted() {
        let mut s = Session::new("h".into());
        let stale = f64::from_bits(STALE_NAN_BITS);
        let day = 24 * 3600 * 1000;
        let b = batch(
            1,
            vec![def(1, "m", &[])],
            &[
                (1, 0, 1.0),
                (1, 1, f64::NAN),
                (1, 2, f64::INFINITY),
                (1, 3, stale),
                (1, -8 * day, 1.0),
                (1, 11 * 60 * 1000, 1.0),
            ],
        );
        let p = check(&mut s, b).unwrap();
        assert_eq!(
            p.dropped,
            DroppedSamples {
                out_of_range: 2,
                non_finite: 2
            }
        );
        assert_eq!(p.series[0].samples.len(), 2);
        assert!(is_stale_marker(p.series[0].samples[1].1));
        assert!(p.dropped.describe(1).contains("dropped 4 samples"));
    }
}
