//! Agent cost benchmark: `hostpulse-agent serve` and node_exporter side by
//! side in one run, both pointed at the node-exporter fixture tree, scraped
//! the same number of times; prints CPU time per scrape (utime+stime deltas
//! from `/proc/<pid>/stat`), peak RSS (`VmHWM`), the stripped agent binary
//! size, per-source steady-state cost (in process, single thread) on the
//! fixture and on this host's real `/sys` and `/proc`, and the cost of one
//! sampler cycle plus rendering in process (a scrape without HTTP).
//!
//! Scrapes are spaced `--interval-ms` apart (default 1.1 s) because `serve`
//! reuses a cycle younger than one second: with closer scrapes the agent
//! would not sample on every scrape and the comparison would flatter it.
//! Within a round the two are scraped one after the other, the agent first
//! in even rounds and node_exporter first in odd ones (the first one finds
//! the fixture's kernel caches cold).
//!
//! Run from the workspace root after `cargo build --release -p hostpulse-agent`:
//! `cargo run --release -p hostpulse-bench --bin agent`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hostpulse_agent::emit::Emitter;
use hostpulse_agent::source::SourceOptions;
use hostpulse_agent::sources::REGISTRY;
use hostpulse_agent::{HostPaths, Sampler};

/// Clock ticks per second of the utime/stime fields of `/proc/<pid>/stat`
/// (USER_HZ, fixed at 100 on Linux for the user-visible interface).
const USER_HZ: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(about = "hostpulse-agent serve vs node_exporter: CPU per scrape, peak RSS, binary size, per-source cost")]
struct Args {
    /// The node-exporter fixture (sys/ with flattened symlinks, proc/, udev/data).
    #[arg(long, default_value = "../shared/fixtures/node-exporter")]
    fixture: PathBuf,
    /// The release agent binary.
    #[arg(long, default_value = "target/release/hostpulse-agent")]
    agent: PathBuf,
    /// node_exporter binary (Debian package prometheus-node-exporter).
    #[arg(long, default_value = "/usr/bin/prometheus-node-exporter")]
    node_exporter: PathBuf,
    /// Measured scrapes per exporter (after one warm-up scrape each).
    #[arg(long, default_value_t = 100)]
    scrapes: u32,
    /// Time between scrape rounds, in milliseconds.
    #[arg(long, default_value_t = 1100)]
    interval_ms: u64,
    /// Steady-state cycles per source for the in-process per-source table.
    #[arg(long, default_value_t = 200)]
    cycles: u32,
    /// Skip the side-by-side scrapes (per-source tables and size only).
    #[arg(long)]
    no_scrapes: bool,
    /// Cycles of the in-process sampler + render measurement, one per
    /// `--interval-ms`; 0 skips it.
    #[arg(long, default_value_t = 20)]
    inline_cycles: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let sysfs = work.path().join("sys");
    copy_tree_restoring_links(&args.fixture.join("sys"), &sysfs)
        .with_context(|| format!("copying {}", args.fixture.join("sys").display()))?;
    let rootfs = work.path().join("root");
    std::fs::create_dir_all(&rootfs)?;
    let smart_dir = work.path().join("smart");
    std::fs::create_dir_all(&smart_dir)?;
    let kmsg = work.path().join("kmsg");
    std::fs::write(&kmsg, b"")?;
    let fixture_paths = HostPaths {
        sysfs: sysfs.clone(),
        procfs: args.fixture.join("proc"),
        rootfs: rootfs.clone(),
        udev_data: args.fixture.join("udev/data"),
        dev: work.path().join("dev"),
    };
    let options = SourceOptions {
        kmsg: Some(kmsg.clone()),
        smartctl_json_dir: Some(smart_dir.clone()),
        ..SourceOptions::default()
    };

