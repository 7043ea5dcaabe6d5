//! Pure decoding and validation of a remote-write body: snappy (block
//! format) → protobuf `WriteRequest` → the collector's own
//! [`SeriesSamples`]. No I/O and no store: the handler in `remote_write.rs`
//! maps the outcome to an HTTP answer.
//!
//! Two kinds of problem are told apart, as the agent ingest path does. A
//! request that is malformed as a whole (not snappy, not protobuf, a bad or
//! unsorted label set, over a limit) is refused whole: nothing is stored.
//! Single samples that cannot be stored (a timestamp out of range, NaN or
//! ±Inf other than the stale marker, native histograms) are dropped and
//! counted while the rest is stored, as Prometheus' own receiver does with
//! out-of-order samples; the handler then answers 400 naming what was
//! dropped, which senders do not retry, so nothing is stored twice.

use prost::Message as _;

use super::proto::WriteRequest;
use crate::ingest::validate::{check_label_name, check_metric_name};
use crate::model::{Labels, METRIC_NAME, SeriesSamples, is_stale_marker};

/// What one request may contain.
#[derive(Clone, Debug)]
pub struct DecodeLimits {
    /// Largest body after snappy decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Labels per series, not counting `__name__`.
    pub max_labels_per_series: usize,
    /// Longest label name or value, in bytes.
    pub max_label_len: usize,
    /// How far ahead of the collector's clock a sample may be, in ms.
    pub max_future_ms: i64,
    /// How far behind the collector's clock a sample may be, in ms.
    pub max_past_ms: i64,
}

/// Why a whole request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed: answered 400.
    #[error("{0}")]
    BadRequest(String),
    /// Over the size limit: answered 413.
    #[error("{0}")]
    TooLarge(String),
}

/// Samples left out of an otherwise good request, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Timestamp outside `[now - max_past_ms, now + max_future_ms]`.
    pub out_of_range: usize,
    /// NaN or ±Inf and not the stale marker.
    pub non_finite: usize,
    /// Native histogram samples (not stored by the collector).
    pub histograms: usize,
}

impl Dropped {
    /// Every dropped sample.
    pub fn total(&self) -> usize {
        self.out_of_range + self.non_finite + self.histograms
    }

    /// A sentence for the sender.
    pub fn describe(&self, limits: &DecodeLimits) -> String {
        let mut parts = Vec::new();
        if self.out_of_range > 0 {
            parts.push(format!(
                "{} with a timestamp more than {} s in the past or {} s in the future",
                self.out_of_range,
                limits.max_past_ms / 1000,
                limits.max_future_ms / 1000
            ));
        }
        if self.non_finite > 0 {
            parts.push(format!("{} with a NaN or infinite value", self.non_finite));
        }
        if self.histograms > 0 {
            parts.push(format!("{} native histogram samples (not supported)", self.histograms));
        }
        format!("dropped {} samples: {}", self.total(), parts.join(", "))
    }
}

/// A decoded, validated request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// Series with their storable samples, each ascending by time.
    pub series: Vec<SeriesSamples>,
    /// Storable samples in `series`.
    pub samples: usize,
    /// What was left out.
    pub dropped: Dropped,
}

/// The decompressed size a snappy block announces, checked against the
/// limit before anything is allocated.
pub fn decompressed_len(body: &[u8], limits: &DecodeLimits) -> Result<usize, Rejection> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| Rejection::BadRequest(format!("body is not snappy block format: {e}")))?;
    if len > limits.max_decompressed_bytes {
        return Err(Rejection::TooLarge(format!(
            "request decompresses to {len} bytes, more than the limit of {}",
            limits.max_decompressed_bytes
        )));
    }
    Ok(len)
}

