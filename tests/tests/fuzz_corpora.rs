//! CI's replay of the fuzz corpora on stable (issue 7): every file under
//! `fuzz/corpus/<target>/` goes through the same harness function its
//! cargo-fuzz target runs (`fuzz/src/lib.rs`, compiled in here by path), and
//! must come back without a panic; returning an error is fine. Inputs the
//! fuzzers once crashed on are kept in the corpora as regression inputs.
//!
//! The seed files were written by this test:
//! `HOSTPULSE_WRITE_FUZZ_SEEDS=1 cargo test -p hostpulse-tests --test fuzz_corpora`
//! (re)writes `seed-*` files from valid inputs built here, so the fuzzers
//! start from the real formats rather than from nothing.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

// The harness has no tests of its own and some items only the fuzz
// targets use.
#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use hostpulse_proto::{AgentMessage, Batch, Hello, KernelEvent, Label, SeriesDefinition, agent_message};
use prost::Message;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Every corpus file of every target runs through its harness without a
/// panic, and every target has a corpus.
#[test]
fn every_corpus_file_replays_without_a_panic() {
    if std::env::var_os("HOSTPULSE_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let mut total = 0;
    for (name, harness) in harness::TARGETS {
        let dir = corpus_root().join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has no corpus");
        for file in &files {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
        }
        total += files.len();
    }
    eprintln!("replayed {total} corpus files of {} targets", harness::TARGETS.len());
}

/// The seed inputs: valid (or deliberately borderline) examples of each
/// format, prefixed with the selector bytes the harness expects.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| out.push((target, name.to_string(), data));

    // Agent frames: a Hello and two batches, length-delimited.
    let mut stream = Vec::new();
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: "web-1".into(),
            machine_id: "m".into(),
            first_unacked_seq: 1,
            ..Default::default()
        })),
    };
    hello.encode_length_delimited(&mut stream).unwrap();
    for seq in 1..=2u64 {
        let new_series = if seq == 1 {
            vec![
                SeriesDefinition {
                    r#ref: 1,
                    name: "node_hwmon_temp_celsius".into(),
                    labels: vec![Label {
                        name: "chip".into(),
                        value: "coretemp".into(),
                    }],
                },
                SeriesDefinition {
                    r#ref: 2,
                    name: "hostpulse_kernel_events_total".into(),
                    labels: vec![],
                },
            ]
        } else {
            vec![]
        };
        let batch = AgentMessage {
            kind: Some(agent_message::Kind::Batch(Batch {
                seq,
                new_series,
                base_timestamp_ms: harness::NOW_MS,
                refs: vec![1, 2, 1],
                timestamp_deltas_ms: vec![0, 0, 1000],
                values: vec![41.5, 3.0, f64::NAN],
                events: vec![KernelEvent {
                    timestamp_ms: harness::NOW_MS,
                    kind: "edac".into(),
                    device: "mc0".into(),
                    message: "EDAC MC0: 1 CE memory read error".into(),
                }],
                ..Default::default()
            })),
        };
        batch.encode_length_delimited(&mut stream).unwrap();
    }
    add("agent_message", "stream", stream.clone());
    // The same stream with compact columns, as agents send them to a
    // collector that announces the encoding.
    let mut compact = Vec::new();
    let mut encoder = hostpulse_proto::columns::StreamEncoder::new();
    let mut rest = stream.as_slice();
    while !rest.is_empty() {
        let mut message = AgentMessage::decode_length_delimited(&mut rest).unwrap();
        if let Some(agent_message::Kind::Batch(batch)) = message.kind.as_mut() {
            encoder.encode(batch);
        }
        message.encode_length_delimited(&mut compact).unwrap();
    }
    add("agent_message", "compact-stream", compact);

    // Remote write: a WriteRequest, as protobuf (mode 1) and as a body.
    let request = remote_write_request();
    let mut framed = vec![1];
    framed.extend_from_slice(&request);
    add("remote_write", "protobuf", framed);
    let mut body = vec![0];
    body.extend(snap::raw::Encoder::new().compress_vec(&request).unwrap());
    add("remote_write", "snappy", body);

    // Spool: records as the spool writes them.
    let record = |seq: u64| {
        hostpulse_agent::spool::encode_record(&Batch {
            seq,
            new_series: vec![SeriesDefinition {
                r#ref: 1,
                name: "node_load1".into(),
                labels: vec![],
            }],
            base_timestamp_ms: harness::NOW_MS,
            refs: vec![1],
            timestamp_deltas_ms: vec![],
            values: vec![0.5],
            ..Default::default()
        })
    };
    let two = [record(1), record(2)].concat();
    add("spool_record", "two-records", two.clone());
    add("spool_segment", "two-records", two);

    // Store records, from the store's own encoders.
    for (i, (target, bytes)) in hostpulse_collector::store::decode::example_values()
        .into_iter()
        .enumerate()
    {
        let data = match target {
            // Mode 0: the stored value as is, checksum included.
            "store_wal" | "store_block" | "store_rollup" => [vec![0], bytes].concat(),
            _ => bytes,
        };
        add(target, &format!("example-{i}"), data);
    }

    // Source files: one well-formed text per parser, selected by index.
    let texts: &[(&str, &str)] = &[
        ("loadavg", "0.10 0.20 0.30 1/100 42\n"),
        ("meminfo", "MemTotal:       16384000 kB\nMemFree:         1024000 kB\n"),
        (
            "diskstats",
            "   8       0 sda 100 0 800 50 200 0 1600 70 0 120 120 0 0 0 0 0 0\n",
        ),
        (
            "mdstat",
            "Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n      1046528 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n",
        ),
        (
            "hwmon_sensor",
            "temp1\ninput=41000\nlabel=Package id 0\nmax=80000\ncrit=100000\n",
        ),
        (
            "net_dev",
            "Inter-|   Receive\n face |bytes packets\n  eth0: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n",
        ),
        (
            "pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        ),
        ("edac_count", "3\n"),
        (
            "kmsg",
            "3,1042,123456789,-;mce: [Hardware Error]: Machine check events logged\n",
        ),
    ];
    let parsers = hostpulse_agent::sources::parsers::TEXT_PARSERS;
    for (name, text) in texts {
        let index = parsers.iter().position(|(n, _)| n == name).unwrap();
        let mut data = vec![u8::try_from(index).unwrap()];
        data.extend_from_slice(text.as_bytes());
        add("source_text", name, data);
    }

    add(
        "smartctl_json",
        "ata",
        br#"{"json_format_version":[1,0],"smartctl":{"exit_status":0},"device":{"name":"/dev/sda","type":"sat"},
"model_name":"Disk","serial_number":"S1","firmware_version":"1","user_capacity":{"bytes":1000204886016},
"smart_status":{"passed":true},"temperature":{"current":31},"power_on_time":{"hours":100},"power_cycle_count":5,
"ata_smart_attributes":{"table":[{"id":5,"name":"Reallocated_Sector_Ct","value":100,"worst":100,"thresh":10,
"when_failed":"","flags":{"value":51,"prefailure":true},"raw":{"value":0,"string":"0"}}]}}"#
            .to_vec(),
    );
    add(
        "smartctl_json",
        "nvme",
        br#"{"json_format_version":[1,0],"smartctl":{"exit_status":4},"device":{"name":"/dev/nvme0","type":"nvme"},
"smart_status":{"passed":true},"nvme_smart_health_information_log":{"critical_warning":0,"temperature":35,
"available_spare":100,"percentage_used":3,"media_errors":0,"num_err_log_entries":2}}"#
            .to_vec(),
    );
    add(
        "kmsg",
        "records",
        b"6,1,0,-;Linux version 6.1\n3,2,5000,-;EDAC MC0: 1 CE memory read error on DIMM_A1\n SUBSYSTEM=edac\n4,3,9000,c;nvme nvme0: I/O 12 QID 3 timeout, aborting\n"
            .to_vec(),
    );
    add(
        "openmetrics",
        "openmetrics",
        b"# TYPE node_hwmon_temp_celsius gauge\n# UNIT node_hwmon_temp_celsius celsius\nnode_hwmon_temp_celsius{chip=\"coretemp\",sensor=\"temp1\"} 41.0 1767225600.000\nnode_load1 0.5 # {trace_id=\"a\"} 1.0\n# EOF\n"
            .to_vec(),
    );
    add(
        "openmetrics",
        "prometheus",
        b"# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.5 1767225600000\nnode_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 1.5e+06\nup{a=\"\\\"x\\n\"} NaN\n"
            .to_vec(),
    );
    for (name, q) in [
        ("rate", "sum by (instance) (rate(node_cpu_seconds_total[5m]))"),
        (
            "binary",
            "node_hwmon_temp_celsius > on(instance) group_left max by (instance) (up) * 40",
        ),
        (
            "subquery",
            "max_over_time(avg(node_hwmon_temp_celsius)[5m:1m] offset 1m)",
        ),
        (
            "functions",
            "label_replace(histogram_quantile(0.9, up), \"a\", \"$1\", \"instance\", \"(.*)\")",
        ),
        (
            "topk",
            "topk(2, -node_hwmon_temp_celsius) or vector(time()) unless absent(up)",
        ),
    ] {
        add("promql", name, q.as_bytes().to_vec());
    }
    out
}

