//! The fuzz harness of hostpulse: one function per cargo-fuzz target, each
//! feeding arbitrary bytes to one decoder or parser that reads input from
//! the network or from disk, the way the running code does. A function
//! returns normally whatever the input; a panic (or an abort, a timeout, a
//! runaway allocation under libFuzzer) is a finding.
//!
//! The targets in `fuzz_targets/` are one line each around these functions,
//! and the corpus replay CI runs on stable (`tests/tests/fuzz_corpora.rs`
//! includes this file by path) calls the same functions through
//! [`TARGETS`], so a corpus file means the same thing in both places. That
//! is why this file depends only on crates the test crate has too.

use std::time::{Duration, Instant};

use hostpulse_agent::sources::parsers::TEXT_PARSERS;
use hostpulse_agent::spool::{self, Cursor, Spool};
use hostpulse_collector::import::parse::{Dialect, Line, parse_line, parse_series, sniff_dialect};
use hostpulse_collector::ingest::IngestLimits;
use hostpulse_collector::ingest::session::Session;
use hostpulse_collector::ingest::validate::check_host;
use hostpulse_collector::model::{Labels, SeriesSamples};
use hostpulse_collector::query::eval::{self, Limits, Literal};
use hostpulse_collector::remote_write::decode::{DecodeLimits, decode};
use hostpulse_collector::store::decode as store;
use hostpulse_proto::{AgentMessage, agent_message};
use prost::Message;

/// The collector's clock in every harness: validation depends on it, and a
/// fixed value keeps a corpus file's meaning stable.
pub const NOW_MS: i64 = 1_767_225_600_000;

/// A fuzz harness: bytes in, never a panic.
pub type Harness = fn(&[u8]);

/// Every target by name; the corpus of target `name` is `corpus/<name>/`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("agent_message", agent_message),
    ("remote_write", remote_write),
    ("spool_record", spool_record),
    ("spool_segment", spool_segment),
    ("store_wal", store_wal),
    ("store_block", store_block),
    ("store_rollup", store_rollup),
    ("store_series_page", store_series_page),
    ("store_columns", store_columns),
    ("source_text", source_text),
    ("smartctl_json", smartctl_json),
    ("kmsg", kmsg),
    ("openmetrics", openmetrics),
    ("promql", promql),
];

/// Agent frames on one stream: the input is a sequence of varint
/// length-prefixed `AgentMessage`s (as gRPC frames follow each other), each
/// decoded, its compact columns (if any) decoded by the stream's decoder,
/// and validated by one [`Session`], so later batches use series
/// references and compact state earlier ones set up, as a real stream does.
pub fn agent_message(data: &[u8]) {
    let limits = IngestLimits {
        // Small enough that the series-per-stream limit is reachable.
        max_series_per_stream: 1_000,
        ..IngestLimits::default()
    };
    let mut session = Session::new("web-1".into());
    let mut rest = data;
    for _ in 0..64 {
        if rest.is_empty() {
            break;
        }
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            break;
        };
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
        let (frame, tail) = rest.split_at(n);
        rest = tail;
        let Ok(message) = AgentMessage::decode(frame) else {
            continue;
        };
        match message.kind {
            Some(agent_message::Kind::Batch(mut batch)) => {
                // Compact columns are decoded first, against the stream's
                // previous compact batch; a failure ends the stream.
                if session.wire().decode(&mut batch, &limits).is_err() {
                    break;
                }
                let _ = session.prepare(batch, &limits, NOW_MS);
            }
            Some(agent_message::Kind::Hello(hello)) => {
                let _ = check_host(&hello.host);
            }
            None => {}
        }
    }
}

/// A remote-write body. First byte 0: the rest is the HTTP body as sent
/// (snappy block format); otherwise the rest is the protobuf, compressed
/// here so the fuzzer reaches the protobuf decoding and validation.
pub fn remote_write(data: &[u8]) {
    let limits = DecodeLimits {
        max_decompressed_bytes: 1 << 20,
        max_labels_per_series: 30,
        max_label_len: 256,
        max_future_ms: 10 * 60 * 1000,
        max_past_ms: 7 * 24 * 3600 * 1000,
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        let _ = decode(rest, &limits, NOW_MS);
    } else if let Ok(body) = snap::raw::Encoder::new().compress_vec(rest) {
        let _ = decode(&body, &limits, NOW_MS);
    }
}

/// Spool records back to back, as a segment holds them after its magic:
/// each parsed in turn until one does not.
pub fn spool_record(data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        match spool::parse_record(rest) {
            // A record always has a header, so `used` is never 0; if it
            // were, stopping here keeps the harness from spinning.
            Ok((_, used)) if used > 0 && used <= rest.len() => rest = &rest[used..],
            _ => break,
        }
    }
}

/// A whole segment file on disk: the spool magic and the input, opened as
/// the agent does on start (scan, cut at the first bad record) and read to
/// the end as the sender does.
pub fn spool_segment(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let mut file = b"HPSPOOL1".to_vec();
    file.extend_from_slice(data);
    if std::fs::write(dir.path().join("0000000000000001.seg"), &file).is_err() {
        return;
    }
    let Ok(mut spool) = Spool::open(dir.path(), spool::Limits::new(1 << 24, 100_000)) else {
        return;
    };
    let mut cursor = Cursor::new();
    for _ in 0..100_000 {
        if spool.read_next(&mut cursor).is_none() {
            break;
        }
    }
}

