//! Wire-size benchmark (issue 7): bytes on the wire per sample for a fleet
//! of 10,000 agents × 300 series at a 10 s interval, hostpulse's ingest
//! stream next to the two peers a fleet would otherwise use for the same
//! samples — Prometheus remote write 1.0 (snappy-compressed protobuf, one
//! request per host and interval) and node_exporter's text exposition
//! (scraped, plain and gzip).
//!
//! Nothing is sent over a socket: each format is encoded exactly as its
//! sender does it. For hostpulse that is the agent's `Batch` in an
//! `AgentMessage`, compressed per message with zstd at the level tonic uses
//! (`zstd::DEFAULT_COMPRESSION_LEVEL`; the agent sends zstd) plus the 5-byte
//! gRPC length prefix and the 9-byte HTTP/2 DATA frame header — once with
//! plain columns (what older agents send) and once with the compact columns
//! of `hostpulse_proto::columns` (the agent's default), encoded by the very
//! encoder the agent uses and checked to decode bit-exactly with the
//! collector's decoder. "Steady" is a batch in the middle of a stream (the
//! encoder has seen the previous interval); "first" is the first batch of a
//! new stream (series definitions, and compact columns with nothing to
//! refer to). The series
//! mix is what a hardware agent sends (CPU and disk counters, hwmon
//! temperatures, fans and voltages, EDAC/AER error counters that are
//! almost always 0, SMART attributes, info gauges), with values evolving
//! deterministically from one interval to the next.
//!
//! With `--fleet-file FILE` it also measures the reference fleet dataset
//! (`../shared/bench/fleetgen.py` output, OpenMetrics text: random walks
//! and bursty counters) the same way, one batch per host and timestamp.
//!
//! `cargo run --release -p hostpulse-bench --bin wire -- [--agents 10000] [--series 300] [--intervals 60] [--fleet-file fleet.om]`

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Result;
use clap::Parser;
use hostpulse_collector::remote_write::proto as rw;
use hostpulse_proto::columns::{StreamDecoder, StreamEncoder};
use hostpulse_proto::{AgentMessage, Batch, Label, SeriesDefinition, agent_message};
use prost::Message as _;

/// Command line.
#[derive(Parser, Debug)]
struct Args {
    /// Agents in the fleet the totals are computed for
    #[arg(long, default_value_t = 10_000)]
    agents: u64,
    /// Series per agent (the mix below is scaled to this)
    #[arg(long, default_value_t = 300)]
    series: usize,
    /// Sampling interval in seconds
    #[arg(long, default_value_t = 10)]
    interval_s: u64,
    /// Consecutive intervals encoded per host (values evolve between them)
    #[arg(long, default_value_t = 60)]
    intervals: u64,
    /// Distinct simulated hosts encoded (figures are averaged over them)
    #[arg(long, default_value_t = 20)]
    hosts: u64,
    /// Also measure this fleetgen.py dataset (OpenMetrics text)
    #[arg(long)]
    fleet_file: Option<std::path::PathBuf>,
}

/// One host of a fleetgen dataset: its series (name, labels including
/// `instance`) and, per timestamp, the samples as (series index, value).
#[derive(Default)]
struct FleetHost {
    series: Vec<(String, Vec<(String, String)>)>,
    index: std::collections::HashMap<String, u32>,
    at: std::collections::BTreeMap<i64, Vec<(u32, f64)>>,
}

/// Parses fleetgen.py's OpenMetrics text (`name{k="v",...} value ts` lines
/// and `#` comments) into hosts keyed by their `instance` label.
fn parse_fleet(text: &str) -> Result<std::collections::BTreeMap<String, FleetHost>> {
    let mut hosts: std::collections::BTreeMap<String, FleetHost> = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let bad = || anyhow::anyhow!("line {}: cannot parse {line:?}", n + 1);
        let mut parts = line.rsplitn(3, ' ');
        let (Some(ts), Some(value), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let ts: i64 = ts.parse().map_err(|_| bad())?;
        let value: f64 = value.parse().map_err(|_| bad())?;
        let (name, rest) = key.split_once('{').ok_or_else(bad)?;
        let mut labels = Vec::new();
        let mut instance = String::new();
        for pair in rest.trim_end_matches('}').split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let v = v.trim_matches('"').to_string();
            if k == "instance" {
                instance = v.clone();
            }
            labels.push((k.to_string(), v));
        }
        let host = hosts.entry(instance).or_default();
        let next = host.series.len() as u32;
        let idx = *host.index.entry(key.to_string()).or_insert(next);
        if idx == next {
            host.series.push((name.to_string(), labels));
        }
        host.at.entry(ts * 1000).or_default().push((idx, value));
    }
    Ok(hosts)
}

