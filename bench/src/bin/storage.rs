//! Storage benchmark: loads one reference fleet dataset (fleetgen's
//! OpenMetrics file) into hostpulse twice — with `hostpulse-collector
//! import`, and over the `hostpulse.v1` gRPC protocol with durable acks, one
//! stream per host as agents send — and, in the same run, into
//! VictoriaMetrics (`/api/v1/import/prometheus`) and Prometheus (`promtool
//! tsdb create-blocks-from openmetrics`). For each it prints bytes per
//! sample of the whole data directory after flush and compaction, the
//! ingest rate, and the peak RSS of the process that stored the data.
//!
//! Run (release, after `cargo build --release -p hostpulse-collector`):
//! `cargo run --release -p hostpulse-bench --bin storage`; BENCHMARKS.md
//! has the figures and the exact command.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hostpulse_collector::import::parse::{Dialect, Line, parse_line, parse_series, sniff_dialect};
use hostpulse_proto::{Label, SeriesDefinition};

/// Loads the reference fleet dataset into hostpulse, VictoriaMetrics and
/// Prometheus and prints bytes/sample, ingest rate and peak RSS of each.
#[derive(Parser, Debug)]
struct Args {
    /// OpenMetrics file to load [default: generated with fleetgen]
    #[arg(long)]
    file: Option<PathBuf>,
    /// Hosts of the generated dataset
    #[arg(long, default_value_t = 20)]
    hosts: u32,
    /// Hours of the generated dataset
    #[arg(long, default_value_t = 12.0)]
    hours: f64,
    /// fleetgen.py [default: ../shared/bench/fleetgen.py beside the workspace]
    #[arg(long)]
    fleetgen: Option<PathBuf>,
    /// hostpulse-collector binary [default: beside this program]
    #[arg(long)]
    collector: Option<PathBuf>,
    /// VictoriaMetrics single-node binary
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    victoria_metrics: PathBuf,
    /// promtool binary
    #[arg(long, default_value = "/usr/bin/promtool")]
    promtool: PathBuf,
    /// Where data directories go [default: a temp dir, removed afterwards]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Only these loads (import, grpc, victoria-metrics, prometheus)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Scrape cycles per gRPC batch: 1 is a live agent (one batch per
    /// interval); more is an agent resending a backlog from its spool
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cycles_per_batch: u32,
}

/// One load's figures.
struct Figures {
    system: &'static str,
    how: &'static str,
    samples: u64,
    seconds: f64,
    disk: DiskUsage,
    peak_rss_kib: u64,
}