    println!(
        "## Per-source cost, in process, one thread ({} steady cycles)\n",
        args.cycles
    );
    let fixture_costs = per_source(&fixture_paths, &options, args.cycles);
    let host_options = SourceOptions {
        kmsg: Some(kmsg.clone()),
        ..options.clone()
    };
    let host_costs = per_source(&HostPaths::default(), &host_options, args.cycles);
    println!("| source | fixture first µs | fixture steady µs | host first µs | host steady µs |");
    println!("|---|---:|---:|---:|---:|");
    let mut totals = [0.0f64; 4];
    for (f, h) in fixture_costs.iter().zip(&host_costs) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            f.name, f.first_us, f.steady_us, h.first_us, h.steady_us
        );
        totals[0] += f.first_us;
        totals[1] += f.steady_us;
        totals[2] += h.first_us;
        totals[3] += h.steady_us;
    }
    println!(
        "| **all** | {:.1} | {:.1} | {:.1} | {:.1} |\n",
        totals[0], totals[1], totals[2], totals[3]
    );

    let host_cpu = sampler_cpu_per_cycle(HostPaths::default(), args.cycles)?;
    println!(
        "Whole sampler on this host's /sys and /proc (default sources, {} cycles): {:.3} ms CPU per cycle\n",
        args.cycles,
        host_cpu * 1e3
    );

    if args.inline_cycles > 0 {
        let ms = sampler_cycle_cpu(&fixture_paths, &options, args.inline_cycles, args.interval_ms)?;
        println!(
            "Sampler + render on the fixture, in process (what `serve` does per scrape without HTTP; {} cycles {} ms apart, caches cold as in a scrape): {:.3} ms CPU per cycle\n",
            args.inline_cycles, args.interval_ms, ms
        );
    }

    let stripped = stripped_size(&args.agent, work.path())?;
    println!(
        "Stripped release binary: {} bytes ({:.2} MiB)\n",
        stripped,
        stripped as f64 / (1024.0 * 1024.0)
    );

    if args.no_scrapes {
        return Ok(());
    }
    let agent_addr = free_port()?;
    let ne_addr = free_port()?;
    let mut agent = Command::new(&args.agent)
        .arg("serve")
        .arg("--listen")
        .arg(agent_addr.to_string())
        .arg("--sysfs")
        .arg(&sysfs)
        .arg("--procfs")
        .arg(args.fixture.join("proc"))
        .arg("--udev-data")
        .arg(args.fixture.join("udev/data"))
        .arg("--rootfs")
        .arg(&rootfs)
        .arg("--kmsg")
        .arg(&kmsg)
        .arg("--smartctl-json-dir")
        .arg(&smart_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.agent.display()))?;
    let agent_guard = KillOnDrop(&mut agent);
    let mut ne = Command::new(&args.node_exporter)
        .arg(format!("--path.sysfs={}", sysfs.display()))
        .arg(format!("--path.procfs={}", args.fixture.join("proc").display()))
        .arg(format!("--path.udev.data={}", args.fixture.join("udev/data").display()))
        .arg(format!("--path.rootfs={}", rootfs.display()))
        .arg(format!("--web.listen-address={ne_addr}"))
        // Default collectors, with the reference's ignored network devices
        // (the packaged 1.5 has no hwmon chip filter; both read every chip).
        .arg("--collector.netclass.ignored-devices=(dmz|int)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.node_exporter.display()))?;
    let ne_guard = KillOnDrop(&mut ne);
    let agent_pid = agent_guard.0.id();
    let ne_pid = ne_guard.0.id();

    // Warm-up: one scrape each once they answer.
    let agent_warm = wait_for_scrape(agent_addr)?;
    let ne_warm = wait_for_scrape(ne_addr)?;
    std::thread::sleep(Duration::from_millis(args.interval_ms));

    let agent_cpu0 = cpu_ticks(agent_pid)?;
    let ne_cpu0 = cpu_ticks(ne_pid)?;
    let (mut agent_wall, mut ne_wall) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for i in 0..args.scrapes {
        // Both read the same fixture files, and whichever is scraped first in
        // a round finds the kernel's caches of them cold (measured: about
        // 0.2 ms more for the same agent binary); alternate who goes first.
        let agent_first = i % 2 == 0;
        if !agent_first {
            let t = Instant::now();
            scrape(ne_addr)?;
            ne_wall += t.elapsed();
        }
        let t = Instant::now();
        scrape(agent_addr)?;
        agent_wall += t.elapsed();
        if agent_first {
            let t = Instant::now();
            scrape(ne_addr)?;
            ne_wall += t.elapsed();
        }
        let next = Duration::from_millis(args.interval_ms) * (i + 1);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let agent_cpu = cpu_ticks(agent_pid)? - agent_cpu0;
    let ne_cpu = cpu_ticks(ne_pid)? - ne_cpu0;
    let agent_hwm = vm_hwm_kib(agent_pid)?;
    let ne_hwm = vm_hwm_kib(ne_pid)?;
    let agent_mem = memory_breakdown(agent_pid)?;
    let ne_mem = memory_breakdown(ne_pid)?;
    drop(agent_guard);
    drop(ne_guard);

    let n = f64::from(args.scrapes);
    let agent_ms = agent_cpu as f64 / USER_HZ / n * 1e3;
    let ne_ms = ne_cpu as f64 / USER_HZ / n * 1e3;
    println!(
        "## Side by side on the node-exporter fixture: {} scrapes each, {} ms apart\n",
        args.scrapes, args.interval_ms
    );
    println!("| | CPU per scrape (ms) | peak RSS (MiB) | scrape latency (ms) | body bytes | samples |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (who, ms, hwm, wall, body) in [
        ("hostpulse-agent serve", agent_ms, agent_hwm, agent_wall, &agent_warm),
        ("node_exporter", ne_ms, ne_hwm, ne_wall, &ne_warm),
    ] {
        println!(
            "| {who} | {ms:.3} | {:.1} | {:.2} | {} | {} |",
            hwm as f64 / 1024.0,
            wall.as_secs_f64() * 1e3 / n,
            body.len(),
            body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
        );
    }
    println!(
        "\nRatios: CPU {:.3} (target ≤ 0.1), peak RSS {:.3} (target ≤ 0.333)",
        agent_ms / ne_ms,
        agent_hwm as f64 / ne_hwm as f64
    );
    println!("\nAt the end (current, not peak): threads, anonymous and file-backed resident memory\n");
    println!("| | threads | RssAnon MiB | RssFile MiB |");
    println!("|---|---:|---:|---:|");
    for (who, mem) in [("hostpulse-agent serve", agent_mem), ("node_exporter", ne_mem)] {
        println!(
            "| {who} | {} | {:.1} | {:.1} |",
            mem.threads,
            mem.anon_kib as f64 / 1024.0,
            mem.file_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// Thread count and resident memory by kind of one process.
struct MemoryBreakdown {
    threads: u64,
    anon_kib: u64,
    file_kib: u64,
}

/// Reads `Threads`, `RssAnon` and `RssFile` from `/proc/<pid>/status`.
fn memory_breakdown(pid: u32) -> anyhow::Result<MemoryBreakdown> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name}"))?;
        Ok(line.split_whitespace().nth(1).context("short status line")?.parse()?)
    };
    Ok(MemoryBreakdown {
        threads: field("Threads:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// Steady-state cost of one source.
struct SourceCost {
    name: &'static str,
    first_us: f64,
    steady_us: f64,
}

/// Runs every default-on source alone: one first (cold) cycle, then `cycles`
/// steady ones, timing each source's `collect` on this thread.
fn per_source(paths: &HostPaths, options: &SourceOptions, cycles: u32) -> Vec<SourceCost> {
    REGISTRY
        .iter()
        .filter(|e| e.default_on)
        .map(|entry| {
            let mut source = (entry.make)(options);
            let t = Instant::now();
            let _ = source.collect(paths, &mut Emitter::new());
            let first_us = t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            for _ in 0..cycles {
                let mut out = Emitter::new();
                let _ = source.collect(paths, &mut out);
                std::hint::black_box(out);
            }
            let steady_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(cycles.max(1));
            SourceCost {
                name: entry.name,
                first_us,
                steady_us,
            }
        })
        .collect()
}

/// CPU milliseconds per cycle of what `serve` does per scrape minus HTTP:
/// the default sampler (`Sampler::build`, so inline sources on this thread
/// and the isolated ones on their workers) samples once into its
/// pre-rendered series and renders the text (`Sampler::render_text`), with `interval_ms` of sleep between cycles so caches are as
/// cold as in a real scrape. Measured as the growth of every thread's
/// `schedstat` run time over the whole loop: the kernel adds a running
/// thread's time at its next switch, so the loop ends with a short sleep
/// and no per-phase split is attempted.
fn sampler_cycle_cpu(paths: &HostPaths, options: &SourceOptions, cycles: u32, interval_ms: u64) -> anyhow::Result<f64> {
    let mut sampler = Sampler::build(paths.clone(), &[], &[], options)?;
    // The text buffer is reused across cycles, as `serve` reuses its own.
    let mut text = String::new();
    sampler.render_text(&mut text);
    std::hint::black_box(&text);
    // Idle between cycles like a scraped agent; these sleeps are the
    // workload's shape (and the accounting point), not synchronisation.
    std::thread::sleep(Duration::from_millis(interval_ms));
    let before = process_run_ns()?;
    for _ in 0..cycles {
        text.clear();
        sampler.render_text(&mut text);
        std::hint::black_box(&text);
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    let total_ns = process_run_ns()?.saturating_sub(before);
    Ok(total_ns as f64 / 1e6 / f64::from(cycles.max(1)))
}

/// Run time of every thread of this process so far, in nanoseconds.
fn process_run_ns() -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        // A thread that ended between the listing and the read is skipped.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

/// CPU seconds per cycle of a whole in-process sampler (its worker threads
/// included) over `cycles` cycles after a warm-up cycle.
fn sampler_cpu_per_cycle(paths: HostPaths, cycles: u32) -> anyhow::Result<f64> {
    let mut sampler = Sampler::new(paths, &[])?;
    std::hint::black_box(sampler.sample());
    let pid = std::process::id();
    let before = cpu_ticks(pid)?;
    for _ in 0..cycles {
        std::hint::black_box(sampler.sample());
    }
    let ticks = cpu_ticks(pid)? - before;
    Ok(ticks as f64 / USER_HZ / f64::from(cycles.max(1)))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ) in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("short stat")?.parse()?;
    let stime: u64 = fields.get(12).context("short stat")?.parse()?;
    Ok(utime + stime)
}

/// Peak resident set size, in KiB.
fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("bad VmHWM line")?.parse()?)
}

/// Size of a stripped copy of `binary`.
fn stripped_size(binary: &Path, dir: &Path) -> anyhow::Result<u64> {
    let copy = dir.join("agent-stripped");
    std::fs::copy(binary, &copy).with_context(|| format!("copying {}", binary.display()))?;
    let status = Command::new("strip").arg(&copy).status().context("running strip")?;
    if !status.success() {
        bail!("strip failed: {status}");
    }
    Ok(std::fs::metadata(&copy)?.len())
}

/// An unused loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// One `GET /metrics`; the body.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // One write, as a real scraper sends it: `write!` on the bare stream
    // sent each formatted piece as its own segment, and both exporters woke
    // up once per piece.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// Retries the first scrape while the server starts (bounded: 20 s).
fn wait_for_scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match scrape(addr) {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("{addr} never answered"))),
            // Polling a port that is not yet bound; there is no readiness
            // signal from either exporter to wait on instead.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Kills and reaps a child when dropped, so an error never leaves it running.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies `from` to `to`, restoring symlinks that the shared fixture stores
/// as small files holding the target (a relative path starting with `..`),
/// as the reference test in `agent/tests/sources.rs` does.
fn copy_tree_restoring_links(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_tree_restoring_links(&src, &dst)?;
        } else {
            let bytes = std::fs::read(&src)?;
            let link = std::str::from_utf8(&bytes).ok().map(str::trim_end).filter(|t| {
                bytes.len() < 512 && (*t == ".." || t.starts_with("../")) && !t.contains(char::is_whitespace)
            });
            match link {
                Some(target) => std::os::unix::fs::symlink(target, &dst)?,
                None => std::fs::write(&dst, &bytes)?,
            }
        }
    }
    Ok(())
}