/// First byte 0: the rest is a stored value (checksum included); otherwise
/// the rest is the payload and gets a valid checksum, so the decoder behind
/// it runs.
fn stored_value(data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    Some(if mode == 0 {
        rest.to_vec()
    } else {
        store::checksum_frame(rest)
    })
}

/// A WAL record part, as `Store::open` replays it.
pub fn store_wal(data: &[u8]) {
    if let Some(v) = stored_value(data) {
        let _ = store::decode_wal_part(&v);
    }
}

/// A sealed block file, every section decoded.
pub fn store_block(data: &[u8]) {
    if let Some(v) = stored_value(data) {
        let _ = store::decode_block(&v);
    }
}

/// A rollup record, every series decoded.
pub fn store_rollup(data: &[u8]) {
    if let Some(v) = stored_value(data) {
        let _ = store::decode_rollup(&v);
    }
}

/// A series record, and the same bytes as a host record and a catalog
/// entry (the other small records `Store::open` reads).
pub fn store_series_page(data: &[u8]) {
    let _ = store::decode_series_page(data);
    let _ = store::decode_host(b"hweb-1", data);
    let _ = store::decode_catalog(data);
}

/// One column: byte 0 picks the codec, bytes 1..3 the declared entry count
/// (u16 LE), the rest is the column.
pub fn store_columns(data: &[u8]) {
    let [kind, n0, n1, column @ ..] = data else {
        return;
    };
    let codec = match kind % 4 {
        0 => store::Column::Timestamps,
        1 => store::Column::Values,
        2 => store::Column::Ints,
        _ => store::Column::Gorilla,
    };
    let _ = store::decode_column(codec, column, usize::from(u16::from_le_bytes([*n0, *n1])));
}

/// A sysfs/procfs file's text: byte 0 picks the parser from the agent's
/// list of every source parser, the rest (lossily UTF-8, as the readers
/// decode files) is the file.
pub fn source_text(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some((_, parser)) = TEXT_PARSERS.get(usize::from(which) % TEXT_PARSERS.len()) else {
        return;
    };
    let _ = parser(&String::from_utf8_lossy(rest));
}

/// A `smartctl --json` report (and the same text as a `--scan-open
/// --json` listing).
pub fn smartctl_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for name in ["smartctl_json", "smart_scan"] {
        if let Some(parser) = hostpulse_agent::sources::parsers::text_parser(name) {
            let _ = parser(&text);
        }
    }
}

/// `/dev/kmsg` records, one per line as the follower reads them.
pub fn kmsg(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(parser) = hostpulse_agent::sources::parsers::text_parser("kmsg") {
        let _ = parser(&text);
        for line in text.lines() {
            let _ = parser(line);
        }
    }
}

/// A text exposition file for `import`: the dialect is sniffed from the
/// head as `import` does, every line parsed, every sample's series parsed.
pub fn openmetrics(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let head: String = text.chars().take(4096).collect();
    let sniffed = sniff_dialect(&head);
    for dialect in [sniffed, Dialect::Prometheus, Dialect::OpenMetrics] {
        for line in text.lines() {
            if let Ok(Line::Sample(sample)) = parse_line(line, dialect) {
                let _ = parse_series(sample.series, dialect);
            }
        }
    }
}

/// A PromQL query: parsed, then (when it parses) evaluated as an instant
/// and as a range query over a tiny fixed data set, under small limits and
/// a deadline so an expensive query is an error, not a hang.
pub fn promql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = eval::parse(text) else {
        return;
    };
    let data = tiny_fleet();
    let limits = Limits {
        max_samples: 100_000,
        max_series: 1_000,
    };
    let deadline = || Some(Instant::now() + Duration::from_millis(200));
    let _ = eval::eval_instant(&expr, &Literal(&data), NOW_MS, limits, deadline());
    let _ = eval::eval_range(
        &expr,
        &Literal(&data),
        NOW_MS - 600_000,
        NOW_MS,
        60_000,
        limits,
        deadline(),
    );
}

/// Three series over ten minutes, with a counter reset and a stale marker.
fn tiny_fleet() -> Vec<SeriesSamples> {
    let series = |pairs: &[(&str, &str)], f: fn(i64) -> f64| SeriesSamples {
        labels: Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        samples: (0..=60).map(|i| (NOW_MS - 600_000 + i * 10_000, f(i))).collect(),
    };
    vec![
        series(
            &[
                ("__name__", "node_hwmon_temp_celsius"),
                ("instance", "a"),
                ("chip", "coretemp"),
            ],
            |i| 40.0 + (i % 7) as f64,
        ),
        series(
            &[
                ("__name__", "node_cpu_seconds_total"),
                ("instance", "b"),
                ("mode", "idle"),
            ],
            |i| if i < 30 { i as f64 * 10.0 } else { (i - 30) as f64 },
        ),
        series(&[("__name__", "up"), ("instance", "a")], |i| {
            if i == 59 {
                f64::from_bits(0x7ff0_0000_0000_0002)
            } else {
                1.0
            }
        }),
    ]
}
