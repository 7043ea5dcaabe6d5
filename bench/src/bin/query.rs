//! Query benchmark (issue 5): the reference fleet dataset loaded into
//! hostpulse, VictoriaMetrics and Prometheus in one run, then range queries
//! over the whole span timed against all three over HTTP, median of N runs,
//! printed side by side.
//!
//! Loading: `fleetgen.py` writes OpenMetrics text (timestamps in seconds).
//! hostpulse loads it with `hostpulse-collector import`, Prometheus with
//! `promtool tsdb create-blocks-from openmetrics`, VictoriaMetrics through
//! `/api/v1/import/prometheus` after the timestamps are rewritten to
//! milliseconds (the Prometheus text format it expects). Every server then
//! runs as a child process on a loopback port with its caches off where it
//! has them (`-search.disableCache` for VictoriaMetrics).
//!
//! Each timing runs from sending the request to the last byte of the
//! answer; the answer is parsed (to check it and count series) after the
//! clock stops.
//!
//! hostpulse keeps a bounded cache of decoded block sections, so its timed
//! runs (after the untimed first) are warm-cache figures. Its cold figure
//! is measured apart: before each query the collector is restarted on the
//! same store (empty cache; the OS page cache stays warm, as for the
//! peers) and that query's first run is timed, `--cold-runs` times (fresh
//! process each time), median reported.
//!
//! Run: `cargo build --release -p hostpulse-collector -p hostpulse-bench &&
//! target/release/query --hosts 20 --hours 12`.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Times PromQL range queries against hostpulse, VictoriaMetrics and Prometheus")]
struct Args {
    /// Hosts in the generated fleet.
    #[arg(long, default_value_t = 20)]
    hosts: u32,
    /// Hours of data.
    #[arg(long, default_value_t = 12.0)]
    hours: f64,
    /// Seconds between samples (fleetgen's --step) and the query step.
    #[arg(long, default_value_t = 10)]
    step: u32,
    /// Timed runs per query; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The fleet generator.
    #[arg(long, default_value = "/work/shared/bench/fleetgen.py")]
    fleetgen: PathBuf,
    /// The collector binary [default: `hostpulse-collector` beside this program].
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// Where the data and the servers' directories go [default: a temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also run the broader battery of queries.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    battery: bool,
    /// Also time hostpulse cold: a fresh collector process per query.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cold: bool,
    /// Fresh collector processes per query for the cold figure; the median
    /// of their first runs is reported (one is a single noisy sample).
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
    /// Which servers to run, comma-separated (`hostpulse`, `vm`,
    /// `prometheus`); hostpulse always runs.
    #[arg(long, value_delimiter = ',', default_value = "hostpulse,vm,prometheus")]
    servers: Vec<String>,
    /// Only the queries containing one of these substrings (repeatable)
    /// [default: every query].
    #[arg(long = "query")]
    query_filter: Vec<String>,
    /// Reuse stores already loaded in the work dir instead of loading the
    /// fleet again (for iterating; the first run with a work dir loads).
    #[arg(long)]
    reuse: bool,
}

/// fleetgen's default first timestamp (unix seconds).
const FLEET_START: i64 = 1_767_225_600;

/// The three queries the issue names, then the broader battery.
const HEADLINE: &[&str] = &[
    r#"node_hwmon_temp_celsius{instance="host-00003",chip="platform_coretemp_0",sensor="temp1"}"#,
    "avg by (instance) (node_hwmon_temp_celsius)",
    "sum by (instance) (rate(node_network_receive_bytes_total[5m]))",
];

const BATTERY: &[&str] = &[
    "max by (instance) (node_hwmon_temp_celsius)",
    "sum(rate(node_cpu_seconds_total{mode!=\"idle\"}[5m])) by (instance)",
    "1 - avg by (instance) (rate(node_cpu_seconds_total{mode=\"idle\"}[5m]))",
    "increase(node_edac_csrow_correctable_errors_total[1h]) > 0",
    "topk(5, max by (instance) (node_hwmon_temp_celsius))",
    "quantile(0.9, node_hwmon_fan_rpm)",
    "max_over_time(node_hwmon_power_watt[15m])",
    "predict_linear(node_filesystem_avail_bytes[1h], 86400) < 0",
    "sum by (instance) (rate(node_disk_read_bytes_total[5m]) + rate(node_disk_written_bytes_total[5m]))",
    "node_load1 > 6",
];

