//! RAM per active series, measured: starts a collector (a child process,
//! with a generated config that lifts the per-host ingest limits a million
//! series would trip), creates `--agents × --series` active series over the
//! real `hostpulse.v1` gRPC protocol with a few durable samples each, and
//! divides the collector's resident memory growth by the series count. The
//! store's own estimate (`hostpulse_store_ram_bytes_per_active_series` from
//! `/metrics`) is printed beside it. With `--peer`, VictoriaMetrics gets the
//! same series and samples through `/api/v1/import/prometheus` and is
//! measured the same way in the same run.
//!
//! `cargo build --release -p hostpulse-collector -p hostpulse-bench &&
//! target/release/series_ram --agents 100 --series 10000 --peer`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hostpulse_proto::{Label, SeriesDefinition};

/// Measures the collector's RAM per active series at a given series count.
#[derive(Parser, Debug)]
struct Args {
    /// Simulated agents (one stream each)
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Series per agent
    #[arg(long, default_value_t = 10_000)]
    series: u32,
    /// Samples per series (one batch per sample, 10 s apart)
    #[arg(long, default_value_t = 3)]
    samples: u32,
    /// Streams sending at the same time
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// hostpulse-collector binary [default: beside this program]
    #[arg(long)]
    collector: Option<PathBuf>,
    /// Also measure VictoriaMetrics with the same series
    #[arg(long)]
    peer: bool,
    /// VictoriaMetrics single-node binary
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    victoria_metrics: PathBuf,
    /// Where data directories go [default: a temp dir, removed afterwards]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Top-level collector config lines added to the generated config,
    /// e.g. `cache_capacity_mb = 16`
    #[arg(long)]
    config_line: Vec<String>,
}

/// Metric names the simulated series use: node_exporter's hardware
/// families, so label sets look like the ones agents send.
const METRICS: [(&str, &str); 8] = [
    ("node_hwmon_temp_celsius", "sensor"),
    ("node_hwmon_fan_rpm", "sensor"),
    ("node_hwmon_in_volts", "sensor"),
    ("node_network_receive_bytes_total", "device"),
    ("node_network_transmit_bytes_total", "device"),
    ("node_disk_read_bytes_total", "device"),
    ("node_disk_written_bytes_total", "device"),
    ("node_edac_correctable_errors_total", "controller"),
];

/// Series `i` of a host: name, and its labels besides instance and job.
fn series_of(i: u32) -> (&'static str, Vec<(&'static str, String)>) {
    let (name, label) = METRICS[i as usize % METRICS.len()];
    let k = i / METRICS.len() as u32;
    (
        name,
        vec![
            ("chip", format!("platform_chip_{}", k / 64)),
            (label, format!("{label}{}", k % 64)),
        ],
    )
}

fn host_name(a: u32) -> String {
    format!("ram-host-{a:05}")
}

/// Resident memory of a process: (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A child server, killed if the benchmark fails midway.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One system's figures.
struct Figures {
    system: &'static str,
    series: u64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    hwm_kib: u64,
    seconds: f64,
    estimate: Option<u64>,
}

impl Figures {
    fn per_series(&self) -> f64 {
        (self.rss_end_kib.saturating_sub(self.rss_start_kib) * 1024) as f64 / self.series as f64
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let collector = match &args.collector {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory beside this program")?
            .join("hostpulse-collector"),
    };
    let temp;
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = vec![runtime.block_on(hostpulse(&args, &collector, &work.join("hostpulse")))?];
    if args.peer {
        results.push(runtime.block_on(victoria_metrics(&args, &work.join("victoria-metrics")))?);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!("load average at the end: {}", load.trim());
    println!(
        "| system | series | RSS at start MiB | RSS after MiB | peak RSS MiB | bytes/series (RSS growth) | store estimate B/series | load s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in &results {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.1} |",
            f.system,
            f.series,
            f.rss_start_kib as f64 / 1024.0,
            f.rss_end_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0,
            f.per_series(),
            f.estimate.map_or("-".to_string(), |e| e.to_string()),
            f.seconds
        );
    }
    Ok(())
}

/// Starts the collector and waits for its banner; returns the gRPC and HTTP
/// addresses.
fn start_collector(collector: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<(Server, SocketAddr, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    let config = dir.with_extension("bench.toml");
    // One agent with many series sends far more than a live host: the rate
    // limit, the in-flight budget and the per-stream series limit are lifted.
    let mut text: String = extra.iter().map(|l| format!("{l}\n")).collect();
    text.push_str(
        "[ingest]\nmax_samples_per_second_per_host = 0\nmax_inflight_mb = 1024\nmax_series_per_stream = 10000000\nmax_message_mb = 256\n",
    );
    std::fs::write(&config, text)?;
    let mut child = Command::new(collector)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--no-builtin-rules",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", collector.display()))?;
    let stdout = child.stdout.take().context("collector stdout")?;
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut http = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let addr = || {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("http://"))
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if line.contains("own metrics") {
                http = addr();
            }
            if line.contains("agents connect") {
                let _ = tx.send(addr().zip(http));
            }
        }
    });
    let (grpc, http) = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .context("collector did not print its addresses")?;
    Ok((server, grpc, http))
}