/// A remote-write 1.0 `WriteRequest` with one series, encoded by hand
/// (field numbers from Prometheus' `remote.proto`) so this file needs no
/// generated types.
fn remote_write_request() -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let label = |name: &str, value: &str| {
        let mut l = Vec::new();
        prost::encoding::string::encode(1, &name.to_string(), &mut l);
        prost::encoding::string::encode(2, &value.to_string(), &mut l);
        l
    };
    let mut series = Vec::new();
    for l in [label("__name__", "node_load1"), label("instance", "web-1")] {
        encode_key(1, WireType::LengthDelimited, &mut series);
        encode_varint(l.len() as u64, &mut series);
        series.extend(l);
    }
    let mut sample = Vec::new();
    prost::encoding::double::encode(1, &0.5, &mut sample);
    prost::encoding::int64::encode(2, &harness::NOW_MS, &mut sample);
    encode_key(2, WireType::LengthDelimited, &mut series);
    encode_varint(sample.len() as u64, &mut series);
    series.extend(sample);
    let mut request = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut request);
    encode_varint(series.len() as u64, &mut request);
    request.extend(series);
    request
}

fn write_seeds() {
    for (target, name, data) in seeds() {
        let dir = corpus_root().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}

/// The seeds are what the harnesses expect: the valid ones decode (checked
/// through the public decoders, since the harness functions return nothing).
#[test]
fn seeds_are_valid_inputs() {
    let seeds = seeds();
    for target in ["agent_message", "remote_write", "spool_record", "store_wal", "promql"] {
        assert!(seeds.iter().any(|(t, _, _)| *t == target), "no seed for {target}");
    }
    for (target, name, data) in &seeds {
        match *target {
            "spool_record" => {
                let (batch, used) = hostpulse_agent::spool::parse_record(data).unwrap();
                assert_eq!((batch.seq, used * 2), (1, data.len()), "{name}");
            }
            "agent_message" => {
                // Every batch decodes and validates on one session.
                let limits = hostpulse_collector::ingest::IngestLimits::default();
                let mut session = hostpulse_collector::ingest::session::Session::new("web-1".into());
                let mut rest = data.as_slice();
                let mut batches = 0;
                while !rest.is_empty() {
                    let message = AgentMessage::decode_length_delimited(&mut rest).unwrap();
                    if let Some(agent_message::Kind::Batch(mut batch)) = message.kind {
                        assert_eq!(name == "compact-stream", batch.compact.is_some(), "{name}");
                        session.wire().decode(&mut batch, &limits).unwrap();
                        session.prepare(batch, &limits, harness::NOW_MS).unwrap();
                        batches += 1;
                    }
                }
                assert_eq!(batches, 2, "{name}");
            }
            "promql" => {
                hostpulse_collector::query::eval::parse(std::str::from_utf8(data).unwrap()).unwrap();
            }
            "remote_write" if data[0] == 0 => {
                let limits = hostpulse_collector::remote_write::decode::DecodeLimits {
                    max_decompressed_bytes: 1 << 20,
                    max_labels_per_series: 30,
                    max_label_len: 256,
                    max_future_ms: 600_000,
                    max_past_ms: 600_000,
                };
                let decoded =
                    hostpulse_collector::remote_write::decode::decode(&data[1..], &limits, harness::NOW_MS).unwrap();
                assert_eq!(decoded.series.len(), 1, "{name}");
            }
            _ => {}
        }
    }
}