#[derive(Clone, Copy, Default)]
struct DiskUsage {
    /// Sum of file lengths.
    apparent: u64,
    /// Allocated blocks (what `du` shows).
    allocated: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = args.work_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);

    let file = match &args.file {
        Some(f) => f.clone(),
        None => generate(&args, &work)?,
    };
    eprintln!("reading {} ...", file.display());
    let data = FleetData::read(&file)?;
    eprintln!(
        "{} samples, {} series, {} hosts, {:.0} MB",
        data.samples,
        data.series,
        data.hosts.len(),
        std::fs::metadata(&file)?.len() as f64 / 1e6
    );

    let collector = match &args.collector {
        Some(c) => c.clone(),
        None => std::env::current_exe()?.with_file_name("hostpulse-collector"),
    };
    let mut results = Vec::new();
    if wanted("import") {
        results.push(hostpulse_import(
            &collector,
            &file,
            &work.join("hostpulse-import"),
            data.samples,
        )?);
    }
    if wanted("grpc") {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        results.push(runtime.block_on(hostpulse_grpc(
            &collector,
            &data,
            &work.join("hostpulse-grpc"),
            args.cycles_per_batch,
        ))?);
    }
    if wanted("victoria-metrics") {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        results.push(runtime.block_on(victoria_metrics(
            &args.victoria_metrics,
            &file,
            &work.join("victoria-metrics"),
            &data,
        ))?);
    }
    if wanted("prometheus") {
        results.push(prometheus(
            &args.promtool,
            &file,
            &work.join("prometheus"),
            data.samples,
        )?);
    }

    println!();
    println!(
        "dataset: {} ({} samples, {} series, {} hosts)",
        file.display(),
        data.samples,
        data.series,
        data.hosts.len()
    );
    println!(
        "| system | load | samples | seconds | samples/s | bytes on disk | B/sample | B/sample (du) | peak RSS MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let per = |bytes: u64| bytes as f64 / r.samples.max(1) as f64;
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {} | {:.3} | {:.3} | {:.0} |",
            r.system,
            r.how,
            r.samples,
            r.seconds,
            r.samples as f64 / r.seconds.max(1e-9),
            r.disk.apparent,
            per(r.disk.apparent),
            per(r.disk.allocated),
            r.peak_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// Writes fleetgen's dataset, starting at midnight UTC a day or more ago:
/// recent enough for every store's retention and hostpulse's ingest limits,
/// and with the same time of day as fleetgen's default start, so the values
/// are those of the default dataset.
fn generate(args: &Args, work: &Path) -> anyhow::Result<PathBuf> {
    let fleetgen = args
        .fleetgen
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/fleetgen.py"));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let days_back = (args.hours / 24.0).ceil() as u64 + 1;
    let start = (now_s / 86_400 - days_back) * 86_400;
    let path = work.join(format!("fleet-{}x{}h.om", args.hosts, args.hours));
    eprintln!(
        "generating {} with {} --hosts {} --hours {} --start {start} ...",
        path.display(),
        fleetgen.display(),
        args.hosts,
        args.hours
    );
    let out = std::fs::File::create(&path)?;
    let status = Command::new("python3")
        .arg(&fleetgen)
        .args(["--hosts", &args.hosts.to_string(), "--hours", &args.hours.to_string()])
        .args(["--start", &start.to_string()])
        .stdout(out)
        .status()
        .context("running fleetgen")?;
    if !status.success() {
        bail!("fleetgen failed: {status}");
    }
    Ok(path)
}

/// The dataset in memory, arranged as agents would send it: per host, its
/// series definitions and one batch per timestamp.
struct FleetData {
    samples: u64,
    series: u64,
    hosts: Vec<HostData>,
}

struct HostData {
    name: String,
    defs: Vec<SeriesDefinition>,
    /// timestamp → (refs, values)
    cycles: BTreeMap<i64, (Vec<u32>, Vec<f64>)>,
}

impl FleetData {
    fn read(path: &Path) -> anyhow::Result<FleetData> {
        let mut head = Vec::new();
        std::fs::File::open(path)?.take(64 * 1024).read_to_end(&mut head)?;
        let dialect = sniff_dialect(&String::from_utf8_lossy(&head));
        let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut hosts: Vec<HostData> = Vec::new();
        let mut host_index: HashMap<String, usize> = HashMap::new();
        let mut series_ref: HashMap<String, (usize, u32)> = HashMap::new();
        let mut samples = 0u64;
        let mut last: Option<(String, (usize, u32))> = None;
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            let Line::Sample(s) = parse_line(&line, dialect).with_context(|| format!("line {}", n + 1))? else {
                continue;
            };
            let (host, r) = match &last {
                Some((text, at)) if text == s.series => *at,
                _ => {
                    let at = match series_ref.get(s.series) {
                        Some(at) => *at,
                        None => {
                            let labels = parse_series(s.series, dialect).with_context(|| format!("line {}", n + 1))?;
                            let instance = labels.get("instance").to_string();
                            let h = *host_index.entry(instance.clone()).or_insert_with(|| {
                                hosts.push(HostData {
                                    name: instance.clone(),
                                    defs: Vec::new(),
                                    cycles: BTreeMap::new(),
                                });
                                hosts.len() - 1
                            });
                            let defs = &mut hosts[h].defs;
                            let r = defs.len() as u32 + 1;
                            defs.push(SeriesDefinition {
                                r#ref: r,
                                name: labels.metric_name().to_string(),
                                labels: labels
                                    .pairs()
                                    .iter()
                                    .filter(|(k, _)| k != "__name__" && k != "instance")
                                    .map(|(k, v)| Label {
                                        name: k.clone(),
                                        value: v.clone(),
                                    })
                                    .collect(),
                            });
                            series_ref.insert(s.series.to_string(), (h, r));
                            (h, r)
                        }
                    };
                    last = Some((s.series.to_string(), at));
                    at
                }
            };
            let Some(ts) = s.timestamp_ms else {
                bail!("line {}: the benchmark needs timestamps", n + 1);
            };
            let cycle = hosts[host].cycles.entry(ts).or_default();
            cycle.0.push(r);
            cycle.1.push(s.value);
            samples += 1;
        }
        if dialect == Dialect::Prometheus {
            eprintln!("note: {} read as Prometheus text (timestamps in ms)", path.display());
        }
        Ok(FleetData {
            samples,
            series: series_ref.len() as u64,
            hosts,
        })
    }
}

