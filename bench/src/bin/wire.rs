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
//! gRPC length prefix and the 9-byte HTTP/2 DATA frame header. The series
//! mix is what a hardware agent sends (CPU and disk counters, hwmon
//! temperatures, fans and voltages, EDAC/AER error counters that are
//! almost always 0, SMART attributes, info gauges), with values evolving
//! deterministically from one interval to the next.
//!
//! `cargo run --release -p hostpulse-bench --bin wire -- [--agents 10000] [--series 300] [--intervals 60]`

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Result;
use clap::Parser;
use hostpulse_collector::remote_write::proto as rw;
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

/// The agent's message for one interval.
fn hostpulse_batch(mix: &[Series], host: u64, step: u64, t_ms: i64, define: bool) -> Vec<u8> {
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
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: step + 1,
            new_series,
            base_timestamp_ms: t_ms,
            refs: (1..=mix.len() as u32).collect(),
            timestamp_deltas_ms: Vec::new(),
            values: values(mix, host, step),
            events: Vec::new(),
        })),
    }
    .encode_to_vec()
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
        ("hostpulse gRPC stream, protobuf, no compression", Bytes::default()),
        (
            "hostpulse gRPC stream, protobuf + zstd (agent default)",
            Bytes::default(),
        ),
        ("hostpulse gRPC stream, protobuf + gzip", Bytes::default()),
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
        for step in 0..args.intervals {
            let t = t0 + i64::try_from(step)? * step_ms;
            let steady = hostpulse_batch(&mix, host, step, t, false);
            let first = hostpulse_batch(&mix, host, step, t, true);
            let rw_body = remote_write(&mix, host, step, t);
            let text = exposition(&mix, host, step);
            let figures = [
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