/// Bytes per sample of a fleetgen dataset: rows as in the main table
/// (steady only: every host's first timestamp primes its stream).
fn measure_fleet(hosts: &std::collections::BTreeMap<String, FleetHost>) -> Result<(u64, Vec<(&'static str, u64)>)> {
    let framing = GRPC_PREFIX + HTTP2_FRAME_HEADER;
    let mut rows: Vec<(&'static str, u64)> = vec![
        ("hostpulse, compact columns + zstd (agent default)", 0),
        ("hostpulse, compact columns + gzip", 0),
        ("hostpulse, plain columns + zstd (older agents)", 0),
        ("hostpulse, plain columns + gzip", 0),
        ("Prometheus remote write 1.0, protobuf + snappy", 0),
    ];
    let mut samples = 0u64;
    for host in hosts.values() {
        let mut encoder = StreamEncoder::new();
        let mut decoder = StreamDecoder::new(usize::MAX);
        for (i, (t, at)) in host.at.iter().enumerate() {
            let mut at = at.clone();
            at.sort_by_key(|(idx, _)| *idx);
            let plain = Batch {
                seq: SEQ_BASE + i as u64,
                base_timestamp_ms: *t,
                refs: at.iter().map(|(idx, _)| idx + 1).collect(),
                values: at.iter().map(|(_, v)| *v).collect(),
                ..Default::default()
            };
            let mut compact = plain.clone();
            encoder.encode(&mut compact);
            let mut decoded = compact.clone();
            decoder.decode(&mut decoded)?;
            let bits = |b: &Batch| b.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            anyhow::ensure!(
                decoded.refs == plain.refs && bits(&decoded) == bits(&plain),
                "fleet file: round trip failed"
            );
            if i == 0 {
                continue;
            }
            let msg = |b: Batch| {
                AgentMessage {
                    kind: Some(agent_message::Kind::Batch(b)),
                }
                .encode_to_vec()
            };
            let rw_body = rw::WriteRequest {
                timeseries: at
                    .iter()
                    .map(|(idx, v)| {
                        let (name, labels) = &host.series[*idx as usize];
                        let mut labels: Vec<rw::Label> = labels
                            .iter()
                            .map(|(n, v)| rw::Label {
                                name: n.clone(),
                                value: v.clone(),
                            })
                            .chain([rw::Label {
                                name: "__name__".into(),
                                value: name.clone(),
                            }])
                            .collect();
                        labels.sort_by(|a, b| a.name.cmp(&b.name));
                        rw::TimeSeries {
                            labels,
                            samples: vec![rw::Sample {
                                value: *v,
                                timestamp: *t,
                            }],
                            histograms: Vec::new(),
                        }
                    })
                    .collect(),
            }
            .encode_to_vec();
            let (c, p) = (msg(compact), msg(plain));
            let figures = [
                zstd_len(&c)? + framing,
                gzip_len(&c)? + framing,
                zstd_len(&p)? + framing,
                gzip_len(&p)? + framing,
                snappy_len(&rw_body)?,
            ];
            for (row, bytes) in rows.iter_mut().zip(figures) {
                row.1 += bytes;
            }
            samples += at.len() as u64;
        }
    }
    Ok((samples, rows))
}

/// How a series' value moves from one interval to the next.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A counter growing by about `per_step` with this resolution.
    Counter { per_step: f64, resolution: f64 },
    /// A gauge wandering around `base` by up to `jitter`, at `resolution`.
    Gauge { base: f64, jitter: f64, resolution: f64 },
    /// Never changes (error counters at 0, info metrics at 1, SMART raw values).
    Constant(f64),
}

struct Series {
    name: &'static str,
    labels: Vec<(String, String)>,
    shape: Shape,
}