/// Decompresses, decodes and validates one request body.
pub fn decode(body: &[u8], limits: &DecodeLimits, now_ms: i64) -> Result<Decoded, Rejection> {
    decompressed_len(body, limits)?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| Rejection::BadRequest(format!("body is not snappy block format: {e}")))?;
    let request = WriteRequest::decode(raw.as_slice())
        .map_err(|e| Rejection::BadRequest(format!("body is not a protobuf WriteRequest: {e}")))?;
    let oldest = now_ms.saturating_sub(limits.max_past_ms);
    let newest = now_ms.saturating_add(limits.max_future_ms);
    let mut out = Decoded::default();
    for (i, ts) in request.timeseries.into_iter().enumerate() {
        out.dropped.histograms += ts.histograms.len();
        let labels =
            check_labels(&ts.labels, limits).map_err(|why| Rejection::BadRequest(format!("series {i}: {why}")))?;
        let mut samples = Vec::with_capacity(ts.samples.len());
        for s in ts.samples {
            if s.timestamp < oldest || s.timestamp > newest {
                out.dropped.out_of_range += 1;
            } else if !s.value.is_finite() && !is_stale_marker(s.value) {
                out.dropped.non_finite += 1;
            } else {
                samples.push((s.timestamp, s.value));
            }
        }
        if samples.is_empty() {
            continue;
        }
        // Senders send each series' samples in order; a stable sort keeps
        // that cheap and fixes the rare sender that does not.
        samples.sort_by_key(|&(t, _)| t);
        out.samples += samples.len();
        out.series.push(SeriesSamples { labels, samples });
    }
    Ok(out)
}

/// A remote-write label set: `__name__` present and valid, names valid,
/// sorted by name without duplicates (the 1.0 spec requires senders to
/// sort), within the limits.
fn check_labels(labels: &[super::proto::Label], limits: &DecodeLimits) -> Result<Labels, String> {
    let mut name = None;
    for (i, l) in labels.iter().enumerate() {
        if i > 0 && labels[i - 1].name.as_str() >= l.name.as_str() {
            return Err(if labels[i - 1].name == l.name {
                format!("label {:?} appears twice", l.name)
            } else {
                format!(
                    "labels are not sorted by name ({:?} before {:?})",
                    labels[i - 1].name,
                    l.name
                )
            });
        }
        if l.name.len() > limits.max_label_len || l.value.len() > limits.max_label_len {
            return Err(format!(
                "label {:?} is longer than {} bytes (name or value)",
                truncated(&l.name),
                limits.max_label_len
            ));
        }
        if l.name == METRIC_NAME {
            check_metric_name(&l.value)?;
            name = Some(&l.value);
        } else {
            check_label_name(&l.name)?;
        }
    }
    if name.is_none() {
        return Err("no __name__ label".into());
    }
    if labels.len() - 1 > limits.max_labels_per_series {
        return Err(format!(
            "{} labels besides __name__, more than the limit of {}",
            labels.len() - 1,
            limits.max_labels_per_series
        ));
    }
    Ok(Labels::new(
        labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
    ))
}