async fn hostpulse(args: &Args, collector: &Path, dir: &Path) -> anyhow::Result<Figures> {
    let series = u64::from(args.agents) * u64::from(args.series);
    eprintln!("hostpulse: {series} series over gRPC ...");
    let (server, grpc, http) = start_collector(collector, dir, &args.config_line)?;
    let pid = server.0.id();
    // Let the collector finish starting (rule loops, first self-scrape).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_start, _) = rss_kib(pid)?;
    let started = Instant::now();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let first_ts = now - i64::from(args.samples) * 10_000;
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut tasks = Vec::new();
    for a in 0..args.agents {
        let permit = semaphore.clone().acquire_owned().await?;
        let (n, samples) = (args.series, args.samples);
        tasks.push(tokio::spawn(async move {
            let r = stream_host(grpc, host_name(a), n, samples, first_ts).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Freed buffers of the streams settle; then read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, hwm) = rss_kib(pid)?;
    let metrics = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let estimate = gauge("hostpulse_store_ram_bytes_per_active_series").map(|v| v as u64);
    let active = gauge("hostpulse_store_active_series").unwrap_or(0.0) as u64;
    if active != series {
        eprintln!("  WARNING: the store reports {active} active series, expected {series}");
    }
    drop(server);
    Ok(Figures {
        system: "hostpulse",
        series,
        rss_start_kib: rss_start,
        rss_end_kib: rss_end,
        hwm_kib: hwm,
        seconds,
        estimate,
    })
}

/// One agent: a Hello, then `samples` batches covering all its series (the
/// first defines them), waiting for the last ack.
async fn stream_host(grpc: SocketAddr, host: String, n: u32, samples: u32, first_ts: i64) -> anyhow::Result<()> {
    let defs: Vec<SeriesDefinition> = (0..n)
        .map(|i| {
            let (name, labels) = series_of(i);
            SeriesDefinition {
                r#ref: i,
                name: name.into(),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| Label {
                        name: k.into(),
                        value: v,
                    })
                    .collect(),
            }
        })
        .collect();
    let batches = (0..samples)
        .map(|s| {
            let ts = first_ts + i64::from(s) * 10_000;
            let values = (0..n).map(|i| f64::from(i % 1000) + f64::from(s)).collect();
            (ts, (0..n).collect(), Vec::new(), values)
        })
        .collect();
    hostpulse_bench::stream_host(grpc, host, "series-ram-bench", defs, batches).await
}

/// The same series and samples into VictoriaMetrics as Prometheus text with
/// timestamps, one request per agent and sample round.
async fn victoria_metrics(args: &Args, dir: &Path) -> anyhow::Result<Figures> {
    let series = u64::from(args.agents) * u64::from(args.series);
    eprintln!("VictoriaMetrics: {series} series over /api/v1/import/prometheus ...");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(&args.victoria_metrics)
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.victoria_metrics.display()))?;
    let server = Server(child);
    let pid = server.0.id();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(client.get(format!("{base}/health")).send().await, Ok(r) if r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("VictoriaMetrics did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_start, _) = rss_kib(pid)?;
    let started = Instant::now();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let first_ts = now - i64::from(args.samples) * 10_000;
    for s in 0..args.samples {
        for a in 0..args.agents {
            let host = host_name(a);
            let ts = first_ts + i64::from(s) * 10_000;
            let mut body = String::with_capacity(args.series as usize * 120);
            for i in 0..args.series {
                let (name, labels) = series_of(i);
                body.push_str(name);
                body.push('{');
                for (k, v) in &labels {
                    body.push_str(&format!("{k}=\"{v}\","));
                }
                body.push_str(&format!(
                    "instance=\"{host}\",job=\"hostpulse\"}} {} {ts}\n",
                    f64::from(i % 1000) + f64::from(s)
                ));
            }
            let resp = client
                .post(format!("{base}/api/v1/import/prometheus"))
                .body(body)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("import answered {}: {}", resp.status(), resp.text().await?);
            }
        }
    }
    client
        .get(format!("{base}/internal/force_flush"))
        .send()
        .await?
        .error_for_status()?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, hwm) = rss_kib(pid)?;
    // Check the series arrived.
    let body: serde_json::Value = client
        .get(format!("{base}/api/v1/series/count"))
        .send()
        .await?
        .json()
        .await?;
    let counted = body["data"][0].as_u64().unwrap_or(0);
    if counted != series {
        eprintln!("  WARNING: VictoriaMetrics counts {counted} series, expected {series}: {body}");
    }
    drop(server);
    Ok(Figures {
        system: "VictoriaMetrics",
        series,
        rss_start_kib: rss_start,
        rss_end_kib: rss_end,
        hwm_kib: hwm,
        seconds,
        estimate: None,
    })
}