/// Polls a process's VmHWM (peak resident set) until told to stop or the
/// process is gone; the high-water mark only grows, so the last reading
/// before exit is the peak up to ~50 ms before it.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !s.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(&path) else {
                    break;
                };
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kib()
    }
}

fn disk_usage(dir: &Path) -> anyhow::Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = DiskUsage::default();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let sub = disk_usage(&entry.path())?;
            total.apparent += sub.apparent;
            total.allocated += sub.allocated;
        } else {
            total.apparent += meta.len();
            total.allocated += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Runs a command to completion, measuring wall time and peak RSS.
fn run_measured(cmd: &mut Command) -> anyhow::Result<(String, f64, u64)> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let rss = PeakRss::watch(child.id());
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = rss.finish();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((stdout, seconds, peak))
}

fn hostpulse_import(collector: &Path, file: &Path, dir: &Path, samples: u64) -> anyhow::Result<Figures> {
    eprintln!("hostpulse: import ...");
    let (out, seconds, peak) = run_measured(
        Command::new(collector)
            .arg("import")
            .arg("--data-dir")
            .arg(dir)
            .arg(file),
    )?;
    eprint!("  {out}");
    let stored: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("import did not print its summary")?;
    if stored != samples {
        eprintln!("  WARNING: import stored {stored} of {samples} samples");
    }
    Ok(Figures {
        system: "hostpulse",
        how: "`import` (durable, sealed)",
        samples: stored,
        seconds,
        disk: disk_usage(dir)?,
        peak_rss_kib: peak,
    })
}

