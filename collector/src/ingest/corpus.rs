//! Hostile-input replay for every decoder the collector exposes to the
//! network or to files (issue 7): agent frames (protobuf `AgentMessage`
//! and the batches that decode from garbage), Prometheus remote-write
//! bodies, and OpenMetrics / Prometheus text lines for import.
//!
//! Without cargo-fuzz and a nightly toolchain, this is the CI stand-in for
//! fuzz corpora: a fixed, seeded corpus built from valid inputs by
//! truncation at every length, single-bit flips at every position, and
//! seeded random bytes, plus hand-written nasties. Each input must come
//! back as a value or an error — never a panic — and the hand-written ones
//! must give the error the sender would need to see.

#![allow(clippy::unwrap_used)]

use hostpulse_proto::{AgentMessage, Batch, Hello, Label, SeriesDefinition, agent_message};
use prost::Message;

use super::IngestLimits;
use super::session::Session;
use crate::import::parse::{Dialect, parse_line};
use crate::remote_write::decode::{DecodeLimits, decode};
use crate::remote_write::proto as rw;

const NOW: i64 = 1_767_225_600_000;

/// xorshift64*, seeded: the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every mutation of `valid` the corpus replays: each prefix, each single
/// bit flipped, and `random` seeded random buffers of up to `valid.len()*2`
/// bytes.
fn mutations(valid: &[u8], seed: u64, random: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..valid.len()).map(|n| valid[..n].to_vec()).collect();
    for i in 0..valid.len() {
        for bit in 0..8 {
            let mut v = valid.to_vec();
            v[i] ^= 1 << bit;
            out.push(v);
        }
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..random {
        let n = (rng.next() as usize) % (valid.len() * 2 + 1);
        out.push(rng.bytes(n));
    }
    out
}