/// A server child process, killed when dropped.
struct Server {
    name: &'static str,
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Waits until `url` answers 2xx.
async fn wait_ready(client: &reqwest::Client, url: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} not ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rewrites OpenMetrics (seconds) to Prometheus text (milliseconds).
fn to_prometheus_text(src: &Path, dst: &Path) -> Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(dst)?);
    for line in BufReader::new(std::fs::File::open(src)?).lines() {
        let line = line?;
        if line.starts_with('#') {
            continue;
        }
        match line.rsplit_once(' ') {
            Some((head, ts)) => {
                let secs: i64 = ts.parse().with_context(|| format!("timestamp in {line:?}"))?;
                writeln!(out, "{head} {}", secs * 1000)?;
            }
            None => bail!("unexpected line {line:?}"),
        }
    }
    out.flush()?;
    Ok(())
}

async fn start_hostpulse(bin: &Path, dir: &Path, data: &Path, client: &reqwest::Client, reuse: bool) -> Result<Server> {
    let store = dir.join("hostpulse");
    if reuse && store.exists() {
        return launch_hostpulse(bin, dir, client).await;
    }
    if store.exists() {
        std::fs::remove_dir_all(&store)?;
    }
    run(
        Command::new(bin).arg("import").arg("--data-dir").arg(&store).arg(data),
        "hostpulse import",
    )?;
    launch_hostpulse(bin, dir, client).await
}

/// Runs a collector on the store `start_hostpulse` imported.
async fn launch_hostpulse(bin: &Path, dir: &Path, client: &reqwest::Client) -> Result<Server> {
    let store = dir.join("hostpulse");
    let (http, grpc) = (free_port()?, free_port()?);
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(&store)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hostpulse.log"))?)
        .spawn()
        .context("starting hostpulse-collector")?;
    let s = Server {
        name: "hostpulse",
        child,
        base: format!("http://127.0.0.1:{http}"),
    };
    wait_ready(client, &format!("{}/-/ready", s.base), Duration::from_secs(300)).await?;
    Ok(s)
}

async fn start_victoria(dir: &Path, data: &Path, client: &reqwest::Client, reuse: bool) -> Result<Server> {
    let loaded = reuse && dir.join("vm").exists();
    if !loaded && dir.join("vm").exists() {
        std::fs::remove_dir_all(dir.join("vm"))?;
    }
    let port = free_port()?;
    let child = Command::new("victoria-metrics")
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y")
        .arg("-search.disableCache")
        .arg("-search.maxPointsPerTimeseries=100000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vm.log"))?)
        .spawn()
        .context("starting victoria-metrics (apt-get install victoria-metrics)")?;
    let s = Server {
        name: "VictoriaMetrics",
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(client, &format!("{}/health", s.base), Duration::from_secs(60)).await?;
    if loaded {
        return Ok(s);
    }
    let text = dir.join("fleet.prom");
    to_prometheus_text(data, &text)?;
    let started = Instant::now();
    let body = tokio::fs::read(&text).await?;
    let resp = client
        .post(format!("{}/api/v1/import/prometheus", s.base))
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("VictoriaMetrics import: {}", resp.status());
    }
    client.get(format!("{}/internal/force_flush", s.base)).send().await?;
    // As large as the fleet file itself; not needed once loaded.
    let _ = std::fs::remove_file(&text);
    eprintln!("VictoriaMetrics import: {:.1} s", started.elapsed().as_secs_f64());
    Ok(s)
}