/// The series of one hardware agent, `n` of them, in a realistic mix.
fn series_mix(n: usize) -> Vec<Series> {
    let l = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut out = Vec::new();
    let modes = ["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"];
    for cpu in 0..8 {
        for (i, mode) in modes.iter().enumerate() {
            let per_step = if *mode == "idle" { 8.5 } else { 0.02 + i as f64 * 0.11 };
            out.push(Series {
                name: "node_cpu_seconds_total",
                labels: l(&[("cpu", cpu.to_string()), ("mode", mode.to_string())]),
                shape: Shape::Counter {
                    per_step,
                    resolution: 0.01,
                },
            });
        }
    }
    let disk_metrics = [
        ("node_disk_reads_completed_total", 40.0, 1.0),
        ("node_disk_writes_completed_total", 120.0, 1.0),
        ("node_disk_read_bytes_total", 1.6e6, 512.0),
        ("node_disk_written_bytes_total", 4.9e6, 512.0),
        ("node_disk_io_time_seconds_total", 0.4, 0.001),
        ("node_disk_read_time_seconds_total", 0.05, 0.001),
        ("node_disk_write_time_seconds_total", 0.3, 0.001),
        ("node_disk_io_now", 0.0, 1.0),
    ];
    for dev in ["nvme0n1", "nvme1n1", "sda"] {
        for (name, per_step, resolution) in disk_metrics {
            out.push(Series {
                name,
                labels: l(&[("device", dev.to_string())]),
                shape: Shape::Counter { per_step, resolution },
            });
        }
    }
    for s in 0..40 {
        let chip = if s < 20 {
            "platform_coretemp_0"
        } else {
            "platform_coretemp_1"
        };
        out.push(Series {
            name: "node_hwmon_temp_celsius",
            labels: l(&[("chip", chip.to_string()), ("sensor", format!("temp{}", s % 20 + 1))]),
            shape: Shape::Gauge {
                base: 38.0 + (s % 7) as f64 * 3.0,
                jitter: 3.0,
                resolution: 1.0,
            },
        });
    }
    for s in 0..12 {
        out.push(Series {
            name: "node_hwmon_fan_rpm",
            labels: l(&[
                ("chip", "platform_nct6775_656".into()),
                ("sensor", format!("fan{}", s + 1)),
            ]),
            shape: Shape::Gauge {
                base: 4200.0 + s as f64 * 150.0,
                jitter: 60.0,
                resolution: 1.0,
            },
        });
    }
    for s in 0..20 {
        out.push(Series {
            name: "node_hwmon_in_volts",
            labels: l(&[("chip", "platform_nct6775_656".into()), ("sensor", format!("in{s}"))]),
            shape: Shape::Gauge {
                base: [1.2, 3.3, 5.0, 12.0][s % 4],
                jitter: 0.02,
                resolution: 0.008,
            },
        });
    }
    for mc in 0..2 {
        for row in 0..12 {
            for kind in ["correctable", "uncorrectable"] {
                out.push(Series {
                    name: if kind == "correctable" {
                        "node_edac_csrow_correctable_errors_total"
                    } else {
                        "node_edac_csrow_uncorrectable_errors_total"
                    },
                    labels: l(&[("controller", mc.to_string()), ("csrow", row.to_string())]),
                    shape: Shape::Constant(0.0),
                });
            }
        }
    }
    for dev in 0..10 {
        for severity in ["correctable", "fatal", "nonfatal"] {
            out.push(Series {
                name: "hostpulse_pcie_aer_errors_total",
                labels: l(&[
                    ("device", format!("0000:{:02x}:00.0", dev + 1)),
                    ("severity", severity.into()),
                ]),
                shape: Shape::Constant(0.0),
            });
        }
    }
    for attr in 0..16 {
        out.push(Series {
            name: "smartmon_attr_raw_value",
            labels: l(&[("disk", "/dev/sda".into()), ("attribute_id", attr.to_string())]),
            shape: Shape::Constant([0.0, 100.0, 31_245.0, 12.0][attr % 4]),
        });
    }
    for pkg in 0..8 {
        out.push(Series {
            name: "hostpulse_rapl_energy_joules_total",
            labels: l(&[("zone", format!("package-{}", pkg % 2)), ("index", pkg.to_string())]),
            shape: Shape::Counter {
                per_step: 650.0,
                resolution: 0.000_001,
            },
        });
    }
    for cpu in 0..8 {
        out.push(Series {
            name: "node_cpu_scaling_frequency_hertz",
            labels: l(&[("cpu", cpu.to_string())]),
            shape: Shape::Gauge {
                base: 2.8e9,
                jitter: 6e8,
                resolution: 1e3,
            },
        });
    }
    let mut info = 0;
    while out.len() < n {
        out.push(Series {
            name: "node_hwmon_sensor_label",
            labels: l(&[
                ("chip", "platform_coretemp_0".into()),
                ("sensor", format!("temp{info}")),
            ]),
            shape: Shape::Constant(1.0),
        });
        info += 1;
    }
    out.truncate(n);
    out
}