/// A server child process that is killed if the benchmark fails midway.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// SIGTERM (a graceful stop: both servers flush on it) and wait.
    fn terminate(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the server did not stop within 120 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

async fn hostpulse_grpc(
    collector: &Path,
    data: &FleetData,
    dir: &Path,
    cycles_per_batch: u32,
) -> anyhow::Result<Figures> {
    eprintln!("hostpulse: gRPC, one stream per host, durable acks, {cycles_per_batch} cycle(s) per batch ...");
    // Each simulated host replays 12 hours as fast as the collector takes
    // them, far above the per-host rate limit meant for live agents, so
    // the limit is lifted for this run.
    std::fs::create_dir_all(dir)?;
    let config = dir.with_extension("bench.toml");
    std::fs::write(
        &config,
        "[ingest]\nmax_samples_per_second_per_host = 0\nmax_inflight_mb = 1024\n",
    )?;
    let mut child = Command::new(collector)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("collector stdout")?;
    let mut server = Server(child);
    let rss = PeakRss::watch(server.0.id());
    // The banner names the addresses; keep draining stdout afterwards.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("agents connect") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("http://"))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                let _ = tx.send(addr);
            }
        }
    });
    let grpc = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .context("collector did not print its gRPC address")?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for host in &data.hosts {
        let per = cycles_per_batch as usize;
        let cycles: Vec<_> = host.cycles.iter().collect();
        let batches: Vec<hostpulse_bench::BatchColumns> = cycles
            .chunks(per)
            .map(|chunk| {
                let base = *chunk[0].0;
                let mut refs = Vec::new();
                let mut deltas = Vec::new();
                let mut values = Vec::new();
                for (ts, (r, v)) in chunk {
                    refs.extend_from_slice(r);
                    values.extend_from_slice(v);
                    deltas.extend(std::iter::repeat_n(**ts - base, r.len()));
                }
                // One cycle: every sample at the base timestamp, as an agent sends it.
                if per == 1 {
                    deltas.clear();
                }
                (base, refs, deltas, values)
            })
            .collect();
        tasks.push(tokio::spawn(hostpulse_bench::stream_host(
            grpc,
            host.name.clone(),
            "storage-bench",
            host.defs.clone(),
            batches,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = rss.peak_kib();
    server.terminate()?;
    let peak = peak.max(rss.finish());
    // Seal what is still in heads the way `import` does: an import of
    // nothing opens the store, seals it and exits.
    run_measured(
        Command::new(collector)
            .arg("import")
            .arg("--data-dir")
            .arg(dir)
            .arg("/dev/null"),
    )?;
    Ok(Figures {
        system: "hostpulse",
        how: if cycles_per_batch == 1 {
            "gRPC, durable acks"
        } else {
            "gRPC, durable acks, several cycles per batch"
        },
        samples: data.samples,
        seconds,
        disk: disk_usage(dir)?,
        peak_rss_kib: peak,
    })
}

async fn victoria_metrics(binary: &Path, file: &Path, dir: &Path, data: &FleetData) -> anyhow::Result<Figures> {
    eprintln!("VictoriaMetrics: /api/v1/import/prometheus ...");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(binary)
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server(child);
    let rss = PeakRss::watch(server.0.id());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(client.get(format!("{base}/health")).send().await, Ok(r) if r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("VictoriaMetrics did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The file goes in chunks cut at line ends, two requests at a time so
    // reading the next chunk overlaps VictoriaMetrics parsing this one.
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut pending = Vec::new();
    loop {
        let mut chunk = Vec::with_capacity(33 << 20);
        while chunk.len() < 32 << 20 {
            if reader.read_until(b'\n', &mut chunk)? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        if pending.len() >= 2 {
            let first: tokio::task::JoinHandle<anyhow::Result<()>> = pending.remove(0);
            first.await??;
        }
        let (client, url) = (client.clone(), format!("{base}/api/v1/import/prometheus"));
        pending.push(tokio::spawn(async move {
            let resp = client.post(url).body(chunk).send().await?;
            if !resp.status().is_success() {
                bail!("import answered {}: {}", resp.status(), resp.text().await?);
            }
            Ok(())
        }));
    }
    for p in pending {
        p.await??;
    }
    client
        .get(format!("{base}/internal/force_flush"))
        .send()
        .await?
        .error_for_status()?;
    let seconds = started.elapsed().as_secs_f64();

    // Check every sample arrived.
    let newest = data
        .hosts
        .iter()
        .filter_map(|h| h.cycles.keys().next_back())
        .max()
        .copied()
        .unwrap_or(0);
    let oldest = data
        .hosts
        .iter()
        .filter_map(|h| h.cycles.keys().next())
        .min()
        .copied()
        .unwrap_or(0);
    let window_s = (newest - oldest) / 1000 + 1;
    let query = format!("sum(count_over_time({{__name__!=\"\"}}[{window_s}s]))");
    let url = format!(
        "{base}/api/v1/query?query={}&time={}",
        percent_encode(&query),
        newest as f64 / 1000.0
    );
    let body: serde_json::Value = client.get(url).send().await?.json().await?;
    let counted: u64 = body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0);
    if counted != data.samples {
        eprintln!(
            "  WARNING: VictoriaMetrics counts {counted} of {} samples: {body}",
            data.samples
        );
    }

    client
        .get(format!("{base}/internal/force_merge"))
        .send()
        .await?
        .error_for_status()?;
    // force_merge may return before the merge ends: wait until the data
    // directory stops changing.
    let mut last = disk_usage(dir)?.apparent;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stable_since.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = disk_usage(dir)?.apparent;
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    // Measured while it runs, after flush and merge: on shutdown it also
    // persists its in-memory caches under cache/, which are not series data.
    let disk = disk_usage(dir)?;
    let peak = rss.peak_kib();
    server.terminate()?;
    let peak = peak.max(rss.finish());
    eprintln!(
        "  after shutdown its directory holds {} bytes (caches persisted under cache/)",
        disk_usage(dir)?.apparent
    );
    Ok(Figures {
        system: "VictoriaMetrics",
        how: "/api/v1/import/prometheus + force_flush, force_merge",
        samples: counted,
        seconds,
        disk,
        peak_rss_kib: peak,
    })
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prometheus(promtool: &Path, file: &Path, dir: &Path, samples: u64) -> anyhow::Result<Figures> {
    eprintln!("Prometheus: promtool tsdb create-blocks-from openmetrics ...");
    std::fs::create_dir_all(dir)?;
    let (_, seconds, peak) = run_measured(
        Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(file)
            .arg(dir),
    )?;
    Ok(Figures {
        system: "Prometheus",
        how: "promtool tsdb create-blocks-from openmetrics",
        samples,
        seconds,
        disk: disk_usage(dir)?,
        peak_rss_kib: peak,
    })
}