/// At most 64 characters of `s`, for error messages.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::super::proto::{Label, Sample, TimeSeries};
    use super::*;
    use crate::model::STALE_NAN_BITS;

    pub(crate) const NOW: i64 = 1_767_225_600_000;

    pub(crate) fn limits() -> DecodeLimits {
        DecodeLimits {
            max_decompressed_bytes: 1 << 20,
            max_labels_per_series: 4,
            max_label_len: 100,
            max_future_ms: 600_000,
            max_past_ms: 3_600_000,
        }
    }

    pub(crate) fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            histograms: Vec::new(),
        }
    }

    /// A request body as Prometheus sends it.
    pub(crate) fn body(timeseries: Vec<TimeSeries>) -> Vec<u8> {
        let raw = WriteRequest { timeseries }.encode_to_vec();
        snap::raw::Encoder::new().compress_vec(&raw).unwrap()
    }

    fn bad(timeseries: Vec<TimeSeries>, needle: &str) {
        match decode(&body(timeseries), &limits(), NOW) {
            Err(Rejection::BadRequest(why)) => assert!(why.contains(needle), "{why:?} lacks {needle:?}"),
            other => panic!("expected a bad request with {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn good_request_becomes_series() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let got = decode(
            &body(vec![
                series(
                    &[("__name__", "up"), ("instance", "a:9090"), ("job", "prometheus")],
                    &[(NOW - 2000, 1.0), (NOW - 1000, stale)],
                ),
                series(&[("__name__", "empty")], &[]),
            ]),
            &limits(),
            NOW,
        )
        .unwrap();
        assert_eq!(got.samples, 2);
        assert_eq!(got.dropped, Dropped::default());
        assert_eq!(got.series.len(), 1, "a series without samples is left out");
        assert_eq!(
            got.series[0].labels.to_string(),
            "up{instance=\"a:9090\",job=\"prometheus\"}"
        );
        assert!(
            is_stale_marker(got.series[0].samples[1].1),
            "the stale marker is kept bit for bit"
        );
    }

    #[test]
    fn bad_samples_are_dropped_and_counted() {
        let got = decode(
            &body(vec![series(
                &[("__name__", "m")],
                &[
                    (NOW, f64::NAN),
                    (NOW, f64::INFINITY),
                    (NOW - 3_600_001, 1.0),
                    (NOW + 600_001, 1.0),
                    (NOW + 5, 2.0),
                    (NOW + 1, 1.0),
                ],
            )]),
            &limits(),
            NOW,
        )
        .unwrap();
        assert_eq!(got.series[0].samples, vec![(NOW + 1, 1.0), (NOW + 5, 2.0)], "sorted");
        assert_eq!(
            got.dropped,
            Dropped {
                out_of_range: 2,
                non_finite: 2,
                histograms: 0
            }
        );
        assert_eq!(
            got.dropped.describe(&limits()),
            "dropped 4 samples: 2 with a timestamp more than 3600 s in the past or 600 s in the future, \
             2 with a NaN or infinite value"
        );
    }

    #[test]
    fn bad_label_sets_refuse_the_request() {
        bad(
            vec![series(&[("job", "x")], &[(NOW, 1.0)])],
            "series 0: no __name__ label",
        );
        bad(
            vec![series(&[("__name__", "m"), ("b", "1"), ("a", "1")], &[(NOW, 1.0)])],
            "labels are not sorted by name (\"b\" before \"a\")",
        );
        bad(
            vec![series(&[("__name__", "m"), ("a", "1"), ("a", "2")], &[(NOW, 1.0)])],
            "label \"a\" appears twice",
        );
        bad(
            vec![series(&[("__name__", "m"), ("a-b", "1")], &[(NOW, 1.0)])],
            "invalid label name \"a-b\"",
        );
        bad(
            vec![series(&[("__name__", "9m")], &[(NOW, 1.0)])],
            "invalid metric name \"9m\"",
        );
        let long = "x".repeat(101);
        bad(
            vec![series(&[("__name__", "m"), ("a", &long)], &[(NOW, 1.0)])],
            "longer than 100 bytes",
        );
        bad(
            vec![series(
                &[
                    ("__name__", "m"),
                    ("a", "1"),
                    ("b", "1"),
                    ("c", "1"),
                    ("d", "1"),
                    ("e", "1"),
                ],
                &[(NOW, 1.0)],
            )],
            "5 labels besides __name__, more than the limit of 4",
        );
        bad(
            vec![series(&[("__name__", "ok")], &[(NOW, 1.0)]), series(&[], &[(NOW, 1.0)])],
            "series 1: no __name__ label",
        );
    }

    #[test]
    fn undecodable_bodies_are_refused() {
        let not_snappy = decode(b"\xff\xff\xff\xff\xff\xff", &limits(), NOW);
        assert!(
            matches!(not_snappy, Err(Rejection::BadRequest(ref w)) if w.contains("snappy")),
            "{not_snappy:?}"
        );
        let garbage = snap::raw::Encoder::new().compress_vec(b"\x0a\xff\xff\xff").unwrap();
        let not_proto = decode(&garbage, &limits(), NOW);
        assert!(
            matches!(not_proto, Err(Rejection::BadRequest(ref w)) if w.contains("protobuf")),
            "{not_proto:?}"
        );
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; (1 << 20) + 1])
            .unwrap();
        assert!(matches!(decode(&big, &limits(), NOW), Err(Rejection::TooLarge(_))));
        assert!(matches!(decode(&[], &limits(), NOW), Err(Rejection::BadRequest(_))));
    }
}