async fn start_prometheus(dir: &Path, data: &Path, client: &reqwest::Client, reuse: bool) -> Result<Server> {
    let tsdb = dir.join("prometheus");
    if !(reuse && tsdb.exists()) {
        if tsdb.exists() {
            std::fs::remove_dir_all(&tsdb)?;
        }
        run(
            Command::new("promtool")
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(data)
                .arg(&tsdb),
            "promtool backfill",
        )?;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n")?;
    let port = free_port()?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .context("starting prometheus")?;
    let s = Server {
        name: "Prometheus",
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(client, &format!("{}/-/ready", s.base), Duration::from_secs(300)).await?;
    Ok(s)
}

/// `k=v&...` with every byte outside the unreserved set percent-encoded.
fn encode_params(params: &[(&str, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One timed range query; returns the wall time and the series count.
async fn time_query(
    client: &reqwest::Client,
    s: &Server,
    q: &str,
    start: i64,
    end: i64,
    step: u32,
) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let resp = client
        .get(format!(
            "{}/api/v1/query_range?{}",
            s.base,
            encode_params(&[
                ("query", q.to_string()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", step.to_string()),
            ])
        ))
        .send()
        .await?;
    // The clock stops when the whole answer has arrived: parsing it here
    // (tens of milliseconds for 20 series × 4,320 points) is this
    // program's cost, not the server's, and would be added to every
    // server's time alike, pulling all ratios towards 1.
    let bytes = resp.bytes().await?;
    let elapsed = started.elapsed();
    let body: serde_json::Value = serde_json::from_slice(&bytes)?;
    if body["status"] != "success" {
        bail!("{}: {q}: {body}", s.name);
    }
    let series = body["data"]["result"].as_array().map_or(0, Vec::len);
    Ok((elapsed, series))
}

/// The 1/5/15-minute load averages, for the record (noisy machines).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.work_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let bin = match &args.collector_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory around this program")?
            .join("hostpulse-collector"),
    };
    let data = dir.join("fleet.om");
    if !data.exists() {
        let out = std::fs::File::create(&data)?;
        let started = Instant::now();
        let status = Command::new("python3")
            .arg(&args.fleetgen)
            .args(["--hosts", &args.hosts.to_string(), "--hours", &args.hours.to_string()])
            .args(["--step", &args.step.to_string()])
            .stdout(out)
            .status()?;
        if !status.success() {
            bail!("fleetgen failed");
        }
        eprintln!("fleetgen: {:.1} s", started.elapsed().as_secs_f64());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let wants = |name: &str| args.servers.iter().any(|s| s == name);
    let mut servers = vec![start_hostpulse(&bin, &dir, &data, &client, args.reuse).await?];
    let mut slots: [Option<usize>; 2] = [None, None];
    if wants("vm") {
        slots[0] = Some(servers.len());
        servers.push(start_victoria(&dir, &data, &client, args.reuse).await?);
    }
    if wants("prometheus") {
        slots[1] = Some(servers.len());
        servers.push(start_prometheus(&dir, &data, &client, args.reuse).await?);
    }
    let start = FLEET_START;
    let end = FLEET_START + (args.hours * 3600.0) as i64 - i64::from(args.step);
    let mut queries: Vec<&str> = HEADLINE.to_vec();
    if args.battery {
        queries.extend_from_slice(BATTERY);
    }
    if !args.query_filter.is_empty() {
        queries.retain(|q| args.query_filter.iter().any(|f| q.contains(f.as_str())));
    }
    println!(
        "range queries over {} h at a {} s step, {} hosts; median of {} runs (ms), hp cold: median of {} fresh processes; load average {}",
        args.hours,
        args.step,
        args.hosts,
        args.runs,
        args.cold_runs.max(1),
        load_average()
    );
    println!(
        "{:<100} {:>10} {:>10} {:>16} {:>11} {:>8} {:>8} {:>8}",
        "query", "hp warm", "hp cold", "VictoriaMetrics", "Prometheus", "warm/VM", "cold/VM", "series"
    );
    for q in queries {
        let cold = if args.cold {
            // A fresh process: nothing decoded is cached yet. The old one
            // must be gone first, since sled locks the store.
            let mut times = Vec::with_capacity(args.cold_runs.max(1));
            for _ in 0..args.cold_runs.max(1) {
                drop(servers.remove(0));
                servers.insert(0, launch_hostpulse(&bin, &dir, &client).await?);
                times.push(time_query(&client, &servers[0], q, start, end, args.step).await?.0);
            }
            Some(median(times))
        } else {
            None
        };
        let mut medians = Vec::new();
        let mut series = Vec::new();
        for s in &servers {
            // One untimed run warms the page cache and connection.
            let (_, n) = time_query(&client, s, q, start, end, args.step).await?;
            series.push(n);
            let mut times = Vec::with_capacity(args.runs);
            for _ in 0..args.runs {
                times.push(time_query(&client, s, q, start, end, args.step).await?.0);
            }
            medians.push(median(times));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let peer = |slot: Option<usize>| slot.map_or(f64::NAN, |i| ms(medians[i]));
        let vm = peer(slots[0]);
        let series_text = if series.iter().all(|n| *n == series[0]) {
            series[0].to_string()
        } else {
            format!("{series:?}")
        };
        let cold_ms = cold.map_or(f64::NAN, ms);
        println!(
            "{:<100} {:>10.1} {:>10.1} {:>16.1} {:>11.1} {:>8.2} {:>8.2} {:>8}",
            q,
            ms(medians[0]),
            cold_ms,
            vm,
            peer(slots[1]),
            ms(medians[0]) / vm,
            cold_ms / vm,
            series_text
        );
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}