fn valid_batch_message() -> Vec<u8> {
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: 7,
            new_series: vec![SeriesDefinition {
                r#ref: 1,
                name: "node_hwmon_temp_celsius".into(),
                labels: vec![Label {
                    name: "chip".into(),
                    value: "coretemp".into(),
                }],
            }],
            base_timestamp_ms: NOW,
            refs: vec![1, 1],
            timestamp_deltas_ms: vec![0, 1000],
            values: vec![41.0, 42.5],
            events: vec![],
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

/// Agent frames: whatever prost decodes from a mangled frame goes through
/// the same validation a stream applies, and ends as stored samples, a
/// typed rejection, or a decode error.
#[test]
fn mangled_agent_frames_never_panic() {
    let valid = valid_batch_message();
    let mut decoded = 0;
    for input in mutations(&valid, 0x5eed, 2000) {
        let Ok(message) = AgentMessage::decode(input.as_slice()) else {
            continue;
        };
        decoded += 1;
        let mut session = Session::new("web-1".into());
        match message.kind {
            Some(agent_message::Kind::Batch(batch)) => {
                let _ = session.prepare(batch, &IngestLimits::default(), NOW);
            }
            Some(agent_message::Kind::Hello(hello)) => {
                let _ = super::validate::check_host(&hello.host);
            }
            None => {}
        }
    }
    // Many mutations still decode (protobuf is forgiving), so validation
    // really saw hostile batches.
    assert!(decoded > 100, "only {decoded} mutations decoded");
}

/// Hand-written frames with the error each must produce.
#[test]
fn hostile_batches_get_the_error_the_agent_needs() {
    let limits = IngestLimits::default();
    let cases: Vec<(Batch, &str)> = vec![
        (
            Batch {
                seq: 1,
                refs: vec![1; 3],
                values: vec![1.0],
                ..Default::default()
            },
            "1 values for 3 refs",
        ),
        (
            Batch {
                seq: 2,
                refs: vec![u32::MAX],
                values: vec![1.0],
                base_timestamp_ms: NOW,
                ..Default::default()
            },
            "undefined series ref 4294967295",
        ),
        (
            Batch {
                seq: 3,
                new_series: vec![SeriesDefinition {
                    r#ref: 1,
                    name: "m".into(),
                    labels: vec![Label {
                        name: "l".into(),
                        value: "x".repeat(limits.max_label_value_len + 1),
                    }],
                }],
                ..Default::default()
            },
            "more than the limit",
        ),
        (
            Batch {
                seq: 4,
                new_series: vec![SeriesDefinition {
                    r#ref: 1,
                    name: "\u{0}evil".into(),
                    labels: vec![],
                }],
                ..Default::default()
            },
            "invalid metric name",
        ),
    ];
    for (batch, needle) in cases {
        let seq = batch.seq;
        let err = Session::new("h".into()).prepare(batch, &limits, NOW).unwrap_err();
        assert!(
            err.message.contains(needle),
            "batch {seq}: {:?} lacks {needle:?}",
            err.message
        );
    }
    // Extreme timestamps: dropped and counted, never overflowing.
    let mut session = Session::new("h".into());
    let batch = Batch {
        seq: 5,
        new_series: vec![SeriesDefinition {
            r#ref: 1,
            name: "m".into(),
            labels: vec![],
        }],
        base_timestamp_ms: i64::MAX,
        refs: vec![1, 1],
        timestamp_deltas_ms: vec![i64::MAX, i64::MIN],
        values: vec![1.0, 2.0],
        events: vec![],
        ..Default::default()
    };
    let prepared = session.prepare(batch, &limits, NOW).unwrap();
    assert_eq!(prepared.dropped.out_of_range, 2);
    // A Hello naming no host, or a huge one, is refused with a reason.
    for host in [String::new(), "h".repeat(10_000), "a\nb".into()] {
        let hello = Hello {
            host,
            ..Default::default()
        };
        assert!(super::validate::check_host(&hello.host).is_err());
    }
}

fn valid_remote_write() -> Vec<u8> {
    let request = rw::WriteRequest {
        timeseries: vec![rw::TimeSeries {
            labels: vec![
                rw::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
                rw::Label {
                    name: "job".into(),
                    value: "node".into(),
                },
            ],
            samples: vec![rw::Sample {
                value: 1.0,
                timestamp: NOW,
            }],
            histograms: vec![],
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap()
}

fn rw_limits() -> DecodeLimits {
    DecodeLimits {
        max_decompressed_bytes: 1 << 20,
        max_labels_per_series: 32,
        max_label_len: 256,
        max_future_ms: 600_000,
        max_past_ms: 86_400_000,
    }
}

/// Remote-write bodies: mangled snappy and protobuf end as errors or
/// decoded requests, never a panic; hostile headers are refused.
#[test]
fn mangled_remote_write_bodies_never_panic() {
    let valid = valid_remote_write();
    assert!(decode(&valid, &rw_limits(), NOW).is_ok());
    let mut errors = 0;
    for input in mutations(&valid, 0xbeef, 2000) {
        if decode(&input, &rw_limits(), NOW).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 100, "only {errors} mutations were refused");
    // A snappy header claiming 4 GiB must be refused before allocating it.
    let mut claim = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    claim.extend_from_slice(&[0u8; 16]);
    let err = decode(&claim, &rw_limits(), NOW).unwrap_err();
    assert!(!err.to_string().is_empty());
    // Valid snappy around bytes that are not a WriteRequest.
    let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
    assert!(decode(&garbage, &rw_limits(), NOW).is_err());
}

/// Import lines: mangled and hostile text lines parse or fail with an
/// error, in both dialects.
#[test]
fn mangled_exposition_lines_never_panic() {
    let valid = "node_hwmon_temp_celsius{chip=\"coretemp\",sensor=\"temp1\"} 41.5 1767225600.123";
    for input in mutations(valid.as_bytes(), 0xfeed, 2000) {
        let Ok(text) = String::from_utf8(input) else {
            continue;
        };
        for dialect in [Dialect::OpenMetrics, Dialect::Prometheus] {
            let _ = parse_line(&text, dialect);
        }
    }
    let hostile = [
        "m{",
        "m{a=\"",
        "m{a=\"\\",
        "m{a=\"x\"",
        "m{a=\"x\"} ",
        "m{=\"x\"} 1",
        "m{a=\"x\",,} 1",
        "m 1 99999999999999999999999",
        "m NaNx",
        "m 1e999999",
        "# TYPE",
        "# HELP m",
        "{} 1",
        "m{a=\"\u{0}\"} 1",
        &format!("m{{a=\"{}\"}} 1", "x".repeat(100_000)),
        &"{".repeat(10_000),
    ];
    for line in hostile {
        for dialect in [Dialect::OpenMetrics, Dialect::Prometheus] {
            let _ = parse_line(line, dialect);
        }
    }
    assert!(parse_line("m{a=\"x\"", Dialect::Prometheus).is_err());
    assert!(parse_line("m 1 99999999999999999999999", Dialect::Prometheus).is_err());
}