/// A deterministic noise in [-1, 1) from a few integers (splitmix64).
fn noise(a: u64, b: u64, c: u64) -> f64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn quantize(v: f64, resolution: f64) -> f64 {
    (v / resolution).round() * resolution
}

/// Values of every series of `host` at interval `step`.
fn values(mix: &[Series], host: u64, step: u64) -> Vec<f64> {
    mix.iter()
        .enumerate()
        .map(|(i, s)| match s.shape {
            Shape::Counter { per_step, resolution } => {
                // Counters start at a host-specific uptime and grow with noise.
                let start = 1e5 * (1.5 + noise(host, i as u64, 0)) * per_step.max(1e-3);
                let grown = per_step * step as f64 * (1.0 + 0.3 * noise(host, i as u64, 1));
                quantize(start + grown, resolution)
            }
            Shape::Gauge {
                base,
                jitter,
                resolution,
            } => quantize(base + jitter * noise(host, i as u64, step / 3 + 7), resolution),
            Shape::Constant(v) => v,
        })
        .collect()
}

/// Sizes of one format for one host and interval.
#[derive(Default, Clone, Copy)]
struct Bytes {
    steady: u64,
    first: u64,
}

const GRPC_PREFIX: u64 = 5;
const HTTP2_FRAME_HEADER: u64 = 9;

fn zstd_len(bytes: &[u8]) -> Result<u64> {
    Ok(zstd::stream::encode_all(bytes, zstd::DEFAULT_COMPRESSION_LEVEL)?.len() as u64)
}

fn gzip_len(bytes: &[u8]) -> Result<u64> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(bytes)?;
    Ok(e.finish()?.len() as u64)
}

fn snappy_len(bytes: &[u8]) -> Result<u64> {
    Ok(snap::raw::Encoder::new().compress_vec(bytes)?.len() as u64)
}

/// Nanoseconds per sample to encode and to decode the compact columns of
/// every host's intervals (values computed beforehand, so only the codec is
/// timed).
fn codec_speed(mix: &[Series], args: &Args) -> Result<(f64, f64)> {
    let refs: Vec<u32> = (1..=mix.len() as u32).collect();
    let mut encode = std::time::Duration::ZERO;
    let mut decode = std::time::Duration::ZERO;
    let mut samples = 0u64;
    for host in 0..args.hosts {
        let steps: Vec<Vec<f64>> = (0..=args.intervals).map(|step| values(mix, host, step)).collect();
        let mut encoder = StreamEncoder::new();
        let start = std::time::Instant::now();
        let encoded: Vec<_> = steps.iter().map(|v| encoder.encode_columns(refs.clone(), v)).collect();
        encode += start.elapsed();
        let mut decoder = StreamDecoder::new(usize::MAX);
        let start = std::time::Instant::now();
        for c in &encoded {
            let (r, v) = decoder.decode_columns(c)?;
            anyhow::ensure!(r.len() == v.len(), "decoded columns differ in length");
        }
        decode += start.elapsed();
        samples += (steps.len() * refs.len()) as u64;
    }
    let per = |d: std::time::Duration| d.as_nanos() as f64 / samples.max(1) as f64;
    Ok((per(encode), per(decode)))
}

/// Sequence numbers of a real agent start from the wall clock in ms.
const SEQ_BASE: u64 = 1_767_225_600_000;

/// The agent's message for one interval, with compact columns when an
/// `encoder` is given (and checked against `decoder`).
fn hostpulse_batch(
    mix: &[Series],
    host: u64,
    step: u64,
    t_ms: i64,
    define: bool,
    codec: Option<(&mut StreamEncoder, &mut StreamDecoder)>,
) -> Result<Vec<u8>> {
    let new_series = if define {
        mix.iter()
            .enumerate()
            .map(|(i, s)| SeriesDefinition {
                r#ref: i as u32 + 1,
                name: s.name.into(),
                labels: s
                    .labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut batch = Batch {
        seq: SEQ_BASE + step,
        new_series,
        base_timestamp_ms: t_ms,
        refs: (1..=mix.len() as u32).collect(),
        timestamp_deltas_ms: Vec::new(),
        values: values(mix, host, step),
        events: Vec::new(),
        compact: None,
    };
    if let Some((encoder, decoder)) = codec {
        let plain = batch.clone();
        encoder.encode(&mut batch);
        let mut decoded = batch.clone();
        decoder.decode(&mut decoded)?;
        let bits = |b: &Batch| b.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        anyhow::ensure!(
            decoded.refs == plain.refs && bits(&decoded) == bits(&plain),
            "host {host} step {step}: compact columns did not decode to the plain ones"
        );
    }
    Ok(AgentMessage {
        kind: Some(agent_message::Kind::Batch(batch)),
    }
    .encode_to_vec())
}

/// Remote write 1.0 as Prometheus sends one host's scrape: every series
/// with its full label set (`__name__`, `instance`, `job` included).
fn remote_write(mix: &[Series], host: u64, step: u64, t_ms: i64) -> Vec<u8> {
    let vals = values(mix, host, step);
    let timeseries = mix
        .iter()
        .zip(vals)
        .map(|(s, value)| {
            let mut labels: Vec<rw::Label> = s
                .labels
                .iter()
                .map(|(n, v)| rw::Label {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect();
            labels.push(rw::Label {
                name: "__name__".into(),
                value: s.name.into(),
            });
            labels.push(rw::Label {
                name: "instance".into(),
                value: format!("host-{host:05}.dc1.example.com:9100"),
            });
            labels.push(rw::Label {
                name: "job".into(),
                value: "node".into(),
            });
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            rw::TimeSeries {
                labels,
                samples: vec![rw::Sample { value, timestamp: t_ms }],
                histograms: Vec::new(),
            }
        })
        .collect();
    rw::WriteRequest { timeseries }.encode_to_vec()
}

/// node_exporter's text exposition of the same samples (HELP and TYPE per
/// metric family, no timestamps).
fn exposition(mix: &[Series], host: u64, step: u64) -> Vec<u8> {
    let vals = values(mix, host, step);
    let mut out = String::new();
    let mut last = "";
    for (s, v) in mix.iter().zip(vals) {
        if s.name != last {
            let kind = if s.name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {} Hardware metric {}.", s.name, s.name);
            let _ = writeln!(out, "# TYPE {} {kind}", s.name);
            last = s.name;
        }
        let labels: Vec<String> = s.labels.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
        let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), v);
    }
    out.into_bytes()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mix = series_mix(args.series);
    let samples = mix.len() as u64;
    let t0: i64 = 1_767_225_600_000;
    let step_ms = i64::try_from(args.interval_s * 1000)?;
    let mut rows: Vec<(&str, Bytes)> = vec![
        ("hostpulse, compact columns, no compression", Bytes::default()),
        ("hostpulse, compact columns + zstd (agent default)", Bytes::default()),
        ("hostpulse, compact columns + gzip", Bytes::default()),
        ("hostpulse, plain columns, no compression", Bytes::default()),
        ("hostpulse, plain columns + zstd (older agents)", Bytes::default()),
        ("hostpulse, plain columns + gzip", Bytes::default()),
        ("Prometheus remote write 1.0, protobuf + snappy", Bytes::default()),
        (
            "Prometheus remote write 1.0, protobuf, no compression",
            Bytes::default(),
        ),
        ("node_exporter text exposition, plain", Bytes::default()),
        ("node_exporter text exposition, gzip", Bytes::default()),
    ];
    let n = args.hosts * args.intervals;
    let framing = GRPC_PREFIX + HTTP2_FRAME_HEADER;
    for host in 0..args.hosts {
        // One stream per host: its encoder has seen interval 0 before the
        // measured intervals 1..=N.
        let mut encoder = StreamEncoder::new();
        let mut decoder = StreamDecoder::new(usize::MAX);
        hostpulse_batch(&mix, host, 0, t0, true, Some((&mut encoder, &mut decoder)))?;
        for step in 1..=args.intervals {
            let t = t0 + i64::try_from(step)? * step_ms;
            let c_steady = hostpulse_batch(&mix, host, step, t, false, Some((&mut encoder, &mut decoder)))?;
            let (mut fresh_enc, mut fresh_dec) = (StreamEncoder::new(), StreamDecoder::new(usize::MAX));
            let c_first = hostpulse_batch(&mix, host, step, t, true, Some((&mut fresh_enc, &mut fresh_dec)))?;
            let steady = hostpulse_batch(&mix, host, step, t, false, None)?;
            let first = hostpulse_batch(&mix, host, step, t, true, None)?;
            let rw_body = remote_write(&mix, host, step, t);
            let text = exposition(&mix, host, step);
            let figures = [
                (c_steady.len() as u64 + framing, c_first.len() as u64 + framing),
                (zstd_len(&c_steady)? + framing, zstd_len(&c_first)? + framing),
                (gzip_len(&c_steady)? + framing, gzip_len(&c_first)? + framing),
                (steady.len() as u64 + framing, first.len() as u64 + framing),
                (zstd_len(&steady)? + framing, zstd_len(&first)? + framing),
                (gzip_len(&steady)? + framing, gzip_len(&first)? + framing),
                (snappy_len(&rw_body)?, snappy_len(&rw_body)?),
                (rw_body.len() as u64, rw_body.len() as u64),
                (text.len() as u64, text.len() as u64),
                (gzip_len(&text)?, gzip_len(&text)?),
            ];
            for (row, (steady, first)) in rows.iter_mut().zip(figures) {
                row.1.steady += steady;
                row.1.first += first;
            }
        }
    }
    println!(
        "wire bytes per sample: {} series per host, {} s interval, averaged over {} hosts x {} intervals",
        samples, args.interval_s, args.hosts, args.intervals
    );
    println!(
        "fleet of {} agents: {:.0} samples/s\n",
        args.agents,
        (args.agents * samples) as f64 / args.interval_s as f64
    );
    println!("| format | B/sample (steady) | B/sample (first batch, with series definitions) | fleet MB/s |");
    println!("|---|---:|---:|---:|");
    for (name, b) in &rows {
        let per_sample = b.steady as f64 / (n * samples) as f64;
        let first = b.first as f64 / (n * samples) as f64;
        let fleet = per_sample * (args.agents * samples) as f64 / args.interval_s as f64 / 1e6;
        println!("| {name} | {per_sample:.2} | {first:.2} | {fleet:.2} |");
    }
    println!(
        "\nhostpulse framing counted: {GRPC_PREFIX} B gRPC prefix + {HTTP2_FRAME_HEADER} B HTTP/2 frame header per batch; \
         remote write and text: body only (their HTTP request/response headers would add more)."
    );
    let (encode_ns, decode_ns) = codec_speed(&mix, &args)?;
    println!(
        "\ncompact columns, CPU per sample on this machine (this build's profile): encode {encode_ns:.1} ns, decode {decode_ns:.1} ns"
    );
    if let Some(path) = &args.fleet_file {
        let hosts = parse_fleet(&std::fs::read_to_string(path)?)?;
        let (samples, rows) = measure_fleet(&hosts)?;
        let series: usize = hosts.values().map(|h| h.series.len()).sum();
        println!(
            "\nreference fleet dataset {}: {} hosts, {series} series, {samples} samples (steady batches)\n",
            path.display(),
            hosts.len()
        );
        println!("| format | B/sample (steady) |");
        println!("|---|---:|");
        for (name, bytes) in rows {
            println!("| {name} | {:.2} |", bytes as f64 / samples.max(1) as f64);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn compact_steady_batches_decode_and_are_smaller_than_plain() {
        let mix = series_mix(300);
        let mut enc = StreamEncoder::new();
        let mut dec = StreamDecoder::new(1000);
        hostpulse_batch(&mix, 3, 0, 0, true, Some((&mut enc, &mut dec))).unwrap();
        for step in 1..10 {
            let compact = hostpulse_batch(&mix, 3, step, 0, false, Some((&mut enc, &mut dec))).unwrap();
            let plain = hostpulse_batch(&mix, 3, step, 0, false, None).unwrap();
            assert!(
                zstd_len(&compact).unwrap() * 2 < zstd_len(&plain).unwrap(),
                "step {step}: {} vs {}",
                compact.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn the_mix_has_the_asked_size_and_values_move() {
        let mix = series_mix(300);
        assert_eq!(mix.len(), 300);
        let a = values(&mix, 1, 0);
        let b = values(&mix, 1, 1);
        assert_eq!(a.len(), 300);
        assert!(a.iter().zip(&b).any(|(x, y)| x != y));
        // Constant series stay put.
        assert!(
            mix.iter()
                .zip(a.iter().zip(&b))
                .all(|(s, (x, y))| !matches!(s.shape, Shape::Constant(_)) || x == y)
        );
    }
}
